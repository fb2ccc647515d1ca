"""Inspect image files, one pass per image: bytes (SHA-1), header facts, one decode, hash.

Used by :mod:`protloc.data.validate` (all findings) and :mod:`protloc.data.split` (near duplicates).
Each record is a plain dict so it travels cheaply back from the worker processes:
``files`` (names), ``problems`` ((severity, code, message, fix) tuples), ``shape`` of the
decoded image (or None), ``dtypes`` per file, ``sha1`` of the bytes and the perceptual ``hash``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from protloc.data.cache import worker_map
from protloc.core.errors import InputError
from protloc.io.images import TIFF_EXTS, hpa_channel_path, image_path, not_a_file, read_image, sniff_format
from protloc.data.phash import hash_channels, image_hash, image_hashes_d4

_PIL_FORMAT_EXTS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "TIFF": (".tif", ".tiff")}


def _header(path: Path, real: str | None) -> dict:
    """Cheap facts from a file header: format, mode/dtype, size, channels; or a problem."""
    if real == "TIFF" or (real is None and path.suffix.lower() in TIFF_EXTS):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                s = tf.series[0]
                shape = tuple(d for d in s.shape if d != 1)
                return {"format": "TIFF", "dtype": str(s.dtype), "shape": shape}
        except Exception as e:  # noqa: BLE001 - reported below when decoding
            return {"format": "?", "error": str(e)}
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return {"format": im.format, "mode": im.mode, "size": im.size}
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return {"format": "?", "too_large": str(e)}
    except Exception as e:  # noqa: BLE001
        return {"format": "?", "error": str(e)}


def _max_16bit(paths) -> int:
    """The largest raw value of an image's 16-bit files (cached per file list)."""
    from protloc.io.images import read_array

    key = tuple(str(p) for _, p in paths if p is not None)
    if key not in _MAX_CACHE:
        _MAX_CACHE.clear()
        vals = [read_array(Path(p)) for p in key]
        _MAX_CACHE[key] = max(int(v.max(initial=0)) for v in vals if v.dtype == np.uint16) if vals else 0
    return _MAX_CACHE[key]


_MAX_CACHE: dict = {}


def _classify(e: InputError) -> str:
    """The finding code of an image read error, from its fields."""
    if e.expected is not None:  # a value mismatch: the wrong number of channels, or a bad layout
        return "wrong_channels" if "channels" in e.expected else "unreadable"
    if "too large" in e.what:
        return "too_large"
    if "missing" in e.what or "not found" in e.what:
        return "missing_file"
    return "unreadable"


def inspect_image(folder, iid: str, fmt: str, channels, *, hash_idx=(1, 2), rotations: bool = False,
                  axes: str | None = None) -> dict:
    """Inspect one image: its files (name, bytes, SHA-1, header), problems, size, hash.

    ``axes``: the axes of TIFFs that do not declare theirs (``--axes``)."""
    folder = Path(folder)
    rec = {"files": [], "problems": [], "shape": None, "hash": None, "dtypes": []}
    if fmt == "hpa-channels":
        paths = [(c, hpa_channel_path(folder, iid, c)) for c in channels]
    else:
        paths = [(None, image_path(folder, iid, fmt))]
    missing = [c or iid for c, p in paths if p is None]
    odd = not_a_file(folder, iid, fmt, channels) if missing else []
    for name, kind in odd:  # a folder / FIFO / symlink loop named like the image: say what it is
        hint = "fix or remove the symlink" if "symlink" in kind else f"replace {name} with the image file"
        rec["problems"].append(("error", "not_a_file", f"{name} is {kind}, not an image file",
                                f"{hint}, or delete the row"))
    if odd:
        missing = []
    if missing:
        what, also = {"hpa-channels": (", ".join(f"{iid}_{c}.png" for c in missing), ".tif"),
                      "rgb": (f"{iid}.png", ".tif/.jpg"), "tiff": (f"{iid}.tif", ".tiff")}[fmt]
        rec["problems"].append(("error", "missing_file", f"image file missing: {what} (also looked for {also})",
                                "add the file or delete the row"))
    sha = hashlib.sha1()
    sizes: set = set()
    for _, p in paths:
        if p is None:
            continue
        try:
            data = p.read_bytes()
        except OSError as e:
            rec["problems"].append(("error", "unreadable", f"{p.name}: cannot read the file ({e.strerror})",
                                    "check the file's permissions, or delete the row"))
            continue
        sha.update(hashlib.sha1(data).digest())
        rec["files"].append(p.name)
        if not data:
            rec["problems"].append(("error", "empty_file", f"{p.name} is empty (0 bytes)",
                                    "re-export or re-download the file, or delete the row"))
            continue
        real = sniff_format(p)
        ext = p.suffix.lower()
        if real in _PIL_FORMAT_EXTS and ext not in _PIL_FORMAT_EXTS[real]:
            rec["problems"].append(("warning", "misnamed", f"{p.name} holds {real} data but is named "
                                    f"{ext}", f"rename it to {p.stem}{_PIL_FORMAT_EXTS[real][0]}"))
        h = _header(p, real)
        if "too_large" in h:
            rec["problems"].append(("error", "too_large", f"{p.name} is too large to decode safely "
                                    f"({h['too_large']})", "downscale the image (protloc works at 128-512 px)"))
            continue
        mode = h.get("mode", "")
        dtype = h.get("dtype") or ("uint16" if mode.startswith("I;16") else "int32" if mode == "I"
                                   else "float32" if mode == "F" else "uint8")
        rec["dtypes"].append(dtype)
        sizes.add(tuple(h["size"][::-1]) if "size" in h else tuple(h.get("shape", ())[-2:]))
        if dtype not in ("uint8", "uint16"):
            rec["problems"].append(("warning", "bit_depth", f"{p.name} has {dtype} pixels (expected 8 or 16 "
                                    "bit); they are clipped/scaled to 8 bit", "save 8- or 16-bit images"))
        shape = h.get("shape", ())
        if fmt == "rgb" and (mode in ("RGBA", "LA", "PA") or (len(shape) == 3 and 4 in (shape[0], shape[-1]))):
            mode = mode or "4 channels"
            rec["problems"].append(("warning", "alpha_dropped", f"{p.name} has an alpha channel ({mode}); "
                                    "it is ignored", "save RGB without transparency"))
        if fmt == "hpa-channels" and mode in ("RGB", "RGBA"):
            rec["problems"].append(("warning", "wrong_channels", f"{p.name} is {mode} but HPA channel files "
                                    "are single-channel; the matching plane is used", "save one gray plane per file"))
    rec["sha1"] = sha.hexdigest()
    if len(sizes) > 1:
        rec["problems"].append(("warning", "inconsistent_size", "channel files differ in size ("
                                + ", ".join(f"{a}x{b}" for a, b in sorted(sizes)) + "); they are resized to the first",
                                "export all channels of an image at the same size"))
    if any(s == "error" for s, *_ in rec["problems"]):
        return rec
    try:
        from dataclasses import replace

        from protloc.core.preprocessing import default_reading

        img = read_image(folder, iid, fmt=fmt, channels=channels, reading=replace(default_reading(), axes=axes))
    except InputError as e:
        rec["problems"].append(("error", _classify(e), e.problem.replace(str(folder) + os.sep, ""),
                                e.fix or "re-export the file, or delete the row"))
        return rec
    rec["shape"] = tuple(img.shape)
    if int(img.max()) == int(img.min()):
        rec["problems"].append(("warning", "blank_image", f"every pixel is {int(img.max())} (an empty image)",
                                "check the export, or delete the row"))
    elif "uint16" in rec["dtypes"] and _max_16bit(paths) <= 4095:  # 12-bit camera data in 16 bits
        rec["problems"].append(("info", "dark_16bit", f"16-bit data uses only the low 12 bits (maximum "
                                f"{_max_16bit(paths)}): it is read as 12-bit data (--intensity auto normalises "
                                "each image by its percentiles, scale divides by 4095), not divided by 257",
                                "nothing to do; pass --intensity to choose the rule"))
    if hash_idx is not None:
        fn = image_hashes_d4 if rotations else image_hash  # (8, 2) or (2,) uint64
        rec["hash"] = fn(img, protein=min(hash_idx[0], img.shape[2] - 1), nucleus=min(hash_idx[1], img.shape[2] - 1))
    return rec


def _inspect_chunk(args):
    folder, ids, fmt, channels, hash_idx, rotations, axes = args
    return [inspect_image(folder, iid, fmt, channels, hash_idx=hash_idx, rotations=rotations, axes=axes)
            for iid in ids]


def inspect_table(table, *, near_dup: bool = True, rotations: bool = False, workers: int | None = None,
                  progress: bool = True, description: str = "checking images") -> list[dict]:
    """:func:`inspect_image` for every row of ``table``, in parallel, in row order."""
    from protloc.core.progress import progress_bar

    n = len(table)
    hidx = hash_channels(table.fmt, table.channels) if near_dup else None
    chunk = 32
    jobs = [(str(table.images), table.ids[s:s + chunk], table.fmt, table.channels, hidx, rotations,
             getattr(table, "axes", None)) for s in range(0, n, chunk)]
    workers = workers or min(4, os.cpu_count() or 1)
    out: list[dict] = []
    with progress_bar(total=n, description=description, enable=progress) as advance:
        for r in worker_map(_inspect_chunk, jobs, workers):
            out.extend(r)
            advance(len(r))
    return out
