"""Data tables: which images exist, where their files are, and their labels.

A :class:`DataTable` is what every data-taking command works from. It is built from
``--csv FILE --images DIR`` (or a dataset folder holding ``train.csv`` + ``train/``), reads the
CSV robustly (BOM, ``;``/tab separators, blank lines, configurable column names) and never
drops a row silently: problems are returned or raised with the row number and a fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protloc.core.errors import InputError
from protloc.core.paths import check_image_id, check_input_dir
from protloc.core.readers import read_csv_rows
from protloc.io.images import FORMATS, HPA_CHANNELS, detect_format, hpa_channel_path, image_path
from protloc.core.schema import LabelSchema, get_schema, remap_hpa28_to_ghent10

if TYPE_CHECKING:  # pandas is imported where a DataFrame is built (0.3 s: not at predict start-up)
    import pandas as pd

ID_COLUMNS = ("Image", "Id", "ID", "id", "image", "image_id")
LABEL_COLUMNS = ("Label", "Target", "Labels", "label", "target", "labels")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class DataTable:
    """Ids, image files and (optional) labels of one dataset.

    Attributes
    ----------
    ids : list of str
        Image ids in CSV order (as written in the CSV, e.g. ``"12874"``).
    images : Path
        The image folder.
    fmt : str
        'rgb', 'hpa-channels' or 'tiff'.
    channels : tuple
        HPA channel names or TIFF channel indices that are stacked (rgb: red, green, blue).
    labels : list of list of int, or None
        Sorted class ids per image; None for an unlabeled set.
    schema : LabelSchema
    csv_rows : list of int
        1-based line number in the CSV for each id (for messages), header = line 1.
    axes : str or None
        The axes of TIFFs that do not declare theirs (``--axes CYX``), for every reader.
    """

    ids: list[str]
    images: Path
    fmt: str
    channels: tuple
    schema: LabelSchema
    labels: list[list[int]] | None = None
    csv_path: Path | None = None
    csv_rows: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    axes: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def y(self) -> np.ndarray:
        """(N, C) uint8 multi-hot label matrix."""
        if self.labels is None:
            raise InputError("this dataset has no labels", fix="pass a CSV with a label column")
        return self.schema.to_multihot(self.labels)

    def files(self, i: int) -> list[Path]:
        """The file(s) that hold image ``i`` (existing or expected)."""
        iid = self.ids[i]
        if self.fmt == "hpa-channels":
            return [hpa_channel_path(self.images, iid, c) or self.images / f"{iid}_{c}.png"
                    for c in self.channels]
        return [image_path(self.images, iid, self.fmt) or self.images / f"{iid}.png"]

    def where(self, i: int) -> str:
        """'train.csv line 12 (id 12874)' style locator for messages."""
        if self.csv_path is not None and self.csv_rows:
            return f"{self.csv_path.name} line {self.csv_rows[i]} (id {self.ids[i]})"
        return f"image {self.ids[i]}"

    def subset(self, idx) -> "DataTable":
        idx = list(np.asarray(idx, dtype=int))
        return DataTable(
            ids=[self.ids[i] for i in idx], images=self.images, fmt=self.fmt, channels=self.channels,
            schema=self.schema, labels=None if self.labels is None else [self.labels[i] for i in idx],
            csv_path=self.csv_path, csv_rows=[self.csv_rows[i] for i in idx] if self.csv_rows else [],
            axes=self.axes,
        )

    def label_strings(self) -> list[str]:
        return [self.schema.format(ls) for ls in (self.labels or [])]


def _pick(columns, wanted: str | None, candidates, what: str, path: Path, *, required: bool) -> str | None:
    if wanted:
        if wanted in columns:
            return wanted
        raise InputError(f"{path}", expected=f"a column named {wanted!r} ({what})",
                         got=f"columns {list(columns)}", fix=f"pass the right --{what}-col")
    for c in candidates:
        if c in columns:
            return c
    if required:
        one = len(columns) == 1 and any(ch in columns[0] for ch in " :")
        fix = ("separate the columns with commas (or ; or tabs)" if one else
               f"rename the column or pass --{what}-col NAME")
        raise InputError(f"{path}", expected=f"an {what} column ({'/'.join(candidates[:2])})",
                         got=f"columns {list(columns)}", fix=fix)
    return None


class CsvColumns:
    """A label/id CSV as columns of stripped strings (:func:`read_csv_columns`): ``columns``
    (name -> list of cells), ``lines`` (each record's first line in the file), ``header``,
    ``sep`` and ``ragged`` (``(line, cells)`` of records with more cells than the header)."""

    def __init__(self, header, records, lines, *, sep: str, ragged):
        self.header, self.sep, self.ragged = list(header), sep, list(ragged)
        self.lines = list(lines)
        self.columns = {c: [r[j] for r in records] for j, c in enumerate(self.header)}  # rows come padded

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, name: str) -> list[str]:
        return self.columns[name]


def read_csv_columns(path: str | Path, *, id_col: str | None = None, label_col: str | None = None,
                     flag: str = "--csv", label_candidates=LABEL_COLUMNS, label_what: str = "label",
                     ) -> tuple[CsvColumns, str, str | None]:
    """:func:`read_csv_table` without pandas: ``(CsvColumns, id_col, label_col_or_None)``
    (``protloc predict`` reads its id list this way: importing pandas took 0.3 s of its start)."""
    rows = read_csv_rows(path, flag=flag)
    path, header = rows.path, rows.header
    id_name = _pick(header, id_col, ID_COLUMNS, "id", path, required=True)
    lab_name = _pick(header, label_col, label_candidates, label_what, path, required=False)
    cols = CsvColumns(header, [cells for _, cells in rows.rows], [ln for ln, _ in rows.rows], sep=rows.sep,
                      ragged=rows.ragged)
    return cols, id_name, lab_name


def read_csv_table(path: str | Path, *, id_col: str | None = None, label_col: str | None = None,
                   flag: str = "--csv", label_candidates=LABEL_COLUMNS, label_what: str = "label",
                   ) -> tuple[pd.DataFrame, str, str | None]:
    """Read a label/id CSV robustly. Returns ``(df, id_col, label_col_or_None)``.

    Read by :func:`protloc.core.readers.read_csv_rows` (binary, empty, not UTF-8 and unclosed
    quotes refused with the file and line; quoted fields may span lines). ``df`` keeps every
    non-blank record as stripped strings and gains a ``_line`` column (the record's first line
    in the file, header = its own line). ``label_candidates`` / ``label_what``: the label column
    to look for (``score --pred`` looks for Predicted first). Raises :class:`InputError` for
    unreadable files or missing columns.
    """
    import pandas as pd

    cols, id_name, lab_name = read_csv_columns(path, id_col=id_col, label_col=label_col, flag=flag,
                                               label_candidates=label_candidates, label_what=label_what)
    df = pd.DataFrame({c: pd.Series(v, dtype=str) for c, v in cols.columns.items()})
    df["_line"] = cols.lines
    #: rows with more non-empty cells than the header (never dropped silently: see ragged_problem)
    df.attrs["ragged"] = cols.ragged
    df.attrs["header"] = cols.header
    df.attrs["sep"] = cols.sep
    return df, id_name, lab_name


def ragged_problem(df, path: Path) -> list[tuple[int, InputError]]:
    """One error per row of :func:`read_csv_table` (or :func:`read_csv_columns`) that had more
    cells than the header.

    A common cause is class ids separated by the column separator (``1,4`` instead of ``1 4``).
    """
    if isinstance(df, CsvColumns):
        header, sep, ragged = df.header, df.sep, df.ragged
    else:
        header, sep, ragged = df.attrs.get("header", []), df.attrs.get("sep", ","), df.attrs.get("ragged", [])
    return [(ln, InputError(f"{Path(path).name} line {ln}", expected=f"{len(header)} cells ({sep.join(header)})",
                            got=f"{n}", fix="separate class ids with spaces (1 4), not the column separator, "
                                            "or quote the value"))
            for ln, n in ragged]


def resolve_paths(csv_path=None, images=None, data=None, *, split: str = "train"):
    """Resolve ``--data DIR`` (holding ``<split>.csv`` + ``<split>/``) into (csv, images)."""
    if data is not None:
        d = check_input_dir(data, flag="--data", what="dataset folder",
                            fix=f"pass a folder holding {split}.csv and {split}/")
        csv_path = csv_path or (d / f"{split}.csv" if (d / f"{split}.csv").is_file() else None)
        images = images or (d / split if (d / split).is_dir() else d)
    if images is None:
        raise InputError("no image folder given", fix="pass --images DIR (or --data DIR)")
    images = check_input_dir(images, flag="--images", what="image folder")
    return (Path(csv_path) if csv_path else None), images


def _ids_from_folder(images: Path) -> list[str]:
    ids = set()
    for p in sorted(images.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        stem = p.stem
        for ch in HPA_CHANNELS:
            if stem.endswith("_" + ch):
                stem = stem[: -len(ch) - 1]
                break
        ids.add(stem)
    return sorted(ids, key=lambda s: (len(s), s) if s.isdigit() else (0, s))


def load_table(csv_path=None, images=None, *, data=None, split: str = "train", fmt: str = "auto",
               channels=None, schema="ghent10", id_col=None, label_col=None, labels: bool | None = None,
               from_schema: str | None = None, strict: bool = True, axes: str | None = None) -> DataTable:
    """Build a :class:`DataTable` from a CSV and an image folder.

    Parameters
    ----------
    csv_path, images : path
        The CSV (ids, optional labels) and the image folder. With no CSV, every image in the
        folder is an unlabeled item.
    data : path, optional
        Dataset folder shortcut: ``<data>/<split>.csv`` and ``<data>/<split>/``.
    fmt : {'auto', 'rgb', 'hpa-channels', 'tiff'}
    channels : sequence, optional
        HPA channel names (default red, green, blue; ``all`` = the four) or TIFF indices.
    schema : str or LabelSchema
        Label schema of the model; ``from_schema='hpa28'`` maps HPA-2018 labels into it.
    labels : bool, optional
        Force reading labels (True) or ignoring them (False); default: if the column exists.
    strict : bool
        Raise on the first bad label/duplicate id (True), or record them in ``notes``.
    axes : str, optional
        Axes of TIFFs that do not declare theirs (``CYX``...), see :mod:`protloc.io.images`.

    Examples
    --------
    >>> t = load_table("train.csv", "train/")  # doctest: +SKIP
    >>> len(t), t.fmt, t.y().shape  # doctest: +SKIP
    (15389, 'rgb', (15389, 10))
    """
    csv_path, images = resolve_paths(csv_path, images, data, split=split)
    schema = get_schema(schema)
    label_schema = get_schema(from_schema) if from_schema else schema
    notes: list[str] = []
    if csv_path is not None:
        df, id_name, lab_name = read_csv_columns(csv_path, id_col=id_col, label_col=label_col)
        if labels is True and lab_name is None:
            raise InputError(str(csv_path), expected="a label column (Label/Target)",
                             got=f"columns {df.header}",
                             fix="add labels or pass --label-col")
        if labels is False:
            lab_name = None
        for _, err in ragged_problem(df, csv_path)[:1]:
            raise err
        ids = [s.strip() for s in df[id_name]]
        rows = df.lines
        for i, (iid, ln) in enumerate(zip(ids, rows)):
            if not iid:
                raise InputError(f"{csv_path.name} line {ln}: empty id", fix="fill in the id or delete the row")
            check_image_id(iid, where=f"{csv_path.name} line {ln}")
        seen: dict[str, int] = {}
        for iid, ln in zip(ids, rows):
            if iid in seen:
                err = InputError(f"{csv_path.name} line {ln}: duplicate id {iid!r} (first on line {seen[iid]})",
                                 fix="keep one row per image")
                if strict:
                    raise err
                notes.append(str(err))
            seen.setdefault(iid, ln)
        lab = None
        if lab_name is not None:
            lab = [label_schema.parse(t, where=f"{csv_path.name} line {ln} (id {iid})")
                   for t, ln, iid in zip(df[lab_name], rows, ids)]
            if from_schema == "hpa28" and schema.name == "ghent10":
                mapped, keep = remap_hpa28_to_ghent10(lab)
                dropped = [ln for ln, k in zip(rows, keep) if not k]
                if dropped:
                    shown = ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else "")
                    notes.append(f"dropped {len(dropped)} of {len(keep)} images with no label in {schema.name} "
                                 f"(their hpa28 labels have no {schema.name} class: {csv_path.name} "
                                 f"line{'s' if len(dropped) > 1 else ''} {shown})")
                ids = [i for i, k in zip(ids, keep) if k]
                rows = [r for r, k in zip(rows, keep) if k]
                lab = mapped
    else:
        ids, rows, lab = _ids_from_folder(images), [], None
        if not ids:
            raise InputError(f"{images}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})",
                             fix="check the --images folder")
    if not ids:
        raise InputError(f"{csv_path}: no rows", fix="add at least one image row")
    fmt, channels = _resolve_format(images, ids, fmt, channels)
    from protloc.core.preprocessing import check_axes

    return DataTable(ids=ids, images=images, fmt=fmt, channels=channels, schema=schema, labels=lab,
                     csv_path=csv_path, csv_rows=rows, notes=notes, axes=check_axes(axes))


def _resolve_format(images: Path, ids: list[str], fmt: str, channels) -> tuple[str, tuple]:
    """Detect ``fmt`` when 'auto', check it, and normalise ``channels`` for it."""
    if fmt == "auto":
        fmt = _detect_common_format(images, ids)
    if fmt not in FORMATS:
        raise InputError("--format", expected="auto, rgb, hpa-channels or tiff",
                         got=repr(fmt), fix="pick a supported format")
    return fmt, normalize_channels(fmt, channels)


def _detect_common_format(images: Path, ids: list[str]) -> str:
    # Look at a few ids; the first one that resolves decides (validate reports missing files).
    for iid in ids[:50]:
        try:
            return detect_format(images, iid)
        except InputError:
            continue
    raise InputError(f"{images}: none of the first {min(len(ids), 50)} ids has an image file "
                     f"(e.g. {ids[0]}.png or {ids[0]}_green.png)", fix="check --images and the CSV ids")


def normalize_channels(fmt: str, channels) -> tuple:
    """Validate and normalise ``--channels`` for a format.

    Examples
    --------
    >>> normalize_channels("hpa-channels", "all")
    ('red', 'green', 'blue', 'yellow')
    >>> normalize_channels("rgb", None)
    ('red', 'green', 'blue')
    """
    if isinstance(channels, str):
        channels = HPA_CHANNELS if channels == "all" else tuple(c.strip() for c in channels.split(",") if c.strip())
    if fmt == "hpa-channels":
        channels = tuple(channels or HPA_CHANNELS[:3])
        bad = [c for c in channels if c not in HPA_CHANNELS]
        if bad:
            raise InputError("--channels", expected=f"names from {', '.join(HPA_CHANNELS)}",
                             got=", ".join(bad), fix="e.g. --channels red,green,blue,yellow")
        return channels
    if fmt == "rgb":
        if channels and tuple(channels) != ("red", "green", "blue"):
            raise InputError("--channels", expected="no channel choice for RGB files",
                             got=",".join(map(str, channels)), fix="drop --channels")
        return ("red", "green", "blue")
    try:
        return tuple(int(c) for c in channels) if channels else (0, 1, 2)
    except ValueError:
        raise InputError("--channels", expected="TIFF channel indices like 0,1,2",
                         got=",".join(map(str, channels)), fix="pass integer indices") from None


def lenient_table(csv_path=None, images=None, *, data=None, split: str = "train", fmt: str = "auto",
                  channels=None, schema="ghent10", id_col=None, label_col=None, from_schema=None,
                  ) -> tuple[DataTable, list[tuple[str, str, str, str, str]]]:
    """Like :func:`load_table` but collects every row problem instead of raising on the first.

    Returns ``(table, problems)``: the table holds the rows with a usable, first-seen id
    (labels are kept only if every row's label parsed); each problem is
    ``(severity, code, where, message, fix)``. Missing files/columns still raise.

    Examples
    --------
    >>> t, problems = lenient_table("train.csv", "train/")  # doctest: +SKIP
    >>> problems[0][1:3]  # doctest: +SKIP
    ('bad_label', 'train.csv line 7 (id 1006)')
    """
    csv_path, images = resolve_paths(csv_path, images, data, split=split)
    if csv_path is None:
        return load_table(None, images, fmt=fmt, channels=channels, schema=schema), []
    schema = get_schema(schema)
    label_schema = get_schema(from_schema) if from_schema else schema
    df, id_name, lab_name = read_csv_table(csv_path, id_col=id_col, label_col=label_col)
    problems = [("error", "extra_cells", e.what, e.detail, e.fix) for _, e in ragged_problem(df, csv_path)]
    ids, rows, labs, seen = [], [], [], {}
    name = csv_path.name
    if lab_name and not any(str(t).strip() for t in df[lab_name]):
        problems.append(("info", "unlabeled", name, f"the label column {lab_name!r} is empty; the set is "
                         "treated as unlabeled", "nothing to do for a test set; fill in labels to train on it"))
        lab_name = None
    texts = df[lab_name].tolist() if lab_name else [None] * len(df)
    for iid, ln, text in zip(df[id_name].tolist(), df["_line"].tolist(), texts):
        iid = iid.strip()
        where = f"{name} line {ln}" + (f" (id {iid})" if iid else "")
        if not iid:
            problems.append(("error", "empty_id", where, "empty id", "fill in the id or delete the row"))
            continue
        try:
            check_image_id(iid, where=where)
        except InputError as e:
            problems.append(("error", "bad_id", where, e.detail, e.fix))
            continue
        if iid in seen:
            problems.append(("error", "duplicate_id", where, f"duplicate id {iid!r} (first on line {seen[iid]})",
                             "keep one row per image"))
            continue
        seen[iid] = ln
        lab = []
        if lab_name:
            try:
                lab = label_schema.parse(text, where=where)
            except InputError as e:
                code = "bad_label" if str(text or "").strip() else "empty_label"
                problems.append(("error", code, where, e.detail, e.fix or "fix the label"))
                lab = None
            if lab and from_schema == "hpa28" and schema.name == "ghent10":
                mapped, keep = remap_hpa28_to_ghent10([lab])
                if not keep[0]:
                    problems.append(("info", "unmapped_label", where, f"labels {text!r} have no {schema.name} "
                                     "class; training drops this image", "nothing to do, or relabel it"))
                lab = mapped[0] if keep[0] else []
        ids.append(iid)
        rows.append(ln)
        labs.append(lab)
    if not ids:
        what = "no rows" if df.empty else "no rows with an id"
        raise InputError(f"{csv_path}: {what}", fix="add at least one image row")
    fmt, channels = _resolve_format(images, ids, fmt, channels)
    labels = labs if lab_name and all(lab is not None for lab in labs) else None
    table = DataTable(ids=ids, images=images, fmt=fmt, channels=channels,
                      schema=schema, labels=labels, csv_path=csv_path, csv_rows=rows)
    return table, problems
