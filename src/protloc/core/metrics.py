"""Multi-label metrics on whole arrays (never averaged over batches).

Classes with no positives in the truth are handled explicitly: their F1 is undefined, they are
listed in ``empty_classes`` and left out of the macro average (``zero_division='skip'``), or
counted as 0 or 1 when asked, so a report never hides them.

:func:`epoch_metrics` is the set of validation numbers training logs per epoch (and writes to a
run's summary); its best-threshold macro F1 uses the exact per-class threshold search of
:mod:`protloc.core.threshold_search`.
"""

from __future__ import annotations

import numpy as np

from protloc.core.threshold_search import best_f1_thresholds


def _counts(y_true: np.ndarray, y_pred: np.ndarray):
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape")
    tp = (y_true & y_pred).sum(0).astype(np.float64)
    fp = (~y_true & y_pred).sum(0).astype(np.float64)
    fn = (y_true & ~y_pred).sum(0).astype(np.float64)
    return tp, fp, fn


def per_class_f1(y_true, y_pred) -> np.ndarray:
    """F1 per class; NaN where a class has no positives in truth and none predicted.

    Examples
    --------
    >>> per_class_f1([[1, 0], [0, 0]], [[1, 0], [1, 0]]).round(3).tolist()
    [0.667, nan]
    """
    tp, fp, fn = _counts(y_true, y_pred)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    return f1


def macro_f1(y_true, y_pred, *, zero_division: str = "skip") -> float:
    """Macro F1 as the competition scores it.

    ``zero_division``: what a class with no true and no predicted positives counts as:
    ``'skip'`` (leave out), ``'zero'`` or ``'one'``. A class with no true positives but some
    predicted ones always scores 0.

    Examples
    --------
    >>> macro_f1([[1, 0], [0, 1]], [[1, 0], [0, 0]])
    0.5
    """
    f1 = per_class_f1(y_true, y_pred)
    if zero_division == "zero":
        f1 = np.nan_to_num(f1, nan=0.0)
    elif zero_division == "one":
        f1 = np.nan_to_num(f1, nan=1.0)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else 0.0


def empty_classes(y_true) -> list[int]:
    """Class indices with no positive example in ``y_true``."""
    return [int(i) for i in np.flatnonzero(np.asarray(y_true).sum(0) == 0)]


def average_precision(y_true, probs) -> np.ndarray:
    """Average precision per class (NaN for classes without positives)."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        if y_true[:, c].any():
            out[c] = average_precision_score(y_true[:, c], probs[:, c])
    return out


def classification_summary(y_true, y_pred, probs=None, *, classes=None) -> dict:
    """Per-class precision/recall/F1/support plus macro/micro/samples F1 and mAP.

    Examples
    --------
    >>> s = classification_summary([[1, 0], [0, 1]], [[1, 0], [0, 0]], classes=["a", "b"])
    >>> s["macro_f1"], s["per_class"][0]["f1"]
    (0.5, 1.0)
    """
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp, fp, fn = _counts(y_true, y_pred)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
    f1 = per_class_f1(y_true, y_pred)
    ap = average_precision(y_true, probs) if probs is not None else np.full(len(f1), np.nan)
    classes = list(classes) if classes is not None else [str(i) for i in range(y_true.shape[1])]
    micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
    inter = (y_true & y_pred).sum(1)
    sden = y_true.sum(1) + y_pred.sum(1)
    samples = np.where(sden > 0, 2 * inter / np.maximum(sden, 1), 1.0)

    def num(v):
        return None if not np.isfinite(v) else round(float(v), 6)

    return {
        "macro_f1": macro_f1(y_true, y_pred),
        "micro_f1": float(2 * tp.sum() / micro_den) if micro_den else 0.0,
        "samples_f1": float(samples.mean()) if len(samples) else 0.0,
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else None,
        "n_images": int(len(y_true)),
        "empty_classes": [classes[i] for i in empty_classes(y_true)],
        "per_class": [
            {"class": classes[c], "id": c, "precision": num(prec[c]), "recall": num(rec[c]),
             "f1": num(f1[c]), "support": int(y_true[:, c].sum()), "predicted": int(y_pred[:, c].sum()),
             "ap": num(ap[c])}
            for c in range(y_true.shape[1])
        ],
    }


def best_threshold_macro_f1(y_true, probs) -> tuple[float, np.ndarray]:
    """Macro F1 with each class at its own best threshold, and those thresholds.

    Optimistic (the thresholds are tuned on the data they are scored on); exact: every distinct
    cut point is tried (:func:`protloc.core.threshold_search.best_f1_thresholds`). Classes
    without positives are left out of the mean (their threshold predicts nothing).

    Examples
    --------
    >>> f1, t = best_threshold_macro_f1([[1, 0], [0, 1]], [[0.3, 0.1], [0.1, 0.9]])
    >>> f1, t.round(2).tolist()
    (1.0, [0.2, 0.5])
    """
    y = np.asarray(y_true).astype(bool)
    thr, f1 = best_f1_thresholds(np.asarray(probs, np.float64), y)
    has = y.any(0)
    return (float(f1[has].mean()) if has.any() else 0.0), thr


def epoch_metrics(y_true, probs, *, threshold: float = 0.5) -> dict:
    """The validation numbers of one epoch, from all probabilities at once.

    Keys: ``val_macro_f1`` (at ``threshold``), ``val_macro_f1_best`` (each class at its best
    threshold), ``val_micro_f1``, ``val_mAP``, ``val_f1_<class id>`` and ``val_empty_classes``.

    Examples
    --------
    >>> m = epoch_metrics(np.array([[1, 0], [0, 1]]), np.array([[0.7, 0.2], [0.4, 0.45]]))
    >>> m["val_macro_f1"], m["val_macro_f1_best"], m["val_empty_classes"]
    (0.5, 1.0, [])
    """
    probs = np.asarray(probs)
    s = classification_summary(y_true, probs >= threshold, probs)
    best, _ = best_threshold_macro_f1(y_true, probs)
    out = {"val_macro_f1": s["macro_f1"], "val_macro_f1_best": best, "val_micro_f1": s["micro_f1"],
           "val_mAP": s["mAP"] if s["mAP"] is not None else 0.0}
    for pc in s["per_class"]:
        out[f"val_f1_{pc['id']}"] = pc["f1"] if pc["f1"] is not None else float("nan")
    out["val_empty_classes"] = empty_classes(y_true)
    return out
