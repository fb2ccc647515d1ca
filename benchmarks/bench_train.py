"""Training throughput: protloc's train step next to a plain timm + PyTorch loop doing the same
work, side by side in one run (issue 13), and inference with and without D4 TTA.

Both sides: the same timm network (ProtlocNet = timm backbone + linear head), image size, batch,
AdamW, augmentation (the default's: d4, jitter) and loss (bce + 0.5 softf1), on uint8 images in
a memmap (what the decode cache gives training). **protloc** runs ``lightning`` ``Trainer.fit``
with protloc's DataModule and LightningModule (seeding, loss bookkeeping, callbacks as in
``protloc train``); **plain** is a ``for x, y in DataLoader`` loop. Interleaved rounds of
``--steps`` steps; medians of the per-step times. The **loader wait** is the time a step spends
waiting for its batch (from the end of one step to the start of the next), as a fraction of the
step.

Variants (``--variants``): channels_last (on CPU), torch.compile (of the plain loop's network, and
``protloc+compile``: ``protloc train --compile``). Also inference images/s with
``infer_probs`` (no TTA and D4; D4 views are batched).

    python benchmarks/bench_train.py                      # full fine-tune, Lite0, 128 px, batch 32
    python benchmarks/bench_train.py --variants base,channels_last,compile --rounds 3

Writes ``benchmarks/results/bench_train.json`` (with the machine load of each round).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def make_data(tmp: Path, n: int, size: int, n_classes: int = 10):
    rng = np.random.default_rng(0)
    mm = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    mm[:] = rng.integers(0, 255, mm.shape, dtype=np.uint8)
    mm.flush()
    y = (rng.random((n, n_classes)) < 0.2).astype(np.float32)
    return np.load(tmp / "images.npy", mmap_mode="r"), y


def _cfg(args, **over):
    from protloc.core.config import TrainConfig

    return TrainConfig.preset("default").override(size=args.size, batch_size=args.batch_size, freeze_blocks=0,
                                                  pretrained="none", workers=0, **over)


def protloc_round(images, y, args, *, channels_last: bool, compile: bool) -> dict:
    """``--steps`` training steps through Lightning with protloc's module and data module."""
    import lightning.pytorch as pl

    from protloc.models.network import ModelSpec, build_model
    from protloc.training.datamodule import ProtlocDataModule
    from protloc.training.losses import make_loss
    from protloc.training.module import LitProtloc

    cfg = _cfg(args, channels_last=channels_last, compile=compile)
    net = build_model(ModelSpec(cfg.model, in_chans=3, num_classes=y.shape[1], pool=cfg.pool, dropout=cfg.dropout))
    module = LitProtloc(net, cfg, mean=(0.1,) * 3, std=(0.2,) * 3, loss=make_loss(cfg.loss))
    idx = np.arange(len(images))
    dm = ProtlocDataModule(images, y, idx, idx[:2], batch_size=cfg.batch_size, seed=0)

    class Clock(pl.Callback):
        def __init__(self):
            self.start, self.end, self.steps, self.waits, self.cpu = None, None, [], [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            t = time.perf_counter()
            if self.end is not None:
                self.waits.append(t - self.end)
            self.start, self.c0 = t, time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end = time.perf_counter()
            self.steps.append(self.end - self.start)
            self.cpu.append(time.process_time() - self.c0)

    clock = Clock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps, limit_val_batches=0,
                         callbacks=[clock], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    steps = np.array(clock.steps[args.warmup:])
    waits = np.array(clock.waits[args.warmup:])
    return _summary(steps, waits, cfg.batch_size, np.array(clock.cpu[args.warmup:]))


def plain_round(images, y, args, *, channels_last: bool, compile: bool) -> dict:
    """The same work as a plain PyTorch loop."""
    from torch.utils.data import DataLoader, TensorDataset

    from protloc.models.network import ModelSpec, build_model
    from protloc.training.augment import BatchAugment
    from protloc.training.losses import make_loss

    cfg = _cfg(args)
    net = build_model(ModelSpec(cfg.model, in_chans=3, num_classes=y.shape[1], pool=cfg.pool, dropout=cfg.dropout))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn, aug = make_loss(cfg.loss), BatchAugment(cfg.augment)
    mean = torch.tensor((0.1,) * 3).view(1, 3, 1, 1)
    std = torch.tensor((0.2,) * 3).view(1, 3, 1, 1)
    loader = DataLoader(TensorDataset(torch.from_numpy(np.asarray(images)), torch.from_numpy(y)),
                        batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    net.train()
    steps, waits, cpu, g = [], [], [], torch.Generator().manual_seed(0)
    it, end = iter(loader), None
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        t1, c1 = time.perf_counter(), time.process_time()
        x = xb.permute(0, 3, 1, 2).float().div_(255.0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = aug(x, g)
        loss = loss_fn(fwd((x - mean) / std), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= args.warmup:
            steps.append(t2 - t1)
            cpu.append(time.process_time() - c1)
            waits.append(t1 - t0 + ((t0 - end) if end is not None else 0.0))
        end = t2
    return _summary(np.array(steps), np.array(waits), cfg.batch_size, np.array(cpu))


def _summary(steps, waits, batch: int, cpu) -> dict:
    """Wall images/s (step + loader wait) and images per CPU-second of the step (the process's
    CPU time: independent of the other load on a shared machine)."""
    step = float(np.median(steps))
    wait = float(np.median(waits)) if len(waits) else 0.0
    return {"images_per_s": round(batch / (step + wait), 1), "step_ms": round(1000 * step, 1),
            "images_per_cpu_s": round(batch / float(np.median(cpu)), 1), "step_cpu_ms": round(1000 * float(np.median(cpu)), 1),
            "loader_wait_ms": round(1000 * wait, 2), "loader_wait_fraction": round(wait / (step + wait), 4),
            "load_1min": round(os.getloadavg()[0], 2)}


def bench_infer(args) -> dict:
    from protloc.models.network import ModelSpec, build_model
    from protloc.training.module import infer_probs

    net = build_model(ModelSpec("tf_efficientnet_lite0", in_chans=3, num_classes=10)).eval()
    net = net.to(memory_format=torch.channels_last)  # as the trained net (LitProtloc, channels_last)
    imgs = np.random.default_rng(2).integers(0, 255, (128, args.size, args.size, 3), dtype=np.uint8)
    out = {}
    for tta in ("none", "d4"):
        n = len(imgs) if tta == "none" else len(imgs) // 4
        infer_probs(net, imgs[:16], mean=(0.1,) * 3, std=(0.2,) * 3, batch_size=16)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        infer_probs(net, imgs[:n], mean=(0.1,) * 3, std=(0.2,) * 3, batch_size=64, tta=tta)
        out[f"infer_images_per_s_tta_{tta}"] = round(n / (time.perf_counter() - t0), 1)
        out[f"infer_images_per_cpu_s_tta_{tta}"] = round(n / (time.process_time() - c0), 1)
    out["d4_cost_x_single_view"] = round(out["infer_images_per_cpu_s_tta_none"]
                                         / out["infer_images_per_cpu_s_tta_d4"], 2)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved protloc/plain rounds")
    ap.add_argument("--variants", default="channels_last", help="plain-loop variants: channels_last, compile")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = free cores, as protloc train)")
    ap.add_argument("--out", default=str(RESULTS / "bench_train.json"))
    args = ap.parse_args(argv)
    from protloc.core.cpu import available_cores, free_cores

    cores = available_cores()
    torch.set_num_threads(args.threads or free_cores())  # what `protloc train --threads 0` picks
    rows = []
    variants = [v for v in args.variants.split(",") if v != "base"]
    # protloc runs its defaults (channels_last on): compare it with plain+channels_last
    sides = [("protloc", protloc_round, {"channels_last": True}), ("plain", plain_round, {})] + (
        [("protloc+compile", protloc_round, {"channels_last": True, "compile": True})] if "compile" in variants else []) + [
        (f"plain+{v}", plain_round, {"channels_last": v == "channels_last", "compile": v == "compile"})
        for v in variants]
    with tempfile.TemporaryDirectory() as d:
        images, y = make_data(Path(d), max(4 * args.batch_size, (args.warmup + args.steps + 2) * args.batch_size),
                              args.size)
        for r in range(args.rounds):
            for side, fn, kw in sides:
                res = fn(images, y, args, **{"channels_last": False, "compile": False, **kw})
                rows.append({"round": r, "side": side, **res})
                print(f"  round {r} {side:22s}: {res['images_per_s']:6.1f} images/s ({res['images_per_cpu_s']:.1f} per "
                      f"CPU-s), step {res['step_ms']:.0f} ms, "
                      f"loader wait {100 * res['loader_wait_fraction']:.2f} % (load {res['load_1min']})", flush=True)
    med = {side: float(np.median([r["images_per_s"] for r in rows if r["side"] == side])) for side, _, _ in sides}
    cpu = {side: float(np.median([r["images_per_cpu_s"] for r in rows if r["side"] == side])) for side, _, _ in sides}
    summary = {"images_per_s": med, "images_per_cpu_s": cpu,
               "protloc_over_plain": round(med["protloc"] / med["plain"], 3),
               "protloc_over_plain_cpu": round(cpu["protloc"] / cpu["plain"], 3),
               **({"protloc_over_plain_channels_last_cpu": round(cpu["protloc"] / cpu["plain+channels_last"], 3)}
                  if "channels_last" in variants else {}),
               **{f"{v}_over_plain": round(med[f"plain+{v}"] / med["plain"], 3) for v in variants},
               **{f"{v}_over_plain_cpu": round(cpu[f"plain+{v}"] / cpu["plain"], 3) for v in variants},
               "protloc_loader_wait_fraction": float(np.median([r["loader_wait_fraction"] for r in rows
                                                                if r["side"] == "protloc"]))}
    print(summary)
    infer = bench_infer(args)
    print(infer)
    cfg = _cfg(args)
    res = {"benchmark": "train", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "setup": {"model": "tf_efficientnet_lite0", "size": args.size, "batch_size": args.batch_size,
                     "trainable": "full fine-tune (freeze_blocks 0)", "optimizer": "adamw",
                     "augment": cfg.augment, "loss": cfg.loss, "device": "cpu",
                     "torch_threads": torch.get_num_threads(), "steps_per_round": args.steps,
                     "rounds": args.rounds},
           "machine": {"platform": platform.platform(), "cores": cores,
                       "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                       "note": "shared machine: rounds are interleaved, compare ratios; load per row"},
           "summary": summary, "rows": rows, "inference": infer}
    from protloc.core.atomic import write_json

    write_json(args.out, res)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
