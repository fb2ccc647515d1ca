"""protloc synth: layout, CSV formats, determinism, label statistics, 4-channel output, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protloc.core.errors import InputError
from protloc.synth.dataset import (REFERENCE_CLASS_COUNTS, REFERENCE_LABELS_PER_IMAGE, REFERENCE_N_IMAGES,
                           add_label_noise, image_rng, make_dataset, parse_difficulty,
                           sample_label_sets, synth_image)


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "synth.json"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "d"
    summary = make_dataset(out, n_train=12, n_test=5, seed=3, size=32, progress=False)
    return out, summary


def test_layout_and_csv_formats(tiny):
    out, summary = tiny
    assert summary["n_train"] == 12 and summary["n_test"] == 5
    assert sorted(p.name for p in out.iterdir()) == [
        "synth.json", "test", "test.csv", "test_labels.csv", "train", "train.csv", "train_clean_labels.csv"]
    lines = (out / "train.csv").read_text().splitlines()
    assert lines[0] == "Image,Label" and len(lines) == 13
    for line in lines[1:]:
        iid, lab = line.split(",")
        assert iid.isdigit() and not iid.startswith("0")
        ids = [int(t) for t in lab.split(" ")]
        assert ids == sorted(set(ids)) and 1 <= len(ids) <= 4 and all(0 <= i <= 9 for i in ids)
        assert (out / "train" / f"{iid}.png").is_file()
    test_lines = (out / "test.csv").read_text().splitlines()
    assert test_lines[0] == "Image" and len(test_lines) == 6 and all(t.isdigit() for t in test_lines[1:])
    truth = pd.read_csv(out / "test_labels.csv", dtype=str)
    assert list(truth.columns) == ["Image", "Label"] and truth.Image.tolist() == test_lines[1:]
    clean = pd.read_csv(out / "train_clean_labels.csv", dtype=str)
    assert clean.Image.tolist() == [ln.split(",")[0] for ln in lines[1:]]
    train_ids, test_ids = set(clean.Image), set(truth.Image)
    assert not train_ids & test_ids
    assert len(list((out / "train").iterdir())) == 12 and len(list((out / "test").iterdir())) == 5
    from PIL import Image

    with Image.open(out / "test" / f"{test_lines[1]}.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    from protloc.data.table import load_table

    t = load_table(data=out, split="train")
    assert len(t) == 12 and t.fmt == "rgb" and t.y().shape == (12, 10)


def test_same_seed_same_bytes_any_workers(tmp_path, monkeypatch):
    import protloc.synth.dataset as synth

    monkeypatch.setattr(synth, "MIN_PARALLEL", 1)  # force the process pool on tiny data
    a = make_dataset(tmp_path / "a", n_train=6, n_test=2, seed=7, size=32, workers=1, progress=False)
    make_dataset(tmp_path / "b", n_train=6, n_test=2, seed=7, size=32, workers=2, progress=False)
    assert a["workers"] == 1
    da, db = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert da == db and len(da) == 12
    make_dataset(tmp_path / "c", n_train=6, n_test=2, seed=8, size=32, workers=1, progress=False)
    assert _digest(tmp_path / "c") != da


def test_synth_image_pure_and_shapes():
    img = synth_image([2, 4], size=64, rng=image_rng(0, 1))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert np.array_equal(img, synth_image([2, 4], size=64, rng=image_rng(0, 1)))
    img4 = synth_image([2, 4], size=64, rng=image_rng(0, 1), channels=4)
    assert img4.shape == (64, 64, 4)
    assert np.array_equal(img4[..., :3], img)  # yellow does not change the RGB planes
    for k in range(10):  # every class and cell line renders at small sizes; green carries signal
        im = synth_image([k], size=32, rng=image_rng(1, k), cell_type=k)
        assert im.shape == (32, 32, 3) and im[..., 1].max() > 40
    with pytest.raises(InputError, match="class ids 0-9"):
        synth_image([10], rng=image_rng(0, 0))
    with pytest.raises(InputError, match="difficulty"):
        synth_image([1], rng=image_rng(0, 0), difficulty=2)


def test_label_statistics_follow_reference():
    sets = sample_label_sets(3000, np.random.default_rng(0))
    freq = np.zeros(10)
    for s in sets:
        freq[list(s)] += 1
    ref = np.array(REFERENCE_CLASS_COUNTS) / REFERENCE_N_IMAGES
    assert np.allclose(freq / len(sets), ref, atol=0.025)
    per = np.bincount([len(s) for s in sets], minlength=5)[1:] / len(sets)
    ref_per = np.array([REFERENCE_LABELS_PER_IMAGE[k] for k in (1, 2, 3, 4)]) / REFERENCE_N_IMAGES
    assert np.allclose(per, ref_per, atol=0.03)
    # real co-occurrence: nucleoplasm + cytosol is the most common pair
    pairs = [s for s in sets if len(s) == 2]
    assert max(set(pairs), key=pairs.count) == (4, 6)


def test_label_noise_keeps_one_to_four_sorted_labels():
    rng = np.random.default_rng(0)
    sets = sample_label_sets(300, rng)
    noisy, n = add_label_noise(sets, 0.5, rng)
    changed = sum(a != b for a, b in zip(sets, noisy))
    assert changed == n and 100 < n < 200
    assert all(1 <= len(s) <= 4 and list(s) == sorted(set(s)) for s in noisy)
    assert add_label_noise(sets, 0.0, rng) == (sets, 0)


def test_hpa_channels_four_files_per_image(tmp_path):
    out = tmp_path / "h"
    make_dataset(out, n_train=3, n_test=1, seed=0, size=32, fmt="hpa-channels", progress=False)
    files = sorted(p.name for p in (out / "train").iterdir())
    assert len(files) == 12 and all(f.rsplit("_", 1)[1] in
                                    ("red.png", "green.png", "blue.png", "yellow.png") for f in files)
    from protloc.io.images import read_image
    from protloc.data.table import load_table

    t = load_table(data=out, split="train", channels="all")
    assert t.fmt == "hpa-channels" and t.channels == ("red", "green", "blue", "yellow")
    img = read_image(out / "train", t.ids[0], fmt="hpa-channels", channels=t.channels)
    assert img.shape == (32, 32, 4) and img.dtype == np.uint8
    assert img[..., 3].max() > 0


def test_difficulty_parsing():
    assert parse_difficulty("easy") == 0.2 and parse_difficulty("HARD") == 0.8
    assert parse_difficulty("0.25") == 0.25
    with pytest.raises(InputError, match="easy|medium|hard"):
        parse_difficulty("brutal")


def test_cli_ok_and_bad_args(tmp_path, capsys):
    from protloc.cli.main import main

    out = tmp_path / "cli"
    assert main(["synth", str(out), "--n-train", "4", "--n-test", "2", "--size", "32", "--seed", "1",
                 "--difficulty", "hard", "--no-progress"]) == 0
    assert "wrote 4 train + 2 test images" in capsys.readouterr().out
    assert len(pd.read_csv(out / "train.csv")) == 4
    assert main(["synth", str(out), "--n-train", "4", "--n-test", "2", "--size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "non-empty" in err and "--overwrite" in err
    assert main(["synth", str(out), "--n-train", "3", "--n-test", "1", "--size", "32", "--no-progress",
                 "--overwrite"]) == 0
    assert len(list((out / "train").iterdir())) == 3  # the earlier output was replaced
    assert main(["synth", str(tmp_path / "z"), "--n-train", "0", "--no-progress"]) == 2
    assert "--n-train: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "z"), "--difficulty", "x", "--no-progress"]) == 2
    assert main(["synth"]) == 2
    assert "OUT" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_interrupted_run_leaves_no_csv(tmp_path, monkeypatch):
    import protloc.synth.dataset as synth

    calls = []
    real = synth._render_job

    def flaky(job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth, "_render_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(tmp_path / "i", n_train=5, n_test=2, size=32, progress=False)
    assert not list((tmp_path / "i").glob("*.csv")) and not (tmp_path / "i" / "synth.json").exists()
    assert not list((tmp_path / "i").rglob(".*.tmp"))


def test_gallery_png(tmp_path):
    from PIL import Image

    from protloc.synth.dataset import save_gallery

    p = save_gallery(tmp_path / "g.png", size=32, n_per_class=1)
    with Image.open(p) as im:
        assert im.size[0] > 300 and im.size[1] > 600


# --------------------------------------------------------------------------- image styles (issue 10)
#: sha256 of a fixed set of default-style images, computed with the renderer before styles existed:
#: the default look (and every dataset, test and benchmark built on it) must not change.
DEFAULT_LOOK_SHA256 = "508c55b26d38a8bf90079cb24700b03cdcd15e87dd3de2f8527278f720b8749f"


def _default_look(**kw) -> str:
    h = hashlib.sha256()
    for i, labels in enumerate([(0,), (2, 4), (5,), (7, 9), (1, 3, 8), (6,)]):
        for size in (64, 128):
            h.update(synth_image(labels, size=size, rng=image_rng(0, i), difficulty=0.5, **kw).tobytes())
    h.update(synth_image([4, 6], size=96, rng=image_rng(1, 5), channels=4, difficulty=0.8, **kw).tobytes())
    return h.hexdigest()


def test_default_style_is_byte_identical_to_before():
    assert _default_look() == DEFAULT_LOOK_SHA256
    assert _default_look(style="default") == DEFAULT_LOOK_SHA256


@pytest.mark.parametrize("style", ["default", "confocal-63x", "widefield-20x", "spinning-disk", "epi-saturated",
                                   "suspension", "random"])
def test_every_style_renders_every_class_deterministically(style):
    for k in range(10):
        img = synth_image([k], size=64, rng=image_rng(2, k), style=style)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert np.array_equal(img, synth_image([k], size=64, rng=image_rng(2, k), style=style))
        assert img[..., 1].max() > 30 and img[..., 2].max() > 30  # protein and nuclei are there
    img4 = synth_image([3, 4], size=48, rng=image_rng(3, 0), channels=4, style=style)
    assert img4.shape == (48, 48, 4)
    assert np.array_equal(img4[..., :3], synth_image([3, 4], size=48, rng=image_rng(3, 0), style=style))


def test_named_styles_are_all_listed_and_documented():
    from protloc.synth.styles import STYLES, VARIANTS, style_names

    assert len(STYLES) >= 5 and style_names()[-1] == "random"
    doc = (Path(__file__).parents[1] / "docs" / "synth.md").read_text()
    for name, st in STYLES.items():
        assert f"`{name}`" in doc and st.summary
        for key in VARIANTS:  # every rendering a style uses is a known one
            assert all(v in VARIANTS[key] for v, _ in getattr(st, key))
    used = {key: {v for st in STYLES.values() for v, _ in getattr(st, key)} for key in VARIANTS}
    assert all(used[key] == set(VARIANTS[key]) for key in VARIANTS)  # every rendering is in some style


def _style_means(style, n=10):
    from protloc.synth.styles import image_stats

    sets = sample_label_sets(n, np.random.default_rng(4))
    rows = [image_stats(synth_image(s, rng=image_rng(9, i), style=style)) for i, s in enumerate(sets)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def test_styles_differ_measurably():
    m = {s: _style_means(s) for s in ("default", "confocal-63x", "widefield-20x", "spinning-disk",
                                      "epi-saturated", "suspension")}
    # magnification and density: few big nuclei at 63x, many small ones at 20x
    assert m["confocal-63x"]["nuclei"] < 0.5 * m["default"]["nuclei"] < 0.5 * m["widefield-20x"]["nuclei"]
    assert m["confocal-63x"]["nucleus_px"] > 1.8 * m["default"]["nucleus_px"] > 2.5 * m["widefield-20x"]["nucleus_px"]
    assert m["suspension"]["nucleus_px"] > 1.1 * m["default"]["nucleus_px"]
    # background: camera offset + haze + autofluorescence of the widefield screen
    assert m["widefield-20x"]["background"] > 8 * max(m["default"]["background"], 1)
    # sharpness: crisp, bright confocal vs shot-noise-dominated low light
    assert m["confocal-63x"]["hf_energy"] < 0.7 * m["default"]["hf_energy"]
    assert m["spinning-disk"]["hf_energy"] > 1.8 * m["default"]["hf_energy"]
    assert m["spinning-disk"]["green_p99"] < 0.8 * m["default"]["green_p99"]  # dim stains
    # over-exposure clips only in the saturated style
    assert m["epi-saturated"]["saturated"] > 0.001 > m["default"]["saturated"]
    assert m["epi-saturated"]["green_p99"] > 1.4 * m["default"]["green_p99"]


def test_random_style_varies_per_image():
    from protloc.synth.patterns import resolve_style

    drawn = [resolve_style("random", image_rng(0, i))[0] for i in range(8)]
    assert len({s.mag for s in drawn}) == 8 and len({s.photons for s in drawn}) == 8
    assert len({s.mito for s in drawn}) == 8 and len({s.nucleus for s in drawn}) == 8
    assert resolve_style("random", image_rng(0, 3))[0] == drawn[3]  # a pure function of the image's rng
    from protloc.synth.styles import image_stats

    px = [image_stats(synth_image([4], rng=image_rng(5, i), style="random"))["nucleus_px"] for i in range(10)]
    assert max(px) > 1.8 * min(px)  # magnification changes from image to image


def test_every_style_same_bytes_any_workers(tmp_path, monkeypatch):
    import protloc.synth.dataset as synth
    from protloc.synth.styles import style_names

    monkeypatch.setattr(synth, "MIN_PARALLEL", 1)  # force the process pool on tiny data
    mix = ",".join(style_names())
    a = make_dataset(tmp_path / "a", n_train=24, n_test=6, seed=1, size=32, workers=1, progress=False, style=mix)
    make_dataset(tmp_path / "b", n_train=24, n_test=6, seed=1, size=32, workers=2, progress=False, style=mix)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    per_image = pd.read_csv(tmp_path / "a" / "styles.csv")
    assert set(per_image.Style) == set(style_names()) and len(per_image) == 30
    assert a["style_counts"] == per_image.Style.value_counts().to_dict() | {}
    # same ids and labels as a single-style dataset with the same seed: only the pixels change
    make_dataset(tmp_path / "c", n_train=24, n_test=6, seed=1, size=32, progress=False, style="suspension")
    for f in ("train.csv", "test_labels.csv"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "c" / f).read_text()
    assert not (tmp_path / "c" / "styles.csv").exists()
    assert json.loads((tmp_path / "c" / "synth.json").read_text())["style_params"]["mag"] == [1.45, 1.7]


def test_cli_style_errors_and_gallery(tmp_path, capsys):
    from PIL import Image

    from protloc.cli.main import main
    from protloc.synth.styles import style_names

    assert main(["synth", str(tmp_path / "u"), "--style", "sepia", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --style: expected one of") and "'sepia'" in err
    assert all(name in err for name in style_names())
    assert not (tmp_path / "u").exists()
    assert main(["synth", str(tmp_path / "u"), "--style", "default,sepia", "--no-progress"]) == 2
    assert main(["synth", str(tmp_path / "u"), "--style", "all", "--no-progress"]) == 2
    assert "--gallery" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "w"), "--n-train", "3", "--n-test", "1", "--size", "32",
                 "--style", "widefield-20x", "--no-progress"]) == 0
    assert "style widefield-20x" in capsys.readouterr().out
    from protloc.synth.dataset import save_style_gallery

    p = save_style_gallery(tmp_path / "s.png", styles=["default", "suspension"], size=32, n_per_style=1)
    with Image.open(p) as im:
        assert im.size[0] > 300 and im.size[1] > 800


def _bench_transfer():
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "bench_transfer.py"
    spec = importlib.util.spec_from_file_location("bench_transfer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_transfer_harness_never_chooses_on_held_out_styles(capsys):
    from protloc.synth.styles import STYLES

    bt = _bench_transfer()
    assert set(bt.SELECTION) | set(bt.HELD_OUT) <= set(STYLES) and not set(bt.SELECTION) & set(bt.HELD_OUT)
    # the selection plan never tests on a held-out style; the held-out plan trains on each
    # held-out style and tests the selection mix on the held-out styles (unseen)
    sel = bt.make_plan("selection", [], [])
    assert all(bt.role(s) == "selection" for _, tests in sel for s in tests)
    assert all(s in bt.SELECTION for t, _ in sel for s in bt.split_spec(t))
    held = dict(bt.make_plan("held-out", [], []))
    assert all(held[h] == [h] for h in bt.HELD_OUT) and held["+".join(bt.SELECTION)] == bt.HELD_OUT
    assert bt.make_plan(None, ["a+b"], ["c"]) == [("a+b", ["c"])]
    # ranking uses selection cells only
    r = {"tests": {"default": {"role": "selection", "macro_f1": 0.6},
                   bt.HELD_OUT[0]: {"role": "held-out", "macro_f1": 0.1}}}
    assert bt.selection_mean(r) == 0.6
    # a dry run lists the cached datasets: every synthesis parameter and the renderer are in the name
    out = bt.main(["--plan", "all", "--dry-run", "--work", "/nonexistent"])
    assert len(out["jobs"]) == len(bt.SELECTION) + 1 + len(bt.HELD_OUT)
    assert len(set(out["datasets"].values())) == len(out["datasets"])
    assert "never choose" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown style 'sepia'"):
        bt.main(["--train", "sepia", "--dry-run", "--work", "/nonexistent"])
