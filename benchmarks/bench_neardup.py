"""Near-duplicate search at 20k, 200k and 1M hashes: the old banded search vs the new one vs faiss.

Data: N random 128-bit hashes, 1% of them replaced by near copies of another hash (1-12 of 128
bits flipped, uniform) and 0.1% by exact copies. Threshold 12 (the default). Each (method, N)
runs in a fresh process (clean peak RSS) with a time limit.

* ``new``              ``protloc.data.phash.near_duplicate_pairs`` (multi-index, numpy)
* ``old``              the banded search before this change (``git show OLD_REF:src/protloc/data/phash.py``)
* ``faiss-multihash``  ``faiss.IndexBinaryMultiHash`` (b=24 bits x 5 tables, nflip=2: exact at 12) range search
* ``faiss-flat``       ``faiss.IndexBinaryFlat`` range search (exhaustive)

Recall = planted close pairs found / planted; agreement = identical pair lists to ``new``.

    python benchmarks/bench_neardup.py [--sizes 20000,200000,1000000] [--limit 1500]

Writes ``benchmarks/results/neardup.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "benchmarks" / "results" / "neardup.json"
T = 12


def make_hashes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, (n, 2), dtype=np.uint64)
    m = n // 100
    pos = rng.choice(n, 2 * m + n // 1000, replace=False)
    src, dst, same = pos[:m], pos[m:2 * m], pos[2 * m:]
    planted = []
    for a, b in zip(src.tolist(), dst.tolist()):
        h[b] = h[a]
        for bit in rng.choice(128, int(rng.integers(1, T + 1)), replace=False):
            h[b, bit // 64] ^= np.uint64(1) << np.uint64(int(bit) % 64)
        planted.append((min(a, b), max(a, b)))
    copies = rng.choice(src, len(same))
    h[same] = h[copies]
    return h, planted


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _old_module(ref: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:src/protloc/data/phash.py"], capture_output=True,
                         text=True, check=True).stdout
    p = Path(tempfile.mkdtemp()) / "phash_old.py"
    p.write_text(src)
    import importlib.util

    spec = importlib.util.spec_from_file_location("phash_old", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _faiss_pairs(h: np.ndarray, kind: str) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(2)
    codes = np.ascontiguousarray(h).view(np.uint8).reshape(len(h), 16)
    if kind == "faiss-flat":
        index = faiss.IndexBinaryFlat(128)
    else:
        index = faiss.IndexBinaryMultiHash(128, 5, 24)
        index.nflip = 2
    index.add(codes)
    lims, d, i = index.range_search(codes, T + 1)
    q = np.repeat(np.arange(len(h)), np.diff(lims).astype(np.int64))
    keep = q < i
    return np.stack([q[keep], i[keep], d[keep]], 1).astype(np.int64)


def one(method: str, n: int, ref: str, out: str) -> None:
    h, planted = make_hashes(n)
    t0 = time.perf_counter()
    if method == "new":
        from protloc.data.phash import near_duplicate_pairs

        pairs = near_duplicate_pairs(h, threshold=T)
    elif method == "old":
        pairs = _old_module(ref).near_duplicate_pairs(h, threshold=T)
    else:
        pairs = _faiss_pairs(h, method)
    dt = time.perf_counter() - t0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.asarray(pairs[:, :2], np.int64)  # found = both ends in one group (exact copies link via the first)
    _, comp = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)), directed=False)
    pl = np.asarray(planted)
    found = int((comp[pl[:, 0]] == comp[pl[:, 1]]).sum())
    digest = hashlib.sha1(np.ascontiguousarray(np.asarray(pairs, np.int64)).tobytes()).hexdigest()[:16]
    Path(out).write_text(json.dumps({"s": round(dt, 2), "pairs": int(len(pairs)), "planted": len(planted),
                                     "planted_found": found, "recall": round(found / max(1, len(planted)), 4),
                                     "peak_rss_mb": round(_rss_mb(), 1), "pairs_sha1": digest}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,200000,1000000")
    ap.add_argument("--methods", default="new,old,faiss-multihash,faiss-flat")
    ap.add_argument("--limit", type=float, default=1500, help="seconds per run before it is stopped")
    ap.add_argument("--old-ref", default="c84fe19", help="git commit of the old phash.py")
    ap.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        method, n, out = args._one
        return one(method, int(n), args.old_ref, out)
    res = json.loads(OUT.read_text()) if OUT.is_file() else {}
    res.update({"threshold": T, "data": "random 128-bit hashes + 1% planted near copies (1-12 bits) + 0.1% exact",
                "command": " ".join(sys.argv)})
    skip: set[str] = set()
    for n in map(int, args.sizes.split(",")):
        for method in args.methods.split(","):
            key = f"{method}@{n}"
            if method in skip:
                res[key] = {"skipped": "slower than --limit at a smaller size"}
                continue
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                load = "load average %.2f %.2f %.2f" % os.getloadavg()
                print(f"{key} ... ({load})", flush=True)
                try:
                    subprocess.run([sys.executable, __file__, "--old-ref", args.old_ref, "--_one", method, str(n),
                                    f.name], check=True, timeout=args.limit)
                    r = json.loads(Path(f.name).read_text())
                except subprocess.TimeoutExpired:
                    r = {"timed_out_after_s": args.limit}
                    skip.add(method)
                except subprocess.CalledProcessError as e:
                    r = {"failed": e.returncode}
            r["load_before"] = load
            res[key] = r
            new = res.get(f"new@{n}", {})
            if method == "old" and "pairs_sha1" in r and "pairs_sha1" in new:
                r["same_pairs_as_new"] = r["pairs_sha1"] == new["pairs_sha1"]
            print(key, r, flush=True)
            from protloc.core.atomic import write_json

            write_json(OUT, res)


if __name__ == "__main__":
    main()
