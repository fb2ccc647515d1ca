"""Distributed prediction at scale (issue 12, item 6): ``protloc predict --devices N`` in parts over a
large image set, killed with SIGKILL part-way and resumed; images/s and peak RSS per process.

Data: a folder of PNGs + CSV, e.g. the 200,000 hard links that ``bench_store.py scale`` builds
(``link_farm``: 200,000 ids cycling 10,000 distinct synthetic 128-px PNGs). ``--n`` takes the
first N rows. The run is an *untrained* run of ``--model`` at ``--size`` px (speed does not
depend on the weights; ``bench_predict.make_run``).

What happens:

1. ``protloc predict RUN --csv ... --out OUT --devices N --device cpu`` starts in its own process
   group; when ``--kill-at`` of the parts are on disk, the whole group gets SIGKILL (a node
   failure: ranks and decode workers die at once).
2. The same command runs again: it skips the finished parts, predicts the rest, merges.
3. Checks: the merged file has every id once, in CSV order.

``--shards K`` instead runs K single-process jobs ``--shard i/K`` at once (what a job array does on a
CPU cluster; ``--engine onnx`` exports the run first); with ``--kill-at`` every task is killed
part-way and the array runs again; the last task to finish merges.

Every process of the group is sampled every 0.5 s (``/proc/PID/status``: VmRSS, VmHWM); the
peak per role (rank 0, rank 1, their decode workers) and the RSS at 20% and 90% of the parts
(flat = RAM does not grow with the images done) go to the JSON with the load average.

Usage::

    python benchmarks/bench_predict_dist.py --data /work/tmp-scale/scale/farm200000 --n 200000 \\
        --devices 2 --out benchmarks/results/predict_dist.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def _status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "PPid"):
                out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _environ_rank(pid: int) -> int:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return -1
    for e in env:
        if e.startswith(b"LOCAL_RANK="):
            return int(e.split(b"=", 1)[1] or 0)
    return 0


class Sampler(threading.Thread):
    """Samples RSS/peak of every process in a process group; names them by role."""

    def __init__(self, root_pid: int, parts: Path, n_parts: int):
        super().__init__(daemon=True)
        self.root, self.parts, self.n_parts = root_pid, parts, n_parts
        self.peak: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.series: list[tuple[float, int, dict]] = []  # (t, parts done, {pid: rss kB})
        self.stop = threading.Event()

    def _group(self) -> list[int]:
        try:
            pgid = os.getpgid(self.root)
        except OSError:
            return []
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.getpgid(int(d.name)) == pgid:
                        pids.append(int(d.name))
                except OSError:
                    pass
        return pids

    def run(self):
        while not self.stop.is_set():
            snap = {}
            for pid in self._group():
                st = _status(pid)
                if not st:
                    continue
                snap[pid] = st.get("VmRSS", 0)
                self.peak[pid] = max(self.peak.get(pid, 0), st.get("VmHWM", 0), st.get("VmRSS", 0))
                if pid not in self.role:
                    rank = _environ_rank(pid)
                    parent = st.get("PPid")
                    main = pid == self.root or (parent == self.root and rank > 0)
                    self.role[pid] = f"rank {rank}" + ("" if main else " decode worker")
            done = len(list(self.parts.glob("rows-*.csv"))) if self.parts.is_dir() else 0
            self.series.append((time.time(), done, snap))
            self.stop.wait(0.5)

    def summary(self, before: int = 0) -> dict:
        by_role: dict[str, list[int]] = {}
        for pid, kb in self.peak.items():
            by_role.setdefault(self.role.get(pid, "?"), []).append(kb)
        out = {"peak_rss_mb": {r: round(max(v) / 1024, 1) for r, v in sorted(by_role.items())},
               "processes": {r: len(v) for r, v in sorted(by_role.items())}}
        # RSS of the rank processes at 20% and 90% of this run's parts: flat = no growth with images done
        ranks = [p for p, r in self.role.items() if "worker" not in r]
        for frac in (0.2, 0.9):
            want = before + frac * (self.n_parts - before)
            snap = next((s for t, d, s in self.series if d >= want), None)
            if snap:
                out[f"rank_rss_mb_at_{int(frac * 100)}pct"] = {self.role[p]: round(snap[p] / 1024, 1)
                                                               for p in ranks if p in snap}
        return out


def _alive(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid and " Z " not in Path(f"/proc/{d.name}/stat").read_text():
                    out.append(int(d.name))
            except (OSError, ValueError):
                pass
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_once(cmd, env, parts: Path, n_parts: int, *, kill_at: float | None, timeout: float) -> dict:
    t0 = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    sampler = Sampler(p.pid, parts, n_parts)
    sampler.start()
    before = len(list(parts.glob("rows-*.csv"))) if parts.is_dir() else 0
    killed = False
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    load0 = _load()
    while p.poll() is None:
        done = len(list(parts.glob("rows-*.csv"))) if parts.is_dir() else 0
        if kill_at is not None and done >= kill_at * n_parts:
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
            break
        if time.time() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            raise SystemExit(f"timeout after {timeout:.0f} s")
        time.sleep(0.5)
    p.wait()
    time.sleep(1.0)
    sampler.stop.set()
    sampler.join()
    reader.join(timeout=5)
    after = len(list(parts.glob("rows-*.csv")))
    left = _alive(p.pid)  # processes of the group still running (not zombies) 10 s after the end
    for _ in range(20):
        if not left:
            break
        time.sleep(0.5)
        left = _alive(p.pid)
    res = {"seconds": round(time.time() - t0, 1), "killed": killed, "rc": p.returncode,
           "parts_before": before, "parts_after": after, "survivors_after_kill": left,
           "load_start": load0, "load_end": _load(), **sampler.summary(before),
           "tail": [ln.rstrip() for ln in lines[-4:]]}
    return res


def _check_and_rate(result: dict, out: Path, csv: Path, rows: int, n: int) -> None:
    """The merged file against the input CSV (every id once, in order) and images/s over the runs
    that predicted parts."""
    import pandas as pd

    sub = pd.read_csv(out, dtype={"Image": str})
    ids = pd.read_csv(csv, dtype=str)["Image"]
    result["check"] = {"rows": len(sub), "same_ids_in_csv_order": bool(list(sub["Image"]) == list(ids)),
                       "unique": bool(sub["Image"].is_unique)}
    done = [x for x in result["runs"] if x["parts_after"] > x["parts_before"]]
    imgs = min(n, sum((x["parts_after"] - x["parts_before"]) * rows for x in done))
    secs = sum(x["seconds"] for x in done)
    result["images_per_s_overall"] = round(imgs / secs, 1) if secs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train.csv + train/ (PNGs)")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--devices", default="2")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="decode workers per rank")
    ap.add_argument("--threads", type=int, default=1, help="model threads per rank")
    ap.add_argument("--part-rows", type=int, default=None)
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction of parts done when SIGKILL hits (0: no kill)")
    ap.add_argument("--shards", type=int, default=0, help="run K shard jobs (--shard i/K) at once instead")
    ap.add_argument("--engine", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--timeout", type=float, default=3 * 3600)
    ap.add_argument("--work", default=None, help="working folder (default: a temp folder)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/predict_dist.json"))
    args = ap.parse_args()

    import pandas as pd

    from bench_predict import make_run
    from protloc.inference.distributed import PartPlan, default_part_rows

    work = Path(args.work or tempfile.mkdtemp(prefix="predict_dist_"))
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    csv = work / f"rows{args.n}.csv"
    if not csv.is_file():
        pd.read_csv(data / "train.csv", dtype=str, nrows=args.n)[["Image"]].to_csv(csv, index=False)
    run = work / "run"
    if not run.is_dir():
        make_run(run, backbone=args.model, size=args.size)
    out = work / "submission.csv"
    parts = out.with_name(out.name + ".parts")
    rows = args.part_rows or default_part_rows(args.n)
    n_parts = PartPlan(args.n, rows).n_parts
    exe = Path(sys.executable).with_name("protloc")
    cmd = [str(exe), "predict", str(run), "--csv", str(csv), "--images", str(data / "train"), "--out", str(out),
           "--device", "cpu", "--threads", str(args.threads), "--workers", str(args.workers),
           "--batch-size", str(args.batch_size), "--part-rows", str(rows), "--engine", args.engine]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if args.engine == "onnx" and not (run / "model.onnx").is_file():
        subprocess.run([str(exe), "export", str(run)], check=True, env=env)
    if args.shards:
        return shards(args, cmd, env, parts, n_parts, out, csv, rows)
    cmd += ["--devices", str(args.devices)]
    result = {"command": " ".join(cmd), "engine": args.engine, "n": args.n, "part_rows": rows, "n_parts": n_parts,
              "model": args.model, "size": args.size, "devices": args.devices, "workers_per_rank": args.workers,
              "threads_per_rank": args.threads, "cpus": os.cpu_count(), "runs": []}
    if args.kill_at:
        r = run_once(cmd, env, parts, n_parts, kill_at=args.kill_at, timeout=args.timeout)
        result["runs"].append({"what": f"first run, SIGKILL to the process group at {args.kill_at:.0%} of the parts",
                               **r})
        print(json.dumps(result["runs"][-1], indent=1), flush=True)
    r = run_once(cmd, env, parts, n_parts, kill_at=None, timeout=args.timeout)
    result["runs"].append({"what": "rerun: skips finished parts, predicts the rest, merges", **r})
    print(json.dumps(result["runs"][-1], indent=1), flush=True)
    _check_and_rate(result, out, csv, rows, args.n)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["check"]), "images/s", result["images_per_s_overall"], "->", args.out)


def _shards_once(args, cmd, env, parts: Path, n_parts: int, *, kill_at: float | None) -> dict:
    """Start the K shard tasks at once; with ``kill_at``, SIGKILL every task's process group when
    that share of the parts is on disk (a node failure during a job array)."""
    t0, load0 = time.time(), _load()
    before = len(list(parts.glob("rows-*.csv"))) if parts.is_dir() else 0
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/{args.shards}"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for i in range(args.shards)]
    samplers = [Sampler(p.pid, parts, n_parts) for p in procs]
    for sm in samplers:
        sm.start()
    lines: list[list[str]] = [[] for _ in procs]
    readers = [threading.Thread(target=lambda p=p, acc=acc: acc.extend(p.stdout), daemon=True)
               for p, acc in zip(procs, lines)]
    for r in readers:
        r.start()
    killed = False
    while any(p.poll() is None for p in procs):
        done = len(list(parts.glob("rows-*.csv"))) if parts.is_dir() else 0
        if kill_at is not None and done >= kill_at * n_parts:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
            break
        if time.time() - t0 > args.timeout:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            raise SystemExit(f"timeout after {args.timeout:.0f} s")
        time.sleep(0.5)
    for p in procs:
        p.wait()
    time.sleep(1.0)
    for sm in samplers:
        sm.stop.set()
        sm.join()
    for r in readers:
        r.join(timeout=5)
    after = len(list(parts.glob("rows-*.csv")))
    sums = [sm.summary(before) for sm in samplers]
    return {"seconds": round(time.time() - t0, 1), "killed": killed, "rc": [p.returncode for p in procs],
            "parts_before": before, "parts_after": after,
            "survivors_after_kill": [q for p in procs for q in _alive(p.pid)],
            "load_start": load0, "load_end": _load(), "per_shard": sums,
            "tails": [[ln.rstrip() for ln in acc[-2:]] for acc in lines]}


def shards(args, cmd, env, parts: Path, n_parts: int, out: Path, csv: Path, rows: int) -> None:
    """K job-array tasks at once (``--shard i/K``), each one process; the last one merges. With
    ``--kill-at``, every task is killed part-way and the array is submitted again (resume)."""

    result = {"command": " ".join(cmd) + " --shard i/K", "engine": args.engine, "n": args.n, "part_rows": rows,
              "n_parts": n_parts, "model": args.model, "size": args.size, "shards": args.shards,
              "workers_per_shard": args.workers, "threads_per_shard": args.threads, "cpus": os.cpu_count(),
              "runs": []}
    if args.kill_at:
        r = _shards_once(args, cmd, env, parts, n_parts, kill_at=args.kill_at)
        result["runs"].append({"what": f"first submission, SIGKILL to every task at {args.kill_at:.0%} of the parts",
                               **r})
        print(json.dumps(result["runs"][-1], indent=1), flush=True)
    r = _shards_once(args, cmd, env, parts, n_parts, kill_at=None)
    result["runs"].append({"what": "resubmitted: each task skips its finished parts; the last one merges", **r})
    print(json.dumps(result["runs"][-1], indent=1), flush=True)
    _check_and_rate(result, out, csv, rows, args.n)
    result["seconds"] = round(sum(x["seconds"] for x in result["runs"]), 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["check"]), "images/s", result["images_per_s_overall"], "->", args.out)


if __name__ == "__main__":
    main()
