"""Prediction speed and memory (issue #5).

1. CPU throughput (images/s) of the torch and onnx engines at batch 1 and batch 64, tta none, on
   an *untrained* run of the default backbone ``tf_efficientnet_lite0`` at 128 px (built here; no
   training needed: speed does not depend on the weights). Measured on ``predict_array`` with
   in-memory uint8 images (normalisation + model, no decoding).
2. Peak resident memory (RSS) of ``protloc predict`` streaming a folder of N PNG images (32 px,
   ``test_resnet``; the whole CLI in a subprocess, decoding included), for a small and a large
   N: a flat peak shows memory does not grow with the number of images.

Usage::

    python benchmarks/bench_predict.py                 # ~2-4 min on 2 CPU cores
    python benchmarks/bench_predict.py --stream 2000 20000 --out benchmarks/results/predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_run(root: Path, *, backbone: str, size: int, folds: int = 1) -> Path:
    """An untrained run folder with the layout of protloc.core.runfolder (like tests' make_fake_run)."""
    import torch

    from protloc.core.atomic import write_json
    from protloc.models.network import ModelSpec, build_model, save_weights
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.runfolder import RunFolder
    from protloc.core.schema import get_schema

    run = RunFolder(root)
    schema = get_schema("ghent10")
    Preprocessing(fmt="rgb", channels=("red", "green", "blue"), size=size, mean=(0.05, 0.2, 0.1),
                  std=(0.1, 0.3, 0.2), schema=schema).save(run.preprocessing_json)
    write_json(run.schema_json, schema.to_dict())
    spec = ModelSpec(backbone=backbone, in_chans=3, num_classes=schema.n_classes)
    write_json(run.model_json, spec.to_dict())
    torch.manual_seed(0)
    for f in range(folds):
        save_weights(build_model(spec), run.model_path(f))
    return root


def throughput(pred, images: np.ndarray, *, batch: int, min_seconds: float) -> float:
    pred.predict_array(images[:batch], batch_size=batch)  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(images) - batch + 1, batch):
            pred.predict_array(images[s:s + batch], batch_size=batch)
            n += batch
            if time.perf_counter() - t0 >= min_seconds and n >= batch * 2:
                return n / (time.perf_counter() - t0)


def bench_speed(tmp: Path, *, size: int, backbone: str, min_seconds: float, threads: list[int]) -> list[dict]:
    import torch

    from protloc.inference.onnx import export_onnx
    from protloc.inference.predictor import Predictor

    default_threads = torch.get_num_threads()
    run = make_run(tmp / "speed_run", backbone=backbone, size=size)
    info = export_onnx(run)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (128, size, size, 3)).astype(np.uint8)
    rows = []
    for th in threads or [default_threads]:
        for engine in ("torch", "onnx"):
            pred = Predictor.from_run(run, engine=engine, device="cpu", threads=th)
            for batch in (1, 64):
                ips = throughput(pred, images, batch=batch, min_seconds=min_seconds)
                rows.append({"engine": engine, "threads": th, "batch": batch, "images_per_s": round(ips, 1),
                             "ms_per_image": round(1000 / ips, 2)})
                print(f"  {engine:5s} threads {th} batch {batch:3d}: {ips:8.1f} images/s", flush=True)
    torch.set_num_threads(default_threads)
    rows.append({"onnx_max_abs_diff": info["max_abs_diff"], "torch_threads": default_threads})
    return rows


def bench_stream(tmp: Path, n_images: list[int], *, size: int = 32, batch: int = 64) -> list[dict]:
    from PIL import Image

    from protloc.inference.onnx import export_onnx

    run = make_run(tmp / "stream_run", backbone="test_resnet", size=size)
    export_onnx(run)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (16, size, size, 3)).astype(np.uint8)
    img_dir = tmp / "stream_images"
    img_dir.mkdir()
    written = 0
    rows = []
    for n in sorted(n_images):
        for i in range(written, n):
            Image.fromarray(tiles[i % 16]).save(img_dir / f"{i:06d}.png", compress_level=1)
        written = n
        for engine in ("torch", "onnx"):
            out = tmp / f"sub_{n}_{engine}.csv"
            t0 = time.perf_counter()
            # VmHWM (peak RSS of this process image; ru_maxrss would include the forking parent)
            code = ("import sys\nfrom protloc.cli.main import main\nrc = main(sys.argv[1:])\n"
                    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
                    "print('HWM_KB', hwm.split()[1], 'torch' in sys.modules, file=sys.stderr)\nsys.exit(rc)")
            proc = subprocess.run([sys.executable, "-c", code, "predict", str(run), "--images", str(img_dir),
                                   "--out", str(out), "--probs", str(tmp / f"probs_{n}.csv"), "--batch-size",
                                   str(batch), "--engine", engine, "--threads", "1", "--no-progress"],
                                  capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            dt = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"predict failed: {proc.stderr[-2000:]}")
            hwm = next(ln.split() for ln in proc.stderr.splitlines() if ln.startswith("HWM_KB"))
            kb, torch_loaded = int(hwm[1]), hwm[2] == "True"
            lines = sum(1 for _ in open(out)) - 1
            assert lines == n, (lines, n)
            rows.append({"n_images": n, "engine": engine, "size": size, "backbone": "test_resnet",
                         "peak_rss_mb": round(kb / 1024, 1), "torch_imported": torch_loaded,
                         "seconds": round(dt, 1), "images_per_s_end_to_end": round(n / dt, 1)})
            print(f"  stream {n:6d} images, {engine:5s}: peak RSS {kb / 1024:7.1f} MB, {dt:6.1f} s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--seconds", type=float, default=8.0, help="minimum timing per configuration")
    ap.add_argument("--stream", type=int, nargs="*", default=[2000, 20000])
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="CPU thread counts to time (default: torch's default, then 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict.json"))
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from protloc.core.atomic import write_json

    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"speed: {args.backbone} at {args.size} px, CPU, tta none", flush=True)
        import torch

        threads = args.threads or sorted({torch.get_num_threads(), 1}, reverse=True)
        speed = bench_speed(tmp, size=args.size, backbone=args.backbone, min_seconds=args.seconds,
                            threads=threads)
        print("streaming memory: protloc predict on a PNG folder", flush=True)
        stream = bench_stream(tmp, args.stream) if args.stream else []
    extra = speed.pop()
    c = Console()
    t = Table(title=f"predict speed: {args.backbone} {args.size}px on CPU, tta none")
    for col in ("engine", "threads", "batch", "images/s", "ms/image"):
        t.add_column(col, justify="right")
    for r in speed:
        t.add_row(r["engine"], str(r["threads"]), str(r["batch"]), f"{r['images_per_s']:.1f}",
                  f"{r['ms_per_image']:.2f}")
    c.print(t)
    if stream:
        t2 = Table(title="streaming `protloc predict` (test_resnet, 32 px PNGs, 1 thread)")
        for col in ("images", "engine", "peak RSS MB", "seconds", "images/s"):
            t2.add_column(col, justify="right")
        for r in stream:
            t2.add_row(str(r["n_images"]), r["engine"], f"{r['peak_rss_mb']:.0f}", f"{r['seconds']:.1f}",
                       f"{r['images_per_s_end_to_end']:.0f}")
        c.print(t2)
    result = {
        "benchmark": "predict", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "torch_threads": extra["torch_threads"],
                    "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                    "note": "shared machine: other processes compete for the cores"},
        "speed": {"backbone": args.backbone, "size": args.size, "tta": "none", "device": "cpu",
                  "input": "in-memory uint8 arrays (normalise + model; no decoding)", "rows": speed,
                  "onnx_max_abs_diff": extra["onnx_max_abs_diff"]},
        "stream": {"rows": stream, "note": "peak RSS of the whole `protloc predict` process (decode + "
                   "model + CSV writing); flat in N because images are streamed in batches"},
        "total_seconds": round(time.time() - t0, 1),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
