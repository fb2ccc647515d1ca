"""Decode once: reading an epoch from the memmap cache vs decoding the PNGs.

Goal (issue #2): a random-order epoch read from the cache is at least 20x faster than decoding
the PNGs, and building the cache keeps the main process's RAM small (chunks are streamed to
disk, the array is never held in memory).

    python benchmarks/bench_cache.py [--n 2000] [--data DIR] [--workers 2]

Prints a table and writes ``benchmarks/results/cache.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protloc.core.atomic import write_json  # noqa: E402
from protloc.io.images import read_image  # noqa: E402
from protloc.data.table import load_table  # noqa: E402


def _rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_data(out: Path, n: int, seed: int = 0) -> tuple[Path, Path, str]:
    """``protloc.synth.dataset`` if it exists, else noise + blob PNGs (similar size on disk)."""
    try:
        from protloc.synth.dataset import make_dataset

        make_dataset(out, n_train=n, n_test=0, size=128, seed=seed, progress=False)
        return out / "train.csv", out / "train", "protloc.synth.dataset"
    except ImportError:
        from PIL import Image

        rng = np.random.default_rng(seed)
        d = out / "train"
        d.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[:128, :128]
        rows = []
        for i in range(n):
            img = rng.integers(0, 40, (128, 128, 3)).astype(np.uint8)
            for _ in range(6):
                cy, cx, r = rng.integers(10, 118, 2).tolist() + [int(rng.integers(4, 20))]
                img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r, rng.integers(0, 3)] = rng.integers(80, 255)
            Image.fromarray(img).save(d / f"{i}.png")
            rows.append(f"{i},{i % 10}\n")
        (out / "train.csv").write_text("Image,Label\n" + "".join(rows))
        return out / "train.csv", d, "noise+blobs"


def epoch_decode(table, order, size: int) -> float:
    t0 = time.perf_counter()
    for i in order:
        read_image(table.images, table.ids[i], fmt=table.fmt, channels=table.channels, size=size)
    return time.perf_counter() - t0


def epoch_cache(images: np.ndarray, order, batch: int, per_item: bool) -> float:
    t0 = time.perf_counter()
    acc = 0
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        if per_item:  # a map-style Dataset: one __getitem__ per image, then collate
            b = np.stack([np.asarray(images[i]) for i in idx])
        else:         # a batch sampler: one fancy-indexed read per batch
            b = images[np.sort(idx)]
        acc += int(b[0, 0, 0, 0])
    return time.perf_counter() - t0


def rss_check(table, tmp: Path, n_big: int, size: int, workers: int) -> dict:
    """Build a cache of ``n_big`` images (symlinks cycling over the table's files) and measure
    the main process's peak RSS growth: it must stay far below the array size."""
    from protloc.data.cache import load_cached

    d = tmp / "big"
    d.mkdir()
    src = [table.files(i)[0] for i in range(len(table))]
    for k in range(n_big):
        (d / f"{k}.png").symlink_to(src[k % len(src)])
    (tmp / "big.csv").write_text("Image,Label\n" + "".join(f"{k},{k % 10}\n" for k in range(n_big)))
    big = load_table(tmp / "big.csv", d)
    _reset_peak_rss()
    rss0 = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    ds = load_cached(big, size=size, workers=workers, progress=False)
    dt = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    return {"rss_check_n": n_big, "rss_check_cache_mb": round(ds.images.nbytes / 2**20, 1),
            "rss_check_build_s": round(dt, 1), "rss_check_peak_growth_mb": round(peak - rss0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--data", default=None, help="existing dataset folder (train.csv + train/)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rss-n", type=int, default=0,
                    help="also build a cache of this many images (symlinks to the PNGs) and record peak RSS")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cache.json"))
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="protloc_bench_cache_"))
    os.environ["PROTLOC_CACHE_DIR"] = str(tmp / "cache")
    from protloc.data.cache import load_cached

    t0 = time.perf_counter()
    if args.data:
        csv, imgs, source = Path(args.data) / "train.csv", Path(args.data) / "train", f"--data {args.data}"
    else:
        csv, imgs, source = make_data(tmp / "data", args.n)
    t_make = time.perf_counter() - t0
    table = load_table(csv, imgs)
    n = len(table)
    png_mb = sum(f.stat().st_size for i in range(n) for f in table.files(i)) / 2**20
    rng = np.random.default_rng(0)
    order = rng.permutation(n)

    epoch_decode(table, order[: min(n, 50)], args.size)  # warm the page cache and imports
    t_decode = epoch_decode(table, order, args.size)

    _reset_peak_rss()
    rss0 = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    ds = load_cached(table, size=args.size, workers=args.workers, progress=False)
    t_build = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    t0 = time.perf_counter()
    ds = load_cached(table, size=args.size, progress=False)
    t_open = time.perf_counter() - t0
    mm = ds.images
    epoch_cache(mm, order, args.batch, per_item=True)  # page cache warm, like epoch >= 2
    t_item = min(epoch_cache(mm, rng.permutation(n), args.batch, per_item=True) for _ in range(3))
    t_batch = min(epoch_cache(mm, rng.permutation(n), args.batch, per_item=False) for _ in range(3))
    same = bool(np.array_equal(mm[order[0]], read_image(table.images, table.ids[order[0]], size=args.size)))

    res = {
        "n_images": n, "size": args.size, "data": source, "png_mb": round(png_mb, 1),
        "cache_mb": round(mm.nbytes / 2**20, 1), "make_data_s": round(t_make, 1),
        "decode_epoch_s": round(t_decode, 3), "decode_img_per_s": round(n / t_decode, 1),
        "cache_build_s": round(t_build, 2), "cache_build_workers": args.workers,
        "cache_open_hit_s": round(t_open, 3),
        "cache_epoch_per_item_s": round(t_item, 4), "cache_epoch_batch_s": round(t_batch, 4),
        "cache_img_per_s_per_item": round(n / t_item, 0), "cache_img_per_s_batch": round(n / t_batch, 0),
        "speedup_per_item": round(t_decode / t_item, 1), "speedup_batch": round(t_decode / t_batch, 1),
        "build_rss_before_mb": round(rss0, 1), "build_peak_rss_mb": round(peak, 1),
        "build_rss_growth_mb": round(peak - rss0, 1), "cache_equals_decode": same,
        "goal_speedup": 20, "goal_met": bool(t_decode / t_item >= 20),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
    }
    if args.rss_n:
        res.update(rss_check(table, tmp, args.rss_n, args.size, args.workers))
    write_json(args.out, res)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"decode cache benchmark ({n} images, {args.size}px, {source})")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in res.items():
            t.add_row(k, str(v))
        Console(width=120).print(t)
    except ImportError:
        print(res)
    print(f"wrote {args.out}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if res["goal_met"] and same else 1


if __name__ == "__main__":
    sys.exit(main())
