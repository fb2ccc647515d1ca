"""Label schemas: ordered class names, parsing/formatting of label strings, remapping.

Built-ins: ``ghent10`` (the 10 classes of the reference task, default) and ``hpa28`` (the 2018
Human Protein Atlas competition). A user schema is a YAML/JSON file holding an ordered list of
class names (``["Nucleus", "Cytosol", ...]``) or ``{"name": ..., "classes": [...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError
from protloc.core.paths import path_kind
from protloc.core.readers import read_json, read_yaml

GHENT10 = (
    "Mitochondria", "Nuclear bodies", "Nucleoli", "Golgi apparatus", "Nucleoplasm",
    "Nucleoli fibrillar center", "Cytosol", "Plasma membrane", "Centrosome", "Nuclear speckles",
)
HPA28 = (
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center",
    "Nuclear speckles", "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus",
    "Peroxisomes", "Endosomes", "Lysosomes", "Intermediate filaments", "Actin filaments",
    "Focal adhesion sites", "Microtubules", "Microtubule ends", "Cytokinetic bridge",
    "Mitotic spindle", "Microtubule organizing center", "Centrosome", "Lipid droplets",
    "Plasma membrane", "Cell junctions", "Mitochondria", "Aggresome", "Cytosol",
    "Cytoplasmic bodies", "Rods & rings",
)
#: reference (ghent10) id -> HPA-2018 id, from the data README.
GHENT10_TO_HPA28 = {0: 23, 1: 5, 2: 2, 3: 7, 4: 0, 5: 3, 6: 25, 7: 21, 8: 19, 9: 4}
HPA28_TO_GHENT10 = {v: k for k, v in GHENT10_TO_HPA28.items()}


@dataclass(frozen=True)
class LabelSchema:
    """An ordered set of class names; class id ``i`` is ``classes[i]``.

    Examples
    --------
    >>> s = get_schema("ghent10")
    >>> s.parse("4 1")
    [1, 4]
    >>> s.format([4, 1])
    '1 4'
    """

    name: str
    classes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def parse(self, text, *, where: str = "label") -> list[int]:
        """Parse a space-separated label string into sorted unique class ids."""
        return check_label_string(text, self.n_classes, where=where)

    def format(self, ids) -> str:
        """Format class ids as the competition's sorted, space-separated string."""
        return " ".join(str(int(i)) for i in sorted(set(int(i) for i in ids)))

    def to_multihot(self, label_lists) -> np.ndarray:
        """(N,) lists of ids -> (N, C) uint8 multi-hot matrix."""
        y = np.zeros((len(label_lists), self.n_classes), dtype=np.uint8)
        for i, ids in enumerate(label_lists):
            y[i, list(ids)] = 1
        return y

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "label schema") -> "LabelSchema":
        if not isinstance(d, dict):
            raise InputError(where, expected="an object with name and classes", got=type(d).__name__,
                             fix="write {name: ..., classes: [...]}")
        return _checked_schema(d.get("name", "custom"), d.get("classes"), where=where)


BUILTIN = {"ghent10": LabelSchema("ghent10", GHENT10), "hpa28": LabelSchema("hpa28", HPA28)}


def parse_class_ids(text, n_classes: int, *, where: str = "label", allow_empty: bool = False) -> list[int]:
    """The one parser of class-id strings (label CSVs, run files, ``score``'s truth and predictions):
    sorted unique ids from ``"4 1"`` (spaces, commas or semicolons between ids).

    An id is ASCII digits in ``0..n_classes-1``: Unicode digits (``²``, Arabic-Indic ``٣``) and
    numbers too long to be a class (5,000 digits) are refused with ``where`` (e.g. the CSV line)
    in the message, never converted. ``allow_empty``: an empty string is ``[]`` (a prediction of no
    class) instead of an error.

    Examples
    --------
    >>> parse_class_ids("4 1 4", 10)
    [1, 4]
    >>> parse_class_ids("", 10, allow_empty=True)
    []
    >>> parse_class_ids("1 \u00b2", 10, where="train.csv line 3")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: train.csv line 3: expected class ids 0-9 in ASCII digits, got '²'. Fix: retype the id with the digits 0-9.
    >>> parse_class_ids("9" * 5000, 10, where="line 2")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: line 2: expected class ids 0-9, got a 5000-digit number. Fix: check the label schema (--schema) or the id.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        text = ""
    s = str(text).strip()
    if not s:
        if allow_empty:
            return []
        raise InputError(where, expected="at least one class id", got="an empty label",
                         fix="give one or more space-separated class ids, or drop the row")
    ids = []
    width = len(str(max(n_classes - 1, 0)))
    for tok in s.replace(",", " ").replace(";", " ").split():
        if not (tok.isascii() and tok.isdigit()):
            shown = tok if len(tok) <= 20 else tok[:20] + "..."
            if any(c.isdigit() or c.isnumeric() for c in tok):  # '²', Arabic-Indic or full-width digits
                raise InputError(where, expected=f"class ids 0-{n_classes - 1} in ASCII digits", got=repr(shown),
                                 fix="retype the id with the digits 0-9")
            raise InputError(where, expected=f"integer class ids 0-{n_classes - 1}", got=repr(shown),
                             fix="use integer ids separated by spaces")
        digits = tok.lstrip("0") or "0"
        if len(digits) > width:  # never int() a huge number (Python refuses > 4300 digits)
            got = digits if len(digits) <= 20 else f"a {len(tok)}-digit number"
            raise InputError(where, expected=f"class ids 0-{n_classes - 1}", got=got,
                             fix="check the label schema (--schema) or the id")
        v = int(digits)
        if not 0 <= v < n_classes:
            raise InputError(where, expected=f"class ids 0-{n_classes - 1}", got=str(v),
                             fix="check the label schema (--schema) or the id")
        ids.append(v)
    return sorted(set(ids))


def check_label_string(text, n_classes: int, *, where: str = "label") -> list[int]:
    """Validate one label cell (at least one class) and return sorted unique ids
    (:func:`parse_class_ids`).

    Raises
    ------
    InputError
        On empty labels, non-integer tokens or ids outside ``0..n_classes-1``.

    Examples
    --------
    >>> check_label_string("4 1 4", 10)
    [1, 4]
    """
    return parse_class_ids(text, n_classes, where=where)


def get_schema(spec: str | Path | LabelSchema | None = None) -> LabelSchema:
    """Return a schema from a built-in name, a YAML/JSON file path, or a schema.

    Examples
    --------
    >>> get_schema("hpa28").n_classes
    28
    """
    if spec is None:
        return BUILTIN["ghent10"]
    if isinstance(spec, LabelSchema):
        return spec
    key = str(spec)
    if key in BUILTIN:
        return BUILTIN[key]
    path = Path(key)
    if path_kind(path) == "missing":
        raise InputError("--schema", expected="'ghent10', 'hpa28' or a YAML/JSON file", got=repr(key),
                         fix="pass a built-in name or an existing file")
    reader = read_json if path.suffix.lower() == ".json" else read_yaml
    data = reader(path, what="label schema", flag="--schema", kind=(dict, list),
                  fix="write a YAML/JSON list of class names, e.g. [Nucleus, Cytosol]")
    if isinstance(data, dict):
        name, classes = data.get("name", path.stem), data.get("classes")
    else:
        name, classes = path.stem, data
    return _checked_schema(name, classes, where=f"schema file {path}")


def _checked_schema(name, classes, *, where: str) -> "LabelSchema":
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        got = type(classes).__name__ if not isinstance(classes, list) else (
            "an empty list" if not classes else "a list with a non-text or empty name")
        raise InputError(where, expected="a non-empty list of class names", got=got,
                         fix="write e.g. [Nucleus, Cytosol]")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise InputError(where, expected="unique class names", got=f"{dup!r} twice", fix="remove duplicates")
    return LabelSchema(str(name), tuple(classes))


def remap_hpa28_to_ghent10(label_lists):
    """Map HPA-2018 label id lists to the 10-class schema.

    Returns ``(mapped, keep)`` where ``keep`` is a boolean mask of images that still have at
    least one label (the reference task dropped the others).

    Examples
    --------
    >>> remap_hpa28_to_ghent10([[16, 0], [7, 1, 2, 0], [1]])
    ([[4], [2, 3, 4]], [True, True, False])
    """
    mapped, keep = [], []
    for ids in label_lists:
        m = sorted({HPA28_TO_GHENT10[i] for i in ids if i in HPA28_TO_GHENT10})
        keep.append(bool(m))
        if m:
            mapped.append(m)
    return mapped, keep
