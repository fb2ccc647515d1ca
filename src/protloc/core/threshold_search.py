"""Threshold search cores and input checks behind :class:`protloc.core.thresholds.ThresholdOptimizer`.

Pure functions (arrays in, arrays out): the exact per-class F1 search, the positive-rate
``ratio`` rule, the single macro-F1 ``global`` threshold, bootstrap stability, and the
``check_*`` validators. :mod:`protloc.core.thresholds` re-exports the public names.

Examples
--------
>>> p = np.array([[0.9], [0.6], [0.4], [0.1]])
>>> float(best_f1_thresholds(p, np.array([[1], [1], [0], [0]]))[0][0])
0.5
"""

from __future__ import annotations

import numpy as np

from protloc.core.errors import InputError

METHODS = ("f1", "ratio", "global")
FALLBACKS = ("auto", "global", "median")

__all__ = ["apply_thresholds", "best_f1_thresholds", "ratio_thresholds", "global_threshold",
           "bootstrap_stability", "check_probs", "check_targets", "check_method", "check_thresholds",
           "METHODS", "FALLBACKS"]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def check_probs(probs, *, name: str = "probs", n_classes: int | None = None) -> np.ndarray:
    """Validate probabilities: finite numbers in [0, 1], shape (n_images, n_classes).

    Returns a float64 copy.

    Examples
    --------
    >>> check_probs([[0.1, 0.9]]).shape
    (1, 2)
    >>> check_probs([0.1, 0.9])
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: probs: expected a 2-D array (n_images, n_classes), got shape (2,). Fix: pass one row per image and one column per class.
    """
    try:
        a = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(name, expected="numbers", got=f"{type(probs).__name__} that is "
                         "not numeric", fix="pass a numeric (n_images, n_classes) array") from None
    if a.ndim != 2:
        raise InputError(name, expected="a 2-D array (n_images, n_classes)",
                         got=f"shape {a.shape}", fix="pass one row per image and one column per class")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(name, expected="at least one image and one class",
                         got=f"shape {a.shape}", fix="pass a non-empty array")
    if n_classes is not None and a.shape[1] != n_classes:
        raise InputError(name, expected=f"{n_classes} class columns", got=f"{a.shape[1]}",
                         fix="use probabilities from the model these thresholds were fitted for")
    if not np.isfinite(a).all():
        raise InputError(name, expected="finite probabilities",
                         got=f"{int((~np.isfinite(a)).sum())} NaN/inf values",
                         fix="remove or recompute the rows with NaN")
    if a.min() < 0 or a.max() > 1:
        raise InputError(name, expected="probabilities in [0, 1]",
                         got=f"values from {a.min():.3g} to {a.max():.3g}",
                         fix="apply a sigmoid to logits first")
    return a


def check_targets(y, probs: np.ndarray, *, name: str = "y") -> np.ndarray:
    """Validate a multi-hot truth matrix matching ``probs``; returns uint8.

    Examples
    --------
    >>> check_targets([[0, 2]], np.zeros((1, 2)))
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: y: expected 0/1 multi-hot labels, got values [0, 2]. Fix: one column per class with 1 where the class is present.
    """
    a = np.asarray(y)
    if a.shape != probs.shape:
        raise InputError(name, expected=f"shape {probs.shape} (same as probs)",
                         got=f"shape {a.shape}", fix="pass one multi-hot row per probability row")
    if a.dtype == bool:
        return a.astype(np.uint8)
    vals = np.unique(a)
    if not np.isin(vals, (0, 1)).all():
        shown = ", ".join(str(v.item()) for v in vals[:6])
        raise InputError(name, expected="0/1 multi-hot labels", got=f"values [{shown}]",
                         fix="one column per class with 1 where the class is present")
    return a.astype(np.uint8)


def check_method(method) -> str:
    """Validate the ``method`` name.

    Examples
    --------
    >>> check_method("best")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: method: expected one of f1, ratio, global, got 'best'. Fix: pick one of those methods.
    """
    if method not in METHODS:
        raise InputError("method", expected=f"one of {', '.join(METHODS)}", got=repr(method),
                         fix="pick one of those methods")
    return method


def check_thresholds(thresholds, n_classes: int, *, where: str = "thresholds") -> np.ndarray:
    """Validate a per-class threshold vector (float64, shape (n_classes,), values in [0, 1])."""
    a = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if a.shape != (n_classes,):
        raise InputError(where, expected=f"{n_classes} thresholds (one per class)",
                         got=f"{a.size}", fix="refit with `protloc thresholds RUN`")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise InputError(where, expected="thresholds in [0, 1]", got=f"{a.tolist()}",
                         fix="refit with `protloc thresholds RUN`")
    return a


def _check_params(n_bootstrap, min_positives, fallback, max_threshold_std):
    if not isinstance(n_bootstrap, (int, np.integer)) or isinstance(n_bootstrap, bool) or n_bootstrap < 0:
        raise InputError("n_bootstrap", expected="an integer >= 0", got=repr(n_bootstrap),
                         fix="e.g. n_bootstrap=200 (0 disables the stability check)")
    if not isinstance(min_positives, (int, np.integer)) or min_positives < 0:
        raise InputError("min_positives", expected="an integer >= 0", got=repr(min_positives),
                         fix="e.g. min_positives=5")
    if not (fallback in FALLBACKS or (isinstance(fallback, (int, float)) and 0 <= fallback <= 1)):
        raise InputError("fallback", expected="'auto', 'global', 'median' or a number in [0, 1]",
                         got=repr(fallback), fix="e.g. fallback='global'")
    if not (isinstance(max_threshold_std, (int, float)) and max_threshold_std > 0):
        raise InputError("max_threshold_std", expected="a positive number",
                         got=repr(max_threshold_std), fix="e.g. max_threshold_std=0.1")


# --------------------------------------------------------------------------------------------
# pure cores
# --------------------------------------------------------------------------------------------
def apply_thresholds(probs, thresholds, *, at_least_one: bool = False) -> np.ndarray:
    """``probs >= thresholds`` as uint8 (N, C); optionally force the argmax where none passes.

    Examples
    --------
    >>> apply_thresholds([[0.2, 0.4], [0.9, 0.1]], [0.5, 0.5], at_least_one=True).tolist()
    [[0, 1], [1, 0]]
    """
    p = np.asarray(probs)
    out = (p >= np.asarray(thresholds)[None, :]).astype(np.uint8)
    if at_least_one and len(out):
        empty = out.sum(1) == 0
        out[np.flatnonzero(empty), p[empty].argmax(1)] = 1
    return out


def _cut(ps_desc: np.ndarray, i: np.ndarray, nxt_idx: np.ndarray | None = None) -> np.ndarray:
    """Threshold that keeps sorted-descending values ``0..i`` (per column): midway to the next
    kept value (``nxt_idx[i]``, default ``i + 1``; ``n`` = none left)."""
    n = ps_desc.shape[0]
    cols = np.arange(ps_desc.shape[1])
    j = i + 1 if nxt_idx is None else nxt_idx[i, cols]
    v = ps_desc[np.minimum(i, n - 1), cols]
    nxt = ps_desc[np.minimum(j, n - 1), cols]
    mid = (v + nxt) / 2
    ok = (j < n) & (mid > nxt)  # guard against adjacent floats rounding onto ``nxt``
    return np.where(ok, mid, v)


def _next_kept(keep: np.ndarray) -> np.ndarray:
    """For each row i the smallest j > i with ``keep[j]`` (per column), or n if none."""
    n = keep.shape[0]
    idx = np.where(keep, np.arange(n).reshape((n,) + (1,) * (keep.ndim - 1)), n)
    first = np.minimum.accumulate(idx[::-1], axis=0)[::-1]  # smallest j >= i
    out = np.full_like(first, n)
    out[:-1] = first[1:]
    return out


def _cut_mask(ps_desc: np.ndarray, ws: np.ndarray | None):
    """(valid cut positions, next kept index): a cut after i is real when i is kept (weight > 0)
    and the next kept value differs (ties stay together)."""
    n = ps_desc.shape[0]
    if ws is None:
        valid = np.ones_like(ps_desc, dtype=bool)
        valid[:-1] = ps_desc[:-1] != ps_desc[1:]
        return valid, None
    keep = ws > 0
    nxt = _next_kept(keep)
    nv = np.take_along_axis(ps_desc, np.minimum(nxt, n - 1), axis=0)
    return keep & ((nxt >= n) | (ps_desc != nv)), nxt


def _above_max(ps_desc: np.ndarray) -> np.ndarray:
    return np.minimum(np.nextafter(ps_desc[0], np.inf), 1.0)


class _Sorted:
    """Per-class descending sort of (probs, y), done once; weighted searches reuse it.

    Bootstrap resamples are expressed as integer weights (how often each image was drawn), so
    each resample costs O(N*C) instead of a new sort.
    """

    def __init__(self, probs: np.ndarray, y: np.ndarray):
        n, c = probs.shape
        self.n, self.c = n, c
        self.order = np.argsort(-probs, axis=0, kind="stable")
        self.ps = np.take_along_axis(probs, self.order, axis=0)
        self.ys = np.take_along_axis(y, self.order, axis=0).astype(np.float64)
        # flattened (global) view: all N*C values in one descending order, grouped by class
        flat = probs.ravel()
        order = np.argsort(-flat, kind="stable")
        self.fp = flat[order]
        self.ft = y.ravel()[order].astype(np.float64)
        self.fcls = order % c
        self.fimg = order // c
        self.g = np.argsort(self.fcls, kind="stable")  # keeps the descending order inside a class
        self.gcls = self.fcls[self.g]
        self.gimg = self.fimg[self.g]
        self.gt = self.ft[self.g]
        self.starts = np.searchsorted(self.gcls, np.arange(c))
        self.valid, _ = _cut_mask(self.ps, None)
        self.fvalid, _ = _cut_mask(self.fp, None)

    def f1(self, w=None):
        ws = None if w is None else np.asarray(w, np.float64)[self.order]
        valid, nxt = (self.valid, None) if ws is None else _cut_mask(self.ps, ws)
        tp = np.cumsum(self.ys if ws is None else ws * self.ys, axis=0)
        k = np.arange(1.0, self.n + 1)[:, None] if ws is None else np.cumsum(ws, axis=0)
        pos = tp[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = 2.0 * tp / (k + pos[None, :])
        f1 = np.where(valid, np.nan_to_num(f1, nan=0.0), -1.0)
        i = f1.argmax(0)
        best = f1[i, np.arange(self.c)]
        none = pos == 0
        thr = np.where(none, _above_max(self.ps), _cut(self.ps, i, nxt))
        return thr, np.where(none, np.nan, best)

    def ratio(self, w=None):
        ws = np.ones((self.n, self.c)) if w is None else np.asarray(w, np.float64)[self.order]
        nxt = None if w is None else _cut_mask(self.ps, ws)[1]
        k = np.cumsum(ws, axis=0)
        target = (ws * self.ys).sum(0)
        i = np.array([np.searchsorted(k[:, j], target[j] - 1e-9) for j in range(self.c)])
        i = np.minimum(i, self.n - 1)
        return np.where(target == 0, _above_max(self.ps), _cut(self.ps, i, nxt))

    def global_(self, w=None):
        c = self.c
        g, gc, st = self.g, self.gcls, self.starts
        we_g = np.ones_like(self.gt) if w is None else np.asarray(w, np.float64)[self.gimg]
        tw_g = we_g * self.gt
        pos = np.bincount(gc, weights=tw_g, minlength=c)
        active = pos > 0
        if not active.any():
            return 0.5, 0.0
        ct = np.cumsum(tw_g)
        ck = np.cumsum(we_g)
        tp = ct - (ct[st] - tw_g[st])[gc]  # cumulative counts inside each class's group
        k = ck - (ck[st] - we_g[st])[gc]
        pc = pos[gc]
        with np.errstate(divide="ignore", invalid="ignore"):
            d = 2.0 * tp / (k + pc) - 2.0 * (tp - tw_g) / (k - we_g + pc)
        d = np.where(active[gc], np.nan_to_num(d), 0.0)
        delta = np.empty_like(d)
        delta[g] = d  # back to the global descending order
        macro = np.cumsum(delta) / active.sum()
        if w is None:
            valid, nxt = self.fvalid, None
        else:
            we = np.empty_like(we_g)
            we[g] = we_g
            valid, nxt = _cut_mask(self.fp, we)
            nxt = nxt[:, None]
        macro = np.where(valid, macro, -1.0)
        j = int(macro.argmax())
        return float(_cut(self.fp[:, None], np.array([j]), nxt)[0]), float(macro[j])

    def fit(self, method: str, w=None) -> np.ndarray:
        if method == "f1":
            return self.f1(w)[0]
        if method == "ratio":
            return self.ratio(w)
        return np.full(self.c, self.global_(w)[0])


def best_f1_thresholds(probs: np.ndarray, y: np.ndarray, *, sample_weight=None):
    """Exact per-class F1-maximising thresholds over all distinct cut points.

    One sort per class, then cumulative true-positive counts give the F1 of every cut at once
    (O(N log N)). Returns ``(thresholds (C,), best_f1 (C,))``; a threshold lies midway between
    the last kept value and the next one. A class without positives gets a threshold above its
    largest probability (predicts nothing) and F1 NaN. Ties go to the highest cut.

    Examples
    --------
    >>> t, f = best_f1_thresholds(np.array([[0.9], [0.6], [0.4], [0.1]]), np.array([[1], [1], [0], [0]]))
    >>> float(t[0]), float(f[0])
    (0.5, 1.0)
    """
    return _Sorted(np.asarray(probs, np.float64), np.asarray(y)).f1(sample_weight)


def ratio_thresholds(probs: np.ndarray, y: np.ndarray, *, sample_weight=None) -> np.ndarray:
    """Per-class thresholds whose predicted positive rate matches the label positive rate.

    Examples
    --------
    >>> ratio_thresholds(np.array([[0.9], [0.6], [0.4], [0.1]]), np.array([[1], [0], [0], [0]])).tolist()
    [0.75]
    """
    return _Sorted(np.asarray(probs, np.float64), np.asarray(y)).ratio(sample_weight)


def global_threshold(probs: np.ndarray, y: np.ndarray, *, sample_weight=None) -> tuple[float, float]:
    """One threshold for all classes maximising macro F1, exactly (all distinct values).

    Macro F1 here averages the classes that have positives (a class without positives has no
    F1 to gain). Sweeping the sorted values once updates only the current value's class, so the
    search is O(M log M) for M = N*C values. Returns ``(threshold, macro_f1)``.

    Examples
    --------
    >>> p = np.array([[0.9, 0.2], [0.3, 0.8], [0.1, 0.35]])
    >>> y = np.array([[1, 0], [0, 1], [0, 1]])
    >>> t, f = global_threshold(p, y)
    >>> round(t, 3), f
    (0.325, 1.0)
    """
    return _Sorted(np.asarray(probs, np.float64), np.asarray(y)).global_(sample_weight)


# --------------------------------------------------------------------------------------------
# stability
# --------------------------------------------------------------------------------------------
def bootstrap_stability(srt: _Sorted, probs: np.ndarray, y: np.ndarray, raw: np.ndarray, *,
                        method: str, n_bootstrap: int, random_state: int = 0) -> dict:
    """Refit ``method`` on ``n_bootstrap`` resamples of the images (rows).

    Image i drawn w_i times becomes weight w_i, so the sort in ``srt`` (a :class:`_Sorted` of
    ``probs``, ``y``) is reused and each resample is O(N*C). Returns per-class arrays
    ``threshold_std``, ``f1_std`` (the F1 at the fixed thresholds ``raw``) and
    ``threshold_median``; with ``n_bootstrap=0`` the spreads are NaN and the median is ``raw``.

    Examples
    --------
    >>> p = np.array([[0.9], [0.6], [0.4], [0.1]]); y = np.array([[1], [1], [0], [0]])
    >>> s = bootstrap_stability(_Sorted(p, y), p, y, np.array([0.5]), method="f1", n_bootstrap=0)
    >>> sorted(s), s["threshold_median"].tolist()
    (['f1_std', 'threshold_median', 'threshold_std'], [0.5])
    """
    n, c = probs.shape
    p, t = probs, y
    rng = np.random.default_rng(random_state)
    nb = int(n_bootstrap)
    boot_t = np.full((nb, c), np.nan)
    boot_f1 = np.full((nb, c), np.nan)
    hit, tb = p >= raw[None, :], t.astype(bool)
    tp_m, fp_m, fn_m = (tb & hit).astype(float), (~tb & hit).astype(float), (tb & ~hit).astype(float)
    for b in range(nb):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        boot_t[b] = srt.fit(method, w)
        tp, fp, fn = w @ tp_m, w @ fp_m, w @ fn_m
        den = 2 * tp + fp + fn
        boot_f1[b] = np.where(den > 0, 2 * tp / np.maximum(den, 1e-12), np.nan)
    with np.errstate(invalid="ignore"), _quiet():
        t_std = np.nanstd(boot_t, axis=0) if nb else np.full(c, np.nan)
        f1_std = np.nanstd(boot_f1, axis=0) if nb else np.full(c, np.nan)
        t_med = np.nanmedian(boot_t, axis=0) if nb else raw.copy()
    return {"threshold_std": t_std, "f1_std": f1_std, "threshold_median": t_med}


class _quiet:
    """Silence numpy's 'all-NaN slice' RuntimeWarnings inside nan-reductions."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
