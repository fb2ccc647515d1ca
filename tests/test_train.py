"""`protloc train` end to end on tiny data (test_resnet, 32 px, 40 images)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from protloc.cli.main import main
from protloc.core.runfolder import RunFolder
from protloc.core.schema import GHENT10

TINY = ["--model", "test_resnet", "--pretrained", "none", "--size", "32", "--batch-size", "8", "--quiet",
        "--threads", "1", "--no-near-dup"]


def train(csv, images, out, *extra):
    return main(["train", "--csv", str(csv), "--images", str(images), "--out", str(out), *TINY, *extra])


def test_train_writes_full_run_folder(trained_run):
    run = RunFolder(trained_run)
    for p in (run.config_yaml, run.schema_json, run.preprocessing_json, run.model_json, run.splits_csv,
              run.metrics_csv, run.oof_csv, run.summary_json, run.log, run.model_path(0),
              run.ckpt_dir(0) / "best.ckpt", run.ckpt_dir(0) / "last.ckpt"):
        assert p.is_file(), p
    cfg = yaml.safe_load(run.config_yaml.read_text())
    assert cfg["model"] == "test_resnet" and cfg["epochs"] == 2 and cfg["loss"] == "bce+0.5*softf1" and cfg["size"] == 32
    splits = pd.read_csv(run.splits_csv, dtype={"Image": str})
    assert list(splits.columns) == ["Image", "fold"] and len(splits) == 40
    assert set(splits["fold"]) == {-1, 0} and 6 <= (splits["fold"] == 0).sum() <= 10  # 80/20 holdout
    oof = pd.read_csv(run.oof_csv, dtype={"Image": str})
    assert list(oof.columns) == ["Image", "fold", "Label", *GHENT10]
    # every validation image exactly once
    assert sorted(oof["Image"]) == sorted(splits.loc[splits["fold"] == 0, "Image"])
    assert oof["Image"].is_unique and ((oof[list(GHENT10)] >= 0) & (oof[list(GHENT10)] <= 1)).all().all()
    m = pd.read_csv(run.metrics_csv)
    assert {"fold", "epoch", "train_loss", "val_loss", "val_macro_f1", "val_macro_f1_best", "val_mAP",
            "val_f1_0", "val_n_images"} <= set(m.columns)
    assert m["epoch"].tolist() == [0, 1] and (m["val_n_images"] == len(oof)).all()
    s = json.loads(run.summary_json.read_text())
    assert s["folds_done"] == [0] and s["oof_images"] == len(oof) and 0 <= s["val_macro_f1"] <= 1
    ids, probs, y, folds = run.oof()  # the loader other modules use
    assert probs.shape == (len(oof), 10) and y.shape == probs.shape
    assert "epoch 1" in run.log.read_text()
    from protloc.models.network import load_weights

    assert load_weights(run.model_path(0)).spec.backbone == "test_resnet"


def test_kfold_oof_covers_every_image_once(tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    assert train(csv, images, tmp_path / "r", "--folds", "2", "--epochs", "1") == 0
    run = RunFolder(tmp_path / "r")
    oof = pd.read_csv(run.oof_csv, dtype={"Image": str})
    ids = pd.read_csv(csv, dtype={"Image": str})["Image"]
    assert sorted(oof["Image"]) == sorted(ids) and oof["Image"].is_unique
    assert set(oof["fold"]) == {0, 1} and len(run.model_paths()) == 2
    assert sorted(pd.read_csv(run.metrics_csv)["fold"].unique()) == [0, 1]


def test_single_fold_then_merge(tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    out = tmp_path / "r"
    assert train(csv, images, out, "--folds", "3", "--fold", "1", "--epochs", "1") == 0
    run = RunFolder(out)
    oof = pd.read_csv(run.oof_csv, dtype={"Image": str})
    splits = pd.read_csv(run.splits_csv, dtype={"Image": str})
    assert set(oof["fold"]) == {1} and sorted(oof["Image"]) == sorted(splits.loc[splits["fold"] == 1, "Image"])
    assert [p.name for p in run.model_paths()] == ["fold1.pt"]
    # a fold "from another machine": copy its per-fold files in, then merge
    other = json.loads((out / "folds" / "fold1" / "summary.json").read_text())
    (out / "folds" / "fold0").mkdir()
    fake = oof.copy()
    fake["Image"] = splits.loc[splits["fold"] == 0, "Image"].tolist()[: len(fake)]
    fake["fold"] = 0
    fake.to_csv(out / "folds" / "fold0" / "oof.csv", index=False)
    (out / "folds" / "fold0" / "summary.json").write_text(json.dumps({**other, "fold": 0}))
    assert main(["train", "--out", str(out), "--merge"]) == 0
    merged = pd.read_csv(run.oof_csv, dtype={"Image": str})
    assert set(merged["fold"]) == {0, 1} and merged["Image"].is_unique
    assert json.loads(run.summary_json.read_text())["folds_done"] == [0, 1]


def test_max_minutes_stops_cleanly(tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    assert train(csv, images, tmp_path / "r", "--epochs", "20", "--max-minutes", "0.0005") == 0
    run = RunFolder(tmp_path / "r")
    s = json.loads(run.summary_json.read_text())["fold_summaries"][0]
    assert s["stopped_by_time_budget"] and s["epochs_run"] < 20
    assert run.model_path(0).is_file() and (run.ckpt_dir(0) / "best.ckpt").is_file()


def test_bad_image_refused_then_skipped(tiny_rgb, tmp_path, capsys):
    csv, images = tiny_rgb
    (images / "1003.png").write_bytes(b"not a png at all")
    assert train(csv, images, tmp_path / "r", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "1003" in err and "Fix:" in err and "--skip-bad" in err
    assert train(csv, images, tmp_path / "r2", "--epochs", "1", "--skip-bad") == 0
    run = RunFolder(tmp_path / "r2")
    assert "1003" not in set(pd.read_csv(run.splits_csv, dtype={"Image": str})["Image"])
    assert "1003" in run.log.read_text() and "skipping unreadable image" in run.log.read_text()


def test_existing_run_needs_resume_or_overwrite(trained_run, tiny_rgb, capsys):
    csv, images = tiny_rgb
    assert train(csv, images, trained_run, "--epochs", "1") == 2
    assert "already has checkpoints" in capsys.readouterr().err


def test_pretrained_offline_unknown_model_message():
    from protloc.core.errors import InputError
    from protloc.models.network import ModelSpec, build_model

    with pytest.raises(InputError, match=r"--pretrained offline: expected one of tf_efficientnet_lite0.*got "
                                         r"test_resnet\. Fix: pick one of those models"):
        build_model(ModelSpec("test_resnet"), pretrained="offline")


def test_config_file_and_flags_override(tmp_path):
    from protloc.core.config import TrainConfig
    from protloc.core.errors import InputError

    f = tmp_path / "c.yaml"
    f.write_text("preset: seed\nepochs: 7\nlr: 0.01\n")
    c = TrainConfig.resolve(file=f, lr=0.5)
    assert (c.preset, c.loss, c.epochs, c.lr, c.hidden) == ("seed", "softf1", 7, 0.5, 512)
    assert TrainConfig.resolve(file=f, preset="fast").size == 64
    c.save(tmp_path / "back.yaml")
    assert TrainConfig.resolve(file=tmp_path / "back.yaml") == c
    f.write_text("epochz: 3\n")
    with pytest.raises(InputError, match="training config: expected keys from"):
        TrainConfig.resolve(file=f)
    assert np.isclose(TrainConfig.preset("default").val_fraction, 0.2)


def test_recipe_options_and_four_channels(tmp_path):
    from helpers import make_tiny_dataset

    from protloc.models.network import load_weights

    csv, images = make_tiny_dataset(tmp_path / "hpa", n=24, size=32, fmt="hpa-channels",
                                    channels=("red", "green", "blue", "yellow"))
    out = tmp_path / "r"
    assert main(["train", "--csv", str(csv), "--images", str(images), "--channels", "all", "--out", str(out), *TINY,
                 "--epochs", "2", "--ema", "0.9", "--schedule", "onecycle", "--sampler", "balanced",
                 "--loss", "bce+0.5*softf1", "--freeze-epochs", "1", "--freeze-blocks", "0", "--pool", "catavgmax",
                 "--hidden", "16", "--pos-weight", "auto", "--accumulate", "2", "--monitor", "val_mAP"]) == 0
    run = RunFolder(out)
    net = load_weights(run.model_path(0))
    assert net.spec.in_chans == 4 and net.spec.pool == "catavgmax" and net.spec.hidden == 16
    assert run.preprocessing().channels == ("red", "green", "blue", "yellow")
    assert json.loads(run.summary_json.read_text())["monitor"] == "val_mAP"


@pytest.mark.parametrize("flags,match", [
    (["--schedule", "cosin"], r"--schedule: expected cosine, onecycle or constant, got 'cosin'\. Fix:"),
    (["--monitor", "val_f1"], r"--monitor: expected val_macro_f1, .* got 'val_f1'"),
    (["--epochs", "-1"], r"--epochs: expected an integer >= 0, got -1"),
    (["--loss", "mse"], r"--loss: expected terms from bce, focal, asl, softf1"),
    (["--fold", "3", "--folds", "2"], r"--fold: expected 0 to 1, got 3"),
])
def test_bad_options_messages(tiny_rgb, tmp_path, capsys, flags, match):
    import re

    csv, images = tiny_rgb
    assert train(csv, images, tmp_path / "r", *flags) == 2
    assert re.search(match, capsys.readouterr().err)


def test_training_decides_the_reading_once(tiny_rgb, tmp_path, monkeypatch):
    """The image headers are read once to decide the reading (intensity rule, Z, pixel size); the
    ranks' setup key is built from the table alone (it used to decide the reading again, on every rank)."""
    from protloc.data import reading

    calls = []
    real = reading.training_reading
    monkeypatch.setattr(reading, "training_reading", lambda *a, **k: calls.append(1) or real(*a, **k))
    csv, images = tiny_rgb
    assert train(csv, images, tmp_path / "r", "--epochs", "1") == 0
    assert len(calls) == 1


def test_oof_probabilities_are_the_views_that_predict_tta_d4_averages(trained_run, tmp_path):
    """oof.csv is what `protloc thresholds` fits on: by default (--oof-tta d4) the probabilities
    of the 8 D4 views that `predict --tta d4` averages, not single-view ones (thresholds fitted on
    single-view probabilities and applied to D4-averaged ones are miscalibrated)."""
    run = RunFolder(trained_run)
    oof = pd.read_csv(run.oof_csv, dtype={"Image": str})
    data = json.loads((run.root / "data.json").read_text())
    pd.DataFrame({"Image": oof["Image"]}).to_csv(tmp_path / "val.csv", index=False)
    got = {}
    for tta in ("none", "d4"):
        assert main(["predict", str(run.root), "--images", data["images"], "--csv", str(tmp_path / "val.csv"),
                     "--out", str(tmp_path / f"s_{tta}.csv"), "--probs", str(tmp_path / f"p_{tta}.csv"),
                     "--tta", tta, "--engine", "torch", "--threads", "1", "--no-progress"]) == 0
        got[tta] = pd.read_csv(tmp_path / f"p_{tta}.csv", dtype={"Image": str}).set_index("Image").loc[oof["Image"]]
    want = oof[list(GHENT10)].to_numpy()
    assert np.abs(got["d4"][list(GHENT10)].to_numpy() - want).max() < 1e-4
    assert np.abs(got["none"][list(GHENT10)].to_numpy() - want).max() > 1e-3  # the views do differ
    assert json.loads((run.fold_dir(0) / "summary.json").read_text())["oof_tta"] == "d4"
    import shutil

    from protloc.core.thresholds import fit_run_thresholds

    shutil.copytree(run.root, tmp_path / "run")
    fit_run_thresholds(tmp_path / "run", n_bootstrap=0)  # thresholds.json says what they were fitted on
    assert json.loads((tmp_path / "run" / "thresholds.json").read_text())["source"]["oof_tta"] == "d4"
