#!/usr/bin/env bash
# GPU check (issue 13): train and predict images/s on one GPU (bf16; channels_last; torch.compile
# on/off), whether the GPU waits for data (loader wait fraction), and a 1-GPU DDP run.
#
#   bash benchmarks/gpu_check.sh                 # < 5 minutes on one GPU; prints a table
#   OUT=/tmp/out bash benchmarks/gpu_check.sh    # also writes $OUT/gpu_check.json
#   GPU_CHECK_COMPILE=0 ...                      # skip the torch.compile rows
#   PYTHON=/path/venv/bin/python GPU_CHECK_VENV=none ...   # use that environment as it is
#
# Works on a bare machine with the repo, Python 3 and pip: it makes a venv (.gpu-venv) that sees
# the system's packages (torch, timm, lightning... as on the device image) and installs protloc
# into it without the network (--no-deps --no-build-isolation); if that install fails it runs from
# src/ instead. Without a GPU it runs a tiny CPU dry run of the same code path (figures
# meaningless; the GPU rows say "unmeasured").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-$ROOT/.gpu-venv}
if [ "$VENV" = none ]; then  # use $PYTHON as it is (an environment that already has the dependencies)
  RUNPY=$PY
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
else
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  RUNPY=$VENV/bin/python
  if "$RUNPY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" >/dev/null 2>&1; then
    echo "protloc installed into $VENV"
  else
    echo "note: pip could not install protloc offline; running from $ROOT/src"
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
exec "$RUNPY" - "$@" <<'PYEOF'
import json, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"
DRY = not cuda
SIZE = 128 if cuda else 32
BATCH = 256 if cuda else 8
STEPS, WARM = (30, 5) if cuda else (2, 1)
N_CLASSES = 10
COMPILE = os.environ.get("GPU_CHECK_COMPILE", "1") != "0"
MODEL = "tf_efficientnet_lite0" if cuda else "test_efficientnet"
t_start = time.time()
if cuda:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
else:
    print("no GPU: CPU dry run of the same code path (tiny model; figures are not GPU figures)")

from protloc.core.config import TrainConfig
from protloc.models.network import ModelSpec, build_model
from protloc.training.datamodule import ProtlocDataModule
from protloc.training.losses import make_loss
from protloc.training.module import LitProtloc

tmp = Path(tempfile.mkdtemp())
n_img = BATCH * (STEPS + WARM + 1)
rng = np.random.default_rng(0)
mm = np.lib.format.open_memmap(tmp / "x.npy", mode="w+", dtype=np.uint8, shape=(n_img, SIZE, SIZE, 3))
mm[:] = rng.integers(0, 255, mm.shape, dtype=np.uint8)
mm.flush()
images = np.load(tmp / "x.npy", mmap_mode="r")
y = (rng.random((n_img, N_CLASSES)) < 0.2).astype(np.float32)


def sync():
    if cuda:
        torch.cuda.synchronize()


def cfg_for(channels_last, compile_):
    return TrainConfig.preset("default").override(model=MODEL, size=SIZE, batch_size=BATCH, freeze_blocks=0,
                                                  pretrained="none", channels_last=channels_last, compile=compile_)


def train_row(channels_last, compile_, workers=2):
    """protloc's training step (LitProtloc) in bf16 autocast, fed by protloc's DataModule."""
    cfg = cfg_for(channels_last, compile_)
    net = build_model(ModelSpec(MODEL, in_chans=3, num_classes=N_CLASSES)).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    module = LitProtloc(net, cfg, mean=(0.1,) * 3, std=(0.2,) * 3, loss=make_loss(cfg.loss)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    idx = np.arange(n_img)
    dm = ProtlocDataModule(images, y, idx, idx[:2], batch_size=BATCH, workers=workers if cuda else 0)
    loader = iter(dm.train_dataloader())
    module.train()
    steps, waits = [], []
    for i in range(WARM + STEPS):
        sync()
        t0 = time.perf_counter()
        batch = next(loader)
        batch = [t.to(dev, non_blocking=True) for t in batch]
        sync()
        t1 = time.perf_counter()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            loss = module.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if i >= WARM:
            steps.append(t2 - t1)
            waits.append(t1 - t0)
    step, wait = float(np.median(steps)), float(np.median(waits))
    return {"what": "train", "bf16": cuda, "channels_last": channels_last, "compile": compile_,
            "images_per_s": round(BATCH / (step + wait), 1), "step_ms": round(1000 * step, 2),
            "loader_wait_fraction": round(wait / (step + wait), 4)}


def predict_row(channels_last, compile_, tta):
    """Predictor-style inference (bf16 autocast) on uint8 batches already in memory."""
    from protloc.core.tta import tta_views

    net = build_model(ModelSpec(MODEL, in_chans=3, num_classes=N_CLASSES)).to(dev).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if compile_ else net
    x8 = torch.from_numpy(np.asarray(images[:BATCH])).to(dev)
    mean = torch.full((1, 3, 1, 1), 0.1, device=dev)
    std = torch.full((1, 3, 1, 1), 0.2, device=dev)

    def once():
        with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            x = (x8.permute(0, 3, 1, 2).float() / 255 - mean) / std
            views = tta_views(x, tta)
            xv = torch.cat(views) if len(views) > 1 else x
            if channels_last:
                xv = xv.contiguous(memory_format=torch.channels_last)
            return torch.sigmoid(fwd(xv).float()).reshape(len(views), BATCH, -1).mean(0)

    for _ in range(3):
        once()
    sync()
    n, t0 = 0, time.perf_counter()
    for _ in range(STEPS):
        once()
        n += BATCH
    sync()
    return {"what": f"predict tta={tta}", "bf16": cuda, "channels_last": channels_last, "compile": compile_,
            "images_per_s": round(n / (time.perf_counter() - t0), 1)}


def ddp_row():
    """One Lightning fit with strategy=ddp on 1 device (the multi-GPU code path)."""
    import lightning.pytorch as pl

    cfg = cfg_for(True, False)
    net = build_model(ModelSpec(MODEL, in_chans=3, num_classes=N_CLASSES))
    module = LitProtloc(net, cfg, mean=(0.1,) * 3, std=(0.2,) * 3, loss=make_loss(cfg.loss))
    idx = np.arange(n_img)
    dm = ProtlocDataModule(images, y, idx, idx[:BATCH], batch_size=BATCH, workers=2 if cuda else 0)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, strategy="ddp",
                         precision="bf16-mixed" if cuda else "32-true", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, use_distributed_sampler=False)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    dt = time.perf_counter() - t0
    return {"what": "train 1-GPU DDP (Lightning fit, 1 epoch incl. start-up and validation)", "bf16": cuda,
            "channels_last": True, "compile": False, "images_per_s": round(n_img / dt, 1), "seconds": round(dt, 1)}


rows = []
combos = [(False, False), (True, False)] + ([(True, True)] if COMPILE else [])
for cl, cp in combos:
    for fn, args in ((train_row, (cl, cp)), (predict_row, (cl, cp, "none")), (predict_row, (cl, cp, "d4"))):
        try:
            r = fn(*args)
        except Exception as e:  # one failing row (e.g. compile) must not hide the others
            r = {"what": fn.__name__, "channels_last": cl, "compile": cp, "error": f"{type(e).__name__}: {e}"[:300]}
        rows.append(r)
        print(json.dumps(r), flush=True)
try:
    rows.append(ddp_row())
except Exception as e:
    rows.append({"what": "ddp", "error": f"{type(e).__name__}: {e}"[:300]})
print(json.dumps(rows[-1]), flush=True)

print()
print(f"{'what':<40} {'bf16':>5} {'ch_last':>7} {'compile':>7} {'images/s':>10} {'loader wait':>11}")
for r in rows:
    lw = r.get("loader_wait_fraction")
    print(f"{r['what'][:40]:<40} {str(r.get('bf16', '')):>5} {str(r.get('channels_last', '')):>7} "
          f"{str(r.get('compile', '')):>7} {r.get('images_per_s', r.get('error', '')):>10} "
          f"{'' if lw is None else f'{100 * lw:.1f} %':>11}")
starved = [r for r in rows if r.get("loader_wait_fraction", 0) > 0.1]
print("GPU starved by data loading:" , "yes (loader wait > 10 % of a step)" if starved else "no (loader wait <= 10 %)")
if DRY:
    print("CPU dry run: GPU figures unmeasured")
result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)", "dry_run": DRY, "size": SIZE,
          "batch": BATCH, "model": MODEL, "torch": torch.__version__, "rows": rows,
          "seconds": round(time.time() - t_start, 1)}
out = os.environ.get("OUT")
if out:
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out}/gpu_check.json")
print(f"done in {time.time() - t_start:.0f} s")
PYEOF
