"""``protloc explore`` on 20,000 images: goal under 2 minutes (issue #3).

Synthesizing 20,000 realistic images takes minutes of CPU (``protloc synth`` runs at roughly
50 images/s per core), so the benchmark synthesizes a few hundred with
``protloc.synth.dataset.make_dataset`` and builds the rest as mosaics: each new image is four 64x64
quadrants taken from random synthetic images, each flipped/rotated at random and with a little
noise, so images are distinct (no pile of near duplicates) but look like the real thing. Labels
are drawn from the synthetic label sets, so the label statistics keep their shape.

    python benchmarks/bench_explore.py [--n 20000] [--base 300] [--test 1000] [--workdir DIR]

Times the whole report (validate's duplicate / leak check included, which reads every image
once) and the report without it (``--no-validate``). Prints the figures and writes
``benchmarks/results/explore.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protloc.core.atomic import write_json  # noqa: E402


def _mosaics(base_imgs, base_labels, out_dir: Path, n: int, *, seed: int, prefix: str) -> list[tuple[str, str]]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    h = base_imgs.shape[1] // 2
    rows = []
    for i in range(n):
        img = np.empty_like(base_imgs[0])
        for qy in (0, h):
            for qx in (0, h):
                src = base_imgs[rng.integers(len(base_imgs))]
                sy, sx = rng.integers(0, 2, 2) * h
                q = np.rot90(src[sy:sy + h, sx:sx + h], rng.integers(4))
                img[qy:qy + h, qx:qx + h] = q[:, ::-1] if rng.random() < 0.5 else q
        noise = rng.integers(0, 3, img.shape, dtype=np.uint8)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        iid = f"{prefix}{i}"
        Image.fromarray(img).save(out_dir / f"{iid}.png", compress_level=1)
        rows.append((iid, base_labels[rng.integers(len(base_labels))]))
    return rows


def make_data(work: Path, *, n: int, n_test: int, base: int, seed: int = 0) -> Path:
    """Write ``work/data/{train,test}.csv`` + folders (reused when already complete)."""
    import pandas as pd

    from protloc.io.images import read_image
    from protloc.synth.dataset import make_dataset

    data = work / "data"
    if (data / "train.csv").is_file() and len(pd.read_csv(data / "train.csv")) == n:
        return data
    synth = work / "synth"
    if not (synth / "train.csv").is_file():
        make_dataset(synth, n_train=base, n_test=0, seed=seed, size=128, progress=False, overwrite=True)
    df = pd.read_csv(synth / "train.csv", dtype=str)
    imgs = np.stack([read_image(synth / "train", iid, fmt="rgb") for iid in df["Image"]])
    labels = df["Label"].tolist()
    train = _mosaics(imgs, labels, data / "train", n, seed=seed + 1, prefix="m")
    test = _mosaics(imgs, labels, data / "test", n_test, seed=seed + 2, prefix="t")
    pd.DataFrame([r[0] for r in test], columns=["Image"]).to_csv(data / "test.csv", index=False)
    pd.DataFrame(train, columns=["Image", "Label"]).to_csv(data / "train.csv", index=False)
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--base", type=int, default=300, help="synthetic images the mosaics are made of")
    ap.add_argument("--sample", type=int, default=2000)
    ap.add_argument("--workdir", default="/tmp/protloc_bench_explore")
    ap.add_argument("--skip-no-validate", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    from protloc.reports.explore import explore
    from protloc.data.table import load_table

    work = Path(args.workdir)
    t0 = time.perf_counter()
    data = make_data(work, n=args.n, n_test=args.test, base=args.base)
    t_data = time.perf_counter() - t0
    print(f"data: {args.n} train + {args.test} test images in {data} ({t_data:.1f} s to make or find)")
    results = {}
    runs = [("with_validate", True)] + ([] if args.skip_no_validate else [("no_validate", False)])
    for name, val in runs:
        t = time.perf_counter()
        table = load_table(data / "train.csv", data / "train")
        test = load_table(data / "test.csv", data / "test", labels=False)
        out = explore(table, out=work / f"explore_{name}.html", test_table=test, sample=args.sample,
                      progress=False, validate=val)
        dt = time.perf_counter() - t
        results[name] = {"seconds": round(dt, 1), "html_mb": round(out.stat().st_size / 1e6, 2),
                         "load_average_1min_after": round(os.getloadavg()[0], 1)}
        print(f"explore ({name.replace('_', ' ')}): {dt:.1f} s, {results[name]['html_mb']} MB -> {out}")
    res = {"n_train": args.n, "n_test": args.test, "sample": args.sample, "goal_seconds": 120,
           "data": f"{args.base} protloc.synth.dataset images + mosaics of their quadrants (see docstring)",
           "results": results, "cpus": os.cpu_count(), "python": platform.python_version(),
           "machine": platform.machine(), "note": "shared 2-core machine; other jobs were running"}
    res["meets_goal"] = all(r["seconds"] < 120 for r in results.values())
    write_json(ROOT / "benchmarks" / "results" / "explore.json", res)
    print(f"wrote benchmarks/results/explore.json (meets goal: {res['meets_goal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
