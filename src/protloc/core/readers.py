"""The checked readers: every CSV, JSON and YAML file protloc reads goes through here.

Label CSVs, ``score``'s truth and prediction files, schema files, config YAML and every run-folder
file are read by these functions, so a bad file always gives one clear
:class:`~protloc.core.errors.InputError` (or the ``error`` class the caller passes, e.g.
:class:`~protloc.core.errors.RunFolderError`) naming the file, the line where it can, and the
fix: missing, a folder or a named pipe, empty, binary (NUL bytes), not UTF-8, not valid JSON/YAML,
the wrong JSON type, a quoted CSV field that is never closed, a row with more cells than the
header. CSV records keep their real line numbers, also when a quoted field spans lines.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from protloc.core.errors import InputError
from protloc.core.paths import check_input_file

__all__ = ["read_text", "read_json", "read_yaml", "read_csv_rows", "read_csv_frame", "CsvRows"]

#: the separators a label CSV may use (the most frequent one on the header line wins)
SEPARATORS = (",", ";", "\t", "|")


def _fail(error, path, problem: str, fix: str):
    return error(f"{path}: {problem}", fix=fix)


def read_text(path, *, what: str = "file", flag: str = "the", fix: str = "check the file",
              error=InputError, allow_empty: bool = False, empty_fix: str | None = None) -> str:
    """The text of a UTF-8 file (BOM removed), checked: an existing regular file, not binary,
    not empty (unless ``allow_empty``).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.csv")
    >>> _ = open(p, "wb").write(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00")
    >>> read_text(p, what="CSV", fix="pass the CSV")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: .../x.csv: a binary file (NUL bytes), not a text CSV. Fix: pass the CSV
    """
    try:
        p = check_input_file(path, flag=flag, what=what)
    except InputError as e:
        raise error(e.what, expected=e.expected, got=e.got, fix=e.fix) from None
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise _fail(error, p, f"cannot read it ({e.strerror or type(e).__name__})", fix) from None
    if b"\x00" in raw:
        raise _fail(error, p, f"a binary file (NUL bytes), not a text {what}", fix)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise _fail(error, f"{p} line {line}", "not a UTF-8 text file", f"save the {what} as UTF-8") from None
    if not allow_empty and not text.strip():
        raise _fail(error, p, f"the {what} is empty", empty_fix or fix)
    return text


def _check_kind(obj, kind, error, path, what: str, fix: str, fmt: str):
    if kind is None or isinstance(obj, kind):
        return obj
    names = {dict: "an object" if fmt == "JSON" else "a mapping", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    want = " or ".join(names.get(k, k.__name__) for k in kinds)
    got = "nothing (null)" if obj is None else f"a {type(obj).__name__}"
    raise error(str(path), expected=f"a {fmt} file holding {want} ({what})", got=got, fix=fix)


def read_json(path, *, what: str = "JSON file", flag: str = "the", fix: str = "check the file",
              error=InputError, kind=dict):
    """Parse a JSON file (checked like :func:`read_text`); ``kind``: the required top-level type
    (``dict``, ``list``, a tuple of types, or None for any).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.json")
    >>> _ = open(p, "w").write("[0.5, 0.5]")
    >>> read_json(p, what="thresholds", fix="rerun protloc thresholds")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: .../t.json: expected a JSON file holding an object (thresholds), got a list. Fix: rerun protloc thresholds.
    """
    text = read_text(path, what=what, flag=flag, fix=fix, error=error)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(error, path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", fix) from None
    except (ValueError, RecursionError) as e:
        raise _fail(error, path, f"not valid JSON ({type(e).__name__})", fix) from None
    return _check_kind(obj, kind, error, path, what, fix, "JSON")


def read_yaml(path, *, what: str = "YAML file", flag: str = "the", fix: str = "check the file",
              error=InputError, kind=dict, allow_empty: bool = False):
    """Parse a YAML file with ``yaml.safe_load`` (checked like :func:`read_text`).

    An empty file is ``{}`` when ``allow_empty``; ``kind`` as in :func:`read_json`.
    """
    import yaml

    text = read_text(path, what=what, flag=flag, fix=fix, error=error, allow_empty=allow_empty)
    try:
        obj = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = f" at line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        raise _fail(error, path, f"not valid YAML ({e.problem or 'syntax error'}{mark})", fix) from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise _fail(error, path, f"not valid YAML ({type(e).__name__})", fix) from None
    if obj is None and allow_empty:
        obj = {} if kind is dict else obj
    return _check_kind(obj, kind, error, path, what, fix, "YAML")


@dataclass
class CsvRows:
    """A parsed text CSV: the header, every non-blank record with its first line number, and the
    separator. Cells are stripped; records shorter than the header are padded with ''.

    ``ragged`` lists ``(line, n_cells)`` of records with more non-empty cells than the header
    (never dropped silently: readers refuse or report them).
    """

    path: Path
    header: list
    header_line: int
    rows: list = field(default_factory=list)   # (line, cells)
    sep: str = ","
    ragged: list = field(default_factory=list)  # (line, n_cells)


def _sniff_sep(text: str) -> str:
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    counts = {sep: first.count(sep) for sep in SEPARATORS}
    sep = max(counts, key=counts.get)
    return sep if counts[sep] > 0 else ","


def _records(text: str, sep: str, *, strict: bool):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=strict)
    prev = 0
    for rec in reader:
        yield prev + 1, rec
        prev = reader.line_num


def read_csv_rows(path, *, what: str = "CSV", flag: str = "--csv", fix: str | None = None,
                  error=InputError, empty_fix: str = "write a header (Image,Label) and rows") -> CsvRows:
    """Read a text CSV (``,``/``;``/tab/``|`` separated, BOM, blank lines, quoted fields that span
    lines) with real line numbers.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(p, "w").write('Image,Label\\n\\n1,"2\\n3"\\n4,5\\n')
    >>> r = read_csv_rows(p)
    >>> r.header, r.rows
    (['Image', 'Label'], [(3, ['1', '2\\n3']), (5, ['4', '5'])])
    """
    fix = fix or "save it as a plain-text CSV (UTF-8) with a header line"
    text = read_text(path, what=what, flag=flag, fix=fix, error=error, empty_fix=empty_fix)
    p = Path(path)
    sep = _sniff_sep(text)
    try:
        parsed = list(_records(text, sep, strict=True))
    except csv.Error as e:
        if "unexpected end of data" in str(e) or "field larger" in str(e):
            start = _open_quote_line(text, sep)
            raise _fail(error, f"{p} line {start}", "a quoted field (\") is never closed",
                        "close the quote or remove it") from None
        try:  # stray quotes inside a field ('a"b', '"b" x'): read them as text, as spreadsheets do
            parsed = list(_records(text, sep, strict=False))
        except csv.Error as e2:
            raise _fail(error, p, f"not a readable CSV ({e2})", fix) from None
    parsed = [(ln, rec) for ln, rec in parsed if any(c.strip() for c in rec)]
    if not parsed:
        raise _fail(error, p, f"the {what} is empty", empty_fix)
    header_line, header = parsed[0][0], [c.strip() for c in parsed[0][1]]
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise error(f"{p} line {header_line}", expected="unique column names", got=f"{dup[0]!r} twice",
                    fix="rename or remove the repeated column")
    rows, ragged = [], []
    for ln, rec in parsed[1:]:
        cells = [c.strip() for c in rec]
        if any(cells[len(header):]):
            ragged.append((ln, len(cells)))
        rows.append((ln, cells[:len(header)] + [""] * (len(header) - len(cells))))
    return CsvRows(p, header, header_line, rows, sep, ragged)


def _open_quote_line(text: str, sep: str) -> int:
    """The line where an unclosed quote starts (the first record a non-strict reader runs to EOF)."""
    last = 1
    try:
        for ln, _ in _records(text, sep, strict=False):
            last = ln
    except csv.Error:
        pass
    return last


def read_csv_frame(path, *, what: str = "CSV", fix: str = "check the file", error=InputError,
                   columns=(), columns_text: str | None = None, dtype=None):
    """A machine-written CSV (a run folder's oof.csv, splits.csv, metrics.csv) as a DataFrame:
    checked like :func:`read_text`, parsed by pandas, with the required ``columns`` (named
    ``columns_text`` in the message when given).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "splits.csv")
    >>> _ = open(p, "w").write("Image,fold\\n1,0\\n")
    >>> read_csv_frame(p, columns=("Image", "fold"), dtype={"Image": str})["Image"].tolist()
    ['1']
    >>> read_csv_frame(p, columns=("Image", "Label"), fix="re-train")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: .../splits.csv: expected columns Image, Label, got no column 'Label'. Fix: re-train.
    """
    import pandas as pd

    text = read_text(path, what=what, fix=fix, error=error)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=dtype)
    except (ValueError, pd.errors.ParserError, csv.Error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(error, path, f"not a readable CSV ({first})", fix) from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise error(str(path), expected=f"columns {columns_text or ', '.join(columns)}",
                    got=f"no column {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                    fix=fix)
    return df
