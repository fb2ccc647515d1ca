"""The sharded image store: which format (measured), and how it behaves at 200,000 images.

``compare``: the same decoded images (a pool of real ``protloc synth`` PNGs decoded at 128 px,
cycled to N items, so the store, not PNG decoding, is measured) written by 2 worker processes
each writing whole shards/chunks, then read by index, in four formats:

* ``zarr-protloc``   Zarr v3 sharded array written and read by ``protloc.data.store`` (pread per image)
* ``zarr-python``    the same layout (zstd) through zarr-python 3 (``arr[a:b] = block``, ``arr[i]`` per image)
* ``litdata``        ``litdata.optimize`` chunks, read with ``StreamingDataset[i]`` / its own loader
* ``npy-memmap``     the old single ``.npy`` file (one writer), memory-mapped

Reads: random batches of 256 sorted indices (the ``--sampler random`` loader path) and a
shard-block epoch (``--sampler shard-block``), warm (page cache) and cold (the store's pages
dropped with ``posix_fadvise(DONTNEED)``, our files only).

``scale``: ``load_cached`` on N ids that are hard links cycling the PNGs of a synth folder
(decoding work per image is the real one), then the stat pass, the trusted open, and full
training-loader epochs (uint8 torch batches) with both samplers; peak RSS of every part.

    python benchmarks/bench_store.py compare --data DIR --n 20000
    python benchmarks/bench_store.py scale --data DIR --n 200000 --workers 2

(litdata is not a protloc dependency: ``pip install --target /tmp/ld --no-deps litdata obstore boto3
botocore jmespath python-dateutil s3transfer`` and ``PYTHONPATH=/tmp/ld`` to include it.)
Writes ``benchmarks/results/store.json`` (one section per mode).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from protloc.data import store as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_cache import _reset_peak_rss as _reset_peak, _rss_mb  # noqa: E402 - one RSS reader for the benchmarks

OUT = ROOT / "benchmarks" / "results" / "store.json"
BATCH = 256
POOL = None  # decoded pool, shared with forked workers


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _files(p: Path) -> list[Path]:
    return [q for q in Path(p).rglob("*") if q.is_file()] if Path(p).is_dir() else [Path(p)]


def _du_mb(p: Path) -> float:
    return sum(q.stat().st_size for q in _files(p)) / 2**20


def drop_pages(p: Path) -> None:
    """Evict this store's pages from the page cache (our files only; other processes keep theirs)."""
    for q in _files(p):
        fd = os.open(q, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------
def decode_pool(data: Path, pool: int, size: int) -> np.ndarray:
    from protloc.data.cache import decode_table
    from protloc.data.table import load_table

    t = load_table(data / "train.csv", data / "train")
    return decode_table(t.subset(range(min(pool, len(t)))), size=size, workers=2, progress=False).images


def _items(lo: int, hi: int) -> np.ndarray:
    return POOL[np.arange(lo, hi) % len(POOL)]


def _w_ours(args):
    root, s, k, n, comp = args
    blk = _items(s * k, min(n, s * k + k))
    st.write_shard(root, s, blk, np.ones((len(blk), 2)), shard_images=k, compress=comp)
    return len(blk)


def _w_zarr(args):
    root, s, k, n = args
    import zarr

    a = zarr.open_array(root, mode="r+")
    a[s * k:min(n, s * k + k)] = _items(s * k, min(n, s * k + k))
    return 1


def _lit_item(i):
    global POOL
    if POOL is None:  # litdata starts its workers with spawn: reload the pool from disk
        POOL = np.load(os.environ["BENCH_STORE_POOL"], mmap_mode="r")
    return np.array(POOL[i % len(POOL)])


def build(fmt: str, root: Path, n: int, k: int, workers: int) -> float:
    shard_jobs = range(-(-n // k))
    t0 = time.perf_counter()
    if fmt.startswith("zarr-protloc"):
        comp = fmt.split(":")[1]
        st.create_store(root, n=n, size=POOL.shape[1], channels=POOL.shape[-1], shard_images=k, compress=comp)
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_w_ours, [(root, s, k, n, comp) for s in shard_jobs]))
    elif fmt == "zarr-python":
        import zarr
        from zarr.codecs import ZstdCodec

        zarr.create_array(root, shape=(n, *POOL.shape[1:]), chunks=(1, *POOL.shape[1:]), shards=(k, *POOL.shape[1:]),
                          dtype="uint8", compressors=ZstdCodec(level=1), fill_value=0,
                          config={"write_empty_chunks": True})
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_w_zarr, [(root, s, k, n) for s in shard_jobs]))
    elif fmt == "litdata":
        from litdata import optimize

        optimize(fn=_lit_item, inputs=list(range(n)), output_dir=str(root), chunk_bytes="32MB",
                 num_workers=workers, mode="overwrite")
    elif fmt == "npy-memmap":
        root.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(root / "cache.npy", mode="w+", dtype=np.uint8, shape=(n, *POOL.shape[1:]))
        for s in range(0, n, 64):
            mm[s:s + 64] = _items(s, min(n, s + 64))
        mm.flush()
        del mm
    return time.perf_counter() - t0


class _Reader:
    def __init__(self, fmt: str, root: Path):
        self.fmt = fmt
        if fmt.startswith("zarr-protloc"):
            self.x = st.ShardedImages(root)
        elif fmt == "zarr-python":
            import zarr

            self.x = zarr.open_array(root, mode="r")
        elif fmt == "litdata":
            from litdata import StreamingDataset

            self.x = StreamingDataset(str(root))
        else:
            self.x = np.load(root / "cache.npy", mmap_mode="r")

    def batch(self, idx: np.ndarray) -> np.ndarray:
        idx = np.sort(idx)
        if self.fmt.startswith("zarr-protloc"):
            return self.x.read(idx)
        if self.fmt == "zarr-python":  # one read per image: ~15x faster than arr.oindex[idx] in zarr 3.1
            return np.stack([self.x[int(i)] for i in idx])
        if self.fmt == "litdata":
            return np.stack([self.x[int(i)] for i in idx])
        return np.asarray(self.x[idx])


def read_rate(reader: _Reader, order: np.ndarray, *, budget_s: float) -> float:
    """Images/s reading ``order`` in batches of BATCH, stopping after ``budget_s``."""
    t0, done = time.perf_counter(), 0
    for s in range(0, len(order), BATCH):
        b = reader.batch(order[s:s + BATCH])
        done += len(b)
        if time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def compare(args) -> dict:
    global POOL
    from protloc.training.datamodule import shard_block_order

    POOL = decode_pool(Path(args.data), args.pool, args.size)
    n, k = args.n, st.default_shard_images(args.size, POOL.shape[-1])
    work = Path(args.work) / "compare"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    np.save(work / "pool.npy", POOL)
    os.environ["BENCH_STORE_POOL"] = str(work / "pool.npy")
    fmts = ["zarr-protloc:zstd", "zarr-protloc:none", "zarr-python", "npy-memmap"]
    try:
        import litdata  # noqa: F401

        fmts.insert(3, "litdata")
    except ImportError:
        print("litdata not importable: skipped (see the module docstring)")
    if args.formats:
        fmts = [f for f in fmts if f in args.formats.split(",")]
    rng = np.random.default_rng(0)
    rand = rng.permutation(n)
    block = shard_block_order(np.arange(n), seed=0, epoch=0, shard_images=k)
    res = {"n": n, "pool_distinct_images": len(POOL), "size": args.size, "channels": int(POOL.shape[-1]),
           "shard_images": k, "workers": args.workers, "batch": BATCH, "formats": {}}
    for fmt in fmts:
        root = work / fmt.replace(":", "-")
        print(f"[{fmt}] building {n} ... ({_load()})", flush=True)
        dt = build(fmt, root, n, k, args.workers)
        r = {"build_s": round(dt, 2), "build_img_s": round(n / dt), "files": len(_files(root)),
             "size_mb": round(_du_mb(root), 1), "load_at_build": _load()}
        reader = _Reader(fmt, root)
        budget = args.budget
        for name, order in (("random", rand), ("shard_block", block)):
            for temp in ("warm", "cold"):
                if temp == "cold":
                    drop_pages(root)
                else:
                    read_rate(reader, order[: 4 * BATCH], budget_s=budget)  # warm the path
                r[f"{name}_{temp}_img_s"] = round(read_rate(_Reader(fmt, root) if temp == "cold" else reader, order,
                                                            budget_s=budget))
        if fmt == "litdata":  # its own streaming loader (chunk-shuffled), the way litdata is meant to read
            from litdata import StreamingDataLoader, StreamingDataset

            drop_pages(root)
            dl = StreamingDataLoader(StreamingDataset(str(root), shuffle=True, seed=0), batch_size=BATCH,
                                     num_workers=0)
            t0, m = time.perf_counter(), 0
            for b in dl:
                m += len(b)
                if time.perf_counter() - t0 > budget:
                    break
            r["streaming_loader_cold_img_s"] = round(m / (time.perf_counter() - t0))
        r["load_at_read"] = _load()
        res["formats"][fmt] = r
        print(f"[{fmt}] {json.dumps(r)}", flush=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return res


# ------------------------------------------------------------------------------------------
def link_farm(data: Path, out: Path, n: int) -> tuple[Path, Path]:
    """``out/train/`` with ``n`` hard links cycling ``data/train/*.png`` and ``out/train.csv``."""
    import pandas as pd

    src = pd.read_csv(data / "train.csv", dtype=str)
    img = out / "train"
    if (out / "train.csv").is_file() and len(pd.read_csv(out / "train.csv")) == n:
        return out / "train.csv", img
    img.mkdir(parents=True, exist_ok=True)
    ids, labels = [], []
    for j in range(n):
        s = src.iloc[j % len(src)]
        iid = f"x{j:08d}"
        dst = img / f"{iid}.png"
        if not dst.exists():
            os.link(data / "train" / f"{s['Image']}.png", dst)
        ids.append(iid)
        labels.append(s["Label"])
    pd.DataFrame({"Image": ids, "Label": labels}).to_csv(out / "train.csv", index=False)
    return out / "train.csv", img


def epoch(images, y, idx, sampler: str, *, workers: int, seed: int = 0, limit: int | None = None) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from protloc.training.datamodule import ArrayDataset, EpochSampler, ShardBlockSampler, _batch_collate

    if sampler == "shard-block":
        s = ShardBlockSampler(idx, shard_images=images.shard_images, seed=seed)
    else:
        s = EpochSampler(len(idx), seed=seed, shuffle=True)
    s.set_epoch(1)
    dl = DataLoader(ArrayDataset(images, y, idx), batch_size=BATCH, sampler=s, collate_fn=_batch_collate,
                    num_workers=workers, persistent_workers=False)
    rss0 = _rss_mb("VmRSS")
    _reset_peak()
    t0, m = time.perf_counter(), 0
    for _, b, _ in dl:
        assert b.dtype == torch.uint8
        m += len(b)
        if limit and m >= limit:
            break
    dt = time.perf_counter() - t0
    return {"images": m, "s": round(dt, 1), "img_s": round(m / dt), "main_rss_before_mb": round(rss0, 1),
            "main_peak_rss_mb": round(_rss_mb(), 1), "main_rss_growth_mb": round(_rss_mb() - rss0, 1),
            "load": _load()}


def scale(args) -> dict:
    from protloc.data.cache import cache_dir, load_cached
    from protloc.data.table import load_table

    import torch  # noqa: F401 - the loader's imports, before any RSS baseline

    work = Path(args.work)
    os.environ.setdefault("PROTLOC_CACHE_DIR", str(work / "cache"))
    if args.epochs_only:  # re-measure the epochs of the store built by an earlier run
        import lightning.pytorch  # noqa: F401 - before the RSS baseline (torch + Lightning: ~0.9 GB here)

        res = json.loads(OUT.read_text())["scale"]
        table = load_table(*link_farm(Path(args.data), work / f"farm{args.n}", args.n))
        ds = load_cached(table, size=args.size, progress=False, trust=True)
        return {**res, **epochs(ds, table, args)}
    t0 = time.perf_counter()
    csv, img = link_farm(Path(args.data), work / f"farm{args.n}", args.n)
    res = {"n": args.n, "size": args.size, "workers": args.workers, "data": str(args.data),
           "distinct_pngs": len(list((Path(args.data) / "train").glob("*.png"))),
           "link_farm_s": round(time.perf_counter() - t0, 1), "cache_dir": str(cache_dir())}
    table = load_table(csv, img)
    if args.fresh:
        from protloc.data.cache import clear_cache

        clear_cache(table)
    print(f"building store of {args.n} ({_load()}) ...", flush=True)
    _reset_peak()
    rss0 = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    ds = load_cached(table, size=args.size, workers=args.workers, progress=False)
    dt = time.perf_counter() - t0
    files = _files(ds.path)
    res["build"] = {"s": round(dt, 1), "img_s": round(args.n / dt, 1), "main_rss_before_mb": round(rss0, 1),
                    "main_peak_rss_mb": round(_rss_mb(), 1), "worker_peak_rss_mb": round(_children_peak_mb(), 1),
                    "store_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
                    "raw_mb": round(ds.images.nbytes / 2**20, 1), "files": len(files),
                    "shards": ds.images.n_shards, "shard_images": ds.images.shard_images, "load": _load()}
    print("build", res["build"], flush=True)
    for trust in (False, True):
        t0 = time.perf_counter()
        load_cached(table, size=args.size, workers=args.workers, progress=False, trust=trust)
        res[f"open_{'trusted' if trust else 'stat_check'}_s"] = round(time.perf_counter() - t0, 2)
    res["stat_check_files_per_s"] = round(args.n / res["open_stat_check_s"])
    print({k: v for k, v in res.items() if k.startswith("open") or k.startswith("stat")}, flush=True)
    res.update(epochs(ds, table, args))
    res["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
    return res


def epochs(ds, table, args) -> dict:
    """Full training-loader epochs: both samplers, 0 and 2 loader workers, cold (pages dropped) then warm."""
    y = table.y().astype(np.float32)
    idx = np.arange(len(table))
    out = {}
    for sampler in ("shard-block", "random"):
        for w in (0, 2):
            for temp in ("cold", "warm"):
                if temp == "cold":
                    drop_pages(ds.path)
                r = epoch(ds.images, y, idx, sampler, workers=w, limit=args.limit)
                out[f"epoch_{sampler}_workers{w}_{temp}"] = r
                print(sampler, w, temp, r, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("compare", "scale"))
    ap.add_argument("--data", required=True, help="a protloc synth folder (train.csv + train/)")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--pool", type=int, default=2000, help="compare: distinct decoded images cycled")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budget", type=float, default=20.0, help="compare: seconds per read measurement")
    ap.add_argument("--limit", type=int, default=None, help="scale: images per epoch measurement")
    ap.add_argument("--work", default="/tmp/bench_store")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--formats", default=None, help="compare: comma list of formats to run")
    ap.add_argument("--fresh", action="store_true", help="scale: clear the entry first")
    ap.add_argument("--epochs-only", action="store_true", help="scale: only re-measure the epochs")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = compare(args) if args.mode == "compare" else scale(args)
    res["epochs_command" if getattr(args, "epochs_only", False) else "command"] = " ".join(sys.argv)
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if args.mode == "compare" and args.formats and "compare" in old:  # a rerun of some formats
        res["formats"] = {**old["compare"].get("formats", {}), **res["formats"]}
    old[args.mode] = res
    from protloc.core.atomic import write_json

    write_json(OUT, old)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
