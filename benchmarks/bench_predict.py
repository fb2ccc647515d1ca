"""Prediction speed, end to end, next to the machine's physical limit (issue 13; memory: issue 5).

1. **End to end** (`protloc predict` in a subprocess, PNG decode included, median of
   ``--repeats`` runs, interleaved): the default engine (auto) without TTA and with D4, torch,
   and, with ``--before SRC`` (a checkout of an older protloc's ``src``), that version's default
   (torch) and its onnx engine, side by side in the same run. Wall time, CPU time (user + sys of
   the child) and peak RSS; images/s = images / wall.
2. **Threads**: ``Predictor.predict_table`` on the same PNGs for each engine x ``--threads``,
   on the machine as it is and with ``--hog`` busy-looping processes added (a busy machine):
   more threads must never be slower.
3. **Model alone** (in-memory batches, one thread): images per CPU-second of onnxruntime fp32,
   int8 (when ``model.int8.onnx`` exists) and torch, the basis of the idle-machine figure.
4. **The limit**: forward FLOPs per image (``torch.utils.flop_counter``) over the CPU's fp32 peak
   (cores x ``--flop-per-cycle`` x the clock read from /proc/cpuinfo).
5. Streaming memory (issue 5): peak RSS of ``protloc predict`` on ``--stream`` N images.

On a shared machine wall figures depend on the other load: every row carries the load average,
and images per CPU-second (which do not) are given too.

Usage::

    python benchmarks/bench_predict.py --run RUN --images DIR --csv CSV --before /tmp/before/src
    python benchmarks/bench_predict.py            # an untrained Lite0 run and 1000 synthetic PNGs

Writes ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("preprocessing.json", "schema.json", "model.json", "config.yaml", "thresholds.json", "data.json",
             "oof.csv", "summary.json", "splits.csv")


def make_run(root: Path, *, backbone: str, size: int, folds: int = 1) -> Path:
    """An untrained run folder with the layout of protloc.core.runfolder (like tests' make_fake_run)."""
    import torch

    from protloc.core.atomic import write_json
    from protloc.core.preprocessing import Preprocessing
    from protloc.core.runfolder import RunFolder
    from protloc.core.schema import get_schema
    from protloc.models.network import ModelSpec, build_model, save_weights

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


def copy_run(src: Path, dst: Path, *, onnx: bool = False) -> Path:
    """The files a prediction needs (weights, preprocessing, thresholds), without cached exports
    (``onnx=True``: with the int8 export and its sidecar, which take minutes to make)."""
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "models", dst / "models")
    if onnx:
        for p in src.glob("model*.onnx*"):
            shutil.copy2(p, dst / p.name)
    return dst


def synth_images(out: Path, n: int, size: int) -> tuple[Path, Path]:
    """``n`` synthetic HPA-like PNGs (realistic content, so realistic PNG decoding) and their CSV."""
    from protloc.cli.main import main

    main(["synth", str(out), "--n-train", "8", "--n-test", str(n), "--size", str(size), "--seed", "1",
          "--no-progress"])
    return out / "test", out / "test.csv"


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------
def cpu_mhz() -> float:
    try:
        vals = [float(ln.split(":")[1]) for ln in open("/proc/cpuinfo") if ln.lower().startswith("cpu mhz")]
        return float(np.median(vals)) if vals else float("nan")
    except OSError:
        return float("nan")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _spin(stop):
    x = 0
    while not stop.is_set():
        for _ in range(100000):
            x += 1


class Hog:
    """``n`` processes busy-looping (a busy machine) while the block runs."""

    def __init__(self, n: int):
        self.n, self.procs, self.stop = n, [], None

    def __enter__(self):
        if self.n:
            ctx = mp.get_context("spawn")
            self.stop = ctx.Event()
            self.procs = [ctx.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.n)]
            for p in self.procs:
                p.start()
            time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        if self.stop is not None:
            self.stop.set()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
        return False


def flops_per_image(backbone: str, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from protloc.models.network import ModelSpec, build_model

    net = build_model(ModelSpec(backbone, in_chans=3, num_classes=10)).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return float(fc.get_total_flops())


# --------------------------------------------------------------------------------------------
# 1. end to end
# --------------------------------------------------------------------------------------------
def run_cli(src: Path, argv: list[str], *, n: int) -> dict:
    code = ("import sys\nfrom protloc.cli.main import main\nrc = main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('HWM_KB', hwm.split()[1], file=sys.stderr)\nsys.exit(rc)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    la = load()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({' '.join(argv)}): {proc.stderr[-2000:]}")
    kb = int(next(ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("HWM_KB")))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "sys_s": round(after.ru_stime - before.ru_stime, 2),
            "peak_rss_mb": round(kb / 1024, 1), "images_per_s": round(n / wall, 1),
            "images_per_cpu_s": round(n / cpu, 1), "load_1min_before": la,
            "engine_line": next((ln for ln in proc.stderr.splitlines() if ln.startswith("engine:")), "")}


def bench_end_to_end(tmp: Path, run: Path, images: Path, csv: Path | None, *, n: int, n_d4: int,
                     repeats: int, before: Path | None, hog: int, before_auto: bool = False) -> list[dict]:
    after_run = copy_run(run, tmp / "run_after", onnx=True)
    (after_run / "model.onnx").unlink(missing_ok=True)  # the fp32 cache is made by the first default run
    data = ["--images", str(images)] + (["--csv", str(csv)] if csv else [])
    head = csv and tmp / "head.csv"
    if csv:
        import pandas as pd

        pd.read_csv(csv).head(n_d4).to_csv(head, index=False)
    sub = str(tmp / "sub.csv")
    configs = [("after", "auto (default)", after_run, [], n),
               ("after", "auto, --tta d4", after_run, ["--tta", "d4"] + (["--csv", str(head)] if csv else []), n_d4),
               ("after", "torch", after_run, ["--engine", "torch"], n)]
    if (run / "model.int8.onnx").is_file() and json.loads((run / "model.onnx.json").read_text()).get("int8", {}) \
            .get("usable"):
        # the int8 model passes its gate, so auto uses it: fp32 side by side
        configs += [("after", "auto, --int8 off", after_run, ["--int8", "off"], n),
                    ("after", "auto, --tta d4, --int8 off", after_run,
                     ["--tta", "d4", "--int8", "off"] + (["--csv", str(head)] if csv else []), n_d4)]
    if before is not None and before_auto:  # an older version that already has the auto engine
        before_run = copy_run(run, tmp / "run_before", onnx=True)
        configs = [("before", "auto (default)", before_run, [], n),
                   ("before", "auto, --tta d4", before_run,
                    ["--tta", "d4"] + (["--csv", str(head)] if csv else []), n_d4)] + configs
    elif before is not None:
        before_run = copy_run(run, tmp / "run_before")
        subprocess.run([sys.executable, "-c", "import sys\nfrom protloc.cli.main import main\n"
                        "sys.exit(main(sys.argv[1:]))", "export", str(before_run)], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(before)})
        configs = [("before", "torch (default)", before_run, [], n),
                   ("before", "onnx", before_run, ["--engine", "onnx"], n),
                   ("before", "torch, --tta d4", before_run, ["--tta", "d4"] + (["--csv", str(head)] if csv else []),
                    n_d4)] + configs
    # the first default run exports and caches the ONNX model: time it once on its own
    first = run_cli(ROOT / "src", ["predict", str(after_run), *data, "--out", sub, "--no-progress"], n=n)
    print(f"  first run (exports the ONNX model once): {first['wall_s']} s", flush=True)
    rows = {c[:2]: [] for c in configs}
    with Hog(hog):
        for r in range(repeats):
            for version, name, rdir, extra, count in configs:
                argv = ["predict", str(rdir), *data, *extra, "--out", sub]
                if "--csv" in extra:  # the d4 subset replaces the full CSV
                    argv = ["predict", str(rdir), "--images", str(images), *extra, "--out", sub]
                res = run_cli(before if version == "before" else ROOT / "src", argv, n=count)
                rows[(version, name)].append(res)
                print(f"  [{r + 1}/{repeats}] {version:6s} {name:18s} {res['images_per_s']:7.1f} images/s "
                      f"({res['images_per_cpu_s']:.0f} per CPU-s, load {res['load_1min_before']})", flush=True)
    out = []
    for (version, name), rs in rows.items():
        med = {k: float(np.median([x[k] for x in rs])) for k in ("wall_s", "cpu_s", "sys_s", "peak_rss_mb",
                                                                  "images_per_s", "images_per_cpu_s")}
        out.append({"version": version, "config": name, "images": rs[0]["wall_s"] and
                    round(rs[0]["images_per_s"] * rs[0]["wall_s"]), "hog_processes": hog, "repeats": len(rs),
                    **{k: round(v, 2) for k, v in med.items()},
                    "load_1min": [x["load_1min_before"] for x in rs], "engine_line": rs[-1]["engine_line"],
                    "runs": rs})
    out.append({"version": "after", "config": "first default run (exports + caches model.onnx)", **first})
    return out


# --------------------------------------------------------------------------------------------
# 2. threads
# --------------------------------------------------------------------------------------------
def bench_threads(run: Path, images: Path, csv: Path | None, *, n: int, threads: list[int], hogs: list[int],
                  seconds: float) -> list[dict]:
    from protloc.data.table import load_table
    from protloc.inference.predictor import Predictor

    table = load_table(str(csv) if csv else None, str(images), labels=False)
    table = table.subset(np.arange(min(n, len(table))))
    rows = []
    for hog in hogs:
        with Hog(hog):
            for engine in ("onnx", "torch"):
                for th in threads:
                    pred = Predictor.from_run(run, engine=engine, threads=th, int8="off", note=lambda m: None)
                    pred.predict_table(table, batch_size=64)  # warm-up (and page cache)
                    ips, cps, k = [], [], 0
                    t_end = time.perf_counter() + seconds
                    while time.perf_counter() < t_end or k < 2:
                        c0, t0 = time.process_time(), time.perf_counter()
                        pred.predict_table(table, batch_size=64)
                        ips.append(len(table) / (time.perf_counter() - t0))
                        cps.append(len(table) / max(time.process_time() - c0, 1e-9))
                        k += 1
                    row = {"engine": engine, "threads": th, "hog_processes": hog, "images": len(table),
                           "images_per_s": round(float(np.median(ips)), 1),
                           "images_per_cpu_s": round(float(np.median(cps)), 1), "passes": k, "load_1min": load()}
                    rows.append(row)
                    print(f"  hog {hog} {engine:5s} threads {th}: {row['images_per_s']:7.1f} images/s "
                          f"({row['images_per_cpu_s']:.0f} per CPU-s, load {row['load_1min']})", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# 3. model alone
# --------------------------------------------------------------------------------------------
def bench_model(run: Path, *, seconds: float) -> list[dict]:
    import onnxruntime as ort
    import torch

    from protloc.core.runfolder import RunFolder
    from protloc.inference.onnx import cached_onnx, session_options
    from protloc.models.network import load_weights

    rf = RunFolder(run)
    pre = rf.preprocessing()
    x = np.random.default_rng(0).normal(size=(32, pre.in_chans, pre.size, pre.size)).astype(np.float32)
    path, _ = cached_onnx(run, int8="off", note=lambda m: None)

    def timed(fn):
        fn()
        n, c0 = 0, time.process_time()
        t0 = time.perf_counter()
        while time.process_time() - c0 < seconds:
            fn()
            n += len(x)
        return round(n / (time.process_time() - c0), 1), round(n / (time.perf_counter() - t0), 1)

    rows = []
    files = [("onnxruntime fp32", path)] + ([("onnxruntime int8", rf.onnx_file(int8=True))]
                                             if rf.onnx_file(int8=True).is_file() else [])
    for name, p in files:
        s = ort.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"])
        cps, ips = timed(lambda: s.run(["probs"], {"input": x}))
        rows.append({"engine": name, "threads": 1, "batch": len(x), "images_per_cpu_s": cps, "images_per_s": ips,
                     "load_1min": load()})
    torch.set_num_threads(1)
    nets = [load_weights(p).eval().to(memory_format=torch.channels_last) for p in rf.model_paths()]
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

    def fwd():
        with torch.inference_mode():
            for m in nets:
                m(xt)

    cps, ips = timed(fwd)
    rows.append({"engine": "torch fp32 (channels_last)", "threads": 1, "batch": len(x), "images_per_cpu_s": cps,
                 "images_per_s": ips, "load_1min": load()})
    for r in rows:
        print(f"  model alone, {r['engine']:28s}: {r['images_per_cpu_s']:7.1f} images per CPU-second", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# 5. streaming memory (issue 5)
# --------------------------------------------------------------------------------------------
def bench_stream(tmp: Path, n_images: list[int], *, size: int = 32, batch: int = 64) -> list[dict]:
    from PIL import Image

    run = make_run(tmp / "stream_run", backbone="test_resnet", size=size)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 255, (16, size, size, 3)).astype(np.uint8)
    img_dir = tmp / "stream_images"
    img_dir.mkdir()
    written, rows = 0, []
    for n in sorted(n_images):
        for i in range(written, n):
            Image.fromarray(tiles[i % 16]).save(img_dir / f"{i:06d}.png", compress_level=1)
        written = n
        for engine in ("torch", "onnx"):
            res = run_cli(ROOT / "src", ["predict", str(run), "--images", str(img_dir), "--out",
                                         str(tmp / f"sub_{n}.csv"), "--probs", str(tmp / f"probs_{n}.csv"),
                                         "--batch-size", str(batch), "--engine", engine, "--no-progress"], n=n)
            rows.append({"n_images": n, "engine": engine, "size": size, "backbone": "test_resnet",
                         "peak_rss_mb": res["peak_rss_mb"], "seconds": res["wall_s"],
                         "images_per_s_end_to_end": res["images_per_s"]})
            print(f"  stream {n:6d} images, {engine:5s}: peak RSS {res['peak_rss_mb']:7.1f} MB", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a trained run (default: an untrained --backbone run)")
    ap.add_argument("--images", default=None, help="PNG folder to predict (default: --n synthetic images)")
    ap.add_argument("--csv", default=None, help="ids of --images (optional)")
    ap.add_argument("--n", type=int, default=1000, help="synthetic images when --images is not given")
    ap.add_argument("--n-d4", type=int, default=250, help="images of the D4 end-to-end runs")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs per configuration (median)")
    ap.add_argument("--before", default=None, help="`src` folder of an older protloc to compare with")
    ap.add_argument("--before-auto", action="store_true",
                    help="--before already has the auto engine: compare its default and D4 runs with this one's")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--hog", type=int, default=2, help="busy-looping processes of the 'busy machine' rows")
    ap.add_argument("--seconds", type=float, default=6.0, help="minimum timing per thread configuration")
    ap.add_argument("--flop-per-cycle", type=float, default=32.0,
                    help="fp32 FLOP per cycle per core (Zen 3 AVX2: 2 FMA units x 8 lanes x 2)")
    ap.add_argument("--stream", type=int, nargs="*", default=[2000, 10000])
    ap.add_argument("--skip", nargs="*", default=[], choices=("e2e", "threads", "model", "stream"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict.json"))
    args = ap.parse_args(argv)

    from protloc.core.atomic import write_json

    t0 = time.time()
    result: dict = {"benchmark": "predict", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "argv": sys.argv[1:] if argv is None else argv}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        run = Path(args.run) if args.run else make_run(tmp / "untrained", backbone=args.backbone, size=args.size)
        if args.images:
            images, csv = Path(args.images), Path(args.csv) if args.csv else None
        else:
            images, csv = synth_images(tmp / "synth", args.n, args.size)
        n = len(__import__("pandas").read_csv(csv)) if csv else len(list(images.glob("*.png")))
        fl = flops_per_image(args.backbone, args.size)
        mhz, nc = cpu_mhz(), cores()
        peak = nc * args.flop_per_cycle * mhz * 1e6
        result["limit"] = {
            "backbone": args.backbone, "size": args.size, "forward_flops_per_image": fl, "cpu_mhz": mhz,
            "cores": nc, "flop_per_cycle_per_core": args.flop_per_cycle, "peak_flops": peak,
            "predict_images_per_s_at_peak": round(peak / fl, 1),
            "d4_images_per_s_at_peak": round(peak / fl / 8, 1),
            "train_images_per_s_at_peak": round(peak / (3 * fl), 1),
            "note": "FLOPs = 2 x multiply-adds (torch.utils.flop_counter); training = 3 x forward"}
        print(f"limit: {fl / 1e9:.3f} GFLOP/image, peak {peak / 1e9:.0f} GFLOP/s ({nc} cores x "
              f"{args.flop_per_cycle:g} x {mhz:.0f} MHz) -> {peak / fl:.0f} images/s", flush=True)
        if "model" not in args.skip:
            print("model alone (one thread, in memory)", flush=True)
            result["model_alone"] = bench_model(copy_run(run, tmp / "run_model", onnx=True), seconds=args.seconds)
            write_json(args.out, result)  # partial results survive an interrupted run
        if "threads" not in args.skip:
            print("threads (predict_table on the PNGs; +hog: busy machine)", flush=True)
            trun = copy_run(run, tmp / "run_threads", onnx=True)
            result["threads"] = bench_threads(trun, images, csv, n=min(n, 500), threads=args.threads,
                                              hogs=[0, args.hog], seconds=args.seconds)
            write_json(args.out, result)  # partial results survive an interrupted run
        if "e2e" not in args.skip:
            print("end to end: protloc predict", flush=True)
            result["end_to_end"] = bench_end_to_end(tmp, run, images, csv, n=n, n_d4=min(args.n_d4, n),
                                                    repeats=args.repeats,
                                                    before=Path(args.before) if args.before else None, hog=0,
                                                    before_auto=args.before_auto)
            write_json(args.out, result)  # partial results survive an interrupted run
        if args.stream and "stream" not in args.skip:
            print("streaming memory: protloc predict on a PNG folder", flush=True)
            result["stream"] = {"rows": bench_stream(tmp, args.stream),
                                "note": "peak RSS of the whole `protloc predict` process; flat in N (streamed)"}
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                         "cores_available": cores(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                         "note": "shared machine: other processes compete for the cores (see load_1min per row)"}
    result["total_seconds"] = round(time.time() - t0, 1)
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
