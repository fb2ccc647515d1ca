"""Numbers for people: evaluate a run on a labeled set, and score a submission file.

:func:`evaluate_probs` and :func:`score_frames` are pure (arrays/DataFrames in, dict out);
:func:`print_summary` renders the per-class table with rich.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protloc.core.errors import InputError, fmt_problem
from protloc.core.metrics import classification_summary, macro_f1, per_class_f1

PRED_COLUMNS = ("Predicted", "Label", "Target", "Labels", "Prediction")


def evaluate_probs(y, probs, *, thresholds=0.5, at_least_one: bool = False, classes=None) -> dict:
    """Classification summary of probabilities labelled the way ``protloc predict`` labels them:
    ``prob >= threshold`` per class, and with ``at_least_one`` an image where no class passes
    gets its most probable class.

    Examples
    --------
    >>> y, p = np.array([[1, 0], [0, 1]]), np.array([[0.9, 0.2], [0.3, 0.4]])
    >>> s = evaluate_probs(y, p, classes=["a", "b"])
    >>> s["macro_f1"], s["thresholds"]
    (0.5, [0.5, 0.5])
    >>> evaluate_probs(y, p, at_least_one=True, classes=["a", "b"])["macro_f1"]
    1.0
    """
    from protloc.core.thresholds import apply_thresholds

    probs = np.asarray(probs, dtype=np.float32)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
    y_pred = apply_thresholds(probs, t, at_least_one=at_least_one)
    s = classification_summary(np.asarray(y), y_pred, probs, classes=classes)
    s["thresholds"] = [round(float(v), 6) for v in t]
    s["at_least_one"] = bool(at_least_one)
    return s


def _parse_pred(text, n_classes: int, where: str) -> list[int]:
    s = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text).strip()
    out = []
    for tok in s.replace(",", " ").replace(";", " ").split():
        if not tok.isdigit() or not 0 <= int(tok) < n_classes:
            raise InputError(fmt_problem(where, expected=f"class ids 0-{n_classes - 1} separated by spaces",
                                         got=repr(tok), fix="write predictions like '1 4' (empty = none)"))
        out.append(int(tok))
    return sorted(set(out))


def score_frames(truth: pd.DataFrame, pred: pd.DataFrame, *, schema, truth_name: str = "truth",
                 pred_name: str = "pred", id_col: str = "Image", truth_col: str = "Label",
                 pred_col: str = "Predicted") -> dict:
    """Score predictions like the competition: macro F1 over all classes, ids matched by ``id_col``.

    Classes absent from both truth and predictions count as F1 = 0 (scikit-learn's default);
    they are listed in ``empty_classes``. Missing, extra or duplicate ids are errors.

    Examples
    --------
    >>> from protloc.core.schema import get_schema
    >>> t = pd.DataFrame({"Image": ["1", "2"], "Label": ["0", "1"]})
    >>> p = pd.DataFrame({"Image": ["2", "1"], "Predicted": ["1", "0 1"]})
    >>> round(score_frames(t, p, schema=get_schema("ghent10"))["macro_f1"], 3)
    0.167
    """
    t_ids = truth[id_col].astype(str).str.strip()
    p_ids = pred[id_col].astype(str).str.strip()
    for ids, name in ((t_ids, truth_name), (p_ids, pred_name)):
        dup = ids[ids.duplicated()]
        if len(dup):
            raise InputError(fmt_problem(name, expected=f"one row per {id_col}", got=f"{len(dup)} duplicate ids "
                                         f"(e.g. {dup.iloc[0]})", fix="keep one row per image"))
    missing = sorted(set(t_ids) - set(p_ids))
    extra = sorted(set(p_ids) - set(t_ids))
    if missing:
        raise InputError(fmt_problem(pred_name, expected=f"a prediction for every {id_col} of {truth_name}",
                                     got=f"{len(missing)} missing (e.g. {', '.join(missing[:3])})",
                                     fix="predict every test image (an empty label means no class)"))
    if extra:
        raise InputError(fmt_problem(pred_name, expected=f"only {id_col}s that are in {truth_name}",
                                     got=f"{len(extra)} unknown ids (e.g. {', '.join(extra[:3])})",
                                     fix="score against the matching truth file or drop those rows"))
    c = schema.n_classes
    y_true = schema.to_multihot([schema.parse(v, where=f"{truth_name} id {i}")
                                 for i, v in zip(t_ids, truth[truth_col])])
    by_id = dict(zip(p_ids, pred[pred_col]))
    y_pred = schema.to_multihot([_parse_pred(by_id[i], c, f"{pred_name} id {i}") for i in t_ids])
    s = classification_summary(y_true, y_pred, classes=schema.classes)
    s["macro_f1"] = macro_f1(y_true, y_pred, zero_division="zero")
    s["macro_f1_skip_empty"] = macro_f1(y_true, y_pred, zero_division="skip")
    s["per_class_f1"] = [None if not np.isfinite(v) else float(v) for v in per_class_f1(y_true, y_pred)]
    return s


def _pick_col(df: pd.DataFrame, wanted, candidates, path, what: str) -> str:
    if wanted:
        if wanted not in df.columns:
            raise InputError(fmt_problem(str(path), expected=f"a column {wanted!r}", got=f"columns {list(df.columns)}",
                                         fix=f"pass the right --{what}-col"))
        return wanted
    for c in candidates:
        if c in df.columns:
            return c
    raise InputError(fmt_problem(str(path), expected=f"a {what} column ({'/'.join(candidates[:3])})",
                                 got=f"columns {[c for c in df.columns if c != '_line']}",
                                 fix=f"rename the column or pass --{what}-col"))


def score_files(truth_csv, pred_csv, *, schema="ghent10", id_col=None, pred_col=None) -> dict:
    """Read the two CSVs (robustly, like every protloc CSV) and :func:`score_frames` them."""
    from protloc.core.schema import get_schema
    from protloc.data.table import ID_COLUMNS, LABEL_COLUMNS, read_csv_table

    t, t_id, t_lab = read_csv_table(truth_csv, id_col=id_col, flag="--truth")
    if t_lab is None:
        raise InputError(fmt_problem(str(truth_csv), expected="a label column (Label/Target)",
                                     got=f"columns {[c for c in t.columns if c != '_line']}", fix="pass the truth CSV"))
    if not Path(pred_csv).is_file():
        raise InputError(f"{pred_csv}: prediction file not found. Fix: check the --pred path")
    p = pd.read_csv(pred_csv, dtype=str, keep_default_na=False, sep=None, engine="python")
    p.columns = [str(c).strip().lstrip("\ufeff") for c in p.columns]
    p_id = _pick_col(p, id_col, (t_id, *ID_COLUMNS), pred_csv, "id")
    p_col = _pick_col(p, pred_col, (*PRED_COLUMNS, *LABEL_COLUMNS), pred_csv, "pred")
    p = p.rename(columns={p_id: "Image", p_col: "Predicted"})
    t = t.rename(columns={t_id: "Image", t_lab: "Label"})
    return score_frames(t, p, schema=get_schema(schema), truth_name=Path(truth_csv).name,
                        pred_name=Path(pred_csv).name)


def print_summary(s: dict, *, title: str) -> None:
    """Per-class table + averages on stdout (rich)."""
    from rich.console import Console
    from rich.table import Table

    tab = Table(title=title)
    for col in ("class", "precision", "recall", "F1", "AP", "support", "predicted"):
        tab.add_column(col, justify="left" if col == "class" else "right")

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for pc in s["per_class"]:
        tab.add_row(f"{pc['id']} {pc['class']}", f(pc["precision"]), f(pc["recall"]), f(pc["f1"]), f(pc.get("ap")),
                    str(pc["support"]), str(pc["predicted"]))
    con = Console(width=110)
    con.print(tab)
    line = (f"macro F1 {s['macro_f1']:.4f}   micro F1 {s['micro_f1']:.4f}   samples F1 {s['samples_f1']:.4f}"
            + (f"   mAP {s['mAP']:.4f}" if s.get("mAP") is not None else "") + f"   images {s['n_images']}")
    con.print(line)
    if s.get("empty_classes"):
        con.print(f"classes with no positives in the truth: {', '.join(s['empty_classes'])}")
