"""Every kind of bad input gives a clear message (pinned), the right exit code, no traceback."""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from protloc.cli.main import main

from helpers import make_tiny_dataset


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def _bomb_png(path, side=40000):
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _bad_image(imgs, kind):
    p = imgs / "1001.png"
    if kind == "corrupt":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "truncated":
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "not_image":
        p.write_text("Image,Label\n1,2\n")
    elif kind == "grayscale":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    elif kind == "gray16":
        Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(p)
    elif kind == "huge":
        _bomb_png(p)
    elif kind == "missing":
        p.unlink()


IMAGE_ERRORS = {
    "corrupt": ("unreadable", r"1001.png: unreadable, corrupt or truncated image"),
    "truncated": ("unreadable", r"1001.png: unreadable, corrupt or truncated image (image file is truncated)"),
    "empty": ("empty_file", "1001.png is empty (0 bytes). Fix: re-export or re-download the file"),
    "not_image": ("unreadable", "1001.png: unreadable, corrupt or truncated image (cannot identify image file"),
    "grayscale": ("wrong_channels", "1001.png: expected an RGB image (3 channels), got grayscale (1 channel)"),
    "gray16": ("wrong_channels", "1001.png: expected an RGB image (3 channels), got grayscale (1 channel)"),
    "huge": ("too_large", "1001.png is too large to decode safely"),
    "missing": ("missing_file", "image file missing: 1001.png"),
}


@pytest.mark.parametrize("kind", list(IMAGE_ERRORS))
def test_bad_image_validate_and_cache(tmp_path, capsys, kind):
    csv, imgs = make_tiny_dataset(tmp_path, n=4)
    _bad_image(imgs, kind)
    code, text = IMAGE_ERRORS[kind]
    rc, out, err = _run(capsys, "validate", "--csv", csv, "--images", imgs, "--json", tmp_path / "r.json")
    assert rc == 2
    assert f"error: train.csv line 3 (id 1001): {text}" in err
    assert [f["code"] for f in json.loads((tmp_path / "r.json").read_text())["findings"]
            if f["severity"] == "error"] == [code]
    rc, out, err = _run(capsys, "cache", "--csv", csv, "--images", imgs, "--size", 16)
    assert rc == 2 and err.startswith("error: train.csv line 3 (id 1001): ") and "Fix:" in err
    rc, out, err = _run(capsys, "split", "--csv", csv, "--images", imgs, "--folds", 2, "--out", tmp_path / "s.csv")
    assert rc == 0 and "warning: train.csv line 3 (id 1001): not hashed (" in err
    if kind != "missing":  # with --skip-bad the image is kept (black) and reported, never dropped
        rc, out, err = _run(capsys, "cache", "--csv", csv, "--images", imgs, "--size", 16, "--skip-bad")
        assert rc == 0 and "cached 4 images" in out and "warning: train.csv line 3 (id 1001)" in err


def test_warnings_rgba_16bit_misnamed(tmp_path, capsys):
    import tifffile

    csv, imgs = make_tiny_dataset(tmp_path, n=6)
    (imgs / "1005.png").unlink()
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(imgs / "1000.png")      # RGBA
    Image.open(imgs / "1001.png").save(imgs / "1001.jpg")
    (imgs / "1001.jpg").replace(imgs / "1001.png")                               # JPEG named .png
    (imgs / "1002.png").unlink()
    tifffile.imwrite(imgs / "1002.tif", np.full((32, 32, 3), 40000, np.uint16))  # 16-bit RGB
    (imgs / "1003.png").rename(imgs / "1003.PNG")                                # wrong case
    (imgs / "1004.png").rename(imgs / "1004.tif")                                # PNG named .tif
    tifffile.imwrite(imgs / "1005.tif", np.random.default_rng(0).integers(0, 3000, (32, 32, 3)).astype(np.uint16))
    rc, out, err = _run(capsys, "validate", "--csv", csv, "--images", imgs, "--json", tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    found = {(f["code"], f["where"][-5:-1]): f for f in rep["findings"]}
    assert found[("misnamed", "1004")]["message"] == "1004.tif holds PNG data but is named .tif"
    found = {f["code"]: f for f in rep["findings"]}
    assert found["alpha_dropped"]["message"] == "1000.png has an alpha channel (RGBA); it is ignored"
    assert {f["fix"] for f in rep["findings"] if f["code"] == "misnamed"} == {
        "rename it to 1001.jpg", "rename it to 1004.png"}
    assert found["mixed_bit_depth"]["severity"] == "warning"
    assert {f["where"] for f in rep["findings"] if f["code"] == "blank_image"} == {
        "train.csv line 2 (id 1000)", "train.csv line 4 (id 1002)"}                  # constant images
    assert found["dark_16bit"]["where"] == "train.csv line 7 (id 1005)"       # 12-bit data in 16 bits
    assert found["unlisted_file"]["where"] == "train/1003.PNG"
    assert "looks like the file of train.csv line 5 (id 1003)" in found["unlisted_file"]["fix"]
    assert rc == 2 and ("error: train.csv line 5 (id 1003): image file missing: 1003.png (also looked for "
                        ".tif/.jpg). Fix: found 1003.PNG: rename it with a lower-case extension.") in err


CSV_CASES = {
    "wrong_columns": ("Name,Label\n1000,1\n",
                      r"expected an id column (Image/Id), got columns ['Name', 'Label']. Fix: rename the column"),
    "bad_separator": ("Image Label\n1000 1\n",
                      "got columns ['Image Label']. Fix: separate the columns with commas (or ; or tabs)."),
    "empty": ("", "the CSV is empty. Fix: write a header (Image,Label) and rows"),
    "header_only": ("Image,Label\n\n", "rows. Fix: add at least one image row"),
    "ragged": ("Image,Label\n1000,1,4\n1001,2\n",
               "train.csv line 2: expected 2 cells (Image,Label), got 3. Fix: separate class ids with spaces"),
    "not_utf8": (b"Image,Label\n10\xe900,1\n", "not a UTF-8 text file. Fix: save the CSV as UTF-8"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_csv(tmp_path, capsys, case):
    csv, imgs = make_tiny_dataset(tmp_path, n=3)
    text, msg = CSV_CASES[case]
    (csv.write_bytes if isinstance(text, bytes) else csv.write_text)(text)
    for cmd in ("validate", "split", "cache"):
        rc, out, err = _run(capsys, cmd, "--csv", csv, "--images", imgs)
        assert rc == 2 and err.startswith("error: ") and msg in err, (cmd, err)


def test_bom_blank_lines_ok_and_duplicates_error(tmp_path, capsys):
    csv, imgs = make_tiny_dataset(tmp_path, n=3)
    csv.write_bytes("\ufeffImage;Label\r\n\r\n1000;1\r\n1001;2 3\r\n\r\n1002;4\r\n".encode())
    rc, out, err = _run(capsys, "validate", "--csv", csv, "--images", imgs, "--no-near-dup")
    assert rc == 0 and "no problems found" in out
    csv.write_text("Image,Label\n1000,1\n1001,2\n1000,3\n1002,x\n")
    rc, out, err = _run(capsys, "validate", "--csv", csv, "--images", imgs)
    assert rc == 2
    assert "error: train.csv line 4 (id 1000): duplicate id '1000' (first on line 2)" in err
    assert "error: train.csv line 5 (id 1002): expected integer class ids 0-9, got 'x'" in err
    rc, out, err = _run(capsys, "split", "--csv", csv, "--images", imgs, "--folds", "2")
    assert rc == 2 and "line 4: duplicate id '1000' (first on line 2). Fix: keep one row per image" in err


def test_missing_paths(tmp_path, capsys):
    csv, imgs = make_tiny_dataset(tmp_path, n=3)
    rc, _, err = _run(capsys, "validate", "--csv", tmp_path / "nope.csv", "--images", imgs)
    assert rc == 2 and "nope.csv: CSV file not found. Fix: check the --csv path" in err
    rc, _, err = _run(capsys, "split", "--csv", csv, "--images", tmp_path / "nodir")
    assert rc == 2 and "nodir: image folder not found. Fix: check the --images path" in err
    rc, _, err = _run(capsys, "cache", "--data", tmp_path / "nodata")
    assert rc == 2 and "dataset folder not found" in err
    shutil.rmtree(imgs)
    imgs.mkdir()
    rc, _, err = _run(capsys, "validate", "--csv", csv, "--images", imgs)
    assert rc == 2 and "none of the first 3 ids has an image file" in err


def test_bad_options(tmp_path, capsys):
    csv, imgs = make_tiny_dataset(tmp_path, n=6)
    data = ["--csv", csv, "--images", imgs]
    for argv, msg in [(["validate", *data, "--hamming", 99], "--hamming: expected 0 to 40 bits (of 128), got 99"),
                      (["split", *data, "--folds", 1], "--folds: expected 2 or more folds, got 1. Fix: use --holdout"),
                      (["split", *data, "--holdout", 0], "--holdout: expected a fraction between 0 and 1, got 0"),
                      (["cache", *data, "--channels", "0,1"], "--channels: expected no channel choice for RGB")]:
        rc, out, err = _run(capsys, *argv)
        assert rc == 2 and msg in err, (argv, err)


def test_unknown_model_and_missing_truth_are_clear(tmp_path, capsys):
    csv, images = make_tiny_dataset(tmp_path / "d", n=6)
    rc = main(["train", "--csv", str(csv), "--images", str(images), "--out", str(tmp_path / "r"),
               "--model", "efficientnet_lit0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--model: expected a timm model name, got 'efficientnet_lit0'" in err
    assert "similar: efficientnet_lite0" in err and not (tmp_path / "r" / "models").exists()
    rc = main(["score", "--truth", str(tmp_path / "nope.csv"), "--pred", str(csv)])
    assert rc == 2 and "CSV file not found. Fix: check the --truth path" in capsys.readouterr().err
