"""`protloc train --logger csv|tensorboard|mlflow`: the tracker shows exactly metrics.csv's rows."""

from __future__ import annotations

import importlib.util
import struct

import pandas as pd
import pytest
import yaml

from protloc.cli.main import main
from protloc.core.runfolder import RunFolder

TINY = ["--model", "test_resnet", "--pretrained", "none", "--size", "32", "--batch-size", "8", "--quiet",
        "--threads", "1", "--no-near-dup", "--epochs", "2"]


def train(tiny_rgb, out, *extra):
    csv, images = tiny_rgb
    return main(["train", "--csv", str(csv), "--images", str(images), "--out", str(out), *TINY, *extra])


def _events(folder):
    """(tag, step, value) of every scalar in the TensorBoard event files of ``folder`` (TFRecord
    framing: length, crc, Event proto, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, ev.step, v.simple_value) for v in ev.summary.value]
    return out


def test_csv_logger_rows_equal_metrics_csv(tiny_rgb, tmp_path):
    out = tmp_path / "r"
    assert train(tiny_rgb, out, "--logger", "csv") == 0
    run = RunFolder(out)
    truth = pd.read_csv(run.metrics_csv)
    logged = pd.read_csv(run.logs_dir / "csv" / "fold0" / "metrics.csv")
    assert logged["step"].tolist() == truth["epoch"].tolist() == [0, 1]
    for col in ("train_loss", "val_loss", "val_macro_f1", "val_mAP", "lr", "val_n_images"):
        assert logged[col].tolist() == pytest.approx(truth[col].tolist(), rel=1e-6), col
    hp = yaml.safe_load((run.logs_dir / "csv" / "fold0" / "hparams.yaml").read_text())
    assert hp["model"] == "test_resnet" and hp["fold"] == 0 and hp["logger"] == "csv"
    assert run.config().logger == "csv"


def test_tensorboard_logger_scalars_equal_metrics_csv(tiny_rgb, tmp_path):
    out = tmp_path / "r"
    assert train(tiny_rgb, out, "--logger", "tensorboard") == 0
    run = RunFolder(out)
    truth = pd.read_csv(run.metrics_csv)
    ev = _events(run.logs_dir / "tensorboard" / "fold0")
    f1 = [(s, v) for t, s, v in ev if t == "val_macro_f1"]
    assert [s for s, _ in f1] == [0, 1]
    assert [v for _, v in f1] == pytest.approx(truth["val_macro_f1"].tolist(), abs=1e-6)
    assert not any(t == "epoch" or t.startswith("val_loss_") for t, _, _ in ev)  # only metrics.csv's columns


def test_mlflow_missing_is_a_clear_error_before_any_file(tiny_rgb, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    out = tmp_path / "r"
    assert train(tiny_rgb, out, "--logger", "mlflow") == 2
    err = capsys.readouterr().err
    assert "--logger mlflow: expected mlflow, sqlalchemy, alembic installed, got no mlflow" in err
    assert "Fix: pip install 'protloc[mlflow]'" in err and not out.exists()


def test_mlflow_logger_local_store(tiny_rgb, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "r"
    assert train(tiny_rgb, out, "--logger", "mlflow") == 0
    run = RunFolder(out)
    truth = pd.read_csv(run.metrics_csv)
    client = MlflowClient(f"sqlite:///{run.mlflow_dir.resolve() / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("protloc").experiment_id])
    assert r.info.run_name == "r-fold0" and r.info.status == "FINISHED" and r.data.params["model"] == "test_resnet"
    hist = client.get_metric_history(r.info.run_id, "val_macro_f1")
    assert [m.step for m in hist] == [0, 1]
    assert [m.value for m in hist] == pytest.approx(truth["val_macro_f1"].tolist(), abs=1e-6)
