"""The LightningModule: uint8 batches -> device augment/normalise -> timm net -> loss; epoch-level
validation metrics (:func:`protloc.core.metrics.epoch_metrics`) computed once over every
validation image (gathered across processes and de-duplicated by dataset index, since
distributed samplers pad with duplicates). After training, :meth:`LitProtloc.load_trained` +
:meth:`LitProtloc.inference_net` hand out the network to keep (the EMA copy when EMA is on).
"""

from __future__ import annotations

import math

import numpy as np
import torch

import lightning.pytorch as pl

from protloc.core.errors import check_choice
from protloc.core.metrics import epoch_metrics
from protloc.core.tta import TTA_MODES, merge_probs, tta_views
from protloc.training.augment import BatchAugment, mix_batch
from protloc.training.datamodule import epoch_seed


class LitProtloc(pl.LightningModule):
    """Training/validation logic around a :class:`protloc.models.network.ProtlocNet`."""

    def __init__(self, net, cfg, *, mean, std, loss):
        super().__init__()
        self.net, self.cfg, self.loss_fn = net, cfg, loss
        if cfg.channels_last:  # on CPU too: +40-60 % images per CPU-second (benchmarks/bench_train.py)
            net.to(memory_format=torch.channels_last)
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.augment = BatchAugment(cfg.augment)
        self.ema = None
        if cfg.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(net, decay=cfg.ema)
        self.__dict__["_fwd"] = torch.compile(net) if cfg.compile else net
        self._val: list = []
        self._train_sum = self._train_n = 0.0
        self.epoch_metrics: dict = {}

    # helpers ----------------------------------------------------------------------------
    def to_input(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] (channels_last memory with ``channels_last``)."""
        x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inference_net(self):
        """The network to validate and predict with: the EMA copy when EMA is on, else the net."""
        return self.ema.module if self.ema is not None else self.net

    def load_trained(self, checkpoint) -> "LitProtloc":
        """Load this module's weights (the net and its EMA copy) from a Lightning checkpoint.

        Returns ``self``, so ``module.load_trained(best_ckpt).inference_net()`` is the trained
        network; callers never need the module's attribute names.
        """
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        self.load_state_dict(state)
        return self

    # training ----------------------------------------------------------------------------
    def on_train_epoch_start(self):
        self._train_sum = self._train_n = 0.0

    def on_train_batch_start(self, batch, batch_idx):
        # dropout etc. depend only on (seed, epoch, batch, rank): resumed epochs replay exactly
        torch.manual_seed(epoch_seed(self.cfg.seed, self.current_epoch, batch_idx, self.global_rank, 2))

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        x = self.to_input(x)
        if self.augment.ops:
            g = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, self.current_epoch, batch_idx,
                                                         self.global_rank, 1))
            x = self.augment(x, g)
        if self.cfg.mix != "none":
            g = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, self.current_epoch, batch_idx,
                                                         self.global_rank, 3))
            x, y = mix_batch(x, y, g, mode=self.cfg.mix, alpha=self.cfg.mix_alpha, prob=self.cfg.mix_prob)
        loss = self.loss_fn(self._fwd(self.normalize(x)), y)
        self._train_sum += float(loss.detach()) * len(y)
        self._train_n += len(y)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    def reduce_train_loss(self):
        """Mean training loss of the epoch over all processes (called by EpochRecorder)."""
        t = torch.tensor([self._train_sum, self._train_n], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        self.epoch_metrics["train_loss"] = float(t[0] / max(float(t[1]), 1.0))

    # validation --------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val = []

    def validation_step(self, batch, batch_idx):
        idx, x, y = batch
        logits = self.inference_net()(self.normalize(self.to_input(x))).float()
        self._val.append((idx, logits, y.float()))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        idx = torch.cat([v[0] for v in self._val]).to(self.device)
        logits = torch.cat([v[1] for v in self._val])
        y = torch.cat([v[2] for v in self._val]).to(self.device)
        self._val = []
        n_seen_local = len(idx)
        if self.trainer.world_size > 1:
            idx, logits, y = (self.all_gather(t).reshape(-1, *t.shape[1:]) for t in (idx, logits, y))
        _, first = np.unique(idx.cpu().numpy(), return_index=True)   # drop sampler padding duplicates
        keep = torch.as_tensor(first, device=logits.device)
        idx, logits, y = idx[keep], logits[keep], y[keep]
        val_loss = float(self.loss_fn(logits, y))
        y_np = y.cpu().numpy().astype(np.uint8)
        probs = torch.sigmoid(logits).cpu().numpy()
        m = epoch_metrics(y_np, probs, threshold=self.cfg.threshold)
        m.update(val_loss=val_loss, val_n_images=int(len(idx)), val_n_seen=int(n_seen_local * self.trainer.world_size))
        self.epoch_metrics.update(m)
        for k in ("val_loss", "val_macro_f1", "val_macro_f1_best", "val_mAP", "val_micro_f1"):
            v = m[k]
            self.log(k, v if math.isfinite(v) else 0.0, prog_bar=k in ("val_loss", "val_macro_f1"), logger=False,
                     sync_dist=False, rank_zero_only=False)

    # optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.cfg
        groups = []
        for params, lr in ((self.net.backbone_parameters(), cfg.lr * cfg.backbone_lr_mult),
                           (self.net.head_parameters(), cfg.lr)):
            params = list(params)
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]
            groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay},
                       {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if cfg.optimizer in ("adamw", "adam"):
            # the fused kernel (CPU and CUDA): one pass over the parameters instead of a dozen
            # foreach ops, 24 -> 5 ms per step for Lite0 on 2 CPU cores (issue 13)
            adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
            fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                        for g in groups for p in g["params"])
            opt = adam(groups, lr=cfg.lr, fused=fused or None)
        else:
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if cfg.schedule == "constant":
            return opt
        if cfg.schedule == "onecycle":
            sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total,
                                                      pct_start=0.25)
        else:
            warm = int(round(cfg.warmup_epochs * total / max(self.trainer.max_epochs or 1, 1)))
            sch = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}


class warmup_cosine:
    """LR multiplier: linear warmup over ``warm`` steps, then cosine to 1% at ``total`` (picklable).

    Examples
    --------
    >>> f = warmup_cosine(10, 110)
    >>> round(f(0), 2), round(f(10), 2), round(f(110), 2)
    (0.1, 1.0, 0.01)
    """

    def __init__(self, warm: int, total: int):
        self.warm, self.total = warm, total

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        t = min((step - self.warm) / max(self.total - self.warm, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def infer_probs(net, images: np.ndarray, *, mean, std, indices=None, batch_size: int = 64,
                tta: str = "none", device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities (N, C) for uint8 (N, H, W, C) ``images[indices]``.

    ``tta``: ``none``, ``flip`` (identity + horizontal flip) or ``d4`` (the 8 D4 views); the
    views of a batch go through the network in one call and their probabilities are averaged
    (:mod:`protloc.core.tta`); with D4, ``batch_size`` counts views (batch_size // 8 images).
    """
    from protloc.core.progress import progress_bar

    check_choice("tta", tta, TTA_MODES)
    idx = np.arange(len(images)) if indices is None else np.asarray(indices)
    net = net.to(device).eval()
    c = images.shape[-1]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1)
    out = []
    batch_size = max(1, batch_size // len(tta_views(np.zeros((1, 1, 1, 1)), tta)))
    with progress_bar(total=len(idx), description="predicting", enable=progress) as advance:
        for s in range(0, len(idx), batch_size):
            b = torch.from_numpy(np.stack([np.asarray(images[i]) for i in idx[s:s + batch_size]])).to(device)
            x = (b.permute(0, 3, 1, 2).float() / 255.0 - mean_t) / std_t
            views = tta_views(x, tta)  # all views in one forward call: D4 costs 8 views, not more
            xv = (torch.cat(views) if len(views) > 1 else x).contiguous(memory_format=torch.channels_last)
            p = torch.sigmoid(net(xv).float()).cpu().numpy()
            out.append(merge_probs(p.reshape(len(views), len(b), -1), "mean"))
            advance(len(b))
    return np.concatenate(out) if out else np.zeros((0, net.spec.num_classes), np.float32)
