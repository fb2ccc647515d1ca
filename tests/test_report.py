"""`protloc report`: the self-contained evaluation report."""

from __future__ import annotations

import doctest
import json
import re
import shutil

import numpy as np
import pytest

from protloc.reports import report_plots
from protloc.cli.main import main
from protloc.reports.report import SECTIONS, build_report, from_oof, image_source, run_thresholds
from protloc.core.runfolder import RunFolder

DATA_URI = "data:image/png;base64,"


def _external_refs(html: str) -> list[str]:
    """URLs the browser would fetch (src/href/url()), which an offline report must not have."""
    return re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)[a-z]+://[^"' >]+|url\(\s*["']?https?:[^)]+\)""", html)


@pytest.fixture
def run_copy(fake_run, tmp_path):
    return shutil.copytree(fake_run, tmp_path / "run")


def test_report_cli_on_oof_with_images_and_thresholds(run_copy, tiny_rgb, tmp_path, capsys):
    _, images = tiny_rgb
    thr = [0.3, 0.4, 0.5, 0.6, 0.7, 0.3, 0.4, 0.5, 0.6, 0.7]
    classes = list(RunFolder(run_copy).preprocessing().classes)
    (run_copy / "thresholds.json").write_text(json.dumps({"method": "f1", "classes": classes, "thresholds": thr}))
    out = tmp_path / "r.html"
    assert main(["report", str(run_copy), "--images", str(images), "--out", str(out), "--gradcam", "3"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html, title
    # 5 figures + gallery thumbnails + 3 Grad-CAM strips
    assert html.count(DATA_URI) >= 5 + 3 + 3
    assert _external_refs(html) == []
    assert "http://" not in html and "https://" not in html
    assert "no thresholds.json" not in html and "<td>0.700</td>" in html
    assert "1000 · " in html or "10" in html  # gallery captions carry image ids
    assert out.stat().st_size < 10e6


def test_report_missing_thresholds_images_and_metrics_still_renders(run_copy, capsys):
    (run_copy / "metrics.csv").unlink()
    assert main(["report", str(run_copy)]) == 0  # default --out: RUN/report.html
    html = (run_copy / "report.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert "no thresholds.json: 0.5 is used for every class" in html
    assert "no images found: the run records no training image folder" in html
    assert "No training curves: metrics.csv is missing or empty." in html
    assert "No images available: galleries skipped" in html
    assert "No images available: Grad-CAM skipped" in html
    assert html.count(DATA_URI) == 4  # the figures only (no training curves)


def test_report_predicts_a_labeled_csv(run_copy, tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    out = tmp_path / "r.html"
    assert main(["report", str(run_copy), "--csv", str(csv), "--images", str(images), "--out", str(out),
                 "--gradcam", "1", "--gallery", "1"]) == 0
    html = out.read_text()
    assert "train.csv (40 images, predicted with tta=none)" in html
    assert all(f"<h2>{t}</h2>" in html for t in SECTIONS)


def test_report_errors(run_copy, tiny_rgb, tmp_path, capsys):
    _, images = tiny_rgb
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (run_copy / "oof.csv").unlink()
    assert main(["report", str(run_copy)]) == 2
    assert "oof.csv: no out-of-fold probabilities" in capsys.readouterr().err
    assert main(["report", str(run_copy), "--images", str(tmp_path / "nope")]) == 2
    assert main(["report", str(run_copy), "--gallery", "-1"]) == 2
    assert "--gallery: expected an integer >= 0, got -1" in capsys.readouterr().err
    unlabeled = tmp_path / "ids.csv"
    unlabeled.write_text("Image\n1000\n1001\n")
    assert main(["report", str(run_copy), "--csv", str(unlabeled), "--images", str(images)]) == 2
    assert "ids.csv: expected a label column" in capsys.readouterr().err


def test_image_source_reads_config_defensively(run_copy, tiny_rgb, tmp_path):
    _, images = tiny_rgb
    run_copy = shutil.copytree(run_copy, tmp_path / "iso" / "run")  # no data/ folder next to it
    rf = RunFolder(run_copy)
    pre = rf.preprocessing()
    assert image_source(rf, pre)[0] is None
    (run_copy / "config.yaml").write_text(f"data:\n  images: {images}\n")
    assert image_source(rf, pre)[0] == images
    (run_copy / "config.yaml").write_text(f"data: {images.parent}\n")
    assert image_source(rf, pre)[0] == images
    (run_copy / "config.yaml").write_text("images: /no/such/dir\n")
    assert image_source(rf, pre) == (None, "the training images recorded in the run (/no/such/dir) were "
                                           "not found")
    assert image_source(rf, pre, ["nope"])[0] is None
    (run_copy / "config.yaml").write_text(": : bad yaml [")
    assert image_source(rf, pre)[0] is None
    d = from_oof(rf)
    assert d.read is None and d.probs.shape == (40, 10)
    # the protloc demo layout: OUT/run next to OUT/data/train, found when it holds the oof ids
    shutil.copytree(images, run_copy.parent / "data" / "train")
    assert image_source(rf, pre, ["1000"])[0] == run_copy.parent / "data" / "train"
    assert from_oof(rf).read("1000").shape == (32, 32, 3)


def test_run_thresholds_mismatch_falls_back(run_copy):
    rf = RunFolder(run_copy)
    (run_copy / "thresholds.json").write_text(json.dumps({"thresholds": [0.2, 0.3]}))
    thr, alo, note = run_thresholds(rf, rf.preprocessing().classes)
    assert np.all(thr == 0.5) and not alo and "does not match this run's classes" in note
    (run_copy / "thresholds.json").write_text("{not json")
    assert "thresholds.json is not valid JSON; 0.5 used for every class" in run_thresholds(rf, ["a"] * 10)[2]
    (run_copy / "thresholds.json").write_text(json.dumps({"thresholds": [0.2] * 10, "at_least_one": True}))
    thr, alo, note = run_thresholds(rf, rf.preprocessing().classes)
    assert np.all(thr == 0.2) and alo and note is None


def test_doctests():
    assert doctest.testmod(report_plots).failed == 0


def test_report_and_explain_on_a_trained_run(trained_run, tmp_path, capsys):
    """A real `protloc train` run folder: metrics.csv, oof.csv, models; images in ../data/train."""
    run = shutil.copytree(trained_run, tmp_path / "t" / "run")
    shutil.copytree(trained_run.parent / "data", tmp_path / "t" / "data")
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--gradcam", "2", "--gallery", "1"]) == 0
    html = out.read_text()
    assert all(f"<h2>{t}</h2>" in html for t in SECTIONS)
    assert "no images found" not in html and "No training curves" not in html
    assert "test_resnet on 32 px" in html
    png = tmp_path / "e.png"
    img = next((tmp_path / "t" / "data" / "train").glob("*.png"))
    assert main(["explain", str(run), str(img), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
