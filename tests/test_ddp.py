"""2-process DDP on CPU (gloo) through the real CLI and Lightning's own launcher: every validation
image counted exactly once, every run file written by rank 0 alone (the launcher's parent process)."""

from __future__ import annotations

import json
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
    wlog = tmp_path / "writes.jsonl"
    env = {**os.environ, "PROTLOC_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore",
           "PROTLOC_WRITE_LOG": str(wlog)}
    cmd = [str(exe), "train", "--csv", str(csv), "--images", str(images), "--out", str(out), "--model", "test_resnet",
           "--pretrained", "none", "--size", "32", "--batch-size", "4", "--epochs", "2", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", "--threads", "1", "--no-near-dup", "--val-fraction", "0.23",
           "--freeze-epochs", "1",  # head-only first epoch: exercises find_unused_parameters
           "--quiet"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, err[-3000:]
    writes = [json.loads(line) for line in wlog.read_text().splitlines()]
    run_writes = [w for w in writes if Path(w["path"]).is_relative_to(out)]
    assert {w["pid"] for w in run_writes} == {p.pid}  # rank 0; rank 1 (Lightning's child) wrote nothing
    assert any(w["path"].endswith("oof.csv") for w in run_writes)
    assert "using rank 0's data setup" in err  # rank 1 read rank 0's splits/statistics, did not redo them
    splits = pd.read_csv(out / "splits.csv", dtype={"Image": str})
    n_val = int((splits["fold"] == 0).sum())
    assert n_val % 2 == 1  # odd: the 2-rank sampler pads one duplicate
    m = pd.read_csv(out / "metrics.csv")
    assert (m["val_n_images"] == n_val).all()          # de-duplicated by dataset index
    assert (m["val_n_seen"] == n_val + 1).all()         # what the ranks saw, padding included
    oof = pd.read_csv(out / "oof.csv", dtype={"Image": str})
    assert sorted(oof["Image"]) == sorted(splits.loc[splits["fold"] == 0, "Image"]) and oof["Image"].is_unique
    assert (out / "models" / "fold0.pt").is_file()
