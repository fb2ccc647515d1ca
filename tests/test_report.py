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
from protloc.core.errors import RunFolderError
from protloc.core.runfolder import DataSource, RunFolder
from protloc.reports.report import SECTIONS, from_oof, training_images

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
    assert "no images found: the run records no training data (no data.json" in html
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


def test_training_images_come_from_data_json(run_copy, tiny_rgb, tmp_path):
    _, images = tiny_rgb
    rf = RunFolder(run_copy)
    assert training_images(rf) == (None, "the run records no training data (no data.json: trained before "
                                         "protloc recorded it)")
    assert from_oof(rf).read is None
    src = DataSource(images=str(tmp_path / "gone"), fmt="rgb", channels=("red", "green", "blue"),
                     schema="ghent10", n_images=40)
    (run_copy / "data.json").write_text(json.dumps(src.to_dict()))
    assert training_images(rf) == (None, f"the training images recorded in the run ({tmp_path / 'gone'}) "
                                         "were not found")
    (run_copy / "data.json").write_text(json.dumps({**src.to_dict(), "images": str(images)}))
    assert training_images(rf)[0] == images
    assert from_oof(rf).read("1000").shape == (32, 32, 3)
    (run_copy / "data.json").write_text("{not json")
    with pytest.raises(RunFolderError, match=r"data.json: not valid JSON"):
        from_oof(rf)


def test_damaged_thresholds_stop_the_report(run_copy, capsys):
    (run_copy / "thresholds.json").write_text(json.dumps({"thresholds": [0.2, 0.3]}))
    assert main(["report", str(run_copy)]) == 2
    assert "thresholds.json: expected 10 thresholds (one per class), got 2" in capsys.readouterr().err
    (run_copy / "thresholds.json").write_text(json.dumps({"thresholds": [0.2] * 10, "at_least_one": True}))
    rule = RunFolder(run_copy).thresholds()
    assert np.all(rule.values == 0.2) and rule.at_least_one and rule.source == "thresholds.json"


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
