"""Numbers for people: evaluate a run on a labeled set, and score a submission file.

:func:`evaluate_probs` and :func:`score_frames` are pure (arrays/DataFrames in, dict out);
:func:`print_summary` renders the per-class table with rich.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from protloc.core.errors import InputError
from protloc.core.schema import parse_class_ids
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
            raise InputError(name, expected=f"one row per {id_col}", got=f"{len(dup)} duplicate ids "
                             f"(e.g. {dup.iloc[0]})", fix="keep one row per image")
    missing = sorted(set(t_ids) - set(p_ids))
    extra = sorted(set(p_ids) - set(t_ids))
    if missing:
        raise InputError(pred_name, expected=f"a prediction for every {id_col} of {truth_name}",
                         got=f"{len(missing)} missing (e.g. {', '.join(missing[:3])})",
                         fix="predict every test image (an empty label means no class)")
    if extra:
        raise InputError(pred_name, expected=f"only {id_col}s that are in {truth_name}",
                         got=f"{len(extra)} unknown ids (e.g. {', '.join(extra[:3])})",
                         fix="score against the matching truth file or drop those rows")
    c = schema.n_classes

    def where(df, name):  # 'test.csv line 5 (id 34150)' when the reader kept line numbers
        lines = df["_line"].tolist() if "_line" in df.columns else [None] * len(df)
        return [f"{name} line {ln} (id {i})" if ln is not None else f"{name} id {i}"
                for i, ln in zip(df[id_col].astype(str).str.strip(), lines)]

    y_true = schema.to_multihot([parse_class_ids(v, c, where=w)
                                 for w, v in zip(where(truth, truth_name), truth[truth_col])])
    by_id = {i: (w, v) for i, w, v in zip(p_ids, where(pred, pred_name), pred[pred_col])}
    y_pred = schema.to_multihot([parse_class_ids(by_id[i][1], c, where=by_id[i][0], allow_empty=True)
                                 for i in t_ids])
    s = classification_summary(y_true, y_pred, classes=schema.classes)
    s["macro_f1"] = macro_f1(y_true, y_pred, zero_division="zero")
    s["macro_f1_skip_empty"] = macro_f1(y_true, y_pred, zero_division="skip")
    s["per_class_f1"] = [None if not np.isfinite(v) else float(v) for v in per_class_f1(y_true, y_pred)]
    return s


def score_files(truth_csv, pred_csv, *, schema="ghent10", id_col=None, pred_col=None) -> dict:
    """Read the two CSVs with protloc's checked CSV reader (like every protloc CSV: empty, binary,
    not UTF-8, unclosed quotes and rows with more cells than the header are refused with the
    line) and :func:`score_frames` them."""
    from protloc.core.schema import get_schema
    from protloc.data.table import LABEL_COLUMNS, ragged_problem, read_csv_table

    t, t_id, t_lab = read_csv_table(truth_csv, id_col=id_col, flag="--truth")
    if t_lab is None:
        raise InputError(str(truth_csv), expected="a label column (Label/Target)",
                         got=f"columns {[c for c in t.columns if c != '_line']}", fix="pass the truth CSV")
    p, p_id, p_col = read_csv_table(pred_csv, id_col=id_col, flag="--pred", label_col=pred_col,
                                    label_candidates=(*PRED_COLUMNS, *LABEL_COLUMNS), label_what="pred")
    if id_col is None and t_id in p.columns:  # the truth's id column name wins when both files have it
        p_id = t_id
    if p_col is None:
        raise InputError(str(pred_csv), expected=f"a prediction column ({'/'.join(PRED_COLUMNS[:3])})",
                         got=f"columns {[c for c in p.columns if c != '_line']}",
                         fix="rename the column or pass --pred-col")
    for df, path in ((t, truth_csv), (p, pred_csv)):
        for _, err in ragged_problem(df, Path(path))[:1]:  # '34150,1,4' is not the label '1'
            raise err
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
