"""protloc's metrics against scikit-learn on random multi-label data (with empty classes)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from protloc.core import metrics as M


def _data(seed, n=60, c=7):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < rng.uniform(0.05, 0.5, c)).astype(np.uint8)
    probs = np.clip(0.35 * y + rng.random((n, c)) * 0.7, 0, 1).round(2)  # ties on purpose
    y[:, 1] = 0                                        # a class without positives...
    probs[:, 1] = np.minimum(probs[:, 1], 0.4)         # ...that is never predicted at 0.5
    y[:, 2] = 0                                        # one without positives but predicted
    y[0] = 0                                           # a sample with no labels
    return y, probs, probs >= 0.5


@pytest.mark.parametrize("seed", range(6))
def test_f1_family_matches_sklearn(seed):
    y, probs, pred = _data(seed)
    per = M.per_class_f1(y, pred)
    ref = skm.f1_score(y, pred, average=None, zero_division=np.nan)
    np.testing.assert_allclose(per, ref, equal_nan=True)
    assert np.isnan(per[1]) and per[2] == 0.0                     # undefined vs. wrong
    assert M.macro_f1(y, pred) == pytest.approx(np.nanmean(ref))  # 'skip' leaves undefined classes out
    assert M.macro_f1(y, pred, zero_division="zero") == pytest.approx(skm.f1_score(y, pred, average="macro",
                                                                                     zero_division=0))
    assert M.macro_f1(y, pred, zero_division="one") == pytest.approx(skm.f1_score(y, pred, average="macro",
                                                                                    zero_division=1))
    s = M.classification_summary(y, pred, probs)
    assert s["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert s["samples_f1"] == pytest.approx(skm.f1_score(y, pred, average="samples", zero_division=1))
    prec = skm.precision_score(y, pred, average=None, zero_division=np.nan)
    rec = skm.recall_score(y, pred, average=None, zero_division=np.nan)
    for c, pc in enumerate(s["per_class"]):
        for key, want in (("precision", prec[c]), ("recall", rec[c]), ("f1", ref[c])):
            assert (pc[key] is None) if np.isnan(want) else pc[key] == pytest.approx(want, abs=1e-6), (c, key)
        assert pc["support"] == y[:, c].sum() and pc["predicted"] == pred[:, c].sum()
    assert s["empty_classes"] == [str(c) for c in np.flatnonzero(y.sum(0) == 0)] == ["1", "2"]


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_sklearn(seed):
    y, probs, pred = _data(seed)
    ap = M.average_precision(y, probs)
    has = y.any(0)
    np.testing.assert_allclose(ap[has], skm.average_precision_score(y[:, has], probs[:, has], average=None))
    assert np.isnan(ap[~has]).all()
    s = M.classification_summary(y, pred, probs)
    assert s["mAP"] == pytest.approx(skm.average_precision_score(y[:, has], probs[:, has], average="macro"))


@pytest.mark.parametrize("seed", range(6))
def test_best_threshold_macro_f1_is_the_exact_optimum(seed):
    """Each class at its best cut of all distinct values (brute force; sklearn scores the chosen cut)."""
    y, probs, _ = _data(seed)
    f1, thr = M.best_threshold_macro_f1(y, probs)
    best = []
    for c in np.flatnonzero(y.any(0)):
        pred = probs[:, c][None, :] >= np.unique(probs[:, c])[:, None]      # every candidate cut
        tp = (pred & (y[:, c] == 1)).sum(1)
        best.append((2 * tp / (pred.sum(1) + y[:, c].sum())).max())
        assert skm.f1_score(y[:, c], probs[:, c] >= thr[c]) == pytest.approx(best[-1])
    assert f1 == pytest.approx(np.mean(best))


def test_val_macro_f1_best_finds_cuts_between_grid_points():
    """The old 0.05-step grid could not separate 0.52 from 0.53; the exact search does."""
    y = np.array([[1], [1], [0], [0]])
    probs = np.array([[0.53], [0.54], [0.52], [0.51]])
    m = M.epoch_metrics(y, probs, threshold=0.5)
    assert m["val_macro_f1_best"] == 1.0 and m["val_macro_f1"] == pytest.approx(2 / 3)
    assert set(m) >= {"val_macro_f1", "val_micro_f1", "val_mAP", "val_f1_0", "val_empty_classes"}
