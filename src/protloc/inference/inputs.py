"""Input side of :mod:`protloc.inference.predictor`: turning what the user passes into checked uint8 images.

Paths (PNG/JPEG/TIFF, or ``DIR/ID``), (H, W, C) arrays, one (N, H, W, C) array, or a
:class:`~protloc.data.table.DataTable` become ids plus items. Files are read the way the run
was trained by :func:`read_for_run` / :func:`read_table_row`: the raw pixels come from
:mod:`protloc.io.images`, then :meth:`protloc.core.preprocessing.Preprocessing.prepare` (the one
rule: channels, alpha, count check, intensity, size) makes the model input. A table is checked
against the run (channels, channel order, label schema) and streamed in chunks.

Examples
--------
>>> as_items(["a/cell1.png", np.zeros((4, 4, 3), np.uint8)])[0]
['cell1', '1']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, check_choice

__all__ = ["check_choice", "as_items", "read_for_run", "read_table_row", "run_channels", "check_table",
           "find_missing", "load_chunk"]


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
        raise InputError("images", expected="at least one image", got="none",
                         fix="pass file paths or arrays")
    return ids, seq


def _prepare_file(path: Path, pre, *, where: str, channels=None, on_resize=None, pixel_size=None,
                  info: dict | None = None) -> np.ndarray:
    from protloc.io import images as imageio

    tiff = imageio.sniff_format(path) == "TIFF" or path.suffix.lower() in imageio.TIFF_EXTS
    raw, meta = imageio.read_raw(path, axes=pre.reading.axes, z=pre.reading.z)
    return pre.prepare(raw, where=where, channels=channels, rgba=not tiff, on_resize=on_resize, meta=meta,
                       pixel_size=pixel_size, info=info)


def read_for_run(path, pre, *, channels=None, on_resize=None, pixel_size: float | None = None,
                 info: dict | None = None) -> np.ndarray:
    """Read one image the way the run with preprocessing ``pre`` was trained.

    ``path`` is an image file (PNG/JPEG/TIFF), or ``DIR/ID`` for an image id in a folder
    (``DIR/ID.png``, ``DIR/ID.tif``..., or the channel files ``DIR/ID_red.png``... of an
    ``hpa-channels`` run). ``channels``: TIFF channel indices the user chose (else the run's rule,
    :meth:`~protloc.core.preprocessing.Preprocessing.pick_channels`). ``pixel_size``: the image's
    pixel size in µm when the user gave one (``--pixel-size``; overrides the file's). The file's
    axes, Z projection, bits and pixel size are read with the run's
    :class:`~protloc.core.preprocessing.Reading`; ``info`` (a dict) receives what was done.
    Returns uint8 (size, size, in_chans), exactly what the model saw in training.
    """
    from protloc.io import images as imageio

    p = Path(path)
    if not p.is_file():
        if pre.fmt == "hpa-channels":
            raw, meta = imageio.read_hpa_raw(p.parent, p.name, channels=pre.channels, reading=pre.reading)
            return pre.prepare(raw, where=str(p), on_resize=on_resize, meta=meta, pixel_size=pixel_size, info=info)
        found = imageio.image_path(p.parent, p.name, "rgb")
        if found is None:
            raise imageio.ImageReadError(f"{p}: file not found (also looked for {p.name}.png, .jpg and .tif)",
                                         fix="check the path, or the --images folder and the id")
        p = found
    return _prepare_file(p, pre, where=str(p), channels=channels, on_resize=on_resize, pixel_size=pixel_size,
                         info=info)


def read_table_row(table, i: int, pre, *, channels_chosen: bool = True, on_resize=None,
                   pixel_size: float | None = None, info: dict | None = None) -> np.ndarray:
    """Read row ``i`` of a :class:`~protloc.data.table.DataTable` for the run ``pre`` (see
    :func:`read_for_run`). ``channels_chosen``: the table's TIFF channels were chosen by the user
    (else a wider TIFF follows the run's rule, and is refused by a run with fewer channels)."""
    from protloc.io import images as imageio

    where = f"{table.where(i)} ({table.files(i)[0]})"
    pre = pre.with_reading(axes=getattr(table, "axes", None))  # the user's --axes for undeclared TIFFs
    if table.fmt == "hpa-channels":
        raw, meta = imageio.read_hpa_raw(table.images, table.ids[i], channels=table.channels, reading=pre.reading)
        return pre.prepare(raw, where=where, on_resize=on_resize, meta=meta, pixel_size=pixel_size, info=info)
    p = imageio.image_path(table.images, table.ids[i], table.fmt)
    if p is None:
        raise imageio.ImageReadError(f"{table.where(i)}: image file missing: {table.files(i)[0]}",
                                     fix="check --images and the ids")
    chans = table.channels if (table.fmt == "tiff" and channels_chosen) else None
    return _prepare_file(p, pre, where=where, channels=chans, on_resize=on_resize, pixel_size=pixel_size,
                         info=info)


def run_channels(pre, fmt: str = "auto"):
    """The channels to read a data set of format ``fmt`` with when the user chose none: the
    run's own (HPA names, TIFF indices) when the data has the run's format, else None.

    Examples
    --------
    >>> from protloc.core.preprocessing import Preprocessing
    >>> from protloc.core.schema import LabelSchema
    >>> pre = Preprocessing("tiff", (0, 2), 8, (0, 0), (1, 1), LabelSchema("t", ("a",)))
    >>> run_channels(pre), run_channels(pre, "rgb")
    ((0, 2), None)
    """
    return pre.channels if pre.fmt != "rgb" and fmt in ("auto", pre.fmt) else None


def check_table(table, pre) -> None:
    """Check a DataTable against the run: channel count, hpa channel order, label schema."""
    if table.n_channels != pre.in_chans:
        raise InputError(f"{table.images} ({table.fmt}, channels "
                         f"{', '.join(map(str, table.channels))})",
                         expected=f"{pre.in_chans} channels "
                                  f"({', '.join(map(str, pre.channels))}) like the run",
                         got=f"{table.n_channels}",
                         fix="pass --channels in the run's order")
    if table.fmt == pre.fmt == "hpa-channels" and tuple(table.channels) != tuple(pre.channels):
        raise InputError("--channels", expected=f"{','.join(pre.channels)} (the run's "
                         "channels, in its order)", got=",".join(table.channels),
                         fix=f"pass --channels {','.join(pre.channels)}")
    if table.labels is not None and tuple(table.schema.classes) != tuple(pre.classes):
        raise InputError(f"label schema {table.schema.name!r} of {table.csv_path or table.images}",
                         expected=f"the run's schema {pre.schema.name!r} "
                                  f"({len(pre.classes)} classes)",
                         got=f"{len(table.schema.classes)} classes",
                         fix=f"pass --schema {pre.schema.name} (or the run's schema file)")


def find_missing(table, *, on_error: str) -> tuple[set, list]:
    """Rows whose image files are missing: ``(row indices, [(id, message)])``.

    With ``on_error='raise'`` the first missing row raises (naming how many more there are).
    """
    missing = [i for i in range(len(table)) if not all(Path(f).is_file() for f in table.files(i))]
    if missing and on_error == "raise":
        i = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{table.where(i)}: image file missing: {table.files(i)[0]}{more}",
                         fix="check --images and the ids, or pass --skip-bad")
    return set(missing), [(table.ids[i], f"{table.where(i)}: image file missing") for i in missing]


def load_chunk(table, start: int, size: int, bad: set, on_error: str, read):
    """Decode rows ``start .. start+size`` of ``table`` (skipping ``bad``) with ``read(table, i)``.

    Returns ``(kept row indices, uint8 batch or None, [(id, message)] for unreadable rows)``;
    with ``on_error='raise'`` an unreadable row raises instead.
    """
    imgs, keep, errs = [], [], []
    for i in range(start, min(start + size, len(table))):
        if i in bad:
            continue
        try:
            imgs.append(read(table, i))
            keep.append(i)
        except InputError as e:
            if on_error == "raise":
                raise
            errs.append((table.ids[i], f"{table.where(i)}: {e}"))
    return keep, (np.stack(imgs) if imgs else None), errs
