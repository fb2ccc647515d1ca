"""`protloc predict` in parts (Lightning Trainer.predict + a prediction writer): the same files as
one process, resumable, shardable, one writer per part."""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from helpers import free_port, make_fake_run, make_tiny_dataset, run_together
from protloc.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A run, 40 images and what plain (one-process) `protloc predict` writes for them."""
    root = tmp_path_factory.mktemp("parts")
    csv, images = make_tiny_dataset(root / "data", n=40, size=32)
    run = make_fake_run(root / "run")
    ref, ref_p = root / "ref.csv", root / "ref_probs.csv"
    assert main(["predict", str(run), "--csv", str(csv), "--images", str(images), "--out", str(ref),
                 "--probs", str(ref_p), "--no-progress", "--threads", "1"]) == 0
    return dict(run=run, csv=csv, images=images, ref=ref.read_text(),
                ref_probs=pd.read_csv(ref_p, dtype={"Image": str}))


def predict(s, out, *extra, probs=True):
    args = ["predict", str(s["run"]), "--csv", str(s["csv"]), "--images", str(s["images"]), "--out", str(out),
            "--no-progress", "--threads", "1", *extra]
    if probs:
        args += ["--probs", str(out.with_name(out.stem + "_probs.csv"))]
    return main(args)


def same_as_plain(s, out):
    assert out.read_text() == s["ref"]  # labels, ids, input order: byte for byte
    got = pd.read_csv(out.with_name(out.stem + "_probs.csv"), dtype={"Image": str})
    ref = s["ref_probs"]
    assert list(got.columns) == list(ref.columns) and list(got["Image"]) == list(ref["Image"])
    assert (got.iloc[:, 1:] - ref.iloc[:, 1:]).abs().max().max() < 2e-6


def test_parts_equal_one_process_and_rerun_resumes(setup, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert predict(setup, out, "--devices", "1", "--part-rows", "8") == 0
    same_as_plain(setup, out)
    folder = tmp_path / "sub.csv.parts"
    names = sorted(p.name for p in folder.glob("rows-*.csv"))
    assert names == [f"rows-{a:09d}-{a + 7:09d}.csv" for a in range(0, 40, 8)]
    assert "5 parts in" in capsys.readouterr().out
    # a killed run: two parts never written, a stale temp file of a third
    (folder / names[1]).unlink()
    (folder / names[3]).unlink()
    (folder / f".{names[2]}.deadbeef.tmp").write_text("half")
    out.unlink()
    assert predict(setup, out, "--devices", "1") == 0  # the part size comes from the manifest
    assert "(3 were done before)" in capsys.readouterr().out
    same_as_plain(setup, out)


def test_other_options_refuse_old_parts(setup, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert predict(setup, out, "--devices", "1", "--part-rows", "16") == 0
    assert predict(setup, out, "--devices", "1", "--tta", "flip") == 2
    err = capsys.readouterr().err
    assert "sub.csv.parts: its parts were made with other settings (tta: 'none' there, 'flip' now)" in err
    assert "Fix: predict with the same run, data and options to resume, or delete" in err


def test_shards_then_merge_in_input_order(setup, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert predict(setup, out, "--shard", "0/3", "--part-rows", "8") == 0
    assert "still missing (other shards)" in capsys.readouterr().out and not out.exists()
    assert predict(setup, out, "--shard", "2/3") == 0
    assert predict(setup, out, "--merge-shards", "--shard", "0/3") == 2
    err = capsys.readouterr().err
    assert "2 of 5 parts are not done yet, e.g. rows 8-15 (shards 1 of 3)" in err and "Fix: run the missing" in err
    assert predict(setup, out, "--shard", "1/3") == 0  # the last shard merges
    same_as_plain(setup, out)
    out.unlink()
    assert predict(setup, out, "--merge-shards") == 0
    same_as_plain(setup, out)


def test_shard_option_is_checked(setup, tmp_path, capsys):
    assert predict(setup, tmp_path / "s.csv", "--shard", "3/3") == 2
    assert "--shard: expected i/n with 0 <= i < n" in capsys.readouterr().err


def test_unreadable_images_skipped_or_named(setup, tmp_path, capsys):
    bad = tmp_path / "images"
    bad.mkdir()
    for p in Path(setup["images"]).iterdir():
        (bad / p.name).symlink_to(p)
    (bad / "1003.png").unlink()
    (bad / "1003.png").write_bytes(b"not a png")
    (bad / "1017.png").unlink()
    s = {**setup, "images": bad}
    assert predict(s, tmp_path / "a.csv", "--devices", "1", "--part-rows", "8") == 2
    assert "1003" in capsys.readouterr().err
    out = tmp_path / "b.csv"
    assert predict(s, out, "--devices", "1", "--part-rows", "8", "--skip-bad") == 0
    cap = capsys.readouterr()
    assert "38 images" in cap.out and "2 skipped" in cap.out
    assert "skipped: " in cap.err and "1003" in cap.err and "1017" in cap.err
    got = pd.read_csv(out, dtype={"Image": str})
    ref = pd.read_csv(pd.io.common.StringIO(setup["ref"]), dtype={"Image": str})
    assert list(got["Image"]) == [i for i in ref["Image"] if i not in ("1003", "1017")]
    assert (tmp_path / "b.csv.parts" / "rows-000000000-000000007.skipped.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_two_ranks_split_the_parts_one_writer_each(setup, tmp_path, launcher):
    """2 CPU ranks (gloo): Lightning's own launcher (--devices 2), or both started at once with
    torchrun's variables. Every part is written once, by one rank; both ranks work; same output."""
    out, wlog = tmp_path / "sub.csv", tmp_path / "writes.jsonl"
    exe = Path(sys.executable).with_name("protloc")
    cmd = [str(exe), "predict", str(setup["run"]), "--csv", str(setup["csv"]), "--images", str(setup["images"]),
           "--out", str(out), "--probs", str(tmp_path / "sub_probs.csv"), "--devices", "2", "--device", "cpu",
           "--part-rows", "6", "--threads", "1", "--workers", "1"]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                                                              "TORCHELASTIC_RUN_ID", "MASTER_PORT")}
    base.update(PROTLOC_WRITE_LOG=str(wlog), PYTHONWARNINGS="ignore")
    if launcher == "lightning":
        envs = [base]
    else:
        port = str(free_port())
        envs = [{**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                 "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                 "TORCHELASTIC_RUN_ID": "p-1"} for r in (0, 1)]
    pids, outs = run_together(cmd, envs)
    assert "wrote " in outs[0][0] and "7 parts" in outs[0][0]
    same_as_plain(setup, out)
    writers = defaultdict(set)
    for line in wlog.read_text().splitlines():
        w = json.loads(line)
        writers[Path(w["path"]).name].add(w["pid"])
    parts = {k: v for k, v in writers.items() if k.startswith("rows-")}
    assert len(parts) == 7 and all(len(v) == 1 for v in parts.values())
    assert len(set().union(*parts.values())) == 2  # both ranks wrote parts
    assert writers["sub.csv"] == {pids[0]} == writers["sub_probs.csv"]  # rank 0 merged


def test_hardware_options_checked_before_any_file(setup, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert predict(setup, out, "--devices", "two") == 2
    assert "--devices: expected a count >= 1, auto, -1 (all) or device indices like 0,1, got 'two'" in \
        capsys.readouterr().err
    assert predict(setup, out, "--devices", "0,1", "--device", "cpu") == 2  # GPU indices on the CPU
    assert "Lightning refuses them on this machine" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv.parts").exists() and not out.exists()


def test_onnx_shard_task_runs_without_torch(setup, tmp_path):
    """A job-array task (one process, --shard, ONNX engine) runs the parts loop without Lightning's
    Trainer and never imports torch (RSS ~0.1 GB instead of ~1.2 GB per task)."""
    import shutil
    import subprocess

    run = tmp_path / "run"
    shutil.copytree(setup["run"], run)
    assert main(["export", str(run)]) == 0
    out = tmp_path / "sub.csv"
    code = ("import sys; from protloc.cli.main import main; "
            f"rc = main(['predict', {str(run)!r}, '--csv', {str(setup['csv'])!r}, '--images', "
            f"{str(setup['images'])!r}, '--out', {str(out)!r}, '--shard', '0/1', '--engine', 'onnx', "
            "'--device', 'cpu', '--part-rows', '16', '--no-progress']); "
            "print(rc, 'torch' in sys.modules, 'lightning' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split()[-3:] == ["0", "False", "False"], r.stdout + r.stderr[-2000:]
    got = pd.read_csv(out, dtype={"Image": str})
    ref = pd.read_csv(pd.io.common.StringIO(setup["ref"]), dtype={"Image": str})
    assert list(got["Image"]) == list(ref["Image"])
    assert (got["Label"].fillna("") == ref["Label"].fillna("")).mean() > 0.9  # ONNX = torch within 1e-6
