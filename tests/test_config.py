"""Every training option is written once (a TrainConfig field): flags, help and checks come from it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields

import pytest
import yaml

from protloc.cli.main import build_parser, main
from protloc.core.config import PRESETS, TrainConfig, flag_name
from protloc.core.errors import InputError


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_field_has_a_flag_with_its_help_and_choices():
    p = _train_parser()
    actions = {a.dest: a for a in p._actions}
    help_text = p.format_help()
    for f in fields(TrainConfig):
        a = actions[f.name]
        assert flag_name(f.name) in a.option_strings, f.name
        assert a.help.startswith(f.metadata["help"].replace("%", "%%")), f.name
        for c in f.metadata.get("choices", ()):
            assert c in (a.metavar or ""), (f.name, c)
    assert {"--drop-path", "--focal-gamma", "--channels-last", "--no-channels-last", "--note"} <= set(
        s for a in p._actions for s in a.option_strings)
    assert "val_micro_f1" in help_text and "--no-near-dup" in help_text and "--skip-bad" in help_text


def test_docs_table_lists_every_flag():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [flag_name(f.name) for f in fields(TrainConfig) if f"`{flag_name(f.name)}`" not in doc]
    assert not missing, f"docs/training.md's flag table lacks {missing}"


def test_new_flags_reach_the_config(tmp_path):
    from protloc.cli.commands.train import config_from_args

    args = _train_parser().parse_args(["--out", str(tmp_path / "r"), "--drop-path", "0.1", "--focal-gamma", "1.5",
                                       "--no-channels-last", "--no-near-dup", "--skip-bad", "--preset", "fast"])
    cfg = config_from_args(args)
    assert (cfg.drop_path, cfg.focal_gamma, cfg.channels_last, cfg.near_dup, cfg.skip_bad) == (0.1, 1.5, False, False, True)
    assert (cfg.preset, cfg.size) == ("fast", PRESETS["fast"]["size"])
    # flags not given keep the preset's / config file's values
    cfg = config_from_args(_train_parser().parse_args(["--out", str(tmp_path / "r"), "--preset", "seed"]))
    assert cfg == TrainConfig.preset("seed")


@pytest.mark.parametrize("flag,value,match", [
    ("--lr", "-1", r"--lr: expected a number > 0, got -1\.0\. Fix: pass a value > 0\."),
    ("--dropout", "1", r"--dropout: expected a number in \[0, 1\), got 1\.0"),
    ("--ema", "1.0", r"--ema: expected a number in \[0, 1\), got 1\.0"),
    ("--threshold", "1.5", r"--threshold: expected a number in \[0, 1\], got 1\.5"),
    ("--hidden", "-1", r"--hidden: expected an integer >= 0, got -1"),
    ("--max-minutes", "-2", r"--max-minutes: expected a number >= 0, got -2\.0"),
    ("--patience", "-1", r"--patience: expected an integer >= 0"),
    ("--workers", "-1", r"--workers: expected an integer >= 0"),
    ("--threads", "-1", r"--threads: expected an integer >= 0"),
    ("--folds", "0", r"--folds: expected 1 \(holdout\) or K >= 2, got 0"),
    ("--monitor", "val_f1", r"--monitor: expected val_macro_f1, val_macro_f1_best, val_mAP, val_micro_f1 or val_loss"),
])
def test_bad_values_exit_2_before_any_file_is_written(tmp_path, capsys, flag, value, match):
    import re

    out = tmp_path / "run"
    assert main(["train", "--csv", str(tmp_path / "missing.csv"), "--images", str(tmp_path), "--out", str(out),
                 flag, value]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not out.exists()


def test_fold_checks_live_in_validate():
    TrainConfig(folds=3, fold=2).validate()
    TrainConfig(folds=1, fold=0).validate()
    with pytest.raises(InputError, match=r"--fold: expected 0 to 2, got 3\. Fix: pick a fold of --folds 3\."):
        TrainConfig(folds=3, fold=3).validate()
    with pytest.raises(InputError, match=r"--fold: expected 0 to 0, got 1"):
        TrainConfig(fold=1).validate()
    with pytest.raises(InputError, match=r"--folds: expected 1 \(holdout\) or K >= 2, got 0"):
        TrainConfig(folds=0).validate()
    with pytest.raises(InputError, match=r"--lr: expected a number, got 'x'"):
        TrainConfig(lr="x").validate()


def test_default_config_is_complete_and_saves(tmp_path):
    """TrainConfig() used to get a bound method as its ``preset`` (the classmethod hid the default)."""
    cfg = TrainConfig()
    assert cfg.preset == "default" and TrainConfig.preset("default") == cfg
    cfg.save(tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["preset"] == "default"
    assert TrainConfig.resolve(file=tmp_path / "c.yaml") == cfg


def test_validate_needs_no_training_engine():
    """core.config checks choices and bounds without importing torch, timm or protloc.training."""
    code = ("import sys; from protloc.core.config import TrainConfig; TrainConfig.preset('seed').validate(); "
            "bad = [m for m in ('torch', 'timm', 'lightning', 'protloc.training') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_check_recipe_knows_losses_and_augments():
    """The engine's checks (unknown --model: tests/test_bad_input.py) and validate() in one call."""
    from protloc.training import check_recipe

    assert check_recipe(TrainConfig(model="test_resnet")) == TrainConfig(model="test_resnet")
    with pytest.raises(InputError, match=r"--augment: expected a comma list of d4, flips"):
        check_recipe(TrainConfig(augment="d4,blur"))
    with pytest.raises(InputError, match=r"--loss: expected terms from bce"):
        check_recipe(TrainConfig(loss="bce+mse"))
    with pytest.raises(InputError, match=r"--lr: expected a number > 0"):
        check_recipe(TrainConfig(lr=0.0))
