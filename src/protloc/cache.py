"""Decode once: a memory-mapped cache of decoded, resized uint8 images.

One ``.npy`` file per (dataset files, format, channels, size) key under the cache folder
(``$PROTLOC_CACHE_DIR`` or ``~/.cache/protloc``). The key hashes every file's name, size and
modification time, so editing, adding or removing an image invalidates the cache. The array is
opened with ``mmap_mode='r'``: a 100k-image dataset never has to fit in RAM, and epochs read
straight from the page cache instead of decoding PNGs.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.errors import InputError
from protloc.imageio import read_image

CACHE_VERSION = 1


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


def cache_key(table, *, size: int) -> str:
    """Hash of what the decoded array depends on (file stats, format, channels, size)."""
    h = hashlib.sha1()
    h.update(json.dumps([CACHE_VERSION, table.fmt, list(map(str, table.channels)), int(size),
                         str(Path(table.images).resolve())]).encode())
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
    folder, ids, fmt, channels, size = args
    out, errors = [], []
    for iid in ids:
        try:
            out.append(read_image(folder, iid, fmt=fmt, channels=channels, size=size))
            errors.append(None)
        except InputError as e:
            out.append(None)
            errors.append(str(e))
    return out, errors


def decode_table(table, *, size: int, workers: int | None = None, progress: bool = True,
                 skip_bad: bool = False, out: np.ndarray | None = None) -> DecodedSet:
    """Decode every image of ``table`` into ``out`` (or a new array), in parallel.

    Raises InputError naming the first unreadable file unless ``skip_bad``.
    """
    from protloc.progress import progress_bar

    n, c = len(table), len(table.channels)
    arr = out if out is not None else np.zeros((n, size, size, c), np.uint8)
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = 64
    jobs = [(str(table.images), table.ids[s:s + chunk], table.fmt, table.channels, size)
            for s in range(0, n, chunk)]
    bad, msgs = [], []

    def consume(results):
        with progress_bar(total=n, description="decoding images", enable=progress) as advance:
            for j, (imgs, errs) in enumerate(results):
                base = j * chunk
                for k, (img, err) in enumerate(zip(imgs, errs)):
                    if err is not None:
                        if not skip_bad:
                            raise InputError(f"{table.where(base + k)}: {err}")
                        bad.append(base + k)
                        msgs.append(err)
                        arr[base + k] = 0
                    else:
                        arr[base + k] = img
                advance(len(imgs))

    if workers <= 1 or n <= chunk:
        consume(map(_decode_chunk, jobs))
    else:
        with ProcessPoolExecutor(workers) as ex:
            consume(ex.map(_decode_chunk, jobs))
    return DecodedSet(arr, bad, msgs)


def load_cached(table, *, size: int, workers: int | None = None, progress: bool = True,
                skip_bad: bool = False, use_cache: bool = True) -> DecodedSet:
    """Decoded images of ``table`` at ``size``, from the cache when it is up to date.

    Examples
    --------
    >>> ds = load_cached(table, size=128)  # doctest: +SKIP
    >>> ds.images.shape  # doctest: +SKIP
    (15389, 128, 128, 3)
    """
    if not use_cache:
        return decode_table(table, size=size, workers=workers, progress=progress, skip_bad=skip_bad)
    d = cache_dir()
    key = cache_key(table, size=size)
    npy, meta = d / f"{key}.npy", d / f"{key}.json"
    if npy.is_file() and meta.is_file():
        info = json.loads(meta.read_text())
        if info.get("complete") and (skip_bad or not info.get("bad")):
            return DecodedSet(np.load(npy, mmap_mode="r"), info.get("bad", []),
                              info.get("bad_messages", []), npy)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{key}.{os.getpid()}.npy"
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(table), size, size, len(table.channels)))
        ds = decode_table(table, size=size, workers=workers, progress=progress, skip_bad=skip_bad, out=arr)
        arr.flush()
        del arr
        os.replace(tmp, npy)
    finally:
        if tmp.exists():
            tmp.unlink()
    from protloc.atomic import write_json

    write_json(meta, {"complete": True, "n": len(table), "size": size, "fmt": table.fmt,
                      "channels": list(map(str, table.channels)), "images": str(table.images),
                      "bad": ds.bad, "bad_messages": ds.bad_messages})
    return DecodedSet(np.load(npy, mmap_mode="r"), ds.bad, ds.bad_messages, npy)
