"""Biologists' own files: 12/16-bit intensities, OME-TIFF and multi-dimensional TIFF axes, pixel size.

Fixtures are written here with tifffile (OME metadata, ImageJ hyperstacks, plain page stacks).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.core.pixels import ImageMeta, Intensity, percentile_to_uint8, scale_to_uint8, significant_bits
from protloc.core.preprocessing import LEGACY_INTENSITY, Preprocessing, Reading
from protloc.core.schema import LabelSchema
from protloc.io.images import read_meta, read_raw

SCHEMA = LabelSchema("t", ("a", "b"))


def cells(size=64, seed=0) -> np.ndarray:
    """A float image in [0, 1] with a few bright blobs on a dim, noisy background (3 channels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = rng.normal(0.05, 0.01, (size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(3, 7))]
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r, rng.integers(0, 3)] += rng.uniform(0.4, 0.9)
    return np.clip(img, 0, 1)


def write_ome(path, arr, axes, **meta):
    tifffile.imwrite(path, arr, ome=True, metadata={"axes": axes, **meta})
    return path


# --------------------------------------------------------------------------------------------
# intensity
# --------------------------------------------------------------------------------------------
def test_dim_12bit_is_not_black_and_full_16bit_matches_8bit():
    f = cells()
    eight = np.round(f * 255).astype(np.uint8)
    full16 = eight.astype(np.uint16) * 257                       # full-range 16-bit
    dim12 = np.round(f * 0.2 * 4095).astype(np.uint16)           # a dim 12-bit camera image (max ~ 800)
    assert significant_bits(dim12) == 12 and significant_bits(full16) == 16
    legacy = LEGACY_INTENSITY.apply(dim12)[0]
    assert legacy.max() <= 4                                     # what /257 did: nearly black
    scaled, how = Intensity("scale").apply(dim12)
    assert how.startswith("scale 12-bit") and scaled.max() >= 40  # /16.06: as dim as the camera saw it
    # full-range 16-bit reads exactly like its 8-bit version under scale (and auto keeps 8-bit as stored)
    np.testing.assert_array_equal(Intensity("scale").apply(full16)[0], eight)
    np.testing.assert_array_equal(Intensity("auto").apply(eight)[0], eight)
    # percentile (auto for > 8 bit): the dim 12-bit and the full 16-bit image become the same picture
    a, b = Intensity("auto").apply(dim12)[0], Intensity("auto").apply(full16)[0]
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2 and a.max() == 255
    assert Intensity("percentile").apply(eight)[1] == "percentile 0.1-99.9 %"


def test_declared_bits_win_over_the_maximum():
    a = np.array([[0, 100, 1000]], np.uint16)
    assert significant_bits(a) == 12 and significant_bits(a, declared=14) == 14
    np.testing.assert_array_equal(scale_to_uint8(a, bits=14), np.round(a / (16383 / 255)).astype(np.uint8))
    assert Intensity("scale").apply(a, bits=14)[1] == "scale 14-bit (x / 64.25)"


def test_percentile_constant_channel_and_bad_rule():
    a = np.zeros((4, 4, 2), np.uint16)
    a[..., 1] = 500
    out = percentile_to_uint8(a)
    assert out.max() == 0                                         # constant channels stay dark
    with pytest.raises(InputError, match=r"intensity rule: expected auto \| scale \| percentile, got 'x'"):
        Intensity("x")
    with pytest.raises(InputError, match="0 <= low < high <= 100"):
        Intensity("percentile", low=50, high=10)


def test_run_records_the_rule_and_old_runs_keep_257(tmp_path):
    pre = Preprocessing("tiff", (0, 1, 2), 16, (0,) * 3, (1,) * 3, SCHEMA,
                        reading=Reading(Intensity("percentile", low=1, high=99)))
    d = pre.to_dict()
    assert d["intensity"] == {"rule": "percentile", "low": 1.0, "high": 99.0, "bits": "auto"}
    assert d["z"] == "max" and d["pixel_size_um"] is None
    assert Preprocessing.from_dict(json.loads(json.dumps(d))) == pre
    old = {k: v for k, v in d.items() if k not in ("intensity", "z", "axes", "pixel_size_um", "field_px",
                                                   "channel_names")}
    assert Preprocessing.from_dict(old).reading.intensity == LEGACY_INTENSITY      # runs made before: /257


def test_training_decode_and_prediction_read_16bit_alike(tmp_path):
    """The cache (training) and read_for_run (predict) apply the same recorded rule to 16-bit TIFFs."""
    from protloc.data.cache import load_cached
    from protloc.data.table import load_table
    from protloc.inference.inputs import read_for_run

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"{i}.tif", np.moveaxis(np.round(cells(seed=i) * 900), -1, 0).astype(np.uint16))
    table = load_table(None, folder)
    for rule in ("auto", "scale", "percentile"):
        reading = Reading(Intensity(rule))
        ds = load_cached(table, size=32, progress=False, reading=reading)
        pre = Preprocessing("tiff", (0, 1, 2), 32, (0,) * 3, (1,) * 3, SCHEMA, reading=reading)
        for i in range(3):
            np.testing.assert_array_equal(read_for_run(folder / f"{i}.tif", pre), ds.images[i])
    # the rule is part of the cache key: two rules, two different decodes
    a = load_cached(table, size=32, progress=False, reading=Reading(Intensity("scale"))).images[0]
    b = load_cached(table, size=32, progress=False, reading=Reading(Intensity("percentile"))).images[0]
    assert a.max() < 80 < b.max()


# --------------------------------------------------------------------------------------------
# OME-TIFF and multi-dimensional TIFF
# --------------------------------------------------------------------------------------------
def test_ome_tiff_axes_z_projection_channel_names_and_pixel_size(tmp_path):
    z = np.stack([np.full((2, 16, 16), v, np.uint16) for v in (10, 40, 70)])       # ZCYX, planes 10/40/70
    p = write_ome(tmp_path / "a.ome.tif", z, "ZCYX", PhysicalSizeX=0.1, PhysicalSizeY=0.1,
                  PhysicalSizeXUnit="µm", Channel={"Name": ["DAPI", "GFP"]}, SignificantBits=12)
    arr, meta = read_raw(p)
    assert arr.shape == (16, 16, 2) and arr.dtype == np.uint16 and int(arr.max()) == 70
    assert meta.axes == "ZCYX" and meta.z_planes == 3 and meta.channel_names == ("DAPI", "GFP")
    assert meta.pixel_size == (0.1, 0.1) and meta.pixel_size_source == "OME PhysicalSizeX/Y" and meta.bits == 12
    assert int(read_raw(p, z="mean")[0].max()) == 40 and int(read_raw(p, z="middle")[0].max()) == 40
    nm = write_ome(tmp_path / "nm.ome.tif", z[0], "CYX", PhysicalSizeX=250, PhysicalSizeXUnit="nm",
                   PhysicalSizeY=250, PhysicalSizeYUnit="nm")
    assert read_raw(nm)[1].pixel_size == (0.25, 0.25)
    assert read_meta(p)[0] == (16, 16) and read_meta(p)[1].pixel_size == (0.1, 0.1)


def test_time_series_refused_and_rgb_samples_are_channels(tmp_path):
    t = write_ome(tmp_path / "t.ome.tif", np.zeros((4, 2, 16, 16), np.uint16), "TCYX")
    with pytest.raises(InputError, match=r"t.ome.tif: expected one time point per image, got 4 time points "
                                         r"\(axes TCYX.*Fix: save one time point per file"):
        read_raw(t)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8))         # YXS (RGB samples)
    arr, meta = read_raw(tmp_path / "rgb.tif")
    assert arr.shape == (16, 16, 3) and meta.axes == "YXS"
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, np.zeros((3, 2, 16, 16), np.uint16), imagej=True, metadata={"axes": "ZCYX", "unit": "um"},
                     resolution=(5, 5))
    arr, meta = read_raw(ij)
    assert arr.shape == (16, 16, 2) and meta.pixel_size == (0.2, 0.2) and meta.z_planes == 3


def test_axes_come_from_the_file_or_the_user_never_from_the_shape(tmp_path):
    # (3, 8, 8): RGB planes by tifffile's own layout -> 3 channels of 8x8 (not a 3x8 image with 8 channels)
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(tmp_path / "planar.tif", np.arange(192, dtype=np.uint16).reshape(3, 8, 8))
    arr, meta = read_raw(tmp_path / "planar.tif")
    assert arr.shape == (8, 8, 3) and meta.axes == "SYX"
    # the same array as three 8x8 pages without metadata: ambiguous, refused with the fix
    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((3, 8, 8), np.uint16), photometric="minisblack", metadata=None)
    with pytest.raises(InputError, match=r"pages.tif: expected a TIFF whose axes are known, got 3 pages of 8x8 "
                                         r"pixels without axis metadata .*Fix: name the axes with --axes"):
        read_raw(tmp_path / "pages.tif")
    assert read_raw(tmp_path / "pages.tif", axes="CYX")[0].shape == (8, 8, 3)
    # an (H, W, C) array written page by page: refused, then read right with --axes YXC
    hwc = np.random.default_rng(0).integers(0, 4000, (32, 32, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "hwc.tif", hwc)
    with pytest.raises(InputError, match="32 planes of 5x32 pixels"):
        read_raw(tmp_path / "hwc.tif")
    np.testing.assert_array_equal(read_raw(tmp_path / "hwc.tif", axes="YXC")[0], hwc)
    # protloc's documented (C, H, W) stack of up to 8 planes still reads as channels
    tifffile.imwrite(tmp_path / "chw.tif", np.zeros((5, 32, 32), np.uint16))
    assert read_raw(tmp_path / "chw.tif")[0].shape == (32, 32, 5)
    with pytest.raises(InputError, match=r"--axes: expected letters from T, Z, C, S, Y, X"):
        read_raw(tmp_path / "pages.tif", axes="CQX")


def test_channels_found_by_name(tmp_path):
    pre = Preprocessing("tiff", (0, 1, 2), 8, (0,) * 3, (1,) * 3, SCHEMA, channel_names=("Tubulin", "GFP", "DAPI"))
    a = np.stack([np.full((8, 8), v, np.uint8) for v in (1, 2, 3)], -1)            # file order DAPI, Tubulin, GFP
    got = pre.pick_channels(a, meta=ImageMeta(channel_names=("DAPI", "tubulin", "GFP")))
    assert got[0, 0].tolist() == [2, 3, 1]
    assert pre.pick_channels(a)[0, 0].tolist() == [1, 2, 3]                         # no names: by index


# --------------------------------------------------------------------------------------------
# pixel size
# --------------------------------------------------------------------------------------------
def test_pixel_size_scales_to_the_training_scale_before_the_model_resize(tmp_path):
    run = Reading(Intensity("scale"), pixel_size=0.2, field=64)                      # model: 0.2 * 64 / 32 = 0.4
    img = np.zeros((128, 128, 1), np.uint8)
    img[32:96, 32:96] = 200                                                           # a 64-px square
    same, f = run.apply(img[::2, ::2], size=32, meta=ImageMeta(pixel_size=(0.2, 0.2)))  # as in training
    finer, g = run.apply(img, size=32, meta=ImageMeta(pixel_size=(0.1, 0.1)))            # a 2x finer camera
    np.testing.assert_array_equal(same, finer)                                          # same cells, same size
    assert g["geometry"] == "scaled x0.25 to 32x32 px" and g["pixel_size_um"] == 0.1
    wide, h = run.apply(img, size=32, meta=ImageMeta(pixel_size=(0.4, 0.4)))           # a 2x coarser one
    assert h["geometry"].startswith("scaled x1 to 128x128 px, centre 32x32 px kept")
    by_count, k = run.apply(img, size=32)                                                # unknown: by pixel count
    assert k["pixel_size_um"] is None and "pass --pixel-size" in k["notes"][0]
    given, m = run.apply(img, size=32, pixel_size=0.1)
    assert m["pixel_size_source"] == "--pixel-size"
    np.testing.assert_array_equal(given, finer)


def test_tiff_resolution_units(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", np.zeros((16, 16), np.uint16), resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")
    assert read_raw(tmp_path / "cm.tif")[1].pixel_size == (0.5, 0.5)
    tifffile.imwrite(tmp_path / "dpi.tif", np.zeros((16, 16), np.uint16), resolution=(72, 72), resolutionunit="INCH")
    arr, meta = read_raw(tmp_path / "dpi.tif")
    assert meta.pixel_size is None and "dots per inch" in meta.notes[0]


def test_train_records_pixel_size_and_predict_rescales(tmp_path, capsys):
    """A run trained on 0.2 µm OME-TIFFs records its pixel size; a 0.1 µm image of the same cells
    is predicted like the 0.2 µm one, and predict --probs writes the OOD columns."""
    from helpers import tiny_image

    rng = np.random.default_rng(0)
    folder = tmp_path / "train"
    folder.mkdir()
    rows = []
    for i in range(24):
        lab = [i % 3]
        img = tiny_image(lab, size=32, rng=rng).astype(np.uint16) * 16                  # 12-bit data
        write_ome(folder / f"{i}.ome.tif", np.moveaxis(img, -1, 0), "CYX", PhysicalSizeX=0.2, PhysicalSizeY=0.2)
        rows.append(f"{i}.ome,{lab[0]}")
    (tmp_path / "train.csv").write_text("Image,Label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--csv", str(tmp_path / "train.csv"), "--images", str(folder), "--out", str(out),
                 "--model", "test_resnet", "--pretrained", "none", "--size", "16", "--epochs", "1",
                 "--batch-size", "8", "--val-fraction", "0.4", "--quiet"]) == 0
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre["pixel_size_um"] == 0.2 and pre["field_px"] == 32
    assert pre["intensity"]["rule"] == "percentile"                     # --intensity auto on 16-bit files
    test = tmp_path / "test"
    test.mkdir()
    base = np.moveaxis(tiny_image([1], size=32, rng=np.random.default_rng(5)).astype(np.uint16) * 16, -1, 0)
    write_ome(test / "coarse.ome.tif", base, "CYX", PhysicalSizeX=0.2, PhysicalSizeY=0.2)
    fine = np.repeat(np.repeat(base, 2, axis=1), 2, axis=2)                              # the same cells at 0.1 µm
    write_ome(test / "fine.ome.tif", fine, "CYX", PhysicalSizeX=0.1, PhysicalSizeY=0.1)
    capsys.readouterr()
    assert main(["predict", str(out), "--images", str(test), "--out", str(tmp_path / "s.csv"),
                 "--probs", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    import pandas as pd

    p = pd.read_csv(tmp_path / "p.csv", dtype={"Image": str}).set_index("Image")
    assert {"ood_score", "ood_flag"} <= set(p.columns)
    np.testing.assert_allclose(p.loc["coarse.ome"].iloc[:-2].to_numpy(float),
                               p.loc["fine.ome"].iloc[:-2].to_numpy(float), atol=0.02)
    # without its pixel size the fine image is only resized by pixel count, with a note
    write_ome(test / "fine.ome.tif", fine, "CYX")
    assert main(["predict", str(out), "--images", str(test), "--out", str(tmp_path / "s.csv"), "--no-progress"]) == 0
    assert "pixel size unknown" in capsys.readouterr().err
    assert main(["predict", str(out), "--images", str(test), "--out", str(tmp_path / "s.csv"), "--no-progress",
                 "--pixel-size", "0"]) == 2
    assert "--pixel-size: expected a pixel size in µm > 0" in capsys.readouterr().err


def test_validate_reports_12bit_as_handled(tmp_path):
    from helpers import make_tiny_dataset

    csv, imgs = make_tiny_dataset(tmp_path, n=4)
    (imgs / "1001.png").unlink()
    tifffile.imwrite(imgs / "1001.tif", np.random.default_rng(0).integers(0, 3000, (32, 32, 3)).astype(np.uint16))
    Image.open(imgs / "1000.png")  # untouched 8-bit files
    main(["validate", "--csv", str(csv), "--images", str(imgs), "--json", str(tmp_path / "r.json")])
    found = {f["code"]: f for f in json.loads((tmp_path / "r.json").read_text())["findings"]}
    assert found["dark_16bit"]["severity"] == "info" and "read as 12-bit data" in found["dark_16bit"]["message"]


@pytest.mark.parametrize("axes, shape", [("YYX", (1, 1, 1)), ("YX", (1, 1, 1)), ("CX", (3, 4))])
def test_damaged_axes_are_refused_not_crashed(axes, shape):
    """A damaged TIFF can declare axes that do not fit its pixels (the fuzzer found a repeated Y on a
    1x1x1 array, which ended in numpy's 'axes don't match array'): an ImageReadError naming the file."""
    from protloc.io.images import ImageReadError, _project

    with pytest.raises(ImageReadError, match=r"f\.tif: expected an image whose axes name every dimension"):
        _project(np.zeros(shape, np.uint8), axes, z="max", where="f.tif")
