"""Check a dataset in one pass and report every problem (not just the first).

Rows: empty or duplicate ids, empty / non-integer / out-of-range labels. Files: missing, empty,
unreadable, corrupt or truncated, too large, wrong channel count or bit depth, misnamed
(content does not match the extension), inconsistent sizes, files the CSV does not name.
Content: byte-identical duplicates (SHA-1 of the bytes) and near duplicates (perceptual hash,
:mod:`protloc.phash`) within a set and across train/test (leaks).

Every :class:`Finding` names the row or file and says how to fix it. Images are inspected in
parallel worker processes (each file is decoded exactly once) with a progress bar.

Examples
--------
>>> rep = validate_dataset("train.csv", "train/")  # doctest: +SKIP
>>> [f.code for f in rep.errors]  # doctest: +SKIP
['missing_file', 'unreadable']
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from protloc.cache import worker_map
from protloc.errors import InputError
from protloc.imageio import (HPA_CHANNELS, TIFF_EXTS, hpa_channel_path, image_path, read_image,
                             sniff_format)
from protloc.phash import DEFAULT_THRESHOLD, groups_from_pairs, hash_channels, image_hash, near_duplicate_pairs
from protloc.table import IMAGE_SUFFIXES, DataTable, lenient_table

SEVERITIES = ("error", "warning", "info")
_PIL_FORMAT_EXTS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "TIFF": (".tif", ".tiff")}


@dataclass
class Finding:
    """One problem: ``severity`` ('error' | 'warning' | 'info'), a stable ``code``, ``where``
    (CSV line / id / file), what is wrong (``message``) and how to fix it (``fix``)."""

    severity: str
    code: str
    where: str
    message: str
    fix: str
    set: str = "train"
    index: int | None = None

    def line(self) -> str:
        return f"{self.where}: {self.message}. Fix: {self.fix}."


@dataclass
class ValidationReport:
    findings: list[Finding] = field(default_factory=list)
    n_images: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    #: groups of train-set indices that are byte-identical or near duplicates (for split.py).
    duplicate_groups: list[list[int]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict:
        return dict(Counter(f"{f.severity}:{f.code}" for f in self.findings))

    def to_dict(self) -> dict:
        return {"ok": self.ok, "n_images": self.n_images, "n_errors": len(self.errors),
                "n_warnings": len(self.warnings), "counts": self.counts(), "stats": self.stats,
                "duplicate_groups": self.duplicate_groups, "findings": [asdict(f) for f in self.findings]}


# ----------------------------------------------------------------------------- per image (worker)
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


def _classify(msg: str) -> str:
    if "too large" in msg:
        return "too_large"
    if "missing" in msg or "not found" in msg:
        return "missing_file"
    if "expected an RGB image" in msg or "channels" in msg:
        return "wrong_channels"
    return "unreadable"


def inspect_image(folder, iid: str, fmt: str, channels, *, hash_idx=(1, 2)) -> dict:
    """Inspect one image: its files (name, bytes, SHA-1, header), problems, size, hash."""
    folder = Path(folder)
    rec = {"files": [], "problems": [], "shape": None, "hash": None, "dtypes": []}
    if fmt == "hpa-channels":
        paths = [(c, hpa_channel_path(folder, iid, c)) for c in channels]
    else:
        paths = [(None, image_path(folder, iid, fmt))]
    missing = [c or iid for c, p in paths if p is None]
    if missing:
        what = ", ".join(f"{iid}_{c}.png" for c in missing) if fmt == "hpa-channels" else f"{iid}.png"
        rec["problems"].append(("error", "missing_file", f"image file missing: {what} (also looked "
                                f"for .tif{'/.jpg' if fmt == 'rgb' else ''})", "add the file or delete the row"))
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
        img = read_image(folder, iid, fmt=fmt, channels=channels)
    except InputError as e:
        msg, _, fix = str(e).partition(". Fix: ")
        rec["problems"].append(("error", _classify(msg), msg.replace(str(folder) + os.sep, ""),
                                fix.rstrip(".") or "re-export the file, or delete the row"))
        return rec
    rec["shape"] = tuple(img.shape)
    if int(img.max()) == int(img.min()):
        rec["problems"].append(("warning", "blank_image", f"every pixel is {int(img.max())} (an empty image)",
                                "check the export, or delete the row"))
    elif "uint16" in rec["dtypes"] and int(img.max()) < 32:  # e.g. 12-bit camera data in 16 bits
        rec["problems"].append(("warning", "dark_16bit", "16-bit data uses only the low bits (8-bit max "
                                f"{int(img.max())} after the 1/257 scaling); the image is almost black",
                                "rescale the TIFFs to the full 16-bit range, or export 8-bit PNGs"))
    if hash_idx is not None:
        rec["hash"] = image_hash(img, protein=min(hash_idx[0], img.shape[2] - 1),
                                 nucleus=min(hash_idx[1], img.shape[2] - 1))
    return rec


def _inspect_chunk(args):
    folder, ids, fmt, channels, hash_idx = args
    return [inspect_image(folder, iid, fmt, channels, hash_idx=hash_idx) for iid in ids]


def inspect_table(table: DataTable, *, near_dup: bool = True, workers: int | None = None,
                  progress: bool = True, description: str = "checking images") -> list[dict]:
    """:func:`inspect_image` for every row of ``table``, in parallel, in row order."""
    from protloc.progress import progress_bar

    n = len(table)
    hidx = hash_channels(table.fmt, table.channels) if near_dup else None
    chunk = 32
    jobs = [(str(table.images), table.ids[s:s + chunk], table.fmt, table.channels, hidx)
            for s in range(0, n, chunk)]
    workers = workers or min(4, os.cpu_count() or 1)
    out: list[dict] = []
    with progress_bar(total=n, description=description, enable=progress) as advance:
        for r in worker_map(_inspect_chunk, jobs, workers):
            out.extend(r)
            advance(len(r))
    return out


# ----------------------------------------------------------------------------- dataset checks
def _as_table(obj, images, kw, findings, set_name) -> DataTable:
    if isinstance(obj, DataTable):
        return obj
    table, rows = lenient_table(obj, images, **kw)
    for sev, code, where, msg, fix in rows:
        findings.append(Finding(sev, code, where, msg, fix, set=set_name))
    return table


def _unlisted(table: DataTable, records: list[dict], set_name: str) -> list[Finding]:
    named = {f for r in records for f in r["files"]}
    ids = set(table.ids)
    out = []
    missing_lower = {}
    for i, r in enumerate(records):
        if any(p[1] == "missing_file" for p in r["problems"]):
            missing_lower[table.ids[i].lower()] = i
    for p in sorted(Path(table.images).iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.name in named:
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = p.stem
        for ch in HPA_CHANNELS:
            if stem.endswith("_" + ch):
                stem = stem[: -len(ch) - 1]
        if stem in ids and table.fmt == "hpa-channels":
            continue  # a channel file that was not chosen with --channels
        hint = (f"it looks like the file of {table.where(missing_lower[stem.lower()])}: rename it to the "
                "id with a lower-case extension" if stem.lower() in missing_lower else
                "add a CSV row for it, or move it out of the folder")
        out.append(Finding("warning", "unlisted_file", f"{table.images.name}/{p.name}",
                           "file in the image folder that the CSV does not name", hint, set=set_name))
    return out


def validate_dataset(table, images=None, *, test_table=None, test_images=None, near_dup: bool = True,
                     threshold: int = DEFAULT_THRESHOLD, progress: bool = True, workers: int | None = None,
                     **table_kw) -> ValidationReport:
    """Check a dataset (and optionally a test set) and return every finding.

    Parameters
    ----------
    table : DataTable or path
        A table (rows already parsed) or the CSV path (rows are checked leniently, all problems
        collected); ``None`` with ``images`` = every image in the folder.
    images : path, optional
        The image folder when ``table`` is a CSV path.
    test_table, test_images : optional
        A second set checked the same way; duplicates across the sets are reported as leaks.
    near_dup : bool
        Compute perceptual hashes and report near duplicates (Hamming <= ``threshold`` of 128).
    table_kw
        ``fmt``, ``channels``, ``schema``, ``id_col``, ``label_col``, ``from_schema``, ``data``.

    Examples
    --------
    >>> rep = validate_dataset("train.csv", "train/", test_table="test.csv",
    ...                        test_images="test/")  # doctest: +SKIP
    >>> rep.ok, len(rep.warnings)  # doctest: +SKIP
    (True, 2)
    """
    if not 0 <= int(threshold) <= 40:
        from protloc.errors import fmt_problem

        raise InputError(fmt_problem("--hamming", expected="0 to 40 bits (of 128)", got=str(threshold),
                                     fix="use the default 12, or lower it for fewer matches"))
    findings: list[Finding] = []
    sets = [("train", _as_table(table, images, table_kw, findings, "train"))]
    if test_table is not None or test_images is not None:
        test_kw = {k: v for k, v in table_kw.items() if k not in ("label_col", "data")}
        sets.append(("test", _as_table(test_table, test_images, test_kw, findings, "test")))
    all_hash, owners, by_sha = [], [], {}
    shapes, dtypes = Counter(), Counter()
    recs_by_set = {}
    for name, t in sets:
        recs = inspect_table(t, near_dup=near_dup, workers=workers, progress=progress,
                             description=f"checking {name} images")
        recs_by_set[name] = recs
        for i, r in enumerate(recs):
            for sev, code, msg, fix in r["problems"]:
                findings.append(Finding(sev, code, t.where(i), msg, fix, set=name, index=i))
            if r["shape"] is not None:
                shapes[r["shape"][:2]] += 1
                dtypes.update(r["dtypes"])
                by_sha.setdefault(r["sha1"], []).append((name, i))
                if r["hash"] is not None:
                    all_hash.append(r["hash"])
                    owners.append((name, i))
        findings.extend(_unlisted(t, recs, name))
    tables = dict(sets)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        n_odd = sum(shapes.values()) - shapes[common]
        if n_odd > 100:  # one summary instead of thousands of rows
            findings.append(Finding("warning", "inconsistent_size", "all images", f"{n_odd} images are not "
                                    f"{common[0]}x{common[1]} px (sizes: {dict(shapes.most_common(8))}); "
                                    "all are resized", "check they are the same kind of image"))
        for name, t in sets if n_odd <= 100 else []:
            for i, r in enumerate(recs_by_set[name]):
                if r["shape"] is not None and r["shape"][:2] != common:
                    findings.append(Finding("warning", "inconsistent_size", t.where(i),
                                            f"image is {r['shape'][0]}x{r['shape'][1]} px while most are "
                                            f"{common[0]}x{common[1]}; it will be resized",
                                            "check it is the same kind of image (crop/scale them alike)",
                                            set=name, index=i))
    if len(dtypes) > 1:
        findings.append(Finding("warning", "mixed_bit_depth", "all files", "files mix bit depths "
                                f"({dict(dtypes)}); 16-bit values are scaled by 1/257, so dim 16-bit images "
                                "look darker than 8-bit ones",
                                "export all images with the same bit depth"))
    for members in by_sha.values():
        if len(members) < 2:
            continue
        where = ", ".join(f"{tables[s].ids[i]} ({s})" for s, i in members[:10]) + (" ..." if len(members) > 10 else "")
        sets_in = {s for s, _ in members}
        if len(sets_in) > 1:
            findings.append(Finding("error", "leak", where, "byte-identical images in both train and test",
                                    "remove the copies from one of the sets", set="both"))
        else:
            findings.append(Finding("warning", "duplicate_image", where, f"{len(members)} byte-identical images",
                                    "keep one copy (split keeps copies in one fold)", set=members[0][0]))
    train_groups: list[list[int]] = [[i for s, i in m if s == "train"] for m in by_sha.values() if len(m) > 1]
    if near_dup and len(all_hash) > 1:
        pairs = near_duplicate_pairs(np.stack(all_hash), threshold=threshold)
        by_sha_key = {(s, i): k for k, m in by_sha.items() for s, i in m}
        for g in groups_from_pairs(len(owners), [tuple(p[:2]) for p in pairs]):
            members = [owners[k] for k in g]
            if len({by_sha_key[m] for m in members}) == 1:
                continue  # already reported as byte-identical
            sets_in = {s for s, _ in members}
            where = ", ".join(f"{tables[s].ids[i]} ({s})" for s, i in members[:10]) + (" ..." if len(g) > 10 else "")
            if len(sets_in) > 1:
                findings.append(Finding("warning", "leak", where, f"near-duplicate images (perceptual hash within "
                                        f"{threshold} bits) in both train and test",
                                        "remove them from one set, or accept an optimistic test score", set="both"))
            else:
                findings.append(Finding("warning", "near_duplicate", where, f"{len(g)} near-duplicate images "
                                        f"(perceptual hash within {threshold} bits)",
                                        "check they are not the same field exported twice; split keeps them "
                                        "in one fold", set=members[0][0]))
            tr = [i for s, i in members if s == "train"]
            if len(tr) > 1:
                train_groups.append(tr)
    n_train = len(tables["train"])
    groups = groups_from_pairs(n_train, [(g[0], j) for g in train_groups if len(g) > 1 for j in g[1:]])
    stats = {"sizes": {f"{h}x{w}": c for (h, w), c in shapes.most_common()}, "dtypes": dict(dtypes),
             "format": tables["train"].fmt, "channels": list(map(str, tables["train"].channels))}
    order = {s: k for k, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    return ValidationReport(findings, {name: len(t) for name, t in sets}, stats, groups)


def near_duplicate_groups(table: DataTable, *, threshold: int = DEFAULT_THRESHOLD, progress: bool = True,
                          workers: int | None = None, problems: list | None = None) -> list[list[int]]:
    """Groups of row indices of ``table`` that are byte-identical or near-duplicate images.

    Unreadable images are left out of the search; pass a list as ``problems`` to receive
    ``(index, message)`` for each of them (``protloc validate`` reports them in full).

    Examples
    --------
    >>> near_duplicate_groups(load_table("train.csv", "train/"))  # doctest: +SKIP
    [[3, 17], [40, 41, 97]]
    """
    recs = inspect_table(table, near_dup=True, workers=workers, progress=progress,
                         description="hashing images")
    ok = [i for i, r in enumerate(recs) if r["hash"] is not None]
    if problems is not None:
        problems += [(i, "; ".join(p[2] for p in r["problems"] if p[0] == "error"))
                     for i, r in enumerate(recs) if r["hash"] is None]
    pairs = []
    by_sha: dict[str, int] = {}
    for i in ok:
        j = by_sha.setdefault(recs[i]["sha1"], i)
        if j != i:
            pairs.append((j, i))
    if len(ok) > 1:
        p = near_duplicate_pairs(np.stack([recs[i]["hash"] for i in ok]), threshold=threshold)
        pairs += [(ok[a], ok[b]) for a, b, _ in p]
    return groups_from_pairs(len(table), pairs)
