"""Decode once: a sharded store of decoded, resized uint8 images, built by parallel workers.

Where: ``--cache-dir`` (``protloc cache`` / ``protloc train``), else ``$PROTLOC_CACHE_DIR``, else
``~/.cache/protloc``. On a cluster point it at a file system every node sees (the store is read
by index, shard files of ~32 MiB; see docs/scale.md). One entry per (image folder, ids in order,
format, channels, size, reading): ``KEY.zarr/`` (a Zarr v3 store, :mod:`protloc.data.store`) and
``KEY.json`` (its card: complete flag, identity, unreadable images). The reading (intensity rule,
Z projection, axes, pixel sizes: :class:`~protloc.core.preprocessing.Reading`) is part of the
identity, so changing any of them makes another entry.

Invalidation (file name, size, mtime): the worker that decodes an image also stats its file(s)
and stores a digest next to the pixels. Opening an entry stats the files again (threads, shard
by shard) and decodes again only the shards whose files changed; other ids (added, removed,
reordered) make another entry. ``trust=True`` (``--trust-cache`` or ``PROTLOC_TRUST_CACHE=1``)
skips that stat pass: use it when the image folder is known not to change (10M files on a shared
file system take minutes to stat). A killed build resumes from its finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError
from protloc.data import store as st
from protloc.data.workers import BuildLock, pid_alive, worker_map
from protloc.io.images import HPA_EXTS, RGB_EXTS, TIFF_EXTS, read_image

__all__ = ["DecodedSet", "cache_dir", "cache_key", "table_digest", "decode_table", "load_cached", "cache_info",
           "clear_cache", "worker_map", "stat_digests"]

CACHE_VERSION = 2
#: shard compression, chosen by measurement (docs/scale.md): "none" reads 128-px images ~8x
#: faster than "zstd" (level 1), which makes the store ~1.8x smaller (``protloc cache --compress``).
DEFAULT_COMPRESS = "none"


@dataclass
class DecodedSet:
    """Decoded images of a DataTable: ``images`` (N, H, W, C) uint8 (a :class:`ShardedImages`
    when cached, else an array) and the indices of images that could not be read (only with
    ``skip_bad=True``; zero-filled)."""

    images: np.ndarray
    bad: list[int] = field(default_factory=list)
    bad_messages: list[str] = field(default_factory=list)
    path: Path | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("PROTLOC_CACHE_DIR") or Path.home() / ".cache" / "protloc")


def trust_default() -> bool:
    return os.environ.get("PROTLOC_TRUST_CACHE", "").strip().lower() in ("1", "true", "yes")


def _ids_hash(ids) -> str:
    h = hashlib.sha1()
    for s in range(0, len(ids), 65536):  # no 10M-id string in memory
        h.update("\0".join(ids[s:s + 65536]).encode() + b"\1")
    return h.hexdigest()[:16]


def effective_reading(table, reading=None):
    """The reading a table is decoded with: ``reading``, by default the one ``protloc train``
    with its default options records for it (:func:`protloc.data.reading.training_reading`: the
    ``auto`` intensity rule decided from the files), with the table's ``--axes`` for TIFFs that do
    not declare theirs."""
    from dataclasses import replace

    if reading is None:
        from protloc.data.reading import training_reading

        reading = training_reading(table)[0]
    return replace(reading, axes=table.axes) if getattr(table, "axes", None) else reading


def _table_fields(table) -> dict:
    return {"images": str(Path(table.images).resolve()), "fmt": table.fmt,
            "channels": list(map(str, table.channels)), "ids": _ids_hash(table.ids)}


def table_digest(table) -> str:
    """What a table is, without reading any image: its folder, format, channels and ids in order
    (DDP ranks compare it to agree that they train on the same data).

    Examples
    --------
    >>> from types import SimpleNamespace as T
    >>> a = T(images="/data", fmt="rgb", channels=(), ids=["1", "2"])
    >>> table_digest(a) == table_digest(T(**{**vars(a), "ids": ["2", "1"]}))
    False
    """
    return hashlib.sha1(json.dumps(_table_fields(table), sort_keys=True).encode()).hexdigest()[:16]


def _identity(table, size: int, reading=None, pixel_size: float | None = None) -> dict:
    """What makes an entry: images folder, ids (in order), format, channels, size, reading.

    The id list is part of it, so a subset of a table (``DataTable.subset``) never replaces
    the full table's entry; so is the reading (intensity rule, Z projection, axes, pixel sizes)."""
    return {**_table_fields(table), "size": int(size),
            "csv": str(Path(table.csv_path).resolve()) if table.csv_path else None,
            "reading": {**effective_reading(table, reading).to_dict(), "input_pixel_size_um": pixel_size}}


def cache_key(table, *, size: int, reading=None, pixel_size: float | None = None) -> str:
    """Name of ``table``'s entry at ``size`` read with ``reading`` (no file is read: file changes
    are found per shard)."""
    return _key_of(_identity(table, size, reading, pixel_size))


def _key_of(ident: dict) -> str:
    """The entry name of an identity (:func:`_identity`); the CSV path is not part of it."""
    ident = {k: v for k, v in ident.items() if k != "csv"}
    return hashlib.sha1(json.dumps([CACHE_VERSION, ident], sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
_MASK = (1 << 64) - 1


def _stat_first(folder: str, names) -> tuple[int, int]:
    for name in names:
        try:
            s = os.stat(os.path.join(folder, name))
            return s.st_size, s.st_mtime_ns
        except OSError:
            continue
    return -1, -1


def stat_digests(folder, ids, *, fmt: str, channels) -> np.ndarray:
    """Per image: a 63-bit digest of its file(s)' size and mtime (-1/-1 for a missing file).

    Resolves files like :meth:`DataTable.files` with one ``stat`` per existing file.

    Examples
    --------
    >>> int(stat_digests("/nonexistent", ["a"], fmt="rgb", channels=())[0]) == int(stat_digests(
    ...     "/nonexistent", ["b"], fmt="rgb", channels=())[0])
    True
    """
    folder = str(folder)
    out = np.empty(len(ids), np.int64)
    for k, iid in enumerate(ids):
        if fmt == "hpa-channels":
            groups = [[f"{iid}_{c}{e}" for e in HPA_EXTS] for c in channels]
        else:
            exts = RGB_EXTS if fmt == "rgb" else TIFF_EXTS
            groups = [([iid] if os.path.splitext(iid)[1].lower() in exts else []) + [iid + e for e in exts]]
        d = 1469598103934665603
        for names in groups:
            for v in _stat_first(folder, names):
                d = ((d ^ (v & _MASK)) * 1099511628211) & _MASK
        out[k] = d >> 1
    return out


def _decode_chunk(args):
    folder, ids, fmt, channels, size, reading, pixel_size = args
    out, errors = [], []
    for iid in ids:
        try:
            out.append(read_image(folder, iid, fmt=fmt, channels=channels, size=size, reading=reading,
                                  pixel_size=pixel_size))
            errors.append(None)
        except InputError as e:
            out.append(None)
            errors.append(str(e))
    return out, errors


def _build_shard(job):
    """Worker: stat + decode the images of one shard and write it; returns (s, lo, n, [(row, msg)])."""
    root, s, lo, folder, ids, fmt, channels, size, k, compress, reading, pixel_size = job
    c = len(channels)
    block = np.zeros((len(ids), size, size, c), np.uint8)
    stats = np.zeros((len(ids), 2), np.int64)
    stats[:, 0] = stat_digests(folder, ids, fmt=fmt, channels=channels)  # before reading: safe order
    bad = []
    for j, iid in enumerate(ids):
        try:
            block[j] = read_image(folder, iid, fmt=fmt, channels=channels, size=size, reading=reading,
                                  pixel_size=pixel_size)
            stats[j, 1] = st.DECODED
        except InputError as e:
            stats[j, 1] = st.UNREADABLE
            bad.append((lo + j, str(e)))
    st.write_shard(root, s, block, stats, shard_images=k, compress=compress)
    return s, lo, len(ids), bad


def decode_table(table, *, size: int, workers: int | None = None, progress: bool = True,
                 skip_bad: bool = False, out: np.ndarray | None = None, write=None, reading=None,
                 pixel_size: float | None = None) -> DecodedSet:
    """Decode every image of ``table`` into ``out`` (or a new array in RAM), in parallel.

    ``reading``: the run's :class:`~protloc.core.preprocessing.Reading` (intensity rule, Z
    projection, axes, pixel size; default: the ``auto`` rule); ``pixel_size``: the images' pixel
    size in µm given by the user (overrides the files').

    ``write(start, block)``, if given, receives each decoded chunk (N_chunk, size, size, C)
    in row order instead of ``out``. Raises InputError naming the first unreadable file unless
    ``skip_bad``. (:func:`load_cached` writes a store instead, for any number of images.)
    """
    from protloc.core.progress import progress_bar

    n, c = len(table), len(table.channels)
    arr = None
    if write is None:
        arr = out if out is not None else np.zeros((n, size, size, c), np.uint8)

        def write(start, block):
            arr[start:start + len(block)] = block
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = 64
    reading = effective_reading(table, reading)
    jobs = [(str(table.images), table.ids[s:s + chunk], table.fmt, table.channels, size, reading, pixel_size)
            for s in range(0, n, chunk)]
    bad, msgs = [], []
    with progress_bar(total=n, description="decoding images", enable=progress) as advance:
        for j, (imgs, errs) in enumerate(worker_map(_decode_chunk, jobs, workers)):
            base = j * chunk
            block = np.zeros((len(imgs), size, size, c), np.uint8)
            for k, (img, err) in enumerate(zip(imgs, errs)):
                if err is not None:
                    if not skip_bad:
                        raise InputError(f"{table.where(base + k)}: {err}")
                    bad.append(base + k)
                    msgs.append(err)
                else:
                    block[k] = img
            write(base, block)
            advance(len(imgs))
    return DecodedSet(arr, bad, msgs)


# ---------------------------------------------------------------------------------------------
def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _entries(d: Path) -> list[tuple[Path, dict]]:
    out = []
    for meta in sorted(d.glob("*.json")) if d.is_dir() else []:
        info = _read_json(meta)
        if isinstance(info, dict):
            out.append((meta, info))
    return out


def _du(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    total = 0
    for r, _, files in os.walk(p):
        for f in files:
            try:
                total += os.stat(os.path.join(r, f)).st_size
            except OSError:
                pass
    return total


def remove_entry(meta: Path) -> int:
    """Delete one cache entry (its .json and .zarr store, or an old-format .npy); return the bytes freed."""
    freed = 0
    for p in (meta.with_suffix(".zarr"), meta.with_suffix(".npy"), meta):
        if p.exists():
            freed += _du(p)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return freed


def _clean_leftovers(d: Path) -> int:
    """Temp files of killed builds (old ``.KEY.PID.npy`` of dead PIDs, orphan ``*.partial``)."""
    freed = 0
    for p in d.glob(".*.npy") if d.is_dir() else []:
        pid = p.name.split(".")[-2]
        if not (pid.isdigit() and pid_alive(int(pid))):
            freed += p.stat().st_size
            p.unlink(missing_ok=True)
    return freed


def _stale_shards(root: Path, table, k: int, shards, *, check_files: bool) -> list[int]:
    """Shards of ``root`` to (re)build: unfinished, or (``check_files``) whose files changed."""
    n = len(table)

    def one(s):
        lo, hi = s * k, min(n, s * k + k)
        got = st.read_shard_stats(root, s, shard_images=k)
        if got is None or (got[: hi - lo, 1] == st.NOT_BUILT).any():
            return s
        if check_files:
            now = stat_digests(table.images, table.ids[lo:hi], fmt=table.fmt, channels=table.channels)
            if not np.array_equal(now, got[: hi - lo, 0]):
                return s
        return None

    shards = list(shards)
    if len(shards) < 4:
        found = map(one, shards)
    else:  # stat latency (network file systems) overlaps across threads
        with ThreadPoolExecutor(min(16, 4 * (os.cpu_count() or 1))) as ex:
            found = list(ex.map(one, shards))
    return [s for s in found if s is not None]


def _bad_rows(root: Path, k: int, n: int) -> list[int]:
    bad = []
    for s in range(-(-n // k)):
        got = st.read_shard_stats(root, s, shard_images=k)
        if got is not None:
            bad += (np.flatnonzero(got[: min(k, n - s * k), 1] == st.UNREADABLE) + s * k).tolist()
    return bad


def cache_info(table=None, *, size: int | None = None, check_files: bool = True, reading=None,
               pixel_size: float | None = None) -> list[dict]:
    """Cache entries (all, or those of ``table``[ at ``size``]) with key, shape, bytes, up-to-date flag
    (up to date: the entry of ``table`` read with ``reading``, its files unchanged)."""
    d = cache_dir()
    out = []
    # the table's identity once (its reading may read image headers, its id hash reads every id);
    # per entry only the size differs
    base = _identity(table, 0, reading, pixel_size) if table is not None else None
    for meta, info in _entries(d):
        if table is not None:
            if any(info.get(k) != v for k, v in base.items() if k not in ("size", "csv", "reading")):
                continue
            if size and info.get("size") != size:
                continue
        root = meta.with_suffix(".zarr")
        legacy = not root.is_dir()
        store = root if not legacy else meta.with_suffix(".npy")
        current = None
        if table is not None and not legacy:
            current = bool(info.get("complete")) and meta.stem == _key_of({**base, "size": int(info["size"])}) \
                and not \
                _stale_shards(root, table, info["shard_images"], range(-(-len(table) // info["shard_images"])),
                              check_files=check_files)
        out.append({**{k: info.get(k) for k in ("n", "size", "fmt", "channels", "images", "csv", "bad",
                                                 "shard_images", "compress", "complete")},
                    "key": meta.stem, "path": str(store), "bytes": _du(store) if store.exists() else 0,
                    "format": "npy (old, rebuild)" if legacy else "zarr", "current": current})
    return out


def clear_cache(table=None) -> tuple[int, int]:
    """Delete all cache entries, or those of ``table``; return (entries, bytes) removed."""
    d = cache_dir()
    metas = [d / f"{e['key']}.json" for e in cache_info(table, check_files=False)] if table is not None else \
        [m for m, _ in _entries(d)]
    freed = sum(remove_entry(m) for m in metas)
    if table is None and d.is_dir():
        freed += _clean_leftovers(d)
        for p in d.glob("*.zarr"):  # stores without a card (killed first builds)
            freed += _du(p)
            shutil.rmtree(p, ignore_errors=True)
        for p in d.glob(".*.lock"):  # unlocked lock files (a held one is skipped: it is in use)
            if _lock_free(p):
                p.unlink(missing_ok=True)
    return len(metas), freed


def _lock_free(p: Path) -> bool:
    try:
        import fcntl

        with open(p, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        return True
    except (OSError, ImportError):
        return False


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _hit(meta: Path, info: dict | None, table, skip_bad: bool) -> DecodedSet | None:
    if not (info and info.get("complete")):
        return None
    try:
        images = st.ShardedImages(meta.with_suffix(".zarr"))
    except InputError:
        return None
    if len(images) != len(table):
        return None
    bad, msgs = info.get("bad", []), info.get("bad_messages", [])
    if bad and not skip_bad:
        raise InputError(f"{table.where(bad[0])}: {msgs[0] if msgs else 'unreadable image'}")
    return DecodedSet(images, bad, msgs, meta.with_suffix(".zarr"))


def load_cached(table, *, size: int, workers: int | None = None, progress: bool = True,
                skip_bad: bool = False, use_cache: bool = True, trust: bool | None = None,
                shard_images: int | None = None, compress: str | None = None, say=None, reading=None,
                pixel_size: float | None = None) -> DecodedSet:
    """Decoded images of ``table`` at ``size``, from the cache store when it is up to date.

    ``reading``: the run's :class:`~protloc.core.preprocessing.Reading` (default: the ``auto``
    intensity rule), ``pixel_size``: the images' pixel size given by the user; both are part of
    the entry's identity.

    The first call decodes in ``workers`` processes, each writing whole shards (RAM: one shard
    per worker, whatever the dataset size); later calls open the store (a :class:`ShardedImages`,
    read by index) after checking the files' stats (skipped with ``trust``). Changed files are
    decoded again shard by shard; a killed build resumes. Concurrent callers (DDP ranks) wait
    for one builder and say for whom they wait.

    Examples
    --------
    >>> ds = load_cached(table, size=128)  # doctest: +SKIP
    >>> ds.images.shape  # doctest: +SKIP
    (15389, 128, 128, 3)
    """
    if not use_cache:
        return decode_table(table, size=size, workers=workers, progress=progress, skip_bad=skip_bad,
                            reading=reading, pixel_size=pixel_size)
    say = say or _say
    reading = effective_reading(table, reading)
    trust = trust_default() if trust is None else trust
    d = cache_dir()
    ident = _identity(table, size, reading, pixel_size)
    key = _key_of(ident)
    root, meta = d / f"{key}.zarr", d / f"{key}.json"
    n, c = len(table), len(table.channels)
    info = _read_json(meta)
    wanted = all(v is None or info.get(k) == v for k, v in (("compress", compress), ("shard_images", shard_images))) \
        if info else False
    if info and info.get("complete") and wanted and (trust or not _stale_shards(
            root, table, info["shard_images"], range(-(-n // info["shard_images"])), check_files=True)):
        hit = _hit(meta, info, table, skip_bad)
        if hit is not None:
            return hit
    d.mkdir(parents=True, exist_ok=True)
    with BuildLock(d / f".{key}.lock", say=say):  # parallel callers (DDP ranks) wait for one build
        _clean_leftovers(d)
        info = _read_json(meta) or {}
        old = _read_json(root / "zarr.json") or {}
        attrs = old.get("attributes", {})
        k = int(shard_images or attrs.get("shard_images") or st.default_shard_images(size, c))
        comp = compress or attrs.get("compress") or DEFAULT_COMPRESS
        n_shards = -(-n // k)
        usable = (attrs.get("format") == st.STORE_FORMAT and attrs.get("shard_images") == k
                  and attrs.get("compress") == comp and attrs.get("n") == n)
        if usable:
            st.clean_partials(root)
            todo = _stale_shards(root, table, k, range(n_shards), check_files=not (trust and info.get("complete")))
        else:
            shutil.rmtree(root, ignore_errors=True)
            st.create_store(root, n=n, size=size, channels=c, shard_images=k, compress=comp,
                            attrs={**ident, "n": n, "key": key})
            todo = list(range(n_shards))
        if not todo:
            hit = _hit(meta, info, table, skip_bad)
            if hit is not None:
                return hit
        from protloc.core.atomic import write_json
        from protloc.core.progress import progress_bar

        card = {"complete": False, "n": n, **ident, "key": key,
                "shard_images": k,
                "compress": comp, "store": root.name}
        write_json(meta, card)
        if todo and progress and usable:
            say(f"cache {root}: decoding {len(todo)} of {n_shards} shards (new or changed files)")
        chans = list(table.channels)
        jobs = ((str(root), s, s * k, str(table.images), table.ids[s * k:min(n, s * k + k)], table.fmt, chans,
                 size, k, comp, reading, pixel_size) for s in todo)
        workers = workers or min(4, os.cpu_count() or 1)
        msgs: dict[int, str] = {}
        with progress_bar(total=sum(min(n, s * k + k) - s * k for s in todo), description="decoding images",
                          enable=progress) as advance:
            for _, _, m, bad in worker_map(_build_shard, jobs, workers, ordered=False):
                for row, msg in bad:
                    if not skip_bad:  # stop early; finished shards stay for the next run
                        raise InputError(f"{table.where(row)}: {msg}")
                    msgs[row] = msg
                advance(m)
        bad = _bad_rows(root, k, n)
        for row in bad:
            if row not in msgs:  # decoded by an earlier (killed) run: ask the file again
                try:
                    read_image(table.images, table.ids[row], fmt=table.fmt, channels=table.channels, size=size,
                               reading=reading, pixel_size=pixel_size)
                    msgs[row] = "unreadable image"
                except InputError as e:
                    msgs[row] = str(e)
        card.update(complete=True, bad=bad, bad_messages=[msgs[r] for r in bad])
        write_json(meta, card)
        return _hit(meta, card, table, skip_bad)
