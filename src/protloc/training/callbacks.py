"""Lightning callbacks and plugins of protloc training.

- :class:`FreezeBackbone`: the reference notebook's two phases (head only, then everything with
  the lower backbone learning rate); ``freeze_epochs=-1`` keeps the backbone frozen throughout.
  ``freeze_blocks=N`` keeps the stem and first N stages frozen throughout (generic low-level
  features; no backward through the high-resolution layers: ~2-3x faster steps on CPU).
  A frozen backbone also keeps its BatchNorm statistics (eval mode), like Keras' frozen models.
- :class:`TimeBudget`: uses ``--max-minutes``: times the first steps, plans the epochs that fit
  and ends the cosine schedule there, re-plans as the machine slows down or speeds up, and stops
  inside an epoch when even that one cannot finish (the best checkpoint is kept).
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
    """Use the time until ``deadline`` (a ``clock()`` value) for the best model that fits.

    The first steps are timed (:class:`protloc.training.budget.BudgetPlanner`), then the epochs
    that fit are planned and the warmup-cosine schedule is set to end with the last planned
    epoch. Every ``check_every`` steps and at every epoch start the plan is revised from the
    recent step time and the measured validation time, and the schedule's end moves with it (up to
    ``trainer.max_epochs``). ``reserve_s`` plus ``post_val_passes`` validation passes (the
    out-of-fold inference, :data:`~protloc.training.train.OOF_PASS_MARGIN` per ``--oof-tta`` view;
    the out-of-distribution reference as many as the images it reads over the validation images) is
    kept free for the work after training. When the current epoch cannot
    finish, training stops inside it: the stop triggers the validation and checkpoint of a normal
    epoch end. Decisions are taken on rank 0 and broadcast, so all processes agree.
    """

    def __init__(self, deadline: float | None, *, reserve_s: float = 0.0, post_val_passes: float = 1.0,
                 clock=time.time, check_every: int = 10):
        self.deadline, self.reserve_s, self.clock, self.check_every = deadline, float(reserve_s), clock, check_every
        self.post_val_passes = float(post_val_passes)
        self.planner = None
        self.stopped = False            # the budget changed the run (fewer epochs than --epochs, or a mid-epoch stop)
        self.stopped_mid_epoch = False
        self._planned = None
        self.max_epochs = None
        self._epoch_end = None

    # --------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer, pl_module):
        if not self.deadline:
            return
        from protloc.training.budget import BudgetPlanner

        acc = max(trainer.accumulate_grad_batches, 1)
        dm = trainer.datamodule
        n_val = len(getattr(dm, "val_idx", ())) or int(sum(trainer.num_val_batches or [0])) * _batch_size(dm)
        self.max_epochs = int(trainer.max_epochs or 1)
        self.planner = BudgetPlanner(deadline=self.deadline, steps_per_epoch=max(int(trainer.num_training_batches), 1),
                                     val_images=n_val, batch_size=_batch_size(dm) * acc, max_epochs=self.max_epochs,
                                     reserve_s=self.reserve_s, post_val_factor=self.post_val_passes)
        self.planner.done_steps = int(trainer.global_step) * acc   # resumed runs
        self.planner.validated_epochs = int(trainer.current_epoch)
        self._acc = acc

    def on_train_epoch_start(self, trainer, pl_module):
        if self.planner is None:
            return
        now = self.clock()
        if self._epoch_end is not None:  # validation + checkpoints of the previous epoch
            self.planner.validated(now - self._epoch_end, now)
            self._apply(trainer, self.planner.replan(now))
        self.planner.start(now)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.planner is None:
            return
        p, now = self.planner, self.clock()
        p.step(now)
        self._epoch_end = now
        if p.ready and (p.plan is None or p.done_steps % self.check_every == 0):
            self._apply(trainer, p.replan(now))
        stop = (p.plan is not None and p.plan.partial and p.done_steps >= p.plan.total_steps) or p.must_stop(now)
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if int(trainer.strategy.broadcast(int(stop), src=0)) and not last_of_epoch:
            self.stopped = self.stopped_mid_epoch = True
            trainer.should_stop = True
            log.info("time budget: stopping inside epoch %d after step %d of %d (%.2f s per step, %.0f s left)",
                     trainer.current_epoch, batch_idx + 1, trainer.num_training_batches, p.step_s,
                     self.deadline - now)
        elif stop:
            self.stopped = True
            trainer.should_stop = True

    # --------------------------------------------------------------------------- plan -> trainer
    def _apply(self, trainer, plan) -> None:
        epochs = int(trainer.strategy.broadcast(plan.epochs + (1 if plan.partial else 0), src=0))
        total = int(trainer.strategy.broadcast(plan.total_steps, src=0))
        first = len(self.planner.history) <= 1 and self._planned is None
        if epochs != self._planned:
            trainer.fit_loop.max_epochs = max(epochs, trainer.current_epoch + 1)
            if epochs < self.max_epochs:
                self.stopped = True
            msg = ("time budget: %s%d epochs fit (%.2f s per step, %.1f s validation, %.0f s left); schedule ends at "
                   "step %d" % ("" if first else "re-planned: ", plan.epochs, self.planner.step_s, self.planner.val_s,
                                self.deadline - self.clock(), total // self._acc))
            if plan.partial:
                msg += f" (epoch {plan.epochs} stops after {total - plan.epochs * self.planner.steps_per_epoch} of " \
                       f"{self.planner.steps_per_epoch} steps)"
            log.info(msg)
        self._planned = epochs
        for cfg in trainer.lr_scheduler_configs:
            for fn in getattr(cfg.scheduler, "lr_lambdas", []):
                if hasattr(fn, "total"):
                    fn.total = max(total // self._acc, 1)
                    fn.warm = min(fn.warm, max(fn.total // 4, 1))

    def summary(self) -> dict:
        """Budget facts for the fold summary (empty without a budget)."""
        if self.planner is None:
            return {}
        p = self.planner
        return {"planned_epochs": p.plan.epochs + (1 if p.plan and p.plan.partial else 0) if p.plan else None,
                "max_epochs": self.max_epochs, "stopped_mid_epoch": self.stopped_mid_epoch,
                "step_seconds": round(p.step_s, 4), "validation_seconds": round(p.val_s, 2),
                "reserve_seconds": round(self.reserve_s, 1), "post_validation_passes": round(self.post_val_passes, 2),
                "plans": p.history}


def _batch_size(dm) -> int:
    return int(getattr(dm, "batch_size", 1) or 1)


class EpochRecorder(pl.Callback):
    """Collects one row of metrics per epoch (rank 0) and writes them after each epoch."""

    def __init__(self, fold: int, path: Path, *, rows: list | None = None, echo: bool = True, epoch_offset: int = 0,
                 phase: str | None = None):
        self.fold, self.path, self.rows, self.echo = fold, Path(path), rows or [], echo
        self.epoch_offset, self.phase = int(epoch_offset), phase  # a second phase (student) continues the rows
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
        row = {"fold": self.fold, "epoch": self.epoch_offset + trainer.current_epoch, "lr": lr,
               **({"phase": self.phase} if self.phase else {}),
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
