"""Per-class decision thresholds for multi-label probabilities (scikit-learn style).

A model gives one probability per class; the competition wants a set of labels. The default
cut of 0.5 is rarely best for rare classes, so :class:`ThresholdOptimizer` learns one threshold
per class from out-of-fold probabilities:

``f1``
    Exact search: for each class the threshold maximising that class's F1 over *all* distinct
    probability cut points (sort once, cumulative counts: O(N log N) per class).
``ratio``
    The threshold at which each class's predicted positive rate equals its positive rate in
    the training labels (robust, does not chase noise).
``global``
    One threshold shared by all classes, maximising macro F1 (exact, over all distinct values).

Stability: ``n_bootstrap`` resamples of the images refit every threshold; the standard
deviation of the threshold (and of the F1 at the chosen threshold) is reported per class.
Classes with too few positives or a large bootstrap spread *fall back* to a robust rule
(``fallback='global'``, the default: the one threshold that maximises macro F1 over all classes,
fitted on all classes' probabilities at once and so far less noisy than one class's;
``'median'``: the median bootstrap threshold; ``'auto'``: global for classes with too few
positives, median for unstable ones; or a fixed number) and the diagnostics say which and why.
``global`` replaced ``auto`` as the default after a paired comparison on ten trained runs of
the selection styles (same weights and D4 out-of-fold probabilities, only the fallback differs):
+0.006 mean test macro F1, better on 7 of 10 (``benchmarks/bench_threshold_rules.py``;
docs/training.md, "Thresholds fitted on the probabilities they are applied to").

A label is predicted when ``prob >= threshold``. With ``at_least_one=True`` an image where no
class passes gets its most probable class.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> y = (rng.random((200, 3)) < 0.3).astype(np.uint8)
>>> p = np.clip(0.5 * y + rng.random((200, 3)) * 0.6, 0, 1)
>>> opt = ThresholdOptimizer("f1", n_bootstrap=20).fit(p, y)
>>> opt.thresholds_.shape, opt.predict(p).dtype.name
((3,), 'uint8')
>>> bool(opt.macro_f1_after_ >= opt.macro_f1_before_)
True

The search cores and input checks live in :mod:`protloc.core.threshold_search` and are re-exported
here.
"""

from __future__ import annotations

import numpy as np

from protloc.core.errors import InputError
from protloc.core.metrics import macro_f1, per_class_f1
from protloc.core.threshold_search import (FALLBACKS, METHODS, _Sorted, _check_params,  # noqa: F401
                                      _quiet, apply_thresholds, best_f1_thresholds,
                                      bootstrap_stability, check_method, check_probs,
                                      check_targets, check_thresholds, global_threshold,
                                      ratio_thresholds)

__all__ = ["ThresholdOptimizer", "fit_run_thresholds", "cross_fitted_f1", "apply_thresholds", "best_f1_thresholds", "ratio_thresholds",
           "global_threshold", "check_probs", "check_targets", "check_method", "check_thresholds"]


class ThresholdOptimizer:
    """Learn per-class thresholds from probabilities and multi-hot truth.

    Parameters
    ----------
    method : {'f1', 'ratio', 'global'}
    n_bootstrap : int
        Bootstrap resamples for the stability diagnostics (0: none, no instability fallback).
    min_positives : int
        Classes with fewer positive examples fall back (their threshold would be noise).
    max_threshold_std : float
        Classes whose bootstrap threshold standard deviation exceeds this fall back.
    fallback : {'global', 'median', 'auto'} or float
        The robust rule for falling-back classes: the global (macro-F1) threshold (default), the
        median bootstrap threshold (classes without positives then use the global one), ``auto``
        (median for unstable classes, global for too few positives), or a number.
    at_least_one : bool
        In :meth:`predict`, give an image with no class above threshold its argmax class.
    random_state : int

    Attributes
    ----------
    thresholds_ : ndarray (C,)
    raw_thresholds_ : ndarray (C,)   the method's thresholds before any fallback
    global_threshold_ : float
    f1_before_, f1_after_ : ndarray (C,)   per-class F1 at 0.5 and at ``thresholds_`` (NaN: no positives)
    macro_f1_before_, macro_f1_after_ : float
    stability_ : dict of ndarray   ``threshold_std`` and ``f1_std`` per class (bootstrap)
    fallback_classes_ : dict   class index -> {'rule', 'reason'}
    n_positives_ : ndarray (C,)
    classes_ : list of str
    """

    def __init__(self, method: str = "f1", *, n_bootstrap: int = 200, min_positives: int = 5,
                 max_threshold_std: float = 0.1, fallback="global", at_least_one: bool = False,
                 random_state: int = 0):
        self.method = method
        self.n_bootstrap = n_bootstrap
        self.min_positives = min_positives
        self.max_threshold_std = max_threshold_std
        self.fallback = fallback
        self.at_least_one = at_least_one
        self.random_state = random_state

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("method", "n_bootstrap", "min_positives",
                                              "max_threshold_std", "fallback", "at_least_one",
                                              "random_state")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"ThresholdOptimizer({args})"

    # ------------------------------------------------------------------------------------
    def fit(self, probs, y, *, classes=None) -> "ThresholdOptimizer":
        """Fit thresholds on ``probs`` (N, C) and multi-hot ``y`` (N, C). Returns self."""
        check_method(self.method)
        _check_params(self.n_bootstrap, self.min_positives, self.fallback, self.max_threshold_std)
        p = check_probs(probs)
        t = check_targets(y, p)
        n, c = p.shape
        if classes is not None and len(classes) != c:
            raise InputError("classes", expected=f"{c} names", got=f"{len(classes)}",
                             fix="pass one name per column")
        self.classes_ = [str(v) for v in classes] if classes is not None else [str(i) for i in range(c)]
        self.n_positives_ = t.sum(0).astype(int)
        srt = _Sorted(p, t)
        self.global_threshold_, _ = srt.global_()
        raw = srt.fit(self.method)
        self.raw_thresholds_ = raw.copy()

        # bootstrap: image i drawn w_i times; the sort is reused, each resample is O(N*C)
        self.stability_ = bootstrap_stability(srt, p, t, raw, method=self.method,
                                              n_bootstrap=self.n_bootstrap,
                                              random_state=self.random_state)
        t_std, t_med = self.stability_["threshold_std"], self.stability_["threshold_median"]

        thr = raw.copy()
        self.fallback_classes_ = {}
        if self.method != "global":
            for k in range(c):
                npos = int(self.n_positives_[k])
                if npos == 0:
                    reason = "no positive examples"
                elif npos < self.min_positives:
                    reason = f"only {npos} positives (< min_positives={self.min_positives})"
                elif self.n_bootstrap and t_std[k] > self.max_threshold_std:
                    reason = (f"unstable: bootstrap threshold std {t_std[k]:.3f} > "
                              f"{self.max_threshold_std:g}")
                else:
                    continue
                rule = self.fallback
                if rule == "auto":
                    rule = "median" if reason.startswith("unstable") else "global"
                if rule == "median" and (npos == 0 or not self.n_bootstrap):
                    rule = "global"
                if rule == "global":
                    thr[k] = self.global_threshold_
                elif rule == "median":
                    thr[k] = t_med[k]
                else:
                    rule = f"fixed {float(rule):g}"
                    thr[k] = float(self.fallback)
                self.fallback_classes_[k] = {"rule": rule, "reason": reason}
        self.thresholds_ = thr
        self.f1_before_ = per_class_f1(t, p >= 0.5)
        self.f1_after_ = per_class_f1(t, self.predict(p))
        self.macro_f1_before_ = macro_f1(t, p >= 0.5)
        self.macro_f1_after_ = macro_f1(t, self.predict(p))
        self.n_samples_ = n
        return self

    def _check_fitted(self):
        if not hasattr(self, "thresholds_"):
            raise InputError("this ThresholdOptimizer is not fitted yet", fix="call fit(probs, y) "
                             "or ThresholdOptimizer.from_dict(...) first")

    def predict(self, probs) -> np.ndarray:
        """Labels (N, C) uint8: ``probs >= thresholds_`` (+ the at-least-one rule if enabled)."""
        self._check_fitted()
        p = check_probs(probs, n_classes=len(self.thresholds_))
        return apply_thresholds(p, self.thresholds_, at_least_one=self.at_least_one)

    def fit_predict(self, probs, y, **kw) -> np.ndarray:
        return self.fit(probs, y, **kw).predict(probs)

    # ------------------------------------------------------------------------------------
    def per_class(self) -> list[dict]:
        """One diagnostics row per class (what the CLI table and thresholds.json show)."""
        self._check_fitted()

        def num(v):
            return None if v is None or not np.isfinite(v) else round(float(v), 6)

        rows = []
        for k, name in enumerate(self.classes_):
            fb = self.fallback_classes_.get(k)
            rows.append({
                "id": k, "class": name, "threshold": num(self.thresholds_[k]),
                "raw_threshold": num(self.raw_thresholds_[k]),
                "n_positives": int(self.n_positives_[k]),
                "f1_before": num(self.f1_before_[k]), "f1_after": num(self.f1_after_[k]),
                "threshold_std": num(self.stability_["threshold_std"][k]),
                "f1_std": num(self.stability_["f1_std"][k]),
                "fallback": fb["rule"] if fb else None, "fallback_reason": fb["reason"] if fb else None,
            })
        return rows

    def to_dict(self) -> dict:
        """JSON-ready dict (what ``RUN/thresholds.json`` holds)."""
        self._check_fitted()
        return {
            "method": self.method,
            "params": self.get_params(),
            "classes": list(self.classes_),
            "thresholds": [float(v) for v in self.thresholds_],
            "at_least_one": bool(self.at_least_one),
            "global_threshold": float(self.global_threshold_),
            "macro_f1_before": float(self.macro_f1_before_),
            "macro_f1_after": float(self.macro_f1_after_),
            "n_images": int(self.n_samples_),
            "per_class": self.per_class(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ThresholdOptimizer":
        """Rebuild a fitted optimizer from :meth:`to_dict` output."""
        if not isinstance(d, dict) or "thresholds" not in d:
            raise InputError("thresholds file", expected="a dict with a 'thresholds' list",
                             got=type(d).__name__ if not isinstance(d, dict) else f"keys {list(d)}",
                             fix="refit with `protloc thresholds RUN`")
        params = dict(d.get("params") or {})
        params.setdefault("method", d.get("method", "f1"))
        params["at_least_one"] = bool(d.get("at_least_one", params.get("at_least_one", False)))
        method = params.pop("method")
        self = cls(method, **{k: v for k, v in params.items()
                              if k in ("n_bootstrap", "min_positives", "max_threshold_std", "fallback",
                                       "at_least_one", "random_state")})
        thr = np.asarray(d["thresholds"], dtype=np.float64)
        c = len(thr)
        self.thresholds_ = check_thresholds(thr, c)
        self.classes_ = list(d.get("classes") or [str(i) for i in range(c)])
        self.global_threshold_ = float(d.get("global_threshold", 0.5))
        self.macro_f1_before_ = float(d.get("macro_f1_before", np.nan))
        self.macro_f1_after_ = float(d.get("macro_f1_after", np.nan))
        self.n_samples_ = int(d.get("n_images", 0))
        rows = d.get("per_class") or [{} for _ in range(c)]

        def col(key, default=np.nan):
            return np.array([np.nan if r.get(key) is None else r.get(key, default) for r in rows], float)

        self.raw_thresholds_ = np.where(np.isnan(col("raw_threshold")), self.thresholds_, col("raw_threshold"))
        self.n_positives_ = np.nan_to_num(col("n_positives")).astype(int)
        self.f1_before_, self.f1_after_ = col("f1_before"), col("f1_after")
        self.stability_ = {"threshold_std": col("threshold_std"), "f1_std": col("f1_std"),
                           "threshold_median": self.thresholds_.copy()}
        self.fallback_classes_ = {int(r.get("id", i)): {"rule": r["fallback"], "reason": r.get("fallback_reason")}
                                  for i, r in enumerate(rows) if r.get("fallback")}
        return self


def fit_run_thresholds(run, *, method: str = "f1", at_least_one: bool = False, n_bootstrap: int = 200,
                       min_positives: int = 5, max_threshold_std: float = 0.1, fallback="global",
                       random_state: int = 0) -> ThresholdOptimizer:
    """Fit per-class thresholds on a run's out-of-fold probabilities and save ``RUN/thresholds.json``.

    ``run`` is a run folder path or :class:`~protloc.core.runfolder.RunFolder`; the options are
    those of :class:`ThresholdOptimizer`. Returns the fitted optimizer (what ``protloc thresholds``
    prints).

    Examples
    --------
    >>> opt = fit_run_thresholds("runs/r1", method="f1", at_least_one=True)  # doctest: +SKIP
    >>> opt.thresholds_.shape  # doctest: +SKIP
    (10,)
    """
    from protloc.core.runfolder import RunFolder

    rf = (run if isinstance(run, RunFolder) else RunFolder(run)).check(need_models=False)
    oof = rf.oof()
    opt = ThresholdOptimizer(method, n_bootstrap=n_bootstrap, min_positives=min_positives,
                             max_threshold_std=max_threshold_std, fallback=fallback,
                             at_least_one=at_least_one, random_state=random_state)
    opt.fit(oof.probs, oof.y, classes=list(rf.preprocessing().classes))
    rf.save_thresholds(opt, source={"oof": rf.oof_csv.name, "n_images": len(oof.ids), "oof_tta": rf.oof_tta()})
    return opt


def cross_fitted_f1(y, reference, *others, n_splits: int = 20, random_state: int = 0, **params) -> dict:
    """Macro F1 of models' probabilities at thresholds fitted on the ``reference`` model's, never on
    the images they score: the images are split in halves, thresholds fitted on one half (of
    ``reference``) score every model on the other, and back; repeated over ``n_splits`` seeded
    splits, the same for every model.

    What a model will score on new images at a run's thresholds (which come from the reference's
    out-of-fold probabilities). Scoring on the images the thresholds were fitted on flatters the
    reference: any other model (an int8 copy, say) looks worse than it is.

    Parameters
    ----------
    y : array (N, C)           multi-hot truth
    reference : array (N, C)   the probabilities the thresholds are fitted on
    *others : arrays (N, C)    other models' probabilities of the same images
    n_splits : int             random half-splits
    random_state : int
    **params                   :class:`ThresholdOptimizer` options (``n_bootstrap`` default 50)

    Returns
    -------
    dict
        ``f1``: the mean macro F1 of each model (reference first); ``change``: each other model's
        mean paired change against the reference; ``change_sd``: its standard deviation over the
        splits.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random((200, 3)) < 0.3).astype(int)
    >>> p = np.clip(y * 0.5 + rng.random((200, 3)) * 0.6, 0, 1)
    >>> r = cross_fitted_f1(y, p, p, n_splits=4)
    >>> r["change"]                       # the same probabilities: no change
    [0.0]
    """
    models = [check_probs(m) for m in (reference, *others)]
    t = check_targets(y, models[0])
    for i, m in enumerate(models[1:], 1):
        if m.shape != models[0].shape:
            raise InputError(f"model {i}'s probabilities", expected=f"shape {models[0].shape}", got=str(m.shape),
                             fix="pass the probabilities of the same images and classes")
    n = len(t)
    if n < 4:
        raise InputError("images", expected="at least 4 to split in halves", got=str(n),
                         fix="score on more held-out images")
    params = {"n_bootstrap": 50, **params}
    rng = np.random.default_rng(random_state)
    f1 = np.zeros((n_splits, len(models)))
    for s in range(n_splits):
        perm = rng.permutation(n)
        halves = (perm[:n // 2], perm[n // 2:])
        hot = [np.zeros_like(t) for _ in models]
        for fit, score in (halves, halves[::-1]):
            opt = ThresholdOptimizer(**params).fit(models[0][fit], t[fit])
            for h, m in zip(hot, models):
                h[score] = opt.predict(m[score])
        f1[s] = [macro_f1(t, h) for h in hot]
    d = f1[:, 1:] - f1[:, :1]
    return {"f1": [round(float(v), 5) for v in f1.mean(0)], "change": [round(float(v), 5) for v in d.mean(0)],
            "change_sd": [round(float(v), 5) for v in d.std(0)]}
