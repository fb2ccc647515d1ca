"""Web hardening (issue #15): stalled clients, connection caps, decoded-pixel budgets, the streamed
body limit, security headers on every response, CSV formula neutralisation, `protloc serve` wiring.

Servers here use second-scale timeouts so each test takes a few seconds at most.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from protloc.web.app import create_app  # noqa: E402
from protloc.web.guard import CSP, DOCS_CSP, ConnectionLimits, Guard, guarded_protocol  # noqa: E402
from protloc.web.uploads import FORMULA_PREFIXES, csv_safe  # noqa: E402
from test_web_api import client, png_bytes, post, predictor  # noqa: E402,F401 - shared fixtures

HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


def png_declaring(width: int, height: int, *, color_type: int = 2) -> bytes:
    """A ~60-byte PNG whose header declares width x height (8-bit RGB) and whose pixel data is cut
    short: harmless to read, but a decoder would allocate the whole image first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


GOOD = png_bytes(np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8))


# ------------------------------------------------------------------------------------------
# a real server: stalled clients, timeouts, connection caps
# ------------------------------------------------------------------------------------------
@pytest.fixture
def guarded_server(fake_run, predictor, request):
    from helpers import start_server

    limits = ConnectionLimits(**getattr(request, "param", {}))
    proto = guarded_protocol(limits)
    server, t, url = start_server(create_app(fake_run, predictor=predictor), http=proto, timeout_keep_alive=5)
    yield proto, int(url.rsplit(":", 1)[1]), url
    server.should_exit = True
    t.join(timeout=10)


def stalled(port: int, n: int, head: bytes = b"GET /health HTTP/1.1\r\nHost: x\r\n") -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(head)
        out.append(s)
    return out


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(closed by the server within ``seconds``, what it sent before closing)."""
    s.settimeout(seconds)
    got = b""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True, got
            got += data
    except socket.timeout:
        return False, got
    except OSError:
        return True, got


def get_health(url: str) -> tuple[int, float]:
    import httpx

    t0 = time.perf_counter()
    r = httpx.get(url + "/health", timeout=5)
    return r.status_code, time.perf_counter() - t0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("guarded_server", [{"header_timeout_s": 1.5, "max_per_client": 16}], indirect=True)
def test_stalled_headers_do_not_starve_health(guarded_server):
    proto, port, url = guarded_server
    socks = stalled(port, 40)  # more than the per-client cap: the oldest stalled ones make room
    try:
        for _ in range(3):
            code, sec = get_health(url)
            assert code == 200 and sec < 2.0
        assert proto.registry.evicted >= 40 - 16
        t0 = time.perf_counter()
        closed, got = closed_within(socks[-1], 4.0)  # the newest one waits for its header timeout
        assert closed and 0.5 < time.perf_counter() - t0 < 4.0
        assert got.startswith(b"HTTP/1.1 408") and b"x-frame-options: DENY" in got
        assert get_health(url)[0] == 200
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("guarded_server", [{"header_timeout_s": 1.0}], indirect=True)
def test_trickled_header_is_timed_from_the_first_byte(guarded_server):
    _, port, _ = guarded_server
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.perf_counter()
    try:
        for ch in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # one byte every 0.2 s: never done in time
            try:
                s.sendall(bytes([ch]))
            except OSError:
                break
            time.sleep(0.2)
            if time.perf_counter() - t0 > 3:
                break
        closed, _ = closed_within(s, 2.0)
        assert closed and time.perf_counter() - t0 < 3.5
    finally:
        s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("guarded_server", [{"body_timeout_s": 1.0}], indirect=True)
def test_stalled_body_is_closed(guarded_server):
    _, port, url = guarded_server
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n")
    (s,) = stalled(port, 1, head)
    try:
        assert get_health(url)[0] == 200
        t0 = time.perf_counter()
        closed, _ = closed_within(s, 5.0)
        assert closed and time.perf_counter() - t0 < 3.0
    finally:
        s.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("guarded_server", [{"max_per_client": 3, "body_timeout_s": 30}], indirect=True)
def test_connection_cap_refuses_when_nothing_is_idle(guarded_server):
    proto, port, url = guarded_server
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\n")
    busy = stalled(port, 3, head)  # three uploads in progress: not idle, never evicted
    try:
        time.sleep(0.2)
        (extra,) = stalled(port, 1, b"")
        closed, got = closed_within(extra, 3.0)
        assert closed and got.startswith(b"HTTP/1.1 503") and b"too many connections" in got
        assert proto.registry.refused == 1
    finally:
        for s in busy:
            s.close()
    time.sleep(0.3)
    assert get_health(url)[0] == 200  # room again once they are gone


def test_serve_runs_the_guarded_protocol_without_limit_concurrency(fake_run, monkeypatch, capsys):
    import uvicorn

    from protloc.cli.main import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setattr("protloc.cli.commands.serve._check_address", lambda host, port: None)
    assert main(["serve", str(fake_run), "--header-timeout", "3", "--max-connections-per-client", "7",
                 "--max-decoded-mb", "100"]) == 0
    assert "limit_concurrency" not in seen  # uvicorn's counts stalled connections: /health went 503
    assert seen["http"].limits.header_timeout_s == 3 and seen["http"].limits.max_per_client == 7
    assert seen["app"].state.service.card["limits"]["max_decoded_mb"] == 100


@pytest.mark.parametrize("opt", ["--header-timeout", "--body-timeout", "--max-connections", "--max-decoded-mb",
                                 "--threads"])
def test_serve_rejects_bad_limits(fake_run, capsys, opt):
    from protloc.cli.main import main

    assert main(["serve", str(fake_run), opt, "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and opt in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------
# decoded-pixel budgets
# ------------------------------------------------------------------------------------------
def test_pixel_bomb_is_refused_before_decoding(client, monkeypatch):
    service = client.app.state.service
    monkeypatch.setattr(service, "predict", lambda *a, **k: pytest.fail("decoded a pixel bomb"))
    bomb = png_declaring(6000, 6000)
    assert len(bomb) < 200
    t0 = time.perf_counter()
    r = post(client, [(f"b{i}.png", bomb, "image/png") for i in range(48)])
    assert r.status_code == 413, r.text
    body = r.json()
    # each: 108 MB kept, 360 MB while decoding; two fit in 512 MiB (108 + 360 = 468 MB), three do not
    assert body["error"] == "images too large to decode" and body["file"] == "b2.png"
    assert "6000x6000" in body["detail"] and "512 MB" in body["detail"] and "Fix: send at most 2" in body["detail"]
    assert time.perf_counter() - t0 < 5
    assert client.app.state.pixel_budget.used == 0


def test_one_image_over_the_request_budget(fake_run, predictor):
    app = create_app(fake_run, predictor=predictor, max_decoded_mb=50)
    with TestClient(app) as c:
        r = post(c, [("huge.png", png_declaring(5000, 5000), "image/png")])
        assert r.status_code == 413 and r.json()["file"] == "huge.png"
        assert "--max-decoded-mb" in r.json()["detail"]
        assert post(c, [("ok.png", GOOD, "image/png")]).status_code == 200


def test_server_budget_busy_gives_503_and_is_released(fake_run, predictor):
    app = create_app(fake_run, predictor=predictor, max_decoded_mb=1, max_decoded_total_mb=1, busy_timeout_s=0.2)
    budget = app.state.pixel_budget
    with TestClient(app) as c:
        held = asyncio.run(budget.take(budget.total, timeout_s=0))  # another request decodes
        t0 = time.perf_counter()
        r = post(c, [("a.png", GOOD, "image/png")])
        assert r.status_code == 503 and r.json()["error"] == "server busy" and "Fix:" in r.json()["detail"]
        assert time.perf_counter() - t0 < 5
        budget.give(held)
        assert post(c, [("a.png", GOOD, "image/png")]).status_code == 200
        assert post(c, [("a.png", GOOD, "image/png"), ("x.png", b"not an image", "image/png")]).status_code == 415
        assert budget.used == 0  # released after success and after an error


def tiff_declaring(width: int, height: int) -> bytes:
    """A ~150-byte little-endian TIFF whose tags declare one width x height 16-bit grey image."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd


def test_tiff_headers_are_charged_before_decoding(client, monkeypatch):
    monkeypatch.setattr(client.app.state.service, "predict", lambda *a, **k: pytest.fail("decoded"))
    data = tiff_declaring(6000, 6000)  # 36 Mpx of 16 bit: 36 MB kept, 396 MB while converting: 4 fit 512 MiB
    assert len(data) < 200
    r = post(client, [(f"t{i}.tif", data, "image/tiff") for i in range(6)])
    assert r.status_code == 413 and r.json()["file"] == "t4.tif", r.text
    r = post(client, [("big.tif", tiff_declaring(8000, 8000), "image/tiff")])
    assert r.status_code == 413 and r.json()["error"] == "image too large"


# ------------------------------------------------------------------------------------------
# the body limit counts while streaming
# ------------------------------------------------------------------------------------------
def test_body_is_streamed_through_not_buffered():
    log = []

    async def app(scope, receive, send):
        while True:
            msg = await receive()
            log.append(("app got", len(msg.get("body", b""))))
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [b"x" * 1000] * 4

    async def receive():
        i = sum(1 for e in log if e[0] == "sent")
        log.append(("sent", i))
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    out = []

    async def send(msg):
        out.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(Guard(app, max_bytes=10_000)(scope, receive, send))
    assert log.index(("app got", 1000)) < log.index(("sent", 1))  # the first chunk reached the app at once
    assert out[0]["status"] == 200 and dict(out[0]["headers"])[b"x-frame-options"] == b"DENY"


def test_body_over_limit_stops_at_the_limit():
    received = []

    async def app(scope, receive, send):
        while True:
            msg = await receive()
            received.append(msg["type"])
            if msg["type"] == "http.disconnect":
                break
        await send({"type": "http.response.start", "status": 400, "headers": []})  # dropped
        await send({"type": "http.response.body", "body": b"app's answer"})

    n = {"sent": 0}

    async def receive():
        n["sent"] += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": n["sent"] < 1000}

    out = []

    async def send(msg):
        out.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(Guard(app, max_bytes=5_500, drain_s=0.2)(scope, receive, send))
    assert received[:6] == ["http.request"] * 5 + ["http.disconnect"]
    assert out[0]["status"] == 413 and b"request too large" in out[1]["body"]
    assert len(out) == 2 and n["sent"] < 1000  # stopped early: never read the whole 1 MB body


# ------------------------------------------------------------------------------------------
# security headers on every response
# ------------------------------------------------------------------------------------------
def test_security_headers_on_every_response(client, fake_run, predictor):
    with TestClient(create_app(fake_run, predictor=predictor, max_request_mb=0.05, max_upload_mb=0.01)) as small:
        too_big = small.post("/predict", content=b"x" * 60_000, headers={"content-type": "multipart/form-data; "
                                                                          "boundary=b"})
        assert too_big.status_code == 413
    responses = {
        "health": client.get("/health"), "model": client.get("/model"), "page": client.get("/"),
        "static": client.get("/static/app.js"), "openapi": client.get("/openapi.json"),
        "404": client.get("/nope"), "405": client.put("/health"),
        "predict": post(client, [("a.png", GOOD, "image/png")]),
        "415": post(client, [("a.txt", b"hello", "text/plain")]),
        "422": client.post("/predict"),
        "413": too_big,
    }
    for what, r in responses.items():
        for h in HEADERS:
            assert h in r.headers, (what, r.status_code, h)
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == CSP and "frame-ancestors 'none'" in CSP
        assert r.headers.get_list("content-security-policy") == [CSP]  # once, not twice
    docs = client.get("/docs")
    assert docs.headers["content-security-policy"] == DOCS_CSP and "cdn.jsdelivr.net" in DOCS_CSP


def test_crash_is_500_json_with_headers_and_no_traceback(fake_run, predictor, monkeypatch):
    app = create_app(fake_run, predictor=predictor)

    def boom(*a, **k):
        raise RuntimeError("secret /home/user/path details")

    monkeypatch.setattr(app.state.service, "predict", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = post(c, [("a.png", GOOD, "image/png")])
    assert r.status_code == 500 and r.json()["error"] == "internal error"
    assert "Traceback" not in r.text and "/home/user" not in r.text and "Fix:" in r.json()["detail"]
    assert all(h in r.headers for h in HEADERS)


# ------------------------------------------------------------------------------------------
# CSV export: every formula prefix, every text cell
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["=1+1.png", "+1.png", "-2+3.png", "@SUM(1).png", " =x.png"])
def test_csv_neutralises_formula_prefixes(client, name):
    r = post(client, [(name, GOOD, "image/png")], format="csv")
    assert r.status_code == 200
    first = r.text.splitlines()[1].split(",")[0]
    assert first.startswith("'") and first[1:] == name.strip().rsplit(".", 1)[0]


def test_csv_safe_cells():
    assert [csv_safe(p + "x") for p in FORMULA_PREFIXES] == ["'" + p + "x" for p in FORMULA_PREFIXES]
    assert csv_safe("cell_1") == "cell_1" and csv_safe("1 4") == "1 4" and csv_safe("") == ""


def test_page_csv_uses_the_same_prefixes():
    js = (Path(__file__).parents[1] / "src/protloc/web/static/app.js").read_text()
    m = re.search(r"function csvCell\(v\) \{.*?/\^ \*\[(.*?)\]/", js, re.S)
    assert m, "csvCell's formula test not found"
    cls = m.group(1).replace("\\-", "-").replace("\\t", "\t").replace("\\r", "\r")
    assert set(cls) == set(FORMULA_PREFIXES)
