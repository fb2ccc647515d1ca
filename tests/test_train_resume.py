"""--resume after a crash replays the interrupted epochs exactly (same seed -> same weights)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import lightning.pytorch as pl

from protloc.core.config import TrainConfig
from protloc.data.table import load_table
from protloc.training.train import run_training


class Crash(pl.Callback):
    """Simulates a process killed in the middle of epoch 1 (epoch 0's last.ckpt is on disk)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")


def test_resume_equals_uninterrupted(tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    table = load_table(csv, images)
    cfg = TrainConfig.preset("default").override(model="test_resnet", pretrained="none", size=32, epochs=2,
                                                 batch_size=8, dropout=0.3,
                                                 near_dup=False, threads=1)
    run_training(cfg, table, tmp_path / "straight", progress=False, echo=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, table, tmp_path / "resumed", progress=False, echo=False, extra_callbacks=[Crash()])
    assert (tmp_path / "resumed" / "checkpoints" / "fold0" / "last.ckpt").is_file()
    assert not (tmp_path / "resumed" / "models").exists()
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "fold0" / "last.ckpt", weights_only=False)["epoch"] == 0
    run_training(cfg, table, tmp_path / "resumed", progress=False, echo=False, resume=True)
    assert "resuming from" in (tmp_path / "resumed" / "train.log").read_text()

    a = torch.load(tmp_path / "straight" / "checkpoints" / "fold0" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "fold0" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1 and a["global_step"] == b["global_step"] > 0
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], rtol=1e-5, atol=1e-6)
    ma = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    mb = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    cols = ["epoch", "train_loss", "val_loss", "val_macro_f1", "val_mAP"]
    pd.testing.assert_frame_equal(ma[cols], mb[cols], rtol=1e-5)
    # a finished run resumes as a no-op
    run_training(cfg, table, tmp_path / "resumed", progress=False, echo=False, resume=True)
    assert "already finished" in (tmp_path / "resumed" / "train.log").read_text()


def test_ctrl_c_becomes_resume_hint(tiny_rgb, tmp_path, capsys):
    from protloc.cli.main import main

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    import protloc.training.train as T

    orig = T.train_fold

    def with_ctrl_c(*a, **kw):
        return orig(*a, **{**kw, "extra_callbacks": [CtrlC()]})

    T.train_fold = with_ctrl_c
    try:
        csv, images = tiny_rgb
        rc = main(["train", "--csv", str(csv), "--images", str(images), "--out", str(tmp_path / "r"), "--model",
                   "test_resnet", "--pretrained", "none", "--size", "32", "--epochs", "2", "--batch-size", "8",
                   "--quiet", "--no-near-dup", "--threads", "1"])
    finally:
        T.train_fold = orig
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after Ctrl-C
    assert rc == 130 and "rerun with --resume" in capsys.readouterr().err
    assert (tmp_path / "r" / "checkpoints" / "fold0" / "last.ckpt").is_file()
    assert not (tmp_path / "r" / "models").exists()
