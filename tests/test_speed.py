"""Fast by default (issue 13): the auto engine and its cached ONNX model, the int8 gate, batched
TTA views, worker threads. Tiny test_resnet runs; the speed figures live in benchmarks/."""

import os
import json
import shutil

import numpy as np
import pytest

from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.core.runfolder import RunFolder
from protloc.inference.onnx import cached_onnx, run_fingerprint
from protloc.inference.predictor import Predictor, check_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _retrain(run, seed):
    """New weights for fold 0 (as a re-training would leave them)."""
    import torch

    from protloc.models.network import build_model, load_weights, save_weights

    spec = load_weights(RunFolder(run).model_path(0)).spec
    torch.manual_seed(seed)
    save_weights(build_model(spec), RunFolder(run).model_path(0))


@pytest.fixture()
def run(tmp_path):
    from helpers import make_fake_run

    return make_fake_run(tmp_path / "run", seed=3)


def test_auto_engine_uses_onnx_and_reexports_when_weights_change(run):
    notes = []
    b = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    p1 = Predictor.from_run(run, note=notes.append)
    assert p1.engine == "onnx" and p1.model_file == RunFolder(run).onnx_path
    assert len(notes) == 1 and "exported the run's ONNX model once" in notes[0]
    meta = json.loads(RunFolder(run).onnx_meta_path.read_text())
    assert meta["fingerprint"] == run_fingerprint(run, [0]) and meta["thresholds"] == [0.5] * 10
    Predictor.from_run(run, note=notes.append)
    assert len(notes) == 1  # cached: no second export
    _retrain(run, seed=11)
    p2 = Predictor.from_run(run, note=notes.append)
    assert "model.onnx: the fold weights changed since it was exported; re-exported" in notes[-1]
    ref = Predictor.from_run(run, engine="torch").predict_array(b)
    np.testing.assert_allclose(p2.predict_array(b), ref, atol=1e-4)
    assert np.abs(p1.predict_array(b) - ref).max() > 1e-3  # the stale model would have been wrong


def test_foreign_onnx_is_reexported(run, tmp_path):
    from helpers import make_fake_run

    other = make_fake_run(tmp_path / "other", seed=4)
    cached_onnx(other, note=lambda m: None)
    rf = RunFolder(run)
    shutil.copy(RunFolder(other).onnx_path, rf.onnx_path)  # the .onnx alone, with this run's old sidecar
    cached_onnx(run, note=lambda m: None)
    shutil.copy(RunFolder(other).onnx_path, rf.onnx_path)
    notes = []
    path, _ = cached_onnx(run, note=notes.append)
    assert "does not match its sidecar" in notes[0]
    shutil.copy(RunFolder(other).onnx_path, rf.onnx_path)
    shutil.copy(RunFolder(other).onnx_meta_path, rf.onnx_meta_path)
    cached_onnx(run, note=notes.append)
    assert "weights changed" in notes[-1]


def test_auto_falls_back_to_torch_when_export_fails(run, monkeypatch):
    import protloc.inference.onnx as onnx_mod

    def boom(*a, **k):
        raise RuntimeError("Unsupported: ONNX export of operator foo\nmore")

    monkeypatch.setattr(onnx_mod, "export_onnx", boom)
    notes = []
    p = Predictor.from_run(run, note=notes.append)
    assert p.engine == "torch"
    assert notes[-1].startswith("cannot use onnxruntime for this run (RuntimeError: Unsupported: ONNX export")
    assert notes[-1].endswith("using torch") and "\n" not in notes[-1]
    with pytest.raises(RuntimeError):  # asked for onnx explicitly: no silent fallback
        Predictor.from_run(run, engine="onnx", note=notes.append)


def _fake_int8(run, *, usable, change):
    rf = RunFolder(run)
    cached_onnx(run, note=lambda m: None)
    shutil.copy(rf.onnx_path, rf.onnx_file(int8=True))
    meta = json.loads(rf.onnx_meta_path.read_text())
    meta["int8"] = {"usable": usable, "macro_f1_change": change, "fingerprint": meta["fingerprint"]["key"]}
    rf.onnx_meta_path.write_text(json.dumps(meta))


def test_int8_gate(run):
    _fake_int8(run, usable=False, change=-0.02)
    notes = []
    p = Predictor.from_run(run, note=notes.append)
    assert p.quantized is None and p.model_file.name == "model.onnx"
    assert "model.int8.onnx lowers the held-out macro F1 by 0.0200 (> 0.005); using the fp32 model" in notes[-1]
    with pytest.raises(InputError, match="--int8: model.int8.onnx lowers the held-out macro F1"):
        Predictor.from_run(run, int8="on")
    _fake_int8(run, usable=True, change=-0.003)
    p = Predictor.from_run(run, note=notes.append)
    assert p.quantized == "int8" and p.model_file.name == "model.int8.onnx" and "int8" in p.describe()
    assert Predictor.from_run(run, int8="off").quantized is None
    _retrain(run, seed=12)  # the int8 file is now stale: never used
    p = Predictor.from_run(run, note=notes.append)
    assert p.quantized is None and "model.int8.onnx is stale" in notes[-1]


def test_export_int8_records_the_held_out_f1_change(run, tmp_path, capsys):
    from helpers import make_tiny_dataset

    from protloc.core.atomic import write_json
    from protloc.core.runfolder import DataSource

    _, images = make_tiny_dataset(tmp_path / "data", n=40, size=32)
    write_json(RunFolder(run).data_json, DataSource(images=str(images), fmt="rgb", channels=("red", "green", "blue"),
                                                    schema="ghent10", n_images=40).to_dict())
    assert main(["export", str(run), "--int8", "--calib-images", "12"]) == 0
    out = capsys.readouterr().out
    q = json.loads(RunFolder(run).onnx_meta_path.read_text())["int8"]
    assert RunFolder(run).onnx_file(int8=True).is_file() and "held-out macro F1" in out
    assert q["calibration"].startswith("12 out-of-fold") and q["evaluation"].startswith("28 other")
    assert q["usable"] == (-q["macro_f1_change"] <= 0.005)
    assert abs(q["macro_f1_change"] - (q["macro_f1_int8"] - q["macro_f1_fp32"])) < 1e-4
    # scored at thresholds fitted on other images; the run's own thresholds (fitted on these) recorded apart
    assert "other half" in q["evaluation"] and "flatters fp32" in q["at_run_thresholds"]["note"]
    # the first quarter of the convolutions (high resolution) stay fp32: no dequantised weights feed them
    import onnx

    g = onnx.load(str(RunFolder(run).onnx_file(int8=True))).graph
    made_by = {o: n.op_type for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert q["fp32_nodes"] and [n.name for n in convs[:len(q["fp32_nodes"])]] == q["fp32_nodes"]
    for n in convs:
        assert (made_by.get(n.input[1]) == "DequantizeLinear") == (n.name not in q["fp32_nodes"]), n.name
    p = Predictor.from_run(run, note=lambda m: None)
    assert p.quantized == ("int8" if q["usable"] else None)
    assert main(["export", str(run), "--int8", "--calib-images", "0"]) == 2


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_batched_d4_equals_per_view_d4(tmp_path, engine):
    from helpers import make_fake_run

    from protloc.core.tta import merge_probs, tta_views

    run = make_fake_run(tmp_path / "r", folds=2, seed=6)
    p = Predictor.from_run(run, engine=engine, note=lambda m: None)
    b = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3)).astype(np.uint8)
    x = p.preprocessing.normalize(b)
    single = Predictor.from_run(run, engine=engine, threads=1, note=lambda m: None)
    import torch

    nets = [Predictor.from_run(run, engine="torch", folds=[f], note=lambda m: None).models[0] for f in p.folds]
    for merge in ("mean", "max"):  # one view at a time, each fold separately (what predict did before)
        stack = []
        with torch.inference_mode():
            for v in tta_views(x, "d4"):
                for net in nets:
                    stack.append(torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(v)))).numpy())
        per_view = merge_probs(np.stack(stack), merge)
        np.testing.assert_allclose(p.predict_array(b, tta="d4", merge=merge), per_view, atol=1e-5)
        np.testing.assert_allclose(single.predict_array(b, tta="d4", merge=merge, batch_size=2), per_view, atol=1e-5)


def test_threads_give_the_same_numbers_and_are_checked(run):
    b = np.random.default_rng(2).integers(0, 255, (9, 32, 32, 3)).astype(np.uint8)
    one = Predictor.from_run(run, threads=1, note=lambda m: None).predict_array(b, tta="flip")
    three = Predictor.from_run(run, threads=3, note=lambda m: None)
    assert three.threads == 3
    np.testing.assert_allclose(three.predict_array(b, tta="flip", batch_size=2), one, atol=1e-6)
    assert check_threads(None) is None and check_threads("4") == 4
    for bad in (0, -1, "x", "1.5", 2.5):
        with pytest.raises(InputError, match=r"--threads: expected an integer >= 1"):
            check_threads(bad)


def test_cli_predict_threads_and_engine_flags(run, tmp_path, capsys):
    from helpers import make_tiny_dataset

    _, images = make_tiny_dataset(tmp_path / "d", n=5, size=32)
    out = tmp_path / "s.csv"
    assert main(["predict", str(run), "--images", str(images), "--out", str(out), "--threads", "0"]) == 2
    assert "error: --threads: expected an integer >= 1" in capsys.readouterr().err
    assert main(["predict", str(run), "--images", str(images), "--out", str(out), "--threads", "2"]) == 0
    err = capsys.readouterr().err
    assert "exported the run's ONNX model once" in err and "engine: onnx (model.onnx), 1 fold model(s), 2 thread(s)" in err
    assert main(["predict", str(run), "--images", str(images), "--out", str(out), "--engine", "torch",
                 "--no-progress"]) == 0
    assert main(["predict", str(run), "--images", str(images), "--out", str(out), "--int8", "on"]) == 2
    assert "no quantised model" in capsys.readouterr().err


def test_train_threads_are_the_free_cores(monkeypatch):
    import torch

    from protloc.core.config import TrainConfig
    from protloc.core.cpu import available_cores
    from protloc.training.train import set_threads

    import protloc.core.cpu as cpu

    monkeypatch.setattr(cpu, "busy_elsewhere", lambda: 50.0)  # a busy machine: one thread
    assert set_threads(TrainConfig()) == 1 == torch.get_num_threads()
    monkeypatch.setattr(cpu, "busy_elsewhere", lambda: 0.0)  # idle: every core
    assert set_threads(TrainConfig()) == available_cores()
    assert set_threads(TrainConfig(threads=3)) == 3  # --threads wins


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_free_cores_sees_what_runs_now_not_the_last_minute(monkeypatch):
    """The 1-minute load average trails: right after protloc's own synth ran on both cores an idle
    2-core machine read as busy and the demo trained with 1 thread. What runs now decides."""
    import subprocess
    import sys
    import time

    from protloc.core.cpu import busy_elsewhere, free_cores

    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 30.0, 30.0))  # a minute of own work just ended
    assert free_cores(cores=64) >= 62  # nothing of the (old) load average is taken as busy now
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_elsewhere(samples=15) >= 1  # a process that runs now is seen
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.parametrize("channels", [("red", "green", "blue"), ("red", "green", "blue", "yellow")])
def test_normalize_equals_the_mean_std_formula(channels):
    """The one-pass normalisation (issue 13) gives (x / 255 - mean) / std in (N, C, H, W)."""
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.schema import LabelSchema

    c = len(channels)
    rng = np.random.default_rng(1)
    mean, std = tuple(rng.uniform(0, 0.5, c)), tuple(rng.uniform(0.05, 0.4, c))
    pre = Preprocessing("rgb" if c == 3 else "hpa-channels", channels, 16, mean, std, LabelSchema("t", ("a",)))
    b = rng.integers(0, 256, (5, 16, 12, c)).astype(np.uint8)
    want = ((b / 255.0 - np.array(mean)) / np.array(std)).transpose(0, 3, 1, 2)
    got = pre.normalize(b)
    assert got.dtype == np.float32 and got.shape == (5, c, 16, 12) and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    with pytest.raises(InputError, match="N, H, W, C"):
        pre.normalize(b[0])
    with pytest.raises(InputError, match=f"expected {c} channels"):
        pre.normalize(b[..., :2])


def test_predict_on_a_cached_onnx_model_imports_no_torch_pandas_or_onnx(run, tmp_path):
    """Start-up (issue 13): with the run's ONNX model current, `protloc predict` loads only
    onnxruntime and numpy: no torch, pandas (0.3 s), onnx (0.2 s with its graph parse)."""
    import subprocess
    import sys

    from helpers import make_tiny_dataset

    csv, images = make_tiny_dataset(tmp_path / "d", n=6, size=32)
    assert main(["predict", str(run), "--images", str(images), "--out", str(tmp_path / "a.csv")]) == 0  # exports
    code = ("import sys; from protloc.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'pandas', 'onnx', 'timm', 'lightning') if m in sys.modules)); "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "predict", str(run), "--images", str(images), "--csv", str(csv),
                          "--out", str(tmp_path / "b.csv")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "a.csv").read_text()


def blas_threads():
    """The thread counts of numpy's BLAS libraries now (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})


def test_prediction_runs_numpy_blas_on_one_thread_and_restores_it(run, monkeypatch):
    """Each worker is one core's work (issue 13): numpy's BLAS must not add threads of its own
    inside a prediction (they had cost a quarter of the 2-core throughput), and the process's
    setting comes back afterwards."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != [2]:
            pytest.skip("numpy has no BLAS threadpool to limit here")
        pred = Predictor.from_run(run, threads=2, note=lambda m: None)
        seen = []
        real = type(pred)._forward

        def spy(self, b, **kw):
            seen.append(blas_threads())
            return real(self, b, **kw)

        monkeypatch.setattr(type(pred), "_forward", spy)
        b = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3)).astype(np.uint8)
        pred.predict_array(b, batch_size=4)
        assert seen and all(s == [1] for s in seen)
        assert blas_threads() == [2]


def test_overlapping_predictions_share_one_blas_limit_and_restore_it():
    """Two predictions in two threads (the web app) overlap: the limit holds until the last
    one ends, then the process's own setting comes back (a naive nested limit left BLAS at 1)."""
    from threadpoolctl import threadpool_limits

    from protloc.inference.predictor import one_blas_thread

    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != [2]:
            pytest.skip("numpy has no BLAS threadpool to limit here")
        a, b = one_blas_thread(), one_blas_thread()
        a.__enter__()
        b.__enter__()
        assert blas_threads() == [1]
        a.__exit__(None, None, None)                 # the first one ends while the second runs
        assert blas_threads() == [1]
        b.__exit__(None, None, None)
        assert blas_threads() == [2]
