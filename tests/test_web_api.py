"""The web app's JSON API (issue #7): happy paths, HPA sets, every bad upload, limits, load."""

from __future__ import annotations

import base64
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from protloc.inference.predictor import Predictor  # noqa: E402
from protloc.web.app import clean_name, create_app  # noqa: E402


def png_bytes(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def tiff_bytes(img: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, img)
    return buf.getvalue()


def rand_img(seed: int, size: int = 32, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, channels)).astype(np.uint8)


@pytest.fixture(scope="module")
def predictor(fake_run):
    return Predictor.from_run(fake_run)


@pytest.fixture(scope="module")
def client(fake_run, predictor):
    with TestClient(create_app(fake_run, predictor=predictor)) as c:
        yield c


def post(client, files, **params):
    return client.post("/predict", params=params, files=[("files", f) for f in files])


# ------------------------------------------------------------------------------------------
# happy paths
# ------------------------------------------------------------------------------------------
def test_health_model_docs(client):
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["classes"] == 10
    card = client.get("/model").json()
    assert [c["name"] for c in card["classes"]][:2] == ["Mitochondria", "Nuclear bodies"]
    assert [c["name"] for c in card["channels"]] == ["red", "green", "blue"]
    assert card["channels"][1]["role"] == "protein of interest"
    assert card["image_size"] == 32 and card["validation"]["macro_f1"] == 0.3
    assert card["backbone"] == "test_resnet" and card["ensemble"] == 1
    assert all(c["threshold"] == 0.5 for c in card["classes"])
    spec = client.get("/openapi.json").json()
    assert "/predict" in spec["paths"] and "/model" in spec["paths"] and "/health" in spec["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "file-input" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="/docs"', "")  # nothing external on the page
    assert client.get("/static/app.js").status_code == 200


def test_predict_one_matches_predictor(client, predictor):
    img = rand_img(1, size=40)  # another size: resized to the run's 32 px like predict does
    r = post(client, [("cell_1.png", png_bytes(img), "image/png")])
    assert r.status_code == 200, r.text
    body = r.json()
    (res,) = body["results"]
    assert res["name"] == "cell_1.png" and res["image"] == "cell_1"
    probs = np.array([res["probabilities"][c] for c in body["classes"]])
    want = predictor.predict_array(predictor.preprocessing.prepare(img)[None])[0]
    np.testing.assert_allclose(probs, want, atol=1e-4)
    ids = [lab["id"] for lab in res["labels"]]
    assert ids == predictor.labels_from_probs(want[None])[0][0]
    assert res["label"] == " ".join(map(str, ids))
    assert all(lab["name"] == body["classes"][lab["id"]] for lab in res["labels"])
    assert res["thresholds"]["Cytosol"] == 0.5 and "overlays" not in res and "composite" not in res


def test_predict_many_formats_in_order(client):
    a, b, c = rand_img(2), rand_img(3), rand_img(4)
    files = [("a.png", png_bytes(a), "image/png"),
             ("b.jpg", png_bytes(b, "JPEG"), "image/jpeg"),
             ("c.tif", tiff_bytes(c.astype(np.uint16) * 257), "image/tiff"),
             ("d.png", png_bytes(np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])), "image/png")]  # RGBA
    r = post(client, files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["image"] for x in res] == ["a", "b", "c", "d"]
    assert res[0]["probabilities"] == res[3]["probabilities"]  # alpha dropped


def test_explain_and_preview(client):
    r = post(client, [("x.png", png_bytes(rand_img(5)), "image/png")], explain="true", preview="true")
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert [o["id"] for o in res["overlays"]] == [lab["id"] for lab in res["labels"]]
    assert [c["name"] for c in res["channel_images"]] == ["red", "green", "blue"]
    for uri in [res["composite"]] + [o["src"] for o in res["overlays"]]:
        assert uri.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert im.size == (32, 32) and im.mode == "RGB"


def test_hpa_channel_set_is_stacked(client):
    img = rand_img(6)
    files = [(f"77_{ch}.png", png_bytes(np.ascontiguousarray(img[..., k])), "image/png")
             for k, ch in ((2, "blue"), (0, "red"), (1, "green"))]
    files.append(("77_yellow.png", png_bytes(np.zeros((32, 32), np.uint8)), "image/png"))  # unused
    files.append(("rgb.png", png_bytes(img), "image/png"))
    r = post(client, files)
    assert r.status_code == 200, r.text
    hpa, rgb = r.json()["results"]
    assert hpa["image"] == "77" and sorted(hpa["files"]) == ["77_blue.png", "77_green.png", "77_red.png", "77_yellow.png"]
    assert hpa["probabilities"] == rgb["probabilities"]


def test_csv_format(client):
    r = post(client, [("a.png", png_bytes(rand_img(7)), "image/png"),
                      ("b.png", png_bytes(rand_img(8)), "image/png")], format="csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.strip().splitlines()
    assert lines[0].startswith("Image,Label,Mitochondria,") and len(lines) == 3
    assert lines[1].split(",")[0] == "a"
    r = post(client, [("=HYPERLINK(1).png", GOOD, "image/png")], format="csv")
    assert r.text.splitlines()[1].startswith("'=HYPERLINK(1)")  # no spreadsheet formulas from names


# ------------------------------------------------------------------------------------------
# bad uploads: always a 4xx JSON {"error", "detail"} naming the file
# ------------------------------------------------------------------------------------------
GOOD = png_bytes(rand_img(9))
BAD = {
    "text": ("notes.txt", b"hello, I am not an image", 415, "PNG, JPEG or TIFF"),
    "pdf": ("paper.png", b"%PDF-1.4 fake", 415, "PDF"),
    "gif": ("anim.png", png_bytes(rand_img(1), "GIF"), 415, "GIF"),
    "truncated": ("cut.png", GOOD[: len(GOOD) // 2], 422, "corrupt"),
    "garbage_png": ("junk.png", GOOD[:16] + b"\x00" * 200, 422, "corrupt"),
    "grayscale": ("gray.png", png_bytes(np.zeros((32, 32), np.uint8)), 422, "3 channels"),
    "two_channel_tiff": ("two.tif", tiff_bytes(np.zeros((2, 32, 32), np.uint8)), 422, "3 channels"),
    "empty": ("empty.png", b"", 400, "0 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_upload_is_clear_4xx(client, case):
    name, data, status, text = BAD[case]
    r = post(client, [("ok.png", GOOD, "image/png"), (name, data, "application/octet-stream")])
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"} and body["file"] == name
    assert name in body["detail"] and text in body["detail"] + body["error"] and "Fix:" in body["detail"]


def test_incomplete_hpa_set(client):
    r = post(client, [("9_red.png", png_bytes(np.zeros((32, 32), np.uint8)), "image/png"),
                      ("9_green.png", png_bytes(np.zeros((32, 32), np.uint8)), "image/png")])
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "incomplete HPA channel set" and "9_blue.png" in body["detail"]


@pytest.mark.parametrize("kwargs,status", [({}, 422), ({"data": {"x": "1"}}, 422),
                                            ({"params": {"tta": "bogus"}}, 422)])
def test_bad_requests(client, kwargs, status):
    if "params" in kwargs:
        r = client.post("/predict", files=[("files", ("a.png", GOOD, "image/png"))], **kwargs)
    else:
        r = client.post("/predict", **kwargs)
    assert r.status_code == status and {"error", "detail"} <= set(r.json())


def test_path_traversal_names_are_harmless(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ["../../../../tmp/evil.png", "..\\..\\win.png", "/etc/passwd", "a/../../b.png", "\x00\n.png", " "]
    before = set(tmp_path.parent.iterdir())
    r = post(client, [(n, GOOD, "image/png") for n in names])
    assert r.status_code == 200, r.text
    shown = [x["name"] for x in r.json()["results"]]
    assert shown == ["evil.png", "win.png", "passwd", "b.png", "%00%0A.png", "upload-5"]  # httpx %-encodes
    assert all("/" not in s and "\\" not in s and not s.startswith(".") for s in shown)
    assert set(tmp_path.parent.iterdir()) == before and not list(tmp_path.iterdir())
    assert clean_name("../x/../../.hidden") == "hidden"


def test_size_limits_413(fake_run, predictor):
    app = create_app(fake_run, predictor=predictor, max_upload_mb=0.02, max_request_mb=0.05,
                     max_files=3, max_pixels=64 * 64)
    big = tiff_bytes(np.zeros((3, 60, 60), np.uint16))  # 21.6 kB > 0.02 MB (20.97 kB)
    small = png_bytes(rand_img(1))
    with TestClient(app) as c:
        r = post(c, [("big.tif", big, "image/tiff")])
        assert r.status_code == 413 and r.json()["error"] == "file too large" and "big.tif" in r.json()["detail"]
        r = post(c, [(f"{i}.tif", tiff_bytes(np.zeros((3, 58, 58), np.uint16)), "image/tiff") for i in range(3)])
        assert r.status_code == 413 and r.json()["error"] == "request too large"
        r = post(c, [(f"{i}.png", small, "image/png") for i in range(4)])
        assert r.status_code == 413 and r.json()["error"] == "too many files"
        r = post(c, [("wide.png", png_bytes(np.zeros((8, 1000, 3), np.uint8)), "image/png")])
        assert r.status_code == 413 and r.json()["error"] == "image too large" and "wide.png" in r.json()["detail"]
        r = c.post("/predict", content=b"x" * 60000, headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        r = c.post("/predict", content=iter([b"x" * 20000] * 4),  # chunked, no Content-Length
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413 and r.json()["error"] == "request too large"
        assert post(c, [("ok.png", small, "image/png")]).status_code == 200  # still serving


def test_serve_cli_errors(tmp_path, capsys):
    from protloc.cli.main import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err


def test_serve_cli_port_in_use(fake_run, capsys):
    from protloc.cli.main import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", str(fake_run), "--port", str(s.getsockname()[1])]) == 2
    assert "free local address" in capsys.readouterr().err


def test_model_card_of_trained_run(trained_run):
    with TestClient(create_app(trained_run)) as c:
        card = c.get("/model").json()
        assert isinstance(card["validation"]["macro_f1"], float)
        tr = card["training"]
        assert int(tr["training images"]) + tr["validation images"] == 40 and tr["validation images"] > 0
        assert card["training"]["network"] == "test_resnet" and card["image_size"] == 32
        r = post(c, [("a.png", png_bytes(rand_img(1)), "image/png")], explain="true")
        assert r.status_code == 200 and len(r.json()["results"][0]["overlays"]) == len(r.json()["results"][0]["labels"])


# ------------------------------------------------------------------------------------------
# load: 8 concurrent clients x 50 requests over real loopback HTTP
# ------------------------------------------------------------------------------------------
@pytest.fixture
def live_server(fake_run, predictor):
    from helpers import start_server

    from protloc.web.guard import guarded_protocol

    server, t, url = start_server(create_app(fake_run, predictor=predictor), timeout_keep_alive=5,
                                  http=guarded_protocol())  # as `protloc serve` runs it
    yield url
    server.should_exit = True
    t.join(timeout=10)


@pytest.mark.timeout(120)
def test_concurrent_clients(live_server):
    import httpx

    data = [png_bytes(rand_img(i)) for i in range(8)]

    def client_run(k: int):
        codes = []
        with httpx.Client(base_url=live_server, timeout=30) as c:
            for j in range(50):
                if j % 10 == 9:
                    r = c.post("/predict", files=[("files", ("bad.txt", b"nope", "text/plain"))])
                    codes.append((r.status_code, r.json()["error"]))
                else:
                    r = c.post("/predict", files=[("files", (f"{k}_{j}.png", data[k], "image/png"))])
                    codes.append((r.status_code, r.json()["results"][0]["image"] == f"{k}_{j}"))
        return codes

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(client_run, range(8)))
    elapsed = time.perf_counter() - t0
    flat = [x for r in results for x in r]
    assert len(flat) == 400
    assert all(code == 200 and ok is True for code, ok in flat if code != 415)
    assert sum(code == 200 for code, _ in flat) == 360 and sum(code == 415 for code, _ in flat) == 40
    assert elapsed < 60, f"400 requests took {elapsed:.1f} s"
    print(f"\n8 clients x 50 requests: {elapsed:.1f} s, {400 / elapsed:.0f} req/s")


def test_explain_as_form_field(client):
    r = client.post("/predict", files=[("files", ("a.png", GOOD, "image/png"))], data={"explain": "true"})
    assert r.status_code == 200 and "overlays" in r.json()["results"][0]


# ------------------------------------------------------------------------------------------
# a 4-channel (red, green, blue, yellow) HPA run
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hpa4_client(tmp_path_factory):
    from protloc.core.atomic import write_json
    from protloc.models.network import ModelSpec, build_model, save_weights
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.runfolder import RunFolder
    from protloc.core.schema import get_schema

    run = RunFolder(tmp_path_factory.mktemp("hpa4_run"))
    Preprocessing(fmt="hpa-channels", channels=("red", "green", "blue", "yellow"), size=32, mean=(0.1,) * 4,
                  std=(0.2,) * 4, schema=get_schema("ghent10")).save(run.preprocessing_json)
    spec = ModelSpec(backbone="test_resnet", in_chans=4, num_classes=10, dropout=0.0)
    write_json(run.model_json, spec.to_dict())
    save_weights(build_model(spec), run.model_path(0))
    with TestClient(create_app(run.root)) as c:
        yield c


def test_four_channel_run(hpa4_client):
    c = hpa4_client
    card = c.get("/model").json()
    assert [ch["name"] for ch in card["channels"]] == ["red", "green", "blue", "yellow"]
    assert card["channels"][3]["role"] == "endoplasmic reticulum"
    img = rand_img(11, channels=4)
    chans = ("red", "green", "blue", "yellow")
    hpa = [(f"5_{ch}.png", png_bytes(np.ascontiguousarray(img[..., k])), "image/png") for k, ch in enumerate(chans)]
    r = post(c, hpa + [("stack.tif", tiff_bytes(np.moveaxis(img, -1, 0)), "image/tiff")], preview="true")
    assert r.status_code == 200, r.text
    a, b = r.json()["results"]
    assert a["image"] == "5" and a["probabilities"] == b["probabilities"]
    assert [x["name"] for x in a["channel_images"]] == list(chans)
    r = post(c, hpa[:3])
    assert r.status_code == 422 and "5_yellow.png" in r.json()["detail"]
    r = post(c, [("rgb.png", png_bytes(img[..., :3]), "image/png")])
    assert r.status_code == 422 and "4 channels (red, green, blue, yellow)" in r.json()["detail"]
    rgba = np.dstack([img[..., :3], np.full((32, 32), 255, np.uint8)])
    r = post(c, [("rgba.png", png_bytes(rgba), "image/png")])
    assert r.status_code == 422 and "alpha" in r.json()["detail"]


def test_busy_model_gives_503_not_a_hang(fake_run, predictor):
    app = create_app(fake_run, predictor=predictor, workers=1, busy_timeout_s=0.2)
    service = app.state.service
    with TestClient(app) as c:
        with service.slot():  # another request holds the only model slot
            t0 = time.perf_counter()
            r = post(c, [("a.png", GOOD, "image/png")])
            assert r.status_code == 503 and r.json()["error"] == "server busy"
            assert time.perf_counter() - t0 < 5
        assert post(c, [("a.png", GOOD, "image/png")]).status_code == 200
