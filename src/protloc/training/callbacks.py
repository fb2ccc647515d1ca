"""Lightning callbacks and plugins of protloc training.

- :class:`FreezeBackbone`: the reference notebook's two phases (head only, then everything with
  the lower backbone learning rate); ``freeze_epochs=-1`` keeps the backbone frozen throughout.
  ``freeze_blocks=N`` keeps the stem and first N stages frozen throughout (generic low-level
  features; no backward through the high-resolution layers: ~2-3x faster steps on CPU).
  A frozen backbone also keeps its BatchNorm statistics (eval mode), like Keras' frozen models.
- :class:`TimeBudget`: fits training into ``--max-minutes``: fewer epochs with a compressed
  cosine schedule, stopping cleanly at an epoch boundary (the best checkpoint is kept).
- :class:`EpochRecorder`: one row per epoch -> ``folds/fold{k}/metrics.csv`` (atomic) + log, and
  the same row to the trainer's loggers (``--logger``, :mod:`protloc.training.tracking`).
- :class:`AtomicCheckpointIO`: checkpoints written to a temp file and renamed.
"""

from __future__ import annotations

import logging
import numbers
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger("protloc.training.train")


def early_modules(backbone, n_blocks: int) -> list:
    """The stem and the first ``n_blocks`` stages of a timm backbone (EfficientNet/MobileNet
    ``conv_stem, bn1, blocks[i]``; ResNet ``conv1, bn1, layer{i}``); [] when ``n_blocks <= 0``."""
    if n_blocks <= 0:
        return []
    if hasattr(backbone, "blocks") and hasattr(backbone, "conv_stem"):
        return [backbone.conv_stem, backbone.bn1, *list(backbone.blocks)[:n_blocks]]
    if hasattr(backbone, "layer1"):
        stem = [getattr(backbone, n) for n in ("conv1", "bn1", "act1") if hasattr(backbone, n)]
        return stem + [getattr(backbone, f"layer{i}") for i in range(1, n_blocks + 1) if hasattr(backbone, f"layer{i}")]
    from protloc.core.errors import InputError

    raise InputError(f"--freeze-blocks: {type(backbone).__name__} has no known stage layout", fix="use "
                     "--freeze-blocks 0 with this model")


class FreezeBackbone(pl.Callback):
    def __init__(self, freeze_epochs: int, freeze_blocks: int = 0):
        self.freeze_epochs = int(freeze_epochs)
        self.freeze_blocks = int(freeze_blocks)

    def frozen(self, epoch: int) -> bool:
        return self.freeze_epochs < 0 or epoch < self.freeze_epochs

    def _apply(self, pl_module, epoch: int):
        frozen = self.frozen(epoch)
        for p in pl_module.net.backbone_parameters():
            p.requires_grad_(not frozen)
        if frozen:
            pl_module.net.backbone.eval()
        for m in early_modules(pl_module.net.backbone, self.freeze_blocks):  # frozen throughout
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def setup(self, trainer, pl_module, stage):
        # permanent freezes before DDP wraps the model (DDP then ignores those parameters);
        # a temporary head-only phase keeps them trainable at wrap time (see train.py)
        permanent = ([pl_module.net.backbone] if self.freeze_epochs < 0 else []) + \
            early_modules(pl_module.net.backbone, self.freeze_blocks)
        for m in permanent:
            for p in m.parameters():
                p.requires_grad_(False)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.freeze_epochs and trainer.current_epoch == self.freeze_epochs and self.freeze_epochs > 0:
            log.info("epoch %d: unfreezing the backbone", trainer.current_epoch)
        self._apply(pl_module, trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.frozen(trainer.current_epoch) and pl_module.net.backbone.training:
            pl_module.net.backbone.eval()
        for m in early_modules(pl_module.net.backbone, self.freeze_blocks):
            if m.training:
                m.eval()


class TimeBudget(pl.Callback):
    """Fit the run into ``deadline`` (a ``time.time()`` value).

    After every epoch the epochs that still fit are estimated from the mean epoch time. When
    fewer than ``max_epochs`` fit, ``max_epochs`` shrinks and the warmup-cosine schedule is
    compressed to end with the new last epoch (so a budgeted run still anneals its learning
    rate); when no further epoch fits, training stops cleanly after this epoch's validation and
    checkpoints. The decision is taken on rank 0 and broadcast, so all processes agree.
    """

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self.t0 = None
        self.epochs = 0
        self.stopped = False
        self.shrunk_to = None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.t0 is None:
            self.t0 = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs += 1
        if not self.deadline:
            return
        per_epoch = (time.time() - self.t0) / self.epochs
        fit = trainer.current_epoch + 1 + int(max(self.deadline - time.time(), 0) // max(per_epoch, 1e-6))
        fit = int(trainer.strategy.broadcast(fit, src=0))
        max_epochs = trainer.max_epochs or 0
        if fit >= max_epochs:
            return
        if fit <= trainer.current_epoch + 1:
            self.stopped = True
            trainer.should_stop = True
            log.info("time budget: stopping after epoch %d (%.0f s per epoch, %.0f s left)",
                     trainer.current_epoch, per_epoch, self.deadline - time.time())
            return
        self.stopped = True
        self.shrunk_to = fit
        trainer.fit_loop.max_epochs = fit
        steps = max(trainer.num_training_batches // max(trainer.accumulate_grad_batches, 1), 1)
        for cfg in trainer.lr_scheduler_configs:
            for fn in getattr(cfg.scheduler, "lr_lambdas", []):
                if hasattr(fn, "total"):
                    fn.total = min(fn.total, fit * steps)
        log.info("time budget: %d of %d epochs fit (%.0f s per epoch); schedule compressed to %d epochs",
                 fit, max_epochs, per_epoch, fit)


class EpochRecorder(pl.Callback):
    """Collects one row of metrics per epoch (rank 0) and writes them after each epoch."""

    def __init__(self, fold: int, path: Path, *, rows: list | None = None, echo: bool = True):
        self.fold, self.path, self.rows, self.echo = fold, Path(path), rows or [], echo
        self.t_epoch = None

    def on_train_epoch_start(self, trainer, pl_module):
        self.t_epoch = time.time()

    def on_train_epoch_end(self, trainer, pl_module):
        pl_module.reduce_train_loss()  # a collective: every rank calls it
        if not trainer.is_global_zero:
            return
        import pandas as pd

        from protloc.core.atomic import write_csv

        m = dict(pl_module.epoch_metrics)
        empty = m.pop("val_empty_classes", [])
        lr = trainer.optimizers[0].param_groups[-1]["lr"] if trainer.optimizers else float("nan")
        row = {"fold": self.fold, "epoch": trainer.current_epoch, "lr": lr,
               "seconds": round(time.time() - (self.t_epoch or time.time()), 2), **m}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        write_csv(self.path, pd.DataFrame(self.rows))
        values = {k: float(v) for k, v in row.items()
                  if k not in ("fold", "epoch") and isinstance(v, numbers.Real) and not isinstance(v, bool)}
        for tracker in trainer.loggers:  # --logger: the same row, the epoch as the step
            tracker.log_metrics(values, step=int(row["epoch"]))
            tracker.save()
        if empty and len(self.rows) == 1:
            log.warning("fold %d: validation has no positives for classes %s; they are left out of "
                        "macro F1", self.fold, empty)
        msg = (f"fold {self.fold} epoch {row['epoch']}: train_loss {row.get('train_loss', float('nan')):.4f} "
               f"val_loss {row.get('val_loss', float('nan')):.4f} val_macro_f1 {row.get('val_macro_f1', 0):.4f} "
               f"(best-thr {row.get('val_macro_f1_best', 0):.4f}) mAP {row.get('val_mAP', 0):.4f} "
               f"[{row['seconds']:.0f}s]")
        log.info(msg)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file next to the target, then rename (never half-written)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        import torch

        from protloc.core.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
