"""Training from the sharded store with ``--sampler shard-block``: resume stays exact."""

from __future__ import annotations

import pytest
import torch

import lightning.pytorch as pl

from protloc.core.config import TrainConfig
from protloc.data.cache import load_cached
from protloc.data.table import load_table
from protloc.training.train import run_training


class Crash(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            raise RuntimeError("simulated crash")


class Seen(pl.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].tolist())


def test_shard_block_sampler_trains_and_resumes_exactly(tiny_rgb, tmp_path):
    csv, images = tiny_rgb
    table = load_table(csv, images)
    store = load_cached(table, size=32, progress=False, workers=1, shard_images=8)  # 5 shards; train reuses it
    cfg = TrainConfig.preset("default").override(model="test_resnet", pretrained="none", size=32, epochs=2,
                                                 batch_size=8, near_dup=False, threads=1, sampler="shard-block")
    seen = Seen()
    run_training(cfg, table, tmp_path / "straight", progress=False, echo=False, extra_callbacks=[seen])
    assert str(store.path) in (tmp_path / "straight" / "train.log").read_text()
    rows = [i for b in seen.batches for i in b]
    h = len(rows) // 2  # two epochs of the same length (drop_last), each without repeats, in new orders
    assert h >= 16 and len(set(rows[:h])) == len(set(rows[h:])) == h and rows[:h] != rows[h:]
    assert max(len({i // 8 for i in b}) for b in seen.batches) <= 5  # a batch reads few shards
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, table, tmp_path / "resumed", progress=False, echo=False, extra_callbacks=[Crash()])
    run_training(cfg, table, tmp_path / "resumed", progress=False, echo=False, resume=True)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "fold0" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "fold0" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1 and a["global_step"] == b["global_step"] > 0
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(v, b["state_dict"][k], rtol=1e-5, atol=1e-6)
