"""Input side of :mod:`protloc.inference.predictor`: turning what the user passes into checked uint8 images.

Paths (PNG/JPEG/TIFF, or ``DIR/ID`` for an ``hpa-channels`` run), (H, W, C) arrays, one
(N, H, W, C) array, or a :class:`~protloc.data.table.DataTable` become ids plus items; files are read
the way training read them; a table is checked against the run (channels, channel order, label
schema) and streamed in chunks; ``RUN/thresholds.json`` is read and checked against the run's
classes. The size check and resize warning stay in :class:`protloc.inference.predictor.Predictor`, which
passes its ``_prepare`` method in.

Examples
--------
>>> as_items(["a/cell1.png", np.zeros((4, 4, 3), np.uint8)])[0]
['cell1', '1']
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError, check_choice, fmt_problem
from protloc.core.threshold_search import check_thresholds

__all__ = ["check_choice", "as_items", "read_raw", "check_table", "find_missing", "load_chunk",
           "read_run_thresholds"]


def as_items(images) -> tuple[list[str], object]:
    """``(ids, items)`` for file paths, (H, W, C) arrays or one (N, H, W, C) array.

    ids are file stems for paths and positions (``"0"``, ``"1"``...) for arrays; a single
    path or image becomes a one-item list. An empty input raises.
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        seq, ids = images, [str(i) for i in range(len(images))]
    else:
        seq = [images] if isinstance(images, (str, Path)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3)) else list(images)
        ids = [Path(x).stem if isinstance(x, (str, Path)) else str(i) for i, x in enumerate(seq)]
    if len(seq) == 0:
        raise InputError(fmt_problem("images", expected="at least one image", got="none",
                                     fix="pass file paths or arrays"))
    return ids, seq


def read_raw(path, pre) -> np.ndarray:
    """Read one image file for a run with preprocessing ``pre``, before the size check.

    ``hpa-channels`` runs read ``DIR/ID`` as ``DIR/ID_<channel>.png``; an RGBA PNG loses its
    alpha for a 3-channel run; a wider TIFF keeps the run's ``chN`` channels.
    """
    from protloc.io import images as imageio

    p = Path(path)
    if pre.fmt == "hpa-channels" and not p.is_file():
        return imageio.read_hpa_channels(p.parent, p.name, channels=pre.channels)
    a = imageio.read_array(p)
    if a.ndim == 3 and a.shape[2] == 4 and pre.in_chans == 3 and p.suffix.lower() not in imageio.TIFF_EXTS:
        a = a[..., :3]  # RGBA PNG: drop alpha as in training
    if a.ndim == 3 and pre.fmt == "tiff" and a.shape[2] > pre.in_chans:
        idx = [int(str(c).removeprefix("ch")) for c in pre.channels]
        if max(idx) < a.shape[2]:
            a = a[..., idx]
    return a


def check_table(table, pre) -> None:
    """Check a DataTable against the run: channel count, hpa channel order, label schema."""
    if table.n_channels != pre.in_chans:
        raise InputError(fmt_problem(f"{table.images} ({table.fmt}, channels "
                                     f"{', '.join(map(str, table.channels))})",
                                     expected=f"{pre.in_chans} channels "
                                              f"({', '.join(map(str, pre.channels))}) like the run",
                                     got=f"{table.n_channels}",
                                     fix="pass --channels in the run's order"))
    if table.fmt == pre.fmt == "hpa-channels" and tuple(table.channels) != tuple(pre.channels):
        raise InputError(fmt_problem("--channels", expected=f"{','.join(pre.channels)} (the run's "
                                     "channels, in its order)", got=",".join(table.channels),
                                     fix=f"pass --channels {','.join(pre.channels)}"))
    if table.labels is not None and tuple(table.schema.classes) != tuple(pre.classes):
        raise InputError(fmt_problem(f"label schema {table.schema.name!r} of {table.csv_path or table.images}",
                                     expected=f"the run's schema {pre.schema.name!r} "
                                              f"({len(pre.classes)} classes)",
                                     got=f"{len(table.schema.classes)} classes",
                                     fix=f"pass --schema {pre.schema.name} (or the run's schema file)"))


def find_missing(table, *, on_error: str) -> tuple[set, list]:
    """Rows whose image files are missing: ``(row indices, [(id, message)])``.

    With ``on_error='raise'`` the first missing row raises (naming how many more there are).
    """
    missing = [i for i in range(len(table)) if not all(Path(f).is_file() for f in table.files(i))]
    if missing and on_error == "raise":
        i = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{table.where(i)}: image file missing: {table.files(i)[0]}{more}. "
                         "Fix: check --images and the ids, or pass --skip-bad")
    return set(missing), [(table.ids[i], f"{table.where(i)}: image file missing") for i in missing]


def load_chunk(table, start: int, size: int, bad: set, on_error: str, prepare):
    """Decode rows ``start .. start+size`` of ``table`` (skipping ``bad``) with ``prepare``.

    Returns ``(kept row indices, uint8 batch or None, [(id, message)] for unreadable rows)``;
    with ``on_error='raise'`` an unreadable row raises instead.
    """
    from protloc.io.images import read_image

    imgs, keep, errs = [], [], []
    for i in range(start, min(start + size, len(table))):
        if i in bad:
            continue
        try:
            a = read_image(table.images, table.ids[i], fmt=table.fmt, channels=table.channels)
            imgs.append(prepare(a, f"{table.where(i)} ({table.files(i)[0]})"))
            keep.append(i)
        except InputError as e:
            if on_error == "raise":
                raise
            errs.append((table.ids[i], f"{table.where(i)}: {e}"))
    return keep, (np.stack(imgs) if imgs else None), errs


def read_run_thresholds(run, pre):
    """(thresholds or None, at_least_one) from RUN/thresholds.json, checked against the schema."""
    if not run.thresholds_json.is_file():
        return None, False
    try:
        d = json.loads(run.thresholds_json.read_text())
    except ValueError as e:
        raise RunFolderError(f"{run.thresholds_json}: malformed ({e}). Fix: rerun `protloc thresholds "
                             f"{run.root}`") from None
    classes = d.get("classes")
    if classes and list(classes) != list(pre.classes):
        raise RunFolderError(fmt_problem(f"{run.thresholds_json}", expected=f"classes {list(pre.classes)}",
                                         got=f"{classes}", fix=f"rerun `protloc thresholds {run.root}`"))
    thr = check_thresholds(d.get("thresholds", []), len(pre.classes), where=str(run.thresholds_json))
    return thr, bool(d.get("at_least_one", False))
