"""Label schemas: ordered class names, parsing/formatting of label strings, remapping.

Built-ins: ``ghent10`` (the 10 classes of the reference task, default) and ``hpa28`` (the 2018
Human Protein Atlas competition). A user schema is a YAML/JSON file holding an ordered list of
class names (``["Nucleus", "Cytosol", ...]``) or ``{"name": ..., "classes": [...]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, fmt_problem

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
    def from_dict(cls, d: dict) -> "LabelSchema":
        return cls(name=str(d["name"]), classes=tuple(d["classes"]))


BUILTIN = {"ghent10": LabelSchema("ghent10", GHENT10), "hpa28": LabelSchema("hpa28", HPA28)}


def check_label_string(text, n_classes: int, *, where: str = "label") -> list[int]:
    """Validate one label cell and return sorted unique ids.

    Raises
    ------
    InputError
        On empty labels, non-integer tokens or ids outside ``0..n_classes-1``.

    Examples
    --------
    >>> check_label_string("4 1 4", 10)
    [1, 4]
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        text = ""
    s = str(text).strip()
    if not s:
        raise InputError(fmt_problem(where, expected="at least one class id", got="an empty label",
                                     fix="give one or more space-separated class ids, or drop the row"))
    ids = []
    for tok in s.replace(",", " ").replace(";", " ").split():
        if not tok.isdigit():
            raise InputError(fmt_problem(where, expected=f"integer class ids 0-{n_classes - 1}",
                                         got=repr(tok), fix="use integer ids separated by spaces"))
        v = int(tok)
        if not 0 <= v < n_classes:
            raise InputError(fmt_problem(where, expected=f"class ids 0-{n_classes - 1}", got=str(v),
                                         fix="check the label schema (--schema) or the id"))
        ids.append(v)
    return sorted(set(ids))


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
    if not path.is_file():
        raise InputError(fmt_problem("--schema", expected="'ghent10', 'hpa28' or a YAML/JSON file",
                                     got=repr(key), fix="pass a built-in name or an existing file"))
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is a user error here
        raise InputError(f"schema file {path}: cannot parse ({e}). Fix: write a YAML/JSON list of "
                         "class names") from None
    if isinstance(data, dict):
        name, classes = data.get("name", path.stem), data.get("classes")
    else:
        name, classes = path.stem, data
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(fmt_problem(f"schema file {path}", expected="a non-empty list of class names",
                                     got=type(classes).__name__, fix="write e.g. [Nucleus, Cytosol]"))
    if len(set(classes)) != len(classes):
        raise InputError(f"schema file {path}: class names must be unique. Fix: remove duplicates")
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
