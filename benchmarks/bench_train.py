"""Training and inference throughput (images/s) of protloc recipes on this machine.

Runs the real training step (uint8 batch -> augment -> normalise -> forward -> loss -> backward
-> AdamW step, exactly what ``LitProtloc.training_step`` does) on random images for a few
batches after a warm-up, and inference (``infer_probs``, no TTA and D4 TTA).

    python benchmarks/bench_train.py                      # default recipe at 128 px (+ 96, seed)
    python benchmarks/bench_train.py --sizes 128 --steps 10 --recipes default

Writes ``benchmarks/results/bench_train.json``. The CPU may be shared: numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from protloc.core.config import TrainConfig
from protloc.training.module import LitProtloc, infer_probs
from protloc.training.losses import make_loss
from protloc.models.network import ModelSpec, build_model

RESULTS = Path(__file__).parent / "results"


def bench_recipe(cfg: TrainConfig, *, steps: int, warmup: int = 3, infer_images: int = 256) -> dict:
    spec = ModelSpec(cfg.model, in_chans=3, num_classes=10, pool=cfg.pool, dropout=cfg.dropout, hidden=cfg.hidden)
    net = build_model(spec, pretrained=cfg.pretrained)
    y = (np.random.default_rng(0).random((cfg.batch_size, 10)) < 0.2).astype(np.float32)
    module = LitProtloc(net, cfg, mean=(0.1, 0.1, 0.1), std=(0.2, 0.2, 0.2), loss=make_loss(cfg.loss))
    from protloc.training.callbacks import early_modules

    frozen = [net.backbone] if cfg.freeze_epochs < 0 else early_modules(net.backbone, cfg.freeze_blocks)
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (cfg.batch_size, cfg.size, cfg.size, 3),
                                                           dtype=np.uint8))
    batch = (torch.arange(cfg.batch_size), x, torch.from_numpy(y))
    module.train()
    for m in frozen:
        m.eval()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = module.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    train_ips = cfg.batch_size / float(np.median(times[warmup:]))  # median step: robust to a shared CPU
    imgs = np.random.default_rng(2).integers(0, 255, (infer_images, cfg.size, cfg.size, 3), dtype=np.uint8)
    out = {}
    for tta in ("none", "d4"):
        n = infer_images if tta == "none" else infer_images // 4
        infer_probs(net, imgs[:32], mean=(0.1,) * 3, std=(0.2,) * 3, batch_size=32)  # warm-up
        t0 = time.perf_counter()
        infer_probs(net, imgs[:n], mean=(0.1,) * 3, std=(0.2,) * 3, batch_size=64, tta=tta)
        out[f"infer_images_per_s_tta_{tta}"] = round(n / (time.perf_counter() - t0), 1)
    return {"preset": cfg.preset, "model": cfg.model, "size": cfg.size, "batch_size": cfg.batch_size,
            "frozen": "backbone" if cfg.freeze_epochs < 0 else f"stem + {cfg.freeze_blocks} stages", "train_images_per_s": round(train_ips, 1),
            "train_step_ms": round(1000 * float(np.median(times[warmup:])), 1),
            "epoch_minutes_2400_images": round(2400 / train_ips / 60, 2), **out}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="default,seed", help="comma list of presets")
    ap.add_argument("--sizes", default="128,96", help="image sizes for the default recipe")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per recipe")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--out", default=str(RESULTS / "bench_train.json"))
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or cores)
    rows = []
    for name in args.recipes.split(","):
        sizes = [int(s) for s in args.sizes.split(",")] if name == "default" else [TrainConfig.preset(name).size]
        for size in sizes:
            cfg = TrainConfig.preset(name).override(size=size)
            r = bench_recipe(cfg, steps=args.steps)
            print(json.dumps(r))
            rows.append(r)
    res = {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpu": platform.processor() or platform.machine(),
           "cores": cores, "torch_threads": torch.get_num_threads(),
           "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
           "note": "CPU shared with other processes while measuring: figures are lower bounds",
           "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from protloc.core.atomic import write_json

    write_json(args.out, res)
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
