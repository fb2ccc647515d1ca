"""Decode once: a memory-mapped cache of decoded, resized uint8 images.

One ``.npy`` file per (dataset files, format, channels, size, reading) key under the cache folder
(``$PROTLOC_CACHE_DIR`` or ``~/.cache/protloc``). The key hashes every file's name, size and
modification time, so editing, adding or removing an image invalidates the cache. The array is
opened with ``mmap_mode='r'``: a 100k-image dataset never has to fit in RAM, and epochs read
straight from the page cache instead of decoding PNGs. The reading (intensity rule, Z projection,
axes, pixel sizes: :class:`~protloc.core.preprocessing.Reading`) is part of the key, so changing
any of them decodes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError
from protloc.io.images import read_image

CACHE_VERSION = 1


def effective_reading(table, reading=None):
    """The reading a table is decoded with: ``reading`` (default: the ``auto`` rule), with the
    table's ``--axes`` for TIFFs that do not declare theirs."""
    from dataclasses import replace

    from protloc.core.preprocessing import default_reading

    r = reading or default_reading()
    return replace(r, axes=table.axes) if getattr(table, "axes", None) else r


def _reading_key(reading, pixel_size) -> dict:
    """The reading facts an entry depends on."""
    return {**reading.to_dict(), "input_pixel_size_um": pixel_size}


@dataclass
class DecodedSet:
    """Decoded images of a DataTable: ``images`` (N, H, W, C) uint8 (memmap when cached) and
    the indices of images that could not be read (only with ``skip_bad=True``; zero-filled)."""

    images: np.ndarray
    bad: list[int] = field(default_factory=list)
    bad_messages: list[str] = field(default_factory=list)
    path: Path | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("PROTLOC_CACHE_DIR") or Path.home() / ".cache" / "protloc")


def cache_key(table, *, size: int, reading=None, pixel_size: float | None = None) -> str:
    """Hash of what the decoded array depends on (file stats, format, channels, size, reading)."""
    h = hashlib.sha1()
    h.update(json.dumps([CACHE_VERSION, table.fmt, list(map(str, table.channels)), int(size),
                         str(Path(table.images).resolve()),
                         _reading_key(effective_reading(table, reading), pixel_size)],
                        sort_keys=True).encode())
    for i in range(len(table)):
        h.update(table.ids[i].encode() + b"\0")
        for f in table.files(i):
            try:
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{f.name}:missing;".encode())
    return h.hexdigest()[:20]


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


def _quiet_worker() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process


def worker_map(fn, jobs, workers: int):
    """``map(fn, jobs)`` in ``workers`` processes, in order, at most ``2 * workers`` jobs in flight.

    Workers ignore Ctrl-C (no traceback per worker); a worker that dies (e.g. killed for
    memory) becomes one clear :class:`InputError`.

    Examples
    --------
    >>> list(worker_map(abs, [-1, 2, -3], 1))
    [1, 2, 3]
    """
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(workers, initializer=_quiet_worker) as ex:
            pending: deque = deque()
            it = iter(jobs)
            for job in it:
                pending.append(ex.submit(fn, job))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                yield pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(ex.submit(fn, nxt))
    except BrokenProcessPool:
        raise InputError("a decoding worker process died (out of memory?). Fix: rerun with fewer "
                         "--workers, or check the images with protloc validate") from None


def decode_table(table, *, size: int, workers: int | None = None, progress: bool = True,
                 skip_bad: bool = False, out: np.ndarray | None = None, write=None, reading=None,
                 pixel_size: float | None = None) -> DecodedSet:
    """Decode every image of ``table`` into ``out`` (or a new array), in parallel.

    ``reading``: the run's :class:`~protloc.core.preprocessing.Reading` (intensity rule, Z
    projection, axes, pixel size; default: the ``auto`` rule); ``pixel_size``: the images' pixel
    size in µm given by the user (overrides the files').

    ``write(start, block)``, if given, receives each decoded chunk (N_chunk, size, size, C)
    in row order instead of ``out`` (the cache streams it to disk). Raises InputError naming
    the first unreadable file unless ``skip_bad``.
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


def _entries(d: Path) -> list[tuple[Path, dict]]:
    out = []
    for meta in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append((meta, json.loads(meta.read_text())))
        except (OSError, ValueError):
            continue
    return out


def _identity(table, size: int, reading=None, pixel_size: float | None = None) -> dict:
    """What makes two cache entries versions of the same dataset (only file stats differ).

    The id list is part of it, so a subset of a table (``DataTable.subset``) never replaces
    the full table's entry; so is the reading, so entries of two intensity rules coexist."""
    ids = hashlib.sha1("\0".join(table.ids).encode()).hexdigest()[:16]
    return {"images": str(Path(table.images).resolve()), "fmt": table.fmt, "size": int(size),
            "channels": list(map(str, table.channels)), "ids": ids,
            "csv": str(Path(table.csv_path).resolve()) if table.csv_path else None,
            "reading": _reading_key(effective_reading(table, reading), pixel_size)}


def remove_entry(meta: Path) -> int:
    """Delete one cache entry (its .json and .npy); return the bytes freed."""
    freed = 0
    for p in (meta.with_suffix(".npy"), meta):
        try:
            freed += p.stat().st_size
            p.unlink()
        except OSError:
            pass
    return freed


def cache_info(table=None, *, size: int | None = None, reading=None, pixel_size: float | None = None) -> list[dict]:
    """Cache entries (all, or those of ``table``[ at ``size``]) with key, shape, bytes, up-to-date flag
    (up to date: the entry of ``table`` at ``size`` read with ``reading``, whose files are unchanged)."""
    d = cache_dir()
    current = cache_key(table, size=size, reading=reading, pixel_size=pixel_size) if table is not None and size \
        else None
    out = []
    for meta, info in _entries(d):
        if table is not None:
            ident = _identity(table, info.get("size", 0))
            if any(info.get(k) != v for k, v in ident.items() if k not in ("size", "reading")):
                continue
            if size and info.get("size") != size:
                continue
        npy = meta.with_suffix(".npy")
        out.append({**{k: info.get(k) for k in ("n", "size", "fmt", "channels", "images", "csv", "bad")},
                    "key": meta.stem, "path": str(npy), "bytes": npy.stat().st_size if npy.exists() else 0,
                    "current": None if current is None else meta.stem == current})
    return out


def clear_cache(table=None) -> tuple[int, int]:
    """Delete all cache entries, or those of ``table``; return (entries, bytes) removed."""
    d = cache_dir()
    metas = [d / f"{e['key']}.json" for e in cache_info(table)] if table is not None else \
        [m for m, _ in _entries(d)]
    freed = sum(remove_entry(m) for m in metas)
    if table is None:
        for p in [*d.glob(".*.npy"), *d.glob(".*.lock")] if d.is_dir() else []:  # leftovers, locks
            freed += p.stat().st_size
            p.unlink()
    return len(metas), freed


def load_cached(table, *, size: int, workers: int | None = None, progress: bool = True,
                skip_bad: bool = False, use_cache: bool = True, reading=None,
                pixel_size: float | None = None) -> DecodedSet:
    """Decoded images of ``table`` at ``size``, from the cache when it is up to date.

    The first call decodes in parallel and streams chunks straight into the ``.npy`` file (RAM
    use stays at a few chunks whatever the dataset size); later calls memory-map it. Older
    entries of the same dataset (files changed since) are deleted.

    Examples
    --------
    >>> ds = load_cached(table, size=128)  # doctest: +SKIP
    >>> ds.images.shape  # doctest: +SKIP
    (15389, 128, 128, 3)
    """
    if not use_cache:
        return decode_table(table, size=size, workers=workers, progress=progress, skip_bad=skip_bad,
                            reading=reading, pixel_size=pixel_size)
    d = cache_dir()
    key = cache_key(table, size=size, reading=reading, pixel_size=pixel_size)
    npy, meta = d / f"{key}.npy", d / f"{key}.json"
    hit = _read_hit(npy, meta, skip_bad)
    if hit is not None:
        return hit
    d.mkdir(parents=True, exist_ok=True)
    with _build_lock(d / f".{key}.lock"):  # parallel callers (DDP ranks) wait for one build
        hit = _read_hit(npy, meta, skip_bad)
        if hit is not None:
            return hit
        return _build(table, size, key, d, workers=workers, progress=progress, skip_bad=skip_bad,
                      reading=reading, pixel_size=pixel_size)


def _read_hit(npy: Path, meta: Path, skip_bad: bool) -> DecodedSet | None:
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        if info.get("complete") and (skip_bad or not info.get("bad")):
            return DecodedSet(np.load(npy, mmap_mode="r"), info.get("bad", []), info.get("bad_messages", []), npy)
    except (OSError, ValueError):
        pass  # damaged entry: rebuild it
    return None


@contextlib.contextmanager
def _build_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, builds are still atomic
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:  # the (empty) lock file stays: unlinking it would let a third caller lock a new inode
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(table, size: int, key: str, d: Path, *, workers, progress, skip_bad, reading=None,
           pixel_size=None) -> DecodedSet:
    npy, meta = d / f"{key}.npy", d / f"{key}.json"
    shape = (len(table), size, size, len(table.channels))
    tmp = d / f".{key}.{os.getpid()}.npy"
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_2_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            offset = f.tell()
            item = int(np.prod(shape[1:]))
            f.truncate(offset + item * shape[0])

            def write(start, block):
                f.seek(offset + start * item)
                f.write(np.ascontiguousarray(block).tobytes())

            ds = decode_table(table, size=size, workers=workers, progress=progress, skip_bad=skip_bad,
                              write=write, reading=reading, pixel_size=pixel_size)
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    from protloc.core.atomic import write_json

    ident = _identity(table, size, reading, pixel_size)
    for old, info in _entries(d):  # stale versions of this dataset
        if old.stem != key and all(info.get(k) == v for k, v in ident.items()):
            remove_entry(old)
    write_json(meta, {"complete": True, "n": len(table), **ident, "key": key,
                      "bad": ds.bad, "bad_messages": ds.bad_messages})
    return DecodedSet(np.load(npy, mmap_mode="r"), ds.bad, ds.bad_messages, npy)
