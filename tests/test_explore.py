"""protloc explore: label statistics, the HTML report, and the CLI."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from helpers import make_tiny_dataset

from protloc.reports import explore as ex
from protloc.cli.main import main
from protloc.data.table import load_table

SECTIONS = ("Overview", "Class frequency", "Labels per image", "Label co-occurrence", "Label combinations",
            "Sample images per class", "Channel intensities", "Image files", "Duplicates and leaks")
# Hand-made labels (ghent10 ids): 4 = Nucleoplasm, 6 = Cytosol, 0 = Mitochondria, 2 = Nucleoli.
HAND = ["4 6", "6 4", "4 6", "0", "0 2", "4", "2 4 6", "0"]


@pytest.fixture
def hand(tmp_path):
    csv, images = make_tiny_dataset(tmp_path / "d", n=len(HAND), size=16)
    pd.DataFrame({"Image": [str(1000 + i) for i in range(len(HAND))], "Label": HAND}).to_csv(csv, index=False)
    return load_table(csv, images)


def test_label_statistics_on_hand_made_csv(hand):
    y = hand.y()
    assert ex.class_counts(y).tolist() == [3, 0, 2, 0, 5, 0, 4, 0, 0, 0]
    assert ex.labels_per_image(y)[:4].tolist() == [0, 3, 4, 1]
    co = ex.cooccurrence(y)
    assert co[4, 6] == co[6, 4] == 4 and co[0, 2] == 1 and co[0, 4] == 0 and co[4, 4] == 5
    top = ex.top_combinations(y, k=3)
    assert top[0] == ((4, 6), 3)  # "4 6" and "6 4" are the same set
    assert top[1] == ((0,), 2)
    phi = ex.phi_coefficients(y)
    assert np.isnan(phi[1, 4]) and phi[4, 4] == pytest.approx(1.0)
    a, b = y[:, 4].astype(float), y[:, 6].astype(float)
    assert phi[4, 6] == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_channel_helpers():
    imgs = np.zeros((2, 4, 4, 4), np.uint8)
    imgs[..., 3] = 255
    h = ex.channel_histograms(imgs)
    assert h.shape == (4, 256) and h[0, 0] == 32 and h[3, 255] == 32
    assert ex.channel_roles("rgb", ("red", "green", "blue")) == ["microtubules", "protein", "nucleus"]
    assert ex.sample_indices(10, sample=20).tolist() == list(range(10))
    assert len(ex.sample_indices(1000, sample=5, seed=1)) == 5
    gal = ex.gallery_indices(np.array([[1, 0], [1, 1], [1, 0], [0, 1]]), per_class=2)
    assert sorted(gal[0]) == [0, 2] and gal[1][0] == 3  # single-label images first


def _sections(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def test_report_labeled_with_test_set(hand, tmp_path):
    csv, images = make_tiny_dataset(tmp_path / "t", n=6, size=16, seed=3)
    (images / "1002.png").write_bytes((hand.images / "1001.png").read_bytes())  # a train/test leak
    test = load_table(csv, images, labels=False)
    out = ex.explore(hand, out=tmp_path / "r.html", test_table=test, sample=5, progress=False)
    html = out.read_text()
    assert _sections(html) == list(SECTIONS)
    assert html.count('src="data:image/png;base64,') > 20  # figures + gallery thumbnails
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained, offline
    assert "Nucleoplasm + Cytosol" in html and "microtubules" in html and "test images" in html
    assert "byte-identical images in both train and test" in html and "The first duplicate groups" in html
    assert 'alt="1001 (train)"' in html and 'alt="1002 (test)"' in html


def test_report_unlabeled_4_channels_and_validate_failure(tmp_path, monkeypatch):
    names = ("red", "green", "blue", "yellow")
    csv, images = make_tiny_dataset(tmp_path / "h", n=10, size=16, fmt="hpa-channels", channels=names)
    table = load_table(None, images, fmt="hpa-channels", channels="all")
    assert not table.labeled and table.n_channels == 4

    import protloc.data.validate

    def boom(*a, **k):
        raise RuntimeError("kaput")

    monkeypatch.setattr(protloc.data.validate, "validate_dataset", boom)
    html = ex.explore(table, out=tmp_path / "u.html", sample=4, progress=False).read_text()
    assert "Class frequency" not in html and "no label column" in html
    assert "Sample images" in html and ">ER<" in html  # the 4th channel's thumbnail caption
    assert "kaput" in html and "run `protloc validate`" in html


def test_cli_exit_codes(tiny_rgb, tmp_path, capsys):
    csv, images = tiny_rgb
    out = tmp_path / "cli.html"
    assert main(["explore", "--csv", str(csv), "--images", str(images), "--out", str(out), "--sample", "8",
                 "--no-validate", "--no-progress"]) == 0
    assert out.is_file() and "Skipped (--no-validate)" in out.read_text()
    for argv in (["--images", str(tmp_path / "nope")], ["--images", str(images), "--sample", "0"],
                 ["--images", str(images), "--csv", str(csv), "--out", str(tmp_path / "x.txt")]):
        argv = ["explore", "--out", str(tmp_path / "bad.html"), *argv] if "--out" not in argv else ["explore", *argv]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Fix:" in err and "Traceback" not in err
