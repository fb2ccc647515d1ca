"""2-process DDP on CPU (gloo) through the real CLI: every validation image counted exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from helpers import make_tiny_dataset


def test_ddp_two_processes_count_each_val_image_once(tmp_path):
    csv, images = make_tiny_dataset(tmp_path / "data", n=40, size=32)
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("protloc")
    env = {**os.environ, "PROTLOC_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    cmd = [str(exe), "train", "--csv", str(csv), "--images", str(images), "--out", str(out), "--model", "test_resnet",
           "--pretrained", "none", "--size", "32", "--batch-size", "4", "--epochs", "2", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", "--threads", "1", "--no-near-dup", "--val-fraction", "0.23",
           "--freeze-epochs", "1",  # head-only first epoch: exercises find_unused_parameters
           "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    splits = pd.read_csv(out / "splits.csv", dtype={"Image": str})
    n_val = int((splits["fold"] == 0).sum())
    assert n_val % 2 == 1  # odd: the 2-rank sampler pads one duplicate
    m = pd.read_csv(out / "metrics.csv")
    assert (m["val_n_images"] == n_val).all()          # de-duplicated by dataset index
    assert (m["val_n_seen"] == n_val + 1).all()         # what the ranks saw, padding included
    oof = pd.read_csv(out / "oof.csv", dtype={"Image": str})
    assert sorted(oof["Image"]) == sorted(splits.loc[splits["fold"] == 0, "Image"]) and oof["Image"].is_unique
    assert (out / "models" / "fold0.pt").is_file()
