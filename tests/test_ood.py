"""Out-of-distribution scores: the statistics, the run's reference, predict/ONNX/report/web.

The quality figures (<= 2 % of held-out images of the training style flagged, >= 90 % of wrong
inputs) are measured by benchmarks/bench_ood.py on a real run, not here.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from protloc.core.ood import Gaussian, OODDetector, image_stats, ledoit_wolf
from protloc.inference.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ledoit_wolf_is_sklearns():
    from sklearn.covariance import ledoit_wolf as sk

    X = np.random.default_rng(1).normal(size=(40, 12)) @ np.random.default_rng(2).normal(size=(12, 12))
    (a, s), (b, t) = ledoit_wolf(X), sk(X)
    assert abs(s - t) < 1e-9 and np.abs(a - b).max() < 1e-9


def cells(n, rng, *, size=24):
    """Two-channel 'images': a dim diffuse channel 0 and a blobby bright channel 1."""
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 2), np.uint8)
    for i in range(n):
        a = rng.normal(20, 4, (size, size))
        bl = np.zeros((size, size))
        for _ in range(3):
            cy, cx = rng.integers(4, size - 4, 2)
            bl[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(4, 16)] = rng.uniform(120, 220)
        out[i] = np.clip(np.stack([a, bl + rng.normal(5, 2, (size, size))], -1), 0, 255)
    return out


def test_detector_flags_the_quantile_of_lookalikes_and_far_images(tmp_path):
    rng = np.random.default_rng(0)
    feats = lambda n, shift=0.0: rng.normal(size=(n, 16)) + 2 + shift  # noqa: E731
    det = OODDetector(quantile=0.98).fit(feats(600), image_stats(cells(600, rng)))
    det.calibrate(feats(300), image_stats(cells(300, rng)))
    assert abs(float((det.val_scores_ > 1).mean()) - 0.02) < 0.01          # the threshold is the 98th percentile
    fresh = det.score(feats(600), image_stats(cells(600, rng)))
    assert float((fresh > 1).mean()) < 0.06                                 # new look-alikes: few flagged
    look = cells(60, rng)
    assert (det.score(feats(60), image_stats(look[..., ::-1])) > 1).mean() > 0.9   # channels swapped
    assert (det.score(feats(60), image_stats(np.zeros_like(look))) > 1).all()      # empty fields
    assert (det.score(-feats(60), image_stats(look)) > 1).all()                   # far in feature space
    parts = det.parts(feats(5), image_stats(look[:5, ..., ::-1]))
    assert parts.shape == (5, 3) and (parts[:, 1] > 1).all()                       # the channel-order part
    det.save(tmp_path / "d.npz")
    back = OODDetector.load(tmp_path / "d.npz")
    x, st = feats(5), image_stats(look[:5])
    np.testing.assert_allclose(back.score(x, st), det.score(x, st), rtol=1e-5)
    assert back.n_train_ == 600 and back.n_val_ == 300 and back.n_features == 16


def test_gaussian_handles_constant_dimensions_and_image_stats():
    X = np.random.default_rng(0).normal(size=(50, 4))
    X[:, 2] = 1.0                                                           # a channel that never changes
    d = Gaussian.fit(X).distance(np.array([[0, 0, 1.0, 0], [0, 0, 2.0, 0]]))
    assert np.isfinite(d).all() and d[1] > 10 * d[0]
    b = np.zeros((2, 8, 8, 1), np.uint8)
    b[1] = 255
    s = image_stats(b)
    assert s.shape == (2, 8) and s[:, :3].tolist() == [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    one = OODDetector().fit(np.ones((20, 3)) + np.random.default_rng(1).normal(size=(20, 3)),
                            image_stats(cells(20, np.random.default_rng(2))[..., :1]))
    assert one.order_ is None                                               # one channel: no order to check


def test_trained_run_scores_wrong_inputs_out_of_distribution(trained_run, tmp_path):
    """A real (tiny) run: its reference is saved per fold; noise, an empty field and swapped
    channels score far above training-like images; predict --probs writes the columns."""
    from pathlib import Path

    from PIL import Image

    from protloc.core.runfolder import RunFolder

    run = RunFolder(trained_run)
    assert run.ood_path(0).is_file() and len(run.ood()) == 1
    pred = Predictor.from_run(trained_run)
    train = sorted(Path(run.data_source().images).glob("*.png"))
    res = pred.predict(train[:20])
    assert res.ood_score is not None and float(np.median(res.ood_score)) < 1
    imgs = np.stack([np.asarray(Image.open(p)) for p in train[:4]])
    rng = np.random.default_rng(0)
    wrong = np.concatenate([rng.integers(0, 256, imgs.shape).astype(np.uint8),   # noise
                            np.zeros_like(imgs),                                # empty fields
                            imgs[..., ::-1]])                                   # channels swapped (B <-> R)
    probs, ood = pred.predict_array(wrong, with_ood=True)
    assert probs.shape == (12, 10) and (ood[:8] > 1).all()
    assert float(np.median(ood[8:])) > float(np.median(res.ood_score))
    frame = pred.predict(list(wrong)).probs_frame()
    assert list(frame.columns[-2:]) == ["ood_score", "ood_flag"] and frame["ood_flag"].iloc[:8].eq(1).all()


def test_onnx_exports_features_and_scores_alike(trained_run, tmp_path):
    from protloc.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["export", str(run)]) == 0
    b = np.random.default_rng(3).integers(0, 60, (4, 32, 32, 3)).astype(np.uint8)
    pt, po = Predictor.from_run(run, engine="torch"), Predictor.from_run(run, engine="onnx")
    (p1, o1), (_, o2) = pt.predict_array(b, with_ood=True), po.predict_array(b, with_ood=True, tta="d4")
    np.testing.assert_allclose(o1, o2, rtol=1e-3, atol=1e-3)   # OOD: the un-augmented view, any TTA
    np.testing.assert_allclose(p1, po.predict_array(b), atol=1e-4)


def test_old_runs_without_reference_predict_without_scores(fake_run, tmp_path):
    res = Predictor.from_run(fake_run).predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert res.ood_score is None and res.ood_flag is None and "ood_score" not in res.probs_frame().columns


def test_report_shows_the_score_distribution(trained_run, tmp_path):
    from protloc.reports.report import SECTIONS, build_report

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    html = build_report(run, n_gradcam=0, gallery_k=1).render()
    assert f"<h2>{SECTIONS[-1]}</h2>" in html and "out-of-distribution scores" in html
    assert "99th percentile on each fold" in html and "held-out validation images" in html
    assert "scale: 8-bit data as stored" in html                  # --intensity auto on 8-bit PNGs


def test_web_upload_16bit_ome_tiff_and_ood_warning_fields(trained_run):
    pytest.importorskip("fastapi")
    import tifffile
    from fastapi.testclient import TestClient

    from protloc.web.app import create_app

    img = np.random.default_rng(0).integers(0, 20, (3, 32, 32)).astype(np.uint16) * 100   # dim 16-bit CYX
    buf = io.BytesIO()
    tifffile.imwrite(buf, img, ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3})
    noise = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(noise, "PNG")
    with TestClient(create_app(trained_run)) as c:
        card = c.get("/model").json()
        assert card["reading"]["intensity"].startswith("scale") and card["ood"]["available"] is True
        r = c.post("/predict", params={"preview": "true"},
                   files=[("files", ("cell.ome.tif", buf.getvalue(), "image/tiff")),
                          ("files", ("noise.png", noise.getvalue(), "image/png"))])
        assert r.status_code == 200, r.text
        tif, png = r.json()["results"]
        assert tif["input"]["dtype"] == "uint16" and tif["input"]["axes"] == "CYX"
        assert tif["input"]["intensity"] == "scale 12-bit (x / 16.06)" and tif["input"]["pixel_size_um"] == 0.3
        assert png["ood_flag"] is True and png["ood_score"] > 1 and png["input"]["intensity"] == "scale 8-bit (as stored)"
        csv = c.post("/predict", params={"format": "csv"},
                     files=[("files", ("noise.png", noise.getvalue(), "image/png"))]).text
        assert csv.splitlines()[0].endswith("ood_score,ood_flag") and csv.splitlines()[1].endswith(",1")


def test_image_stats_match_the_plain_definition():
    """The histogram/integer implementation (4x cheaper, issue 13's predict budget) gives what the
    plain float64 definition gives: mean, std, foreground, percentiles, texture, correlations;
    11 images span a full and a partial chunk of :data:`STATS_CHUNK` (8)."""
    from protloc.core.ood import FOREGROUND_LEVEL, image_stats

    rng = np.random.default_rng(7)
    b = rng.integers(0, 256, (11, 20, 17, 3), dtype=np.uint8)
    b[1] //= 9                                     # a dim image
    b[2, :, :, 2] = 0                              # an empty channel
    x = b.astype(np.float64) / 255
    n, h, w, c = b.shape
    flat = x.reshape(n, -1, c)
    mean, std = flat.mean(1), flat.std(1)
    cols = [mean, std, (b.reshape(n, -1, c) > FOREGROUND_LEVEL).mean(1), *np.percentile(flat, [50, 90, 99], axis=1)]
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    cols.append(np.log((lap.reshape(n, -1, c) ** 2).mean(1) + 1e-6) - np.log(flat.var(1) + 1e-6))
    gy, gx = np.diff(x, axis=1)[:, :, :-1], np.diff(x, axis=2)[:, :-1]
    cols.append(np.sqrt(gx ** 2 + gy ** 2).reshape(n, -1, c).mean(1) / (std + 1e-3))
    xc, sd = flat - mean[:, None], std + 1e-6
    cor = [(xc[..., i] * xc[..., j]).mean(1) / (sd[:, i] * sd[:, j]) for i in range(c) for j in range(i + 1, c)]
    want = np.concatenate([np.stack(cols, -1).reshape(n, -1), np.stack(cor, 1)], axis=1)
    np.testing.assert_allclose(image_stats(b), want, rtol=1e-4, atol=1e-4)
    assert image_stats(b[:0]).shape == (0, want.shape[1])


def test_feature_knn_cached_float32_references_follow_a_refit():
    """The float32 copy of the references is made once per ``ref_`` (issue 13), never stale."""
    from protloc.core.ood import FeatureKNN

    rng = np.random.default_rng(2)
    a, q = rng.normal(size=(50, 6)) + 4, rng.normal(size=(5, 6)) + 4
    knn = FeatureKNN(k=3).fit(a)
    first = knn.distance(q)
    assert knn._ref32[0] is knn.ref_ and knn._ref32[1].dtype == np.float32
    knn.fit(-a)                                    # new references of the same shape
    np.testing.assert_allclose(knn.distance(q), FeatureKNN(k=3).fit(-a).distance(q))
    assert not np.allclose(knn.distance(q), first)
