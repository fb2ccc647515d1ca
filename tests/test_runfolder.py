"""The run-folder contract (protloc.core.runfolder), the one image path, and the defects of issue 11."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from protloc.cli.main import main
from protloc.core.errors import InputError, RunFolderError
from protloc.core.preprocessing import Preprocessing
from protloc.core.runfolder import DataSource, RunFolder, parse_folds

SRC = Path(__file__).resolve().parents[1] / "src" / "protloc"


@pytest.fixture
def run(fake_run, tmp_path) -> RunFolder:
    """A writable copy of the fake run."""
    return RunFolder(shutil.copytree(fake_run, tmp_path / "run"))


def _one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


# --------------------------------------------------------------------------------------------
# readers: one per file, damaged file -> RunFolderError naming it
# --------------------------------------------------------------------------------------------
def test_thresholds_missing_is_the_documented_default(run):
    rule = run.thresholds()
    assert rule.values.tolist() == [0.5] * 10 and not rule.at_least_one and rule.method is None
    assert rule.source == "default 0.5" and not rule.fitted and rule.per_class() == []


@pytest.mark.parametrize("content,match", [
    ("{not json", r"thresholds.json: not valid JSON .*Fix: rerun `protloc thresholds "),
    (json.dumps([0.5] * 10), r"thresholds.json: expected a JSON object with a 'thresholds' list, got a JSON list"),
    (json.dumps({"method": "f1"}), r"thresholds.json: expected a JSON object .* got keys \['method'\]"),
    (json.dumps({"thresholds": [0.5] * 3}), r"thresholds.json: expected 10 thresholds \(one per class\), got 3"),
    (json.dumps({"thresholds": [1.5] * 10}), r"thresholds.json: expected thresholds in \[0, 1\]"),
    (json.dumps({"thresholds": ["a"] * 10}), r"thresholds.json: unreadable"),
    (json.dumps({"thresholds": [0.5] * 10, "classes": list("abcdefghij")}),
     r"thresholds.json: expected classes \['Mitochondria'"),
])
def test_damaged_thresholds_name_the_file_and_the_fix(run, content, match):
    run.thresholds_json.write_text(content)
    with pytest.raises(RunFolderError, match=match) as e:
        run.thresholds()
    assert "Fix:" in str(e.value)


def test_thresholds_round_trip_through_the_optimizer(run):
    from protloc.core.thresholds import fit_run_thresholds

    opt = fit_run_thresholds(run, method="f1", n_bootstrap=5, at_least_one=True)
    rule = run.thresholds()
    np.testing.assert_allclose(rule.values, opt.thresholds_)
    assert rule.fitted and rule.at_least_one and rule.method == "f1" and rule.source == "thresholds.json"
    assert [r["class"] for r in rule.per_class()] == list(run.preprocessing().classes)
    saved = json.loads(run.thresholds_json.read_text())
    assert saved["source"] == {"oof": "oof.csv", "n_images": 40, "oof_tta": "none"}  # a run from before --oof-tta


def test_config_is_a_typed_trainconfig(run):
    from protloc.core.config import TrainConfig

    cfg = run.config()  # the fake run's config.yaml has two keys: the rest are TrainConfig's defaults
    assert isinstance(cfg, TrainConfig) and cfg.model == "test_resnet" and cfg.size == 32
    assert cfg.threshold == TrainConfig().threshold and cfg.folds == TrainConfig().folds
    run.config_yaml.write_text("preset: seed\nsize: 48\n")
    assert run.config().loss == TrainConfig.preset("seed").loss and run.config().size == 48


@pytest.mark.parametrize("content,match", [
    (": : bad [", r"config.yaml: not valid YAML"),
    ("- a\n- b\n", r"config.yaml: expected a YAML file holding a mapping \(training config\), got a list"),
    ("sizes: 3\n", r"config.yaml: unreadable \(training config: expected keys from"),
    ("size: big\n", r"config.yaml: unreadable \(config size: expected int, got 'big'"),
])
def test_damaged_config(run, content, match):
    run.config_yaml.write_text(content)
    with pytest.raises(RunFolderError, match=match):
        run.config()
    run.config_yaml.unlink()
    with pytest.raises(RunFolderError, match=r"config.yaml: missing \(the training config\)"):
        run.config()


def test_model_spec_data_source_summary_schema(run, tmp_path):
    from protloc.core.modelspec import ModelSpec

    assert run.model_spec() == ModelSpec("test_resnet", in_chans=3, num_classes=10, dropout=0.0)
    run.model_json.write_text("[1, 2]")
    with pytest.raises(RunFolderError, match=r"model.json: expected a JSON file holding an object"):
        run.model_spec()
    run.model_json.unlink()
    with pytest.raises(RunFolderError, match=r"model.json: missing"):
        run.model_spec()

    assert run.data_source() is None  # runs made before data.json
    src = DataSource(images=str(tmp_path), fmt="tiff", channels=(0, 2), schema="ghent10", n_images=5, csv="t.csv")
    run.data_json.write_text(json.dumps(src.to_dict()))
    assert run.data_source() == src and json.loads(run.data_json.read_text())["channels"] == [0, 2]
    run.data_json.write_text(json.dumps({"images": "x"}))
    with pytest.raises(RunFolderError, match=r"data.json: unreadable \(KeyError"):
        run.data_source()

    s = run.summary()
    assert s.val_macro_f1 == 0.3 and s.fold_summaries == []
    run.summary_json.write_text("[]")
    with pytest.raises(RunFolderError,
                       match=r"summary.json: expected a JSON file holding an object \(validation summary\), got a list"):
        run.summary()
    run.summary_json.unlink()
    assert run.summary() is None

    assert run.schema().name == "ghent10"
    run.schema_json.write_text(json.dumps({"name": "x", "classes": ["a", "b"]}))
    with pytest.raises(RunFolderError, match=r"schema.json: expected the classes of preprocessing.json"):
        run.schema()


@pytest.mark.parametrize("content,match", [
    (b"", r"oof.csv: the out-of-fold probability CSV is empty\. Fix: rebuild it"),
    (b'Image,fold\n"1,\n', r"oof.csv: not a readable CSV \(.*\)\. Fix: rebuild it"),
    (b"Image,fold,Label\n1,0,3\n", r"oof.csv: expected columns Image, fold, Label and one per class, got no "
                                   r"column 'Mitochondria' \(and 9 more\)"),
    (b"\xff\xfe\x00garbage", r"oof.csv: a binary file \(NUL bytes\), not a text out-of-fold probability CSV"),
])
def test_damaged_oof(run, content, match):
    oof = run.oof()
    assert len(oof.ids) == 40 and oof.probs.shape == oof.y.shape == (40, 10) and oof.folds.shape == (40,)
    run.oof_csv.write_bytes(content)
    with pytest.raises(RunFolderError, match=match):
        run.oof()


def test_preprocessing_damaged_and_old_channel_strings(run):
    d = json.loads(run.preprocessing_json.read_text())
    old = {**d, "fmt": "tiff", "channels": ["ch0", "ch2", "4"]}
    run.preprocessing_json.write_text(json.dumps(old))
    pre = run.preprocessing()
    assert pre.channels == (0, 2, 4)  # old runs stored TIFF indices as strings
    pre.save(run.preprocessing_json)
    assert json.loads(run.preprocessing_json.read_text())["channels"] == [0, 2, 4]  # typed in JSON
    run.preprocessing_json.write_text(json.dumps({**d, "fmt": "tiff", "channels": ["red"]}))
    with pytest.raises(RunFolderError, match=r"preprocessing.json: malformed preprocessing file"):
        run.preprocessing()


def test_folds_and_paths(run):
    for name in ("fold10.pt", "fold2.pt", "foldx.pt", "old_fold3.pt"):
        shutil.copy(run.model_path(0), run.models_dir / name)
    assert run.folds() == [0, 2, 10]
    assert [p.name for p in run.model_paths()] == ["fold0.pt", "fold2.pt", "fold10.pt"]
    assert run.select_folds(None) == [0, 2, 10] and run.select_folds("2,10") == [2, 10]
    with pytest.raises(RunFolderError, match=r"expected models/fold7.pt, got folds \[0, 2, 10\]"):
        run.select_folds([7])
    assert run.fold_dir(3) == run.root / "folds" / "fold3" and run.ckpt_dir(1).name == "fold1"
    assert run.onnx_path.name == "model.onnx" and run.onnx_meta_path.name == "model.onnx.json"
    assert run.evaluation_json.name == "evaluation.json" and run.report_html.name == "report.html"
    assert parse_folds(None) is None and parse_folds([1, "2"]) == [1, 2]
    with pytest.raises(InputError, match=r"--folds: expected comma-separated fold numbers, got '-1'"):
        parse_folds("-1")


def test_no_rule_is_parsed_twice_in_src():
    """Fold numbers, the ch-prefix and the ONNX file name have one home: the run folder contract."""
    hits = []
    for p in SRC.rglob("*.py"):
        if p == SRC / "core" / "runfolder.py":
            continue
        text = p.read_text()
        for needle in ('removeprefix("ch")', "stem[4:]", "name[4:]", '"model.onnx"', "'model.onnx'"):
            if needle in text:
                hits.append(f"{p.relative_to(SRC)}: {needle}")
    assert hits == []


def test_one_channel_table_and_one_picture_helper():
    from protloc.io import images

    assert not hasattr(images, "channel_names")
    for p in (SRC / "web").rglob("*.py"):
        text = p.read_text()
        assert "HPA_ORDER" not in text and "import base64" not in text and "def composite" not in text, p
    assert re.findall(r"^HPA_CHANNELS = ", (SRC / "io" / "images.py").read_text(), re.M)


# --------------------------------------------------------------------------------------------
# the one image path
# --------------------------------------------------------------------------------------------
def _tiffs(folder: Path, n_channels: int, ids=("a", "b", "c")) -> Path:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in ids:
        tifffile.imwrite(folder / f"{i}.tif", rng.integers(0, 255, (n_channels, 32, 32)).astype(np.uint8))
    return folder


def test_read_for_run_reads_as_training_did(run, tiny_rgb):
    from protloc.data.cache import load_cached
    from protloc.data.table import load_table
    from protloc.inference.inputs import read_for_run

    csv, images = tiny_rgb
    pre = run.preprocessing()
    table = load_table(csv, images)
    ds = load_cached(table, size=pre.size, progress=False)
    for i in (0, 7):
        np.testing.assert_array_equal(read_for_run(images / f"{table.ids[i]}.png", pre), ds.images[i])
        np.testing.assert_array_equal(read_for_run(images / table.ids[i], pre), ds.images[i])  # DIR/ID
    with pytest.raises(InputError, match=r"nope: file not found"):
        read_for_run(images / "nope", pre)


def test_pick_channels_rules():
    from protloc.core.schema import LabelSchema

    s = LabelSchema("t", ("a",))
    rgb = Preprocessing("rgb", ("red", "green", "blue"), 8, (0,) * 3, (1,) * 3, s)
    assert rgb.prepare(np.zeros((16, 16, 4), np.uint8), rgba=True).shape == (8, 8, 3)  # PNG alpha
    with pytest.raises(InputError, match=r"x.tif: expected 3 channels \(red, green, blue\), got 4 channels"):
        rgb.prepare(np.zeros((16, 16, 4), np.uint8), where="x.tif")  # a TIFF's 4th channel is data
    assert rgb.prepare(np.zeros((16, 16, 5), np.uint16), channels=(0, 2, 4)).shape == (8, 8, 3)
    tiff = Preprocessing("tiff", (1, 3), 8, (0,) * 2, (1,) * 2, s)
    a = (np.arange(16 * 16 * 5).reshape(16, 16, 5) % 255).astype(np.uint8)
    np.testing.assert_array_equal(tiff.pick_channels(a), a[..., [1, 3]])
    with pytest.raises(InputError, match=r"expected at least 4 channels \(channels 1, 3\), got 2"):
        tiff.pick_channels(np.zeros((16, 16, 2), np.uint8))
    hpa4 = Preprocessing("hpa-channels", ("red", "green", "blue", "yellow"), 8, (0,) * 4, (1,) * 4, s)
    with pytest.raises(InputError, match=r"plain alpha \(all 255\)"):
        hpa4.pick_channels(np.full((4, 4, 4), 255, np.uint8), rgba=True)
    seen = []
    rgb.prepare(np.zeros((4, 6, 3), np.uint8), where="small", on_resize=seen.append)
    assert seen == ["small: image size 6x4 differs from the run's 8x8; images are resized"]


def test_wide_tiff_to_rgb_run_is_an_error_unless_channels_chosen(fake_run, tmp_path, capsys):
    folder = _tiffs(tmp_path / "five", 5)
    out = tmp_path / "sub.csv"
    assert main(["predict", str(fake_run), "--images", str(folder), "--out", str(out), "--no-progress"]) == 2
    _one_error_line(capsys, "a.tif", "expected 3 channels (red, green, blue), got 5 channels",
                    "--channels 0,1,2")
    assert not out.exists()
    assert main(["predict", str(fake_run), "--images", str(folder), "--out", str(out), "--channels", "0,2,4",
                 "--no-progress"]) == 0
    assert len(pd.read_csv(out)) == 3
    four = _tiffs(tmp_path / "four", 4)
    assert main(["predict", str(fake_run), "--images", str(four), "--out", str(out), "--no-progress"]) == 2
    _one_error_line(capsys, "got 4 channels")


def test_tiff_run_stores_typed_channels_and_predicts(tmp_path, capsys):
    from helpers import make_tiny_dataset

    csv, images = make_tiny_dataset(tmp_path / "d", n=16, size=32, fmt="tiff",
                                    channels=("a", "b", "c", "d", "e"))
    out = tmp_path / "run"
    assert main(["train", "--csv", str(csv), "--images", str(images), "--channels", "0,2,4", "--out", str(out),
                 "--model", "test_resnet", "--pretrained", "none", "--size", "32", "--epochs", "1",
                 "--batch-size", "8", "--quiet"]) == 0
    rf = RunFolder(out)
    assert json.loads(rf.preprocessing_json.read_text())["channels"] == [0, 2, 4]
    src = rf.data_source()
    assert src.channels == (0, 2, 4) and src.fmt == "tiff" and src.n_images == 16
    assert src.images == str(images.resolve()) and src.csv == str(csv.resolve())
    sub = tmp_path / "sub.csv"
    assert main(["predict", str(out), "--images", str(images), "--out", str(sub), "--no-progress"]) == 0
    assert len(pd.read_csv(sub)) == 16
    assert main(["report", str(out), "--gradcam", "0", "--gallery", "1"]) == 0  # images found via data.json
    assert "no images found" not in rf.report_html.read_text()


# --------------------------------------------------------------------------------------------
# defects (each failed before its fix)
# --------------------------------------------------------------------------------------------
def test_evaluate_uses_predicts_rule_at_least_one(run, tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    classes = list(run.preprocessing().classes)
    run.thresholds_json.write_text(json.dumps({"method": "f1", "classes": classes, "thresholds": [1.0] * 10,
                                               "at_least_one": True}))
    sub, ev = tmp_path / "sub.csv", tmp_path / "ev.json"
    assert main(["predict", str(run.root), "--csv", str(csv), "--images", str(images), "--out", str(sub),
                 "--no-progress"]) == 0
    assert main(["evaluate", str(run.root), "--csv", str(csv), "--images", str(images), "--tta", "none",
                 "--json", str(ev), "--quiet"]) == 0
    labels = pd.read_csv(sub, dtype=str, keep_default_na=False)["Label"]
    predicted = [sum(str(k) in s.split() for s in labels) for k in range(10)]
    s = json.loads(ev.read_text())
    assert sum(predicted) == 40  # nothing passes 1.0: every image gets its most probable class
    assert [r["predicted"] for r in s["per_class"]] == predicted
    assert s["at_least_one"] is True and s["threshold_source"] == "thresholds.json"


def test_explain_bad_folds_is_one_line(fake_run, tiny_rgb, capsys):
    _, images = tiny_rgb
    assert main(["explain", str(fake_run), str(images / "1000.png"), "--folds", "x"]) == 2
    _one_error_line(capsys, "--folds: expected comma-separated fold numbers, got 'x'")
    assert main(["explain", str(fake_run), str(images / "1000.png"), "--folds", "3"]) == 2
    _one_error_line(capsys, "expected models/fold3.pt, got folds [0]")


def test_predictor_refuses_unknown_merge(fake_run):
    from protloc.inference.predictor import Predictor

    pred = Predictor.from_run(fake_run)
    with pytest.raises(InputError, match=r"merge: expected one of mean, max, got 'median'"):
        pred.predict(np.zeros((1, 32, 32, 3), np.uint8), merge="median")
    with pytest.raises(InputError, match=r"tta: expected one of none, flip, d4, got 'x'"):
        pred.predict(np.zeros((1, 32, 32, 3), np.uint8), tta="x")


def test_thresholds_list_is_a_clean_error_everywhere(run, tiny_rgb, tmp_path, capsys):
    _, images = tiny_rgb
    run.thresholds_json.write_text(json.dumps([0.5] * 10))
    out = tmp_path / "sub.csv"
    for argv in (["predict", str(run.root), "--images", str(images), "--out", str(out), "--no-progress"],
                 ["report", str(run.root)], ["export", str(run.root)],
                 ["explain", str(run.root), str(images / "1000.png")]):
        assert main(argv) == 2, argv
        _one_error_line(capsys, "thresholds.json: expected a JSON object with a 'thresholds' list, got a JSON list",
                        f"protloc thresholds {run.root}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_text_file_as_model_is_a_clean_error(run, tiny_rgb, tmp_path, capsys, monkeypatch):
    import uvicorn

    _, images = tiny_rgb
    run.model_path(0).write_text("not a model, just some notes\n")
    assert main(["predict", str(run.root), "--images", str(images), "--out", str(tmp_path / "s.csv"),
                 "--no-progress"]) == 2
    _one_error_line(capsys, "fold0.pt: corrupt or incompatible model file (UnpicklingError)")
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served a broken run"))
    assert main(["serve", str(run.root), "--port", str(_free_port())]) == 2
    _one_error_line(capsys, "fold0.pt: corrupt or incompatible model file")


def test_empty_oof_is_a_clean_error(run, capsys):
    run.oof_csv.write_bytes(b"")
    for argv in (["thresholds", str(run.root)], ["report", str(run.root)]):
        assert main(argv) == 2
        _one_error_line(capsys, "oof.csv: the out-of-fold probability CSV is empty", "Fix:")


def test_model_card_reads_the_run_typed(run, tmp_path):
    from protloc.inference.predictor import Predictor
    from protloc.web.model_card import model_card

    from protloc.core.config import TrainConfig

    TrainConfig.preset("fast").override(model="test_resnet", size=32, folds=3).save(run.config_yaml)
    src = DataSource(images=str(tmp_path / "imgs"), fmt="rgb", channels=("red", "green", "blue"),
                     schema="ghent10", n_images=40, csv=str(tmp_path / "train.csv"))
    run.data_json.write_text(json.dumps(src.to_dict()))
    run.summary_json.write_text(json.dumps({"val_macro_f1": 0.31, "n_folds": 3, "oof_images": 40, "threshold": 0.5,
                                            "fold_summaries": [{"n_train": 27, "n_val": 13}] * 3}))
    card = model_card(run, Predictor.from_run(run.root), max_upload=1, max_request=1, max_files=1, max_pixels=1)
    tr = card["training"]
    assert tr["images"] == str(tmp_path / "imgs") and tr["labels CSV"] == str(tmp_path / "train.csv")
    assert tr["data"] == "40 images (rgb, channels red, green, blue; schema ghent10)"
    assert tr["recipe"] == "fast" and tr["network"] == "test_resnet" and tr["folds"] == 3
    assert tr["training images per fold"] == "27" and tr["validation images"] == 40
    assert card["validation"] == {"macro_f1": 0.31, "threshold": 0.5, "macro_f1_tuned": None}
    assert card["backbone"] == "test_resnet" and card["notes"] == []
    run.data_json.write_text("{oops")  # a damaged optional file: a note, never a crash
    card = model_card(run, Predictor.from_run(run.root), max_upload=1, max_request=1, max_files=1, max_pixels=1)
    assert "images" not in card["training"] and "data.json: not valid JSON" in card["notes"][0]


def test_demo_scores_the_test_set_once(tmp_path, monkeypatch):
    from protloc.cli import demo
    from protloc.reports import evaluate

    calls = []

    def fake_run(argv, log):  # every stage as a no-op; `score` writes its --json like the real one
        log.append(" ".join(argv))
        if argv[0] == "score":
            calls.append(argv)
            Path(argv[argv.index("--json") + 1]).write_text(json.dumps({"macro_f1": 0.42}))

    monkeypatch.setattr(demo, "_run", fake_run)
    monkeypatch.setattr(evaluate, "score_files", lambda *a, **k: pytest.fail("scored a second time"))
    (tmp_path / "out").mkdir()
    summary = demo.run_demo(tmp_path / "out", quick=True)
    assert len(calls) == 1 and summary["test_macro_f1"] == 0.42


def test_web_refuses_a_wide_tiff_for_an_rgb_run(fake_run):
    import io

    import tifffile
    from fastapi.testclient import TestClient

    from protloc.web.app import create_app

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 32, 32), np.uint8))
    png = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(png, "PNG")  # RGBA PNG: alpha dropped
    with TestClient(create_app(fake_run)) as c:
        r = c.post("/predict", files=[("files", ("four.tif", buf.getvalue(), "image/tiff"))])
        assert r.status_code == 422 and "four.tif: expected 3 channels (red, green, blue), got 4" in r.json()["detail"]
        r = c.post("/predict", files=[("files", ("rgba.png", png.getvalue(), "image/png"))])
        assert r.status_code == 200, r.text


def test_train_records_the_column_names_it_was_given(tmp_path):
    """data.json keeps --id-col / --label-col, so report and explain can re-read the training CSV."""
    from helpers import make_tiny_dataset

    from protloc.cli.main import main

    csv, images = make_tiny_dataset(tmp_path / "data", n=24, size=16)
    lines = csv.read_text().splitlines()
    custom = tmp_path / "custom.csv"
    custom.write_text("\n".join(["name,targets", *lines[1:]]) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--csv", str(custom), "--images", str(images), "--out", str(out), "--model", "test_resnet",
                 "--pretrained", "none", "--size", "16", "--epochs", "1", "--batch-size", "8", "--quiet",
                 "--id-col", "name", "--label-col", "targets"]) == 0
    src = RunFolder(out).data_source()
    assert (src.id_col, src.label_col, src.csv) == ("name", "targets", str(custom.resolve()))
    assert src.n_images == 24


def test_config_with_non_string_keys_is_a_damaged_run_folder(tmp_path):
    """Found by the fuzz test in a fresh-clone run: `1: x` in config.yaml raised a TypeError."""
    import pytest

    from protloc.core.errors import RunFolderError
    from protloc.core.runfolder import RunFolder

    run = RunFolder(tmp_path)
    run.config_yaml.write_text("1: x\nseed: 3\n")
    with pytest.raises(RunFolderError, match="unreadable"):
        run.config()
