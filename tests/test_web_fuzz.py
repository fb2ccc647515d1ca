"""API fuzzing of the web app from its own OpenAPI schema (issue #15), with schemathesis.

Every operation in /openapi.json (GET /health, GET /model, POST /predict with generated
multipart bodies and query options) gets a bounded, deterministic set of generated requests;
none may answer 5xx, show a traceback, or lack the security headers.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from protloc.web.app import create_app  # noqa: E402

HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


@pytest.fixture(scope="module")
def web_schema(fake_run):
    from protloc.inference.predictor import Predictor

    app = create_app(fake_run, predictor=Predictor.from_run(fake_run))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def check_response(case) -> None:
    r = case.call()
    text = r.text
    assert r.status_code < 500, f"{case.method} {case.path}: {r.status_code} {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text
    for h in HEADERS:
        assert h in r.headers, (case.method, case.path, r.status_code, h)
    if r.status_code >= 400:
        body = r.json()
        assert {"error", "detail"} <= set(body) and "Fix:" in body["detail"], body


@pytest.mark.timeout(300)
def test_generated_requests_never_crash(web_schema):
    ops = [result.ok() for result in web_schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in ops} >= {("GET", "/health"), ("GET", "/model"), ("POST", "/predict")}
    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            check_response(case)

        fuzz()


def _image_bytes() -> list[bytes]:
    import io

    import numpy as np
    import tifffile
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8)
    out = []
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, fmt)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    tifffile.imwrite(buf, img.astype(np.uint16) * 257)
    out.append(buf.getvalue())
    return out


SEEDS = _image_bytes()


@given(data=st.data())
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_mutated_uploads_give_upload_errors_only(data):
    """Flipped, cut or inserted bytes in a real PNG/JPEG/TIFF: the header check and the decoder
    answer an array or an UploadError (4xx), never another exception."""
    from protloc.web.uploads import UploadError, check_request_pixels, decode_image

    raw = bytearray(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b"\x89PNG")
    blob = bytes(raw)
    try:
        check_request_pixels([("x", blob)], max_pixels=4096 * 4096, max_bytes=64 << 20)
        arr = decode_image(blob, "x", max_pixels=4096 * 4096)
    except UploadError as e:
        assert 400 <= e.status < 500 and "x" in e.detail
    else:
        assert arr.dtype.name == "uint8" and arr.ndim in (2, 3)
