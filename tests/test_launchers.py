"""Ranks under external launchers: 2 CPU processes (gloo) started the way srun and torchrun start them.

Each test starts both ranks of `protloc train --devices 2 --strategy ddp` at once with the
launcher's variables and checks that rank 0 alone writes every file (``PROTLOC_WRITE_LOG``: one
line per finished atomic write, with the writer's pid), that rank 1 took rank 0's data setup
instead of redoing it, and that validation metrics and the out-of-fold file count every
validation image exactly once (the 2-rank sampler pads one duplicate).
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from helpers import free_port, make_tiny_dataset, run_together

pytestmark = pytest.mark.slow

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "PROTLOC_LAUNCH_ID")


def _launch(tmp_path, rank_env, *extra):
    """Start one `protloc train` per entry of ``rank_env`` (rank 0 first) at the same time."""
    csv, images = make_tiny_dataset(tmp_path / "data", n=40, size=32)
    out, wlog = tmp_path / "run", tmp_path / "writes.jsonl"
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    base.update(PROTLOC_CACHE_DIR=str(tmp_path / "cache"), PYTHONWARNINGS="ignore", PROTLOC_WRITE_LOG=str(wlog),
                PROTLOC_SETUP_TIMEOUT="240")
    exe = Path(sys.executable).with_name("protloc")
    cmd = [str(exe), "train", "--csv", str(csv), "--images", str(images), "--out", str(out), "--model", "test_resnet",
           "--pretrained", "none", "--size", "32", "--batch-size", "4", "--epochs", "2", "--accelerator", "cpu",
           "--devices", "2", "--strategy", "ddp", "--threads", "1", "--val-fraction", "0.2", "--quiet", *extra]
    pids, outs = run_together(cmd, [{**base, **e} for e in rank_env])
    writes = [json.loads(line) for line in wlog.read_text().splitlines()]
    return out, pids, [err for _, err in outs], writes


def _check_one_writer(out: Path, pids, errs, writes):
    rank0, rank1 = pids
    by_path = defaultdict(set)
    for w in writes:
        by_path[w["path"]].add(w["pid"])
        assert rank1 not in (w["pid"], w["ppid"]), f"rank 1 wrote {w['path']}"
        assert rank0 in (w["pid"], w["ppid"]), w  # rank 0, or its store-building workers
    assert all(len(p) == 1 for p in by_path.values()), {k: v for k, v in by_path.items() if len(v) > 1}
    written = {Path(p).relative_to(out).as_posix() for p in by_path if Path(p).is_relative_to(out)}
    assert {"config.yaml", "preprocessing.json", "splits.csv", "models/fold0.pt", "checkpoints/fold0/best.ckpt",
            "folds/fold0/oof.csv", "folds/fold0/metrics.csv", "oof.csv", "metrics.csv", "summary.json"} <= written
    assert any(p.startswith(".launch/") for p in written)  # rank 0's setup marker
    assert "using rank 0's data setup" in errs[1] and "using rank 0's data setup" not in errs[0]
    # every validation image once, de-duplicated after the sampler's padding
    splits = pd.read_csv(out / "splits.csv", dtype={"Image": str})
    n_val = int((splits["fold"] == 0).sum())
    assert n_val % 2 == 1
    m = pd.read_csv(out / "metrics.csv")
    assert (m["val_n_images"] == n_val).all() and (m["val_n_seen"] == n_val + 1).all()
    oof = pd.read_csv(out / "oof.csv", dtype={"Image": str})
    assert sorted(oof["Image"]) == sorted(splits.loc[splits["fold"] == 0, "Image"]) and oof["Image"].is_unique
    assert json.loads((out / "summary.json").read_text())["oof_images"] == n_val
    log = (out / "train.log").read_text()
    assert log.count("fold 0 done") == 1 and log.count("OOF macro F1") == 1


def test_slurm_srun_ranks_one_writer_each_image_once(tmp_path):
    port = free_port()
    common = dict(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_NODEID="0",
                  SLURM_JOB_NAME="protloc-test", SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_NODELIST="localhost",
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    envs = [{**common, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)]
    out, pids, errs, writes = _launch(tmp_path, envs)
    _check_one_writer(out, pids, errs, writes)
    assert (out / ".launch" / "slurm-4242.0-r0.json").is_file()


def test_torchrun_ranks_one_writer_each_image_once(tmp_path):
    port = free_port()
    common = dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(port), TORCHELASTIC_RUN_ID="t-123", TORCHELASTIC_RESTART_COUNT="0")
    envs = [{**common, "RANK": str(r), "LOCAL_RANK": str(r)} for r in (0, 1)]
    out, pids, errs, writes = _launch(tmp_path, envs)
    _check_one_writer(out, pids, errs, writes)
    assert (out / ".launch" / "torchrun-t-123-r0.json").is_file()
