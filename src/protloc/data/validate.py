"""Check a dataset in one pass and report every problem (not just the first).

Rows: empty or duplicate ids, empty / non-integer / out-of-range labels. Files: missing, empty,
unreadable, corrupt or truncated, too large, wrong channel count or bit depth, misnamed
(content does not match the extension), inconsistent sizes, files the CSV does not name.
Content: byte-identical duplicates (SHA-1 of the bytes) and near duplicates (perceptual hash,
:mod:`protloc.data.phash`) within a set and across train/test (leaks).

Every :class:`Finding` names the row or file and says how to fix it. Images are inspected in
parallel worker processes (each file is decoded exactly once) with a progress bar.

Examples
--------
>>> rep = validate_dataset("train.csv", "train/")  # doctest: +SKIP
>>> [f.code for f in rep.errors]  # doctest: +SKIP
['missing_file', 'unreadable']
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError
from protloc.data.filecheck import inspect_image, inspect_table  # noqa: F401 - inspect_image is API
from protloc.io.images import HPA_CHANNELS
from protloc.data.phash import DEFAULT_THRESHOLD, groups_from_pairs, near_duplicate_pairs, near_duplicate_pairs_d4
from protloc.data.table import IMAGE_SUFFIXES, DataTable, lenient_table

SEVERITIES = ("error", "warning", "info")


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


# ----------------------------------------------------------------------------- dataset checks
def _as_table(obj, images, kw, findings, set_name) -> DataTable:
    if isinstance(obj, DataTable):
        return obj
    table, rows = lenient_table(obj, images, **kw)
    for sev, code, where, msg, fix in rows:
        findings.append(Finding(sev, code, where, msg, fix, set=set_name))
    return table


def _unlisted(table: DataTable, records: list[dict], set_name: str) -> list[Finding]:
    """Files in the folder that no row names (one folder listing); also improves the fix of
    missing-file problems when a file with the same id but another extension exists."""
    named = {f for r in records for f in r["files"]}
    ids = set(table.ids)
    out = []
    missing_lower = {}
    listing = sorted(Path(table.images).iterdir())
    by_stem: dict[str, list[str]] = {}
    for p in listing:
        by_stem.setdefault(p.stem, []).append(p.name)
    for i, r in enumerate(records):
        if any(p[1] == "missing_file" for p in r["problems"]):
            missing_lower[table.ids[i].lower()] = i
            others = by_stem.get(table.ids[i], []) if table.fmt != "hpa-channels" else []
            if others:
                upper = any(Path(o).suffix != Path(o).suffix.lower() for o in others)
                hint = (f"found {', '.join(others[:3])}: " + ("rename it with a lower-case extension" if upper
                        else "pass the right --format, or add the file or delete the row"))
                r["problems"] = [(sev, code, msg, hint if code == "missing_file" else fix)
                                 for sev, code, msg, fix in r["problems"]]
    for p in listing:
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
                     rotations: bool = False, threshold: int = DEFAULT_THRESHOLD, progress: bool = True,
                     workers: int | None = None,
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
    rotations : bool
        Also match rotated / mirrored copies (8 hashes per image; slower search).
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
        
        raise InputError("--hamming", expected="0 to 40 bits (of 128)", got=str(threshold),
                         fix="use the default 12, or lower it for fewer matches")
    findings: list[Finding] = []
    sets = [("train", _as_table(table, images, table_kw, findings, "train"))]
    if test_table is not None or test_images is not None:
        test_kw = {k: v for k, v in table_kw.items() if k not in ("label_col", "data")}
        sets.append(("test", _as_table(test_table, test_images, test_kw, findings, "test")))
    all_hash, owners, by_sha = [], [], {}
    shapes, dtypes = Counter(), Counter()
    recs_by_set = {}
    for name, t in sets:
        recs = inspect_table(t, near_dup=near_dup, rotations=rotations, workers=workers, progress=progress,
                             description=f"checking {name} images")
        recs_by_set[name] = recs
        unlisted = _unlisted(t, recs, name)
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
        findings.extend(unlisted)
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
                                f"({dict(dtypes)}); with --intensity auto 8-bit files keep their values and "
                                "deeper ones are normalised per image, so the two kinds can look different",
                                "export all images with the same bit depth, or train with --intensity percentile"))
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
    rot = ", any rotation/flip" if rotations else ""
    train_groups: list[list[int]] = [[i for s, i in m if s == "train"] for m in by_sha.values() if len(m) > 1]
    if near_dup and len(all_hash) > 1:
        search = near_duplicate_pairs_d4 if rotations else near_duplicate_pairs
        pairs = search(np.stack(all_hash), threshold=threshold)
        by_sha_key = {(s, i): k for k, m in by_sha.items() for s, i in m}
        for g in groups_from_pairs(len(owners), [tuple(p[:2]) for p in pairs]):
            members = [owners[k] for k in g]
            if len({by_sha_key[m] for m in members}) == 1:
                continue  # already reported as byte-identical
            sets_in = {s for s, _ in members}
            where = ", ".join(f"{tables[s].ids[i]} ({s})" for s, i in members[:10]) + (" ..." if len(g) > 10 else "")
            if len(sets_in) > 1:
                findings.append(Finding("warning", "leak", where, f"near-duplicate images (perceptual hash within "
                                        f"{threshold} bits{rot}) in both train and test",
                                        "remove them from one set, or accept an optimistic test score", set="both"))
            else:
                findings.append(Finding("warning", "near_duplicate", where, f"{len(g)} near-duplicate images "
                                        f"(perceptual hash within {threshold} bits{rot})",
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


def near_duplicate_groups(table: DataTable, *, threshold: int = DEFAULT_THRESHOLD, rotations: bool = False,
                          progress: bool = True,
                          workers: int | None = None, problems: list | None = None) -> list[list[int]]:
    """Groups of row indices of ``table`` that are byte-identical or near-duplicate images.

    Unreadable images are left out of the search; pass a list as ``problems`` to receive
    ``(index, message)`` for each of them (``protloc validate`` reports them in full).

    Examples
    --------
    >>> near_duplicate_groups(load_table("train.csv", "train/"))  # doctest: +SKIP
    [[3, 17], [40, 41, 97]]
    """
    recs = inspect_table(table, near_dup=True, rotations=rotations, workers=workers, progress=progress,
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
        search = near_duplicate_pairs_d4 if rotations else near_duplicate_pairs
        p = search(np.stack([recs[i]["hash"] for i in ok]), threshold=threshold)
        pairs += [(ok[a], ok[b]) for a, b, _ in p]
    return groups_from_pairs(len(table), pairs)
