"""Ranks and launch ids under each launcher's variables, and rank 0's setup handshake."""

from __future__ import annotations

import threading
import time

import pytest

from protloc.cluster import (Launch, SetupFailed, detect_launch, ensure_launch_id, publish_setup, setup_key,
                             wait_for_setup)

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "PROTLOC_LAUNCH_ID",
               "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
               "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "LSB_JOBID")


@pytest.fixture
def env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)

    def set_(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, str(v))
    return set_


def test_slurm_task_1_is_not_the_main_process(env):
    """srun sets no RANK: the old check (RANK/LOCAL_RANK/NODE_RANK) made every task rank 0."""
    from protloc.training.train import is_main_process

    env(SLURM_NTASKS=8, SLURM_NTASKS_PER_NODE=4, SLURM_PROCID=5, SLURM_LOCALID=1, SLURM_NODEID=1,
        SLURM_JOB_NAME="train", SLURM_JOB_ID=77, SLURM_STEP_ID=0)
    la = detect_launch()
    assert (la.launcher, la.global_rank, la.local_rank, la.node_rank, la.world_size) == ("slurm", 5, 1, 1, 8)
    assert la.launch_id == "slurm-77.0-r0" and la.external and la.unique and not la.is_main
    assert not is_main_process()
    env(SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0)
    assert is_main_process()


def test_srun_ntasks_without_ntasks_per_node_is_a_clear_error(env):
    from protloc.core.errors import InputError

    env(SLURM_NTASKS=2, SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0, SLURM_JOB_NAME="x", SLURM_JOB_ID=1)
    with pytest.raises(InputError, match="SLURMEnvironment.*--ntasks-per-node.*Fix: correct the launcher"):
        detect_launch()


def test_interactive_slurm_allocation_is_not_a_slurm_launch(env):
    env(SLURM_NTASKS=1, SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0, SLURM_JOB_NAME="bash", SLURM_JOB_ID=1)
    assert detect_launch().launcher == "lightning"


def test_torchrun_ranks_and_run_id(env):
    env(RANK=3, LOCAL_RANK=1, WORLD_SIZE=4, LOCAL_WORLD_SIZE=2, GROUP_RANK=1, MASTER_ADDR="n0", MASTER_PORT=29500,
        TORCHELASTIC_RUN_ID="abc", TORCHELASTIC_RESTART_COUNT=2)
    la = detect_launch()
    assert (la.launcher, la.global_rank, la.local_rank, la.node_rank, la.world_size) == ("torchelastic", 3, 1, 1, 4)
    assert la.launch_id == "torchrun-abc-r2" and la.unique
    env(TORCHELASTIC_RUN_ID="none")  # static multi-node torchrun without --rdzv-id
    la = detect_launch()
    assert la.launch_id == "torchrun-none-r2-n0:29500" and not la.unique and la.safe_id == "torchrun-none-r2-n0_29500"
    env(PROTLOC_LAUNCH_ID="job-9")  # the user's id wins
    assert detect_launch().launch_id == "job-9" and detect_launch().unique


def test_torchrun_wins_inside_slurm(env):
    env(SLURM_NTASKS=2, SLURM_NTASKS_PER_NODE=2, SLURM_PROCID=0, SLURM_LOCALID=0, SLURM_NODEID=0,
        SLURM_JOB_NAME="x", SLURM_JOB_ID=5, RANK=1, LOCAL_RANK=1, WORLD_SIZE=2, GROUP_RANK=0, TORCHELASTIC_RUN_ID="r")
    la = detect_launch()
    assert la.launcher == "torchelastic" and la.global_rank == 1  # the Trainer's priority order


def test_lightning_launcher_gives_its_ranks_a_fresh_launch_id(env):
    a = ensure_launch_id()
    assert (a.launcher, a.global_rank, a.external, a.world_size) == ("lightning", 0, False, None)
    b = ensure_launch_id()
    assert a.launch_id.startswith("lightning-") and a.launch_id != b.launch_id  # one per run
    # a rank Lightning started at trainer.fit: LOCAL_RANK/NODE_RANK/WORLD_SIZE + the inherited id
    env(LOCAL_RANK=1, NODE_RANK=0, WORLD_SIZE=2)
    c = ensure_launch_id()
    assert (c.global_rank, c.external, c.world_size, c.launch_id) == (1, True, 2, b.launch_id)
    env(LOCAL_RANK=1, NODE_RANK=2, WORLD_SIZE=8)
    assert detect_launch(devices_per_node=4).global_rank == 9


def _launch(rank=1, *, lid="slurm-1.0-r0", unique=True) -> Launch:
    return Launch("slurm", rank, rank, 0, 2, lid, True, unique)


def test_waiting_rank_gets_rank0_marker(tmp_path):
    path, key = tmp_path / ".launch" / "x.json", setup_key({"a": 1})
    t = threading.Timer(0.3, lambda: publish_setup(path, _launch(0), key=key, info={"store": "S"}))
    t.start()
    said = []
    m = wait_for_setup(path, _launch(), key=key, timeout=30, poll=0.05, say=said.append)
    assert m["store"] == "S" and m["ok"] and len(said) == 1 and "waiting for rank 0" in said[0]


def test_rank0_error_stops_the_waiting_ranks(tmp_path):
    path, key = tmp_path / "m.json", setup_key(1)
    publish_setup(path, _launch(0), key=key, error="train.csv line 3: bad label")
    with pytest.raises(SetupFailed, match="rank 0 stopped during the data setup.*bad label"):
        wait_for_setup(path, _launch(), key=key, timeout=5, poll=0.05, say=lambda m: None)


def test_wait_times_out_with_a_fix(tmp_path):
    t0 = time.time()
    with pytest.raises(SetupFailed, match="did not finish the data setup within 0 s.*PROTLOC_SETUP_TIMEOUT"):
        wait_for_setup(tmp_path / "m.json", _launch(), key="k", timeout=0.2, poll=0.05, say=lambda m: None)
    assert time.time() - t0 < 5


def test_marker_of_another_launch_or_key(tmp_path):
    path = tmp_path / "m.json"
    publish_setup(path, _launch(0, lid="slurm-OLD"), key="k")  # another launch: not ours, keep waiting
    with pytest.raises(SetupFailed, match="within"):
        wait_for_setup(path, _launch(), key="k", timeout=0.2, poll=0.05, say=lambda m: None)
    publish_setup(path, _launch(0), key="other")  # same unique launch, other options: a user error
    with pytest.raises(SetupFailed, match="other options or data"):
        wait_for_setup(path, _launch(), key="k", timeout=5, poll=0.05, say=lambda m: None)
    # a launch id that can repeat (static torchrun): an old marker with another key is ignored
    with pytest.raises(SetupFailed, match="within"):
        wait_for_setup(path, _launch(unique=False), key="k", timeout=0.2, poll=0.05, say=lambda m: None)


def test_rank0_setup_error_stops_every_rank(tmp_path):
    """Both ranks started at once (torchrun's variables); rank 0's setup fails (a fold that already
    has checkpoints): rank 1 stops with rank 0's error instead of waiting for the timeout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import free_port, make_tiny_dataset

    csv, images = make_tiny_dataset(tmp_path / "data", n=16, size=16)
    out = tmp_path / "run"
    (out / "checkpoints" / "fold0").mkdir(parents=True)
    (out / "checkpoints" / "fold0" / "last.ckpt").write_bytes(b"x")
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    base.update(PROTLOC_SETUP_TIMEOUT="120", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0",
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), TORCHELASTIC_RUN_ID="fail-1")
    cmd = [str(Path(sys.executable).with_name("protloc")), "train", "--csv", str(csv), "--images", str(images),
           "--out", str(out), "--model", "test_resnet", "--pretrained", "none", "--size", "16", "--accelerator",
           "cpu", "--devices", "2", "--strategy", "ddp", "--quiet"]
    procs = [subprocess.Popen(cmd, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs
    assert "fold 0 already has checkpoints" in errs[0]
    assert "rank 1 of 2 (torchelastic, node 0, local rank 1): rank 0 stopped during the data setup" in errs[1]
    assert "fold 0 already has checkpoints" in errs[1]
