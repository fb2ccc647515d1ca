import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from protloc.cli.main import main
from protloc.data.phash import groups_from_pairs, image_hash, near_duplicate_pairs
from protloc.data.table import load_table
from protloc.data.validate import validate_dataset, near_duplicate_groups

from helpers import make_tiny_dataset


def _codes(rep):
    return sorted((f.severity, f.code) for f in rep.findings)


def test_clean_dataset_has_no_findings(tmp_path, capsys):
    csv, imgs = _smooth_dataset(tmp_path, 30, seed=0)
    rep = validate_dataset(csv, imgs, progress=False, workers=1)
    assert rep.findings == [] and rep.ok and rep.n_images == {"train": 30}
    assert rep.stats["sizes"] == {"64x64": 30}
    assert main(["validate", "--csv", str(csv), "--images", str(imgs)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_every_problem_reported_in_one_pass(tmp_path, capsys):
    csv, imgs = make_tiny_dataset(tmp_path, n=12, size=32)
    shutil.copy(imgs / "1000.png", imgs / "1001.png")                 # byte-identical
    (imgs / "1002.png").write_bytes((imgs / "1002.png").read_bytes()[:200])  # truncated
    (imgs / "1003.png").write_bytes(b"")                               # empty
    (imgs / "1004.png").unlink()                                       # missing
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(imgs / "1005.png")  # grayscale
    shutil.copy(imgs / "1006.png", imgs / "extra.png")                 # not in CSV
    text = csv.read_text().replace("1007,", "1007,x ").replace("1008,", "1008,12 ")
    csv.write_text(text + "1009,3\n,4\n1010,\n")
    out = tmp_path / "r.json"
    rc = main(["validate", "--csv", str(csv), "--images", str(imgs), "--json", str(out)])
    assert rc == 2
    rep = json.loads(out.read_text())
    codes = {(f["code"], f["where"]) for f in rep["findings"]}
    assert ("duplicate_image", "1000 (train), 1001 (train)") in codes
    assert ("unreadable", "train.csv line 4 (id 1002)") in codes
    assert ("empty_file", "train.csv line 5 (id 1003)") in codes
    assert ("missing_file", "train.csv line 6 (id 1004)") in codes
    assert ("wrong_channels", "train.csv line 7 (id 1005)") in codes
    assert ("unlisted_file", "train/extra.png") in codes
    assert ("bad_label", "train.csv line 9 (id 1007)") in codes
    assert ("bad_label", "train.csv line 10 (id 1008)") in codes
    assert ("duplicate_id", "train.csv line 14 (id 1009)") in codes
    assert ("empty_id", "train.csv line 15") in codes
    assert ("duplicate_id", "train.csv line 16 (id 1010)") in codes
    assert rep["n_errors"] == 9 and not rep["ok"]
    err = capsys.readouterr().err
    assert "error: train.csv line 6 (id 1004): image file missing: 1004.png" in err
    assert "Fix: add the file or delete the row." in err and "Traceback" not in err


def test_warnings_only_exit_0(tmp_path):
    csv, imgs = make_tiny_dataset(tmp_path, n=6, size=32)
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(imgs / "1000.png")       # RGBA
    Image.open(imgs / "1001.png").save(imgs / "1001.jpg", quality=95)
    (imgs / "1001.jpg").rename(imgs / "1001.png")                                  # JPEG named .png
    Image.fromarray(np.zeros((40, 32, 3), np.uint8)).save(imgs / "1002.png")      # odd size
    rep = validate_dataset(csv, imgs, progress=False, workers=1)
    assert {f.code for f in rep.warnings} >= {"alpha_dropped", "misnamed", "inconsistent_size"}
    assert rep.ok
    assert main(["validate", "--csv", str(csv), "--images", str(imgs), "--no-near-dup"]) == 0


def _smooth_dataset(root, n, *, seed):
    """Images with distinct smooth structure in every channel (tiny_image's nuclei all match)."""
    rng = np.random.default_rng(seed)
    d = root / "train"
    d.mkdir(parents=True)
    for i in range(n):
        img = np.stack([np.asarray(Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8))
                                   .resize((64, 64), Image.Resampling.BICUBIC)) for _ in range(3)], -1)
        Image.fromarray(img).save(d / f"{1000 + i}.png")
    (root / "train.csv").write_text("Image,Label\n" + "".join(f"{1000 + i},{i % 10}\n" for i in range(n)))
    return root / "train.csv", d


def _jpeg_copy(src, dst, *, scale=1.0):
    im = Image.open(src).convert("RGB")
    arr = np.clip(np.asarray(im).astype(float) * scale, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize((48, 48)).save(buf, "JPEG", quality=85)
    Image.open(buf).save(dst)


def test_near_duplicates_and_train_test_leak(tmp_path):
    csv, imgs = _smooth_dataset(tmp_path / "a", 20, seed=1)
    _jpeg_copy(imgs / "1003.png", imgs / "1019.png", scale=1.1)     # re-encoded, resized, brighter
    tcsv, timgs = _smooth_dataset(tmp_path / "b", 6, seed=2)
    shutil.copy(imgs / "1005.png", timgs / "1000.png")               # exact leak
    _jpeg_copy(imgs / "1007.png", timgs / "1001.png")                # near leak
    rep = validate_dataset(csv, imgs, test_table=tcsv, test_images=timgs, progress=False, workers=1)
    by = {(f.code, f.where): f.severity for f in rep.findings}
    assert by[("near_duplicate", "1003 (train), 1019 (train)")] == "warning"
    assert by[("leak", "1005 (train), 1000 (test)")] == "error"
    assert by[("leak", "1007 (train), 1001 (test)")] == "warning"
    assert {f.code for f in rep.findings} == {"near_duplicate", "leak", "inconsistent_size"}
    assert sum(f.code in ("near_duplicate", "leak") for f in rep.findings) == 3  # no false positives
    assert rep.duplicate_groups == [[3, 19]]
    t = load_table(csv, imgs)
    assert near_duplicate_groups(t, progress=False, workers=1) == [[3, 19]]


def test_phash_search_matches_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, (300, 2), dtype=np.uint64)
    for k in range(0, 60, 3):  # plant close pairs with 0..12 flipped bits
        flips = rng.choice(128, k // 5, replace=False)
        h[k + 1] = h[k]
        for b in flips:
            h[k + 1, b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    pairs = near_duplicate_pairs(h, threshold=10)
    bits = np.unpackbits(h.view(np.uint8).reshape(300, 16), axis=1)
    d = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    ii, jj = np.nonzero(np.triu(d <= 10, 1))
    assert sorted(zip(ii.tolist(), jj.tolist())) == [tuple(p[:2]) for p in pairs.tolist()]
    assert groups_from_pairs(4, [(2, 3)]) == [[2, 3]]
    img = np.zeros((16, 16, 3), np.uint8)
    assert image_hash(img).tolist() == [0, 0]


def test_hpa_channels_and_tiff_formats(tmp_path):
    csv, imgs = make_tiny_dataset(tmp_path / "h", n=5, fmt="hpa-channels",
                                  channels=("red", "green", "blue", "yellow"))
    rep = validate_dataset(csv, imgs, channels="all", progress=False, workers=1)
    assert rep.findings == [] and rep.stats["format"] == "hpa-channels"
    rep = validate_dataset(csv, imgs, progress=False, workers=1)   # yellow not chosen: still no finding
    assert rep.findings == []
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(imgs / "1003_red.png")
    rep = validate_dataset(csv, imgs, progress=False, workers=1)
    assert ("inconsistent_size", "channel files differ in size (16x16, 32x32); they are resized to the first") \
        in [(f.code, f.message) for f in rep.findings]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(imgs / "1003_red.png")
    (imgs / "1002_blue.png").unlink()
    rep = validate_dataset(csv, imgs, progress=False, workers=1)
    assert [(f.code, f.message) for f in rep.errors] == [
        ("missing_file", "image file missing: 1002_blue.png (also looked for .tif)")]
    csv, imgs = make_tiny_dataset(tmp_path / "t", n=4, fmt="tiff")
    rep = validate_dataset(csv, imgs, progress=False, workers=1)
    assert rep.findings == [] and rep.stats["dtypes"] == {"uint16": 4}


@pytest.mark.parametrize("workers", [2])
def test_parallel_same_as_serial(tiny_rgb, workers):
    csv, imgs = tiny_rgb
    (imgs / "1001.png").write_bytes(b"junk")
    a = validate_dataset(csv, imgs, progress=False, workers=1).to_dict()
    b = validate_dataset(csv, imgs, progress=False, workers=workers).to_dict()
    assert a == b and a["counts"]["error:unreadable"] == 1


def test_all_formats_and_columns_through_cli(tmp_path, capsys):
    import tifffile

    rng = np.random.default_rng(0)

    def plane(dtype=np.uint8):
        a = np.asarray(Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8)).resize((40, 40)))
        return a.astype(np.uint16) * 257 if dtype == np.uint16 else a

    hpa, chw, hwc, jpg = (tmp_path / k for k in ("hpa", "chw", "hwc", "jpg"))
    for d in (hpa, chw, hwc, jpg):
        d.mkdir()
    for i in range(3):
        for c in ("red", "green", "blue", "yellow"):
            tifffile.imwrite(hpa / f"{i}_{c}.tif", plane(np.uint16))               # HPA 16-bit tif
        tifffile.imwrite(chw / f"{i}.tif", np.stack([plane(np.uint16) for _ in range(5)]))  # (C,H,W) 16
        tifffile.imwrite(hwc / f"{i}.tiff", np.stack([plane() for _ in range(4)], -1))      # (H,W,C) 8
        Image.fromarray(np.stack([plane() for _ in range(3)], -1)).save(jpg / f"im{i}.jpg")
    (tmp_path / "hpa.csv").write_text("Id,Target\n0,1\n1,2 3\n2,0\n")
    (tmp_path / "ids.csv").write_text("image_id\nim2\nim0\nim1\n")
    (tmp_path / "custom.csv").write_text("file;classes\nim0.jpg;1\nim1.jpg;4 2\nim2.jpg;9\n")
    ok = [["--csv", tmp_path / "hpa.csv", "--images", hpa, "--channels", "all"],
          ["--images", chw, "--channels", "4,0"],
          ["--images", hwc, "--format", "tiff"],
          ["--csv", tmp_path / "ids.csv", "--images", jpg],
          ["--csv", tmp_path / "custom.csv", "--images", jpg, "--id-col", "file", "--label-col", "classes"]]
    for args in ok:
        out = tmp_path / "r.json"
        assert main(["validate", *map(str, args), "--json", str(out)]) == 0, args
        rep = json.loads(out.read_text())
        assert rep["findings"] == [], (args, rep["findings"])
        assert main(["cache", *map(str, args), "--size", "16"]) == 0
    assert rep["n_images"] == {"train": 3}
    assert main(["validate", "--images", str(hwc), "--format", "rgb", "--json", str(out)]) == 0
    assert {f["code"] for f in json.loads(out.read_text())["findings"]} == {"alpha_dropped"}
    assert main(["validate", "--images", str(chw), "--channels", "0,7"]) == 2
    assert "expected at least 8 channels, got 5" in capsys.readouterr().err


def test_data_folder_checks_test_split_too(tmp_path, capsys):
    _smooth_dataset(tmp_path / "d", 8, seed=3)
    (tmp_path / "d" / "test").mkdir()
    shutil.copy(tmp_path / "d" / "train" / "1002.png", tmp_path / "d" / "test" / "t1.png")
    (tmp_path / "d" / "test.csv").write_text("Image,Label\nt1,\n")  # empty label column: unlabeled
    out = tmp_path / "r.json"
    assert main(["validate", "--data", str(tmp_path / "d"), "--json", str(out)]) == 2
    rep = json.loads(out.read_text())
    assert rep["n_images"] == {"train": 8, "test": 1}
    assert [(f["code"], f["where"]) for f in rep["findings"]] == [("leak", "1002 (train), t1 (test)"),
                                                                  ("unlabeled", "test.csv")]
    assert "error: 1002 (train), t1 (test): byte-identical images in both train and test" in capsys.readouterr().err


def test_rotated_copies_only_with_rotations(tmp_path, capsys):
    csv, imgs = _smooth_dataset(tmp_path, 12, seed=5)
    Image.fromarray(np.rot90(np.asarray(Image.open(imgs / "1004.png")))).save(imgs / "1011.png")
    plain = validate_dataset(csv, imgs, progress=False, workers=1)
    assert plain.findings == []
    rep = validate_dataset(csv, imgs, rotations=True, progress=False, workers=1)
    assert [(f.code, f.where) for f in rep.findings] == [("near_duplicate", "1004 (train), 1011 (train)")]
    assert "any rotation/flip" in rep.findings[0].message
    t = load_table(csv, imgs)
    assert near_duplicate_groups(t, rotations=True, progress=False, workers=1) == [[4, 11]]
    from protloc.data.split import make_folds

    f = make_folds(t, 3, rotations=True, workers=1)
    assert f[4] == f[11]
    assert main(["split", "--csv", str(csv), "--images", str(imgs), "--folds", "3", "--rotations",
                 "--out", str(tmp_path / "s.csv")]) == 0
    assert "1 groups of duplicate/near-duplicate images (2 images)" in capsys.readouterr().err
