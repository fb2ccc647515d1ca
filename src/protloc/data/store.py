"""Sharded image store: decoded uint8 images in a Zarr v3 sharded array, read by index.

One store is a folder (a Zarr v3 group) that any Zarr v3 reader opens::

    ROOT/zarr.json            group; its attributes say what was decoded (images, fmt, size...)
    ROOT/images/zarr.json     array (N, S, S, C) uint8: chunk = 1 image, shard = K images
    ROOT/images/c/s/0/0/0     shard s = images s*K .. s*K+K-1 and the shard index (offset, length)
    ROOT/files/zarr.json      array (N, 2) int64 per image: [file-stat digest, status]
    ROOT/files/c/s/0          the stats of shard s (status 0 = not built, 1 = decoded, 2 = unreadable)

Shards are written whole, each by one worker process, atomically (temp file + rename), so
parallel writers never touch the same file and a killed build leaves only ``*.partial`` temp
files (removed by :func:`clean_partials`) and shards without stats (rebuilt). The writer and the
reader here speak the Zarr v3 sharding format directly (one ``pread`` per image, no per-chunk
async machinery): ``zarr.open_array(ROOT / "images")`` reads the same numbers, ~20-50x slower.
Nothing here ever holds more than one shard of images in memory.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np

from protloc.core.atomic import note_write
from protloc.core.errors import InputError

STORE_FORMAT = "protloc-sharded-v1"
_MISSING = np.uint64(2**64 - 1)
#: status column of ``files``
NOT_BUILT, DECODED, UNREADABLE = 0, 1, 2


def default_shard_images(size: int, channels: int, *, target_mb: float = 32.0) -> int:
    """Images per shard: about ``target_mb`` MiB of uncompressed pixels, 16 to 4096 images.

    Examples
    --------
    >>> default_shard_images(128, 3), default_shard_images(512, 4), default_shard_images(16, 3)
    (682, 32, 4096)
    """
    per = size * size * channels
    return int(min(4096, max(16, target_mb * 2**20 // per)))


def _codecs(compress: str) -> list[dict]:
    if compress == "none":
        return [{"name": "bytes"}]
    if compress == "zstd":
        return [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1, "checksum": False}}]
    raise InputError(f"store compression: expected none or zstd, got {compress!r}", fix="pick one of those")


def _array_meta(shape, chunk_shape, dtype: str, codecs: list[dict]) -> dict:
    return {"shape": list(shape), "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": codecs, "attributes": {}, "zarr_format": 3, "node_type": "array",
            "storage_transformers": []}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a crash never leaves a renamed, empty shard
        os.replace(tmp, path)
        note_write(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def create_store(root, *, n: int, size: int, channels: int, shard_images: int, compress: str = "zstd",
                 attrs: dict | None = None) -> Path:
    """Write the metadata of an empty store (no shards yet); return ``root``.

    Examples
    --------
    >>> import tempfile
    >>> r = create_store(Path(tempfile.mkdtemp()) / "s.zarr", n=10, size=8, channels=3, shard_images=4)
    >>> ShardedImages(r).shape, ShardedImages(r).n_shards
    ((10, 8, 8, 3), 3)
    """
    root = Path(root)
    img_codecs = [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [1, size, size, channels], "codecs": _codecs(compress),
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end"}}]
    files_codecs = [{"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "zstd", "configuration": {"level": 1, "checksum": False}}]
    meta = {"images": _array_meta((n, size, size, channels), (shard_images, size, size, channels), "uint8",
                                  img_codecs),
            "files": _array_meta((n, 2), (shard_images, 2), "int64", files_codecs)}
    for name, m in meta.items():
        _write_atomic(root / name / "zarr.json", json.dumps(m, indent=1).encode())
    group = {"attributes": {"format": STORE_FORMAT, "shard_images": int(shard_images), "compress": compress,
                            **(attrs or {})}, "zarr_format": 3, "node_type": "group"}
    _write_atomic(root / "zarr.json", json.dumps(group, indent=1).encode())
    return root


def _crc32c(b: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(b))


def _zstd():
    from numcodecs import Zstd

    return Zstd(level=1)


def shard_path(root: Path, s: int, *, array: str = "images", ndim: int = 4) -> Path:
    return Path(root, array, "c", str(int(s)), *["0"] * (ndim - 1))


def write_shard(root, s: int, images: np.ndarray, stats: np.ndarray, *, shard_images: int,
                compress: str = "zstd") -> None:
    """Write shard ``s`` (``images`` (k, S, S, C) uint8, k <= K) and then its stats ((k, 2) int64).

    The stats chunk is written last: its presence means the shard is complete.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    k = len(images)
    z = _zstd() if compress == "zstd" else None
    parts, index, off = [], np.full((shard_images, 2), _MISSING, dtype="<u8"), 0
    for j in range(k):
        b = images[j].tobytes()
        if z is not None:
            b = bytes(z.encode(b))
        parts.append(b)
        index[j] = (off, len(b))
        off += len(b)
    ib = index.tobytes()
    parts += [ib, np.uint32(_crc32c(ib)).astype("<u4").tobytes()]
    _write_atomic(shard_path(root, s), b"".join(parts))
    st = np.zeros((shard_images, 2), "<i8")
    st[:k] = stats
    _write_atomic(shard_path(root, s, array="files", ndim=2), bytes(_zstd().encode(st.tobytes())))


def read_shard_stats(root, s: int, *, shard_images: int) -> np.ndarray | None:
    """The (K, 2) int64 stats of shard ``s``, or None when the shard was never finished."""
    p = shard_path(root, s, array="files", ndim=2)
    try:
        raw = bytes(_zstd().decode(p.read_bytes()))
        return np.frombuffer(raw, "<i8").reshape(shard_images, 2).copy()
    except (OSError, ValueError, RuntimeError):  # missing or damaged (killed mid-write): rebuild
        return None


def clean_partials(root) -> int:
    """Delete the temp files a killed writer left in a store; return how many."""
    n = 0
    for p in Path(root).rglob("*.partial"):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


class ShardedImages:
    """Read-only array view (N, S, S, C) uint8 of a store: ``x[i]``, ``x[a:b]``, ``x[int array]``.

    Each image is one ``pread`` of its chunk (plus a zstd decode); shard indexes and file
    handles are cached (LRU), so a pickled copy (DataLoader workers) reopens lazily.

    Examples
    --------
    >>> import tempfile
    >>> r = create_store(Path(tempfile.mkdtemp()) / "s.zarr", n=5, size=4, channels=3, shard_images=2)
    >>> imgs = np.arange(5 * 48, dtype=np.uint8).reshape(5, 4, 4, 3)
    >>> for s in range(3):
    ...     write_shard(r, s, imgs[2 * s:2 * s + 2], np.zeros((len(imgs[2 * s:2 * s + 2]), 2)), shard_images=2)
    >>> x = ShardedImages(r)
    >>> bool((x[[4, 0, 3]] == imgs[[4, 0, 3]]).all()), bool((x[1:4] == imgs[1:4]).all()), x[2].shape
    (True, True, (4, 4, 3))
    """

    def __init__(self, root, *, max_open: int = 64):
        self.root = Path(root)
        try:
            meta = json.loads((self.root / "images" / "zarr.json").read_text())
            attrs = json.loads((self.root / "zarr.json").read_text())["attributes"]
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{self.root}: not a readable image store ({e})", fix="delete it with "
                             "protloc cache --clear, or rebuild it") from None
        self.shape = tuple(int(v) for v in meta["shape"])
        self.shard_images = int(attrs["shard_images"])
        self.compress = attrs.get("compress", "none")
        self.attrs = attrs
        self.dtype = np.dtype(np.uint8)
        self.max_open = max_open
        self._open: OrderedDict = OrderedDict()

    # array protocol ---------------------------------------------------------------------
    ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_shards(self) -> int:
        return -(-self.shape[0] // self.shard_images)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_open"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open = OrderedDict()

    def __del__(self):
        self.close()

    def close(self) -> None:
        for fd, _ in getattr(self, "_open", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
        if hasattr(self, "_open"):
            self._open.clear()

    def __repr__(self) -> str:
        return f"ShardedImages({str(self.root)!r}, shape={self.shape}, shard_images={self.shard_images})"

    def _shard(self, s: int):
        hit = self._open.get(s)
        if hit is not None:
            self._open.move_to_end(s)
            return hit
        p = shard_path(self.root, s)
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            raise InputError(f"{p}: shard {s} of the image store is missing", fix="rebuild the cache "
                             "(protloc cache --clear, then protloc cache)") from None
        k = self.shard_images
        size = os.fstat(fd).st_size
        tail = os.pread(fd, 16 * k + 4, size - 16 * k - 4)
        ib = tail[:-4]
        if len(tail) != 16 * k + 4 or _crc32c(ib) != int(np.frombuffer(tail[-4:], "<u4")[0]):
            os.close(fd)
            raise InputError(f"{p}: damaged shard index (checksum)", fix="rebuild the cache "
                             "(protloc cache --clear, then protloc cache)")
        entry = (fd, np.frombuffer(ib, "<u8").reshape(k, 2))
        self._open[s] = entry
        if len(self._open) > self.max_open:
            fd_old, _ = self._open.popitem(last=False)[1]
            os.close(fd_old)
        return entry

    def _read_into(self, i: int, out: np.ndarray) -> None:
        s, j = divmod(i, self.shard_images)
        fd, index = self._shard(s)
        off, ln = index[j]
        if off == _MISSING:
            out[...] = 0
            return
        if self.compress == "zstd":
            out[...] = np.frombuffer(_zstd().decode(os.pread(fd, int(ln), int(off))), np.uint8).reshape(out.shape)
        elif out.flags.c_contiguous and int(ln) == out.nbytes:
            if os.preadv(fd, [out.reshape(-1)], int(off)) != out.nbytes:  # straight into the output
                raise InputError(f"{shard_path(self.root, s)}: shard {s} is truncated", fix="rebuild the cache "
                                 "(protloc cache --clear, then protloc cache)")
        else:
            out[...] = np.frombuffer(os.pread(fd, int(ln), int(off)), np.uint8).reshape(out.shape)

    def read(self, indices) -> np.ndarray:
        """Images ``indices`` (any order, repeats allowed) as a new (len, S, S, C) array."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.shape[0]
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        for k in np.argsort(idx, kind="stable"):  # shard by shard, in file order
            self._read_into(int(idx[k]), out[k])
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):  # the per-image path: no index arrays
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"index {key} out of range for {self.shape[0]} images")
            out = np.empty(self.shape[1:], np.uint8)
            self._read_into(i, out)
            return out
        if isinstance(key, slice):
            return self.read(np.arange(*key.indices(self.shape[0])))
        if isinstance(key, tuple):
            return self[key[0]][(slice(None), *key[1:])] if not isinstance(key[0], (int, np.integer)) \
                else self[key[0]][key[1:]]
        return self.read(key)

    def __array__(self, dtype=None, copy=None):
        a = self.read(np.arange(self.shape[0]))
        return a if dtype is None else a.astype(dtype)

    def zarr(self):
        """The same images through zarr-python (for other tools; slower)."""
        import zarr

        return zarr.open_array(self.root / "images", mode="r")
