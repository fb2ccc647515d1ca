"""Thresholds: exact search, ratio/global behaviour, fallback, at-least-one, round trip, errors."""

import json

import numpy as np
import pytest

from protloc.core.errors import InputError
from protloc.core.metrics import macro_f1, per_class_f1
from protloc.core.thresholds import (ThresholdOptimizer, apply_thresholds, cross_fitted_f1, best_f1_thresholds,
                                global_threshold, ratio_thresholds)


def _data(n=120, c=4, seed=0, quant=None):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    y[0] = 1  # every class has a positive
    p = np.clip(0.35 * y + rng.random((n, c)) * 0.65, 0, 1)
    if quant:
        p = np.round(p * quant) / quant  # many ties
    return p, y


def _brute_f1(p, y):
    best = []
    for c in range(p.shape[1]):
        cands = np.unique(p[:, c])
        best.append(max(per_class_f1(y[:, [c]], p[:, [c]] >= t)[0] for t in cands))
    return np.array(best)


@pytest.mark.parametrize("seed,quant", [(0, None), (1, 20), (2, 5)])
def test_f1_search_matches_brute_force(seed, quant):
    p, y = _data(seed=seed, quant=quant)
    thr, best = best_f1_thresholds(p, y)
    np.testing.assert_allclose(best, _brute_f1(p, y), atol=1e-12)
    # the returned threshold really achieves that F1
    np.testing.assert_allclose(per_class_f1(y, p >= thr[None, :]), best, atol=1e-12)


def test_global_threshold_matches_brute_force():
    for seed, quant in [(3, None), (4, 10)]:
        p, y = _data(n=60, c=5, seed=seed, quant=quant)
        t, f = global_threshold(p, y)
        brute = max(macro_f1(y, p >= v) for v in np.unique(p))
        assert f == pytest.approx(brute, abs=1e-12)
        assert macro_f1(y, p >= t) == pytest.approx(brute, abs=1e-12)


def test_ratio_matches_positive_rate():
    p, y = _data(n=200, c=3, seed=5)
    thr = ratio_thresholds(p, y)
    np.testing.assert_array_equal((p >= thr).sum(0), y.sum(0))  # continuous probs: no ties
    opt = ThresholdOptimizer("ratio", n_bootstrap=10, min_positives=0, max_threshold_std=1).fit(p, y)
    np.testing.assert_array_equal(opt.predict(p).sum(0), y.sum(0))


def test_global_method_one_threshold_and_f1_improves():
    p, y = _data(seed=6)
    opt = ThresholdOptimizer("global", n_bootstrap=10).fit(p, y)
    assert len(set(opt.thresholds_.tolist())) == 1
    assert opt.fallback_classes_ == {}
    opt_f1 = ThresholdOptimizer("f1", n_bootstrap=10, min_positives=0, max_threshold_std=1).fit(p, y)
    assert opt_f1.macro_f1_after_ >= opt.macro_f1_after_ >= opt.macro_f1_before_ - 1e-12


def test_rare_class_falls_back_with_reason():
    p, y = _data(n=150, c=3, seed=7)
    y[:, 2] = 0
    y[[3, 9], 2] = 1  # 2 positives
    opt = ThresholdOptimizer("f1", n_bootstrap=30, min_positives=5).fit(p, y, classes=["a", "b", "rare"])
    assert 2 in opt.fallback_classes_
    fb = opt.fallback_classes_[2]
    assert fb["rule"] == "global" and "only 2 positives" in fb["reason"]
    assert opt.thresholds_[2] == pytest.approx(opt.global_threshold_)
    assert opt.stability_["threshold_std"].shape == (3,) and opt.stability_["f1_std"].shape == (3,)
    med = ThresholdOptimizer("f1", n_bootstrap=30, min_positives=5, fallback="median").fit(p, y)
    assert med.fallback_classes_[2]["rule"] == "median"
    assert med.thresholds_[2] == pytest.approx(med.stability_["threshold_median"][2])
    fixed = ThresholdOptimizer("f1", n_bootstrap=0, min_positives=5, fallback=0.3).fit(p, y)
    assert fixed.thresholds_[2] == 0.3 and fixed.fallback_classes_[2]["rule"] == "fixed 0.3"


def test_unstable_class_falls_back():
    p, y = _data(n=150, c=2, seed=8)
    opt = ThresholdOptimizer("f1", n_bootstrap=30, min_positives=0, max_threshold_std=1e-9).fit(p, y)
    assert set(opt.fallback_classes_) == {0, 1}
    assert "unstable: bootstrap threshold std" in opt.fallback_classes_[0]["reason"]
    # by default the global threshold (measured better than the median bootstrap one: docs/training.md)
    assert opt.fallback_classes_[0]["rule"] == "global" and opt.thresholds_[0] == opt.global_threshold_
    auto = ThresholdOptimizer("f1", n_bootstrap=30, min_positives=0, max_threshold_std=1e-9, fallback="auto").fit(p, y)
    assert auto.fallback_classes_[0]["rule"] == "median"


def test_no_positive_class():
    p, y = _data(n=50, c=3, seed=9)
    y[:, 1] = 0
    opt = ThresholdOptimizer("f1", n_bootstrap=5).fit(p, y)
    assert opt.fallback_classes_[1]["reason"] == "no positive examples"
    assert np.isnan(opt.f1_before_[1]) or opt.f1_before_[1] == 0


def test_at_least_one():
    p = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.6]])
    assert apply_thresholds(p, [0.5] * 3).tolist() == [[0, 0, 0], [1, 0, 1]]
    assert apply_thresholds(p, [0.5] * 3, at_least_one=True).tolist() == [[0, 1, 0], [1, 0, 1]]
    pr, y = _data(n=80, c=3, seed=10)
    opt = ThresholdOptimizer("f1", n_bootstrap=0, at_least_one=True).fit(pr, y)
    assert (opt.predict(pr).sum(1) >= 1).all()


def test_to_dict_round_trip():
    p, y = _data(seed=11)
    opt = ThresholdOptimizer("f1", n_bootstrap=10, at_least_one=True).fit(p, y, classes=list("abcd"))
    d = json.loads(json.dumps(opt.to_dict()))
    back = ThresholdOptimizer.from_dict(d)
    np.testing.assert_array_equal(back.thresholds_, opt.thresholds_)
    np.testing.assert_array_equal(back.predict(p), opt.predict(p))
    assert back.at_least_one and back.method == "f1" and back.classes_ == list("abcd")
    assert back.to_dict()["per_class"] == d["per_class"]
    assert d["per_class"][0].keys() >= {"threshold", "f1_before", "f1_after", "threshold_std",
                                        "f1_std", "fallback", "fallback_reason"}


def test_error_messages():
    p, y = _data(n=20, c=3)
    with pytest.raises(InputError, match=r"probs: expected a 2-D array \(n_images, n_classes\), got shape "
                                         r"\(20,\)\. Fix: pass one row per image"):
        ThresholdOptimizer().fit(p[:, 0], y)
    with pytest.raises(ValueError, match=r"probs: expected probabilities in \[0, 1\], got values from "
                                         r".*Fix: apply a sigmoid to logits first"):
        ThresholdOptimizer().fit(p * 3, y)
    with pytest.raises(InputError, match=r"y: expected shape \(20, 3\) \(same as probs\), got shape \(20, 2\)"):
        ThresholdOptimizer().fit(p, y[:, :2])
    yb = y.astype(int)
    yb[0, 0] = 2
    with pytest.raises(InputError, match=r"y: expected 0/1 multi-hot labels, got values \[0, 1, 2\]"):
        ThresholdOptimizer().fit(p, yb)
    with pytest.raises(InputError, match=r"method: expected one of f1, ratio, global, got 'best'\. Fix:"):
        ThresholdOptimizer("best").fit(p, y)
    with pytest.raises(InputError, match=r"n_bootstrap: expected an integer >= 0, got -1"):
        ThresholdOptimizer(n_bootstrap=-1).fit(p, y)
    with pytest.raises(InputError, match=r"fallback: expected 'auto', 'global', 'median' or a number"):
        ThresholdOptimizer(fallback="mean").fit(p, y)
    with pytest.raises(InputError, match=r"probs: expected finite probabilities, got 1 NaN/inf values"):
        q = p.copy()
        q[0, 0] = np.nan
        ThresholdOptimizer().fit(q, y)
    with pytest.raises(InputError, match=r"not fitted yet"):
        ThresholdOptimizer().predict(p)
    opt = ThresholdOptimizer(n_bootstrap=0).fit(p, y)
    with pytest.raises(InputError, match=r"probs: expected 3 class columns, got 2"):
        opt.predict(p[:, :2])


def test_cli_thresholds_writes_json(fake_run, tmp_path, capsys):
    import shutil

    from protloc.cli.main import main
    from protloc.core.runfolder import RunFolder

    fake_run = shutil.copytree(fake_run, tmp_path / "run")  # the session fixture is shared
    rc = main(["thresholds", str(fake_run), "--method", "f1", "--n-bootstrap", "20", "--at-least-one"])
    out = capsys.readouterr().out
    assert rc == 0 and "macro F1" in out and "Mitoch" in out
    rule = RunFolder(fake_run).thresholds()
    assert rule.values.shape == (10,) and rule.at_least_one is True and rule.method == "f1"
    assert rule.optimizer.macro_f1_after_ >= rule.optimizer.macro_f1_before_
    assert main(["thresholds", str(fake_run), "--method", "global", "--n-bootstrap", "5"]) == 0
    assert len(set(RunFolder(fake_run).thresholds().values)) == 1
    assert main(["thresholds", str(fake_run), "--fallback", "mean"]) == 2
    assert "--fallback: expected auto, global, median or a number in [0, 1], got 'mean'" in capsys.readouterr().err


def test_cli_thresholds_bad_run(tmp_path, capsys):
    from protloc.cli.main import main

    assert main(["thresholds", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err


def test_bootstrap_weights_equal_resampling():
    """Bootstrap resamples are computed as weights on one sort: same thresholds as a re-sort."""
    from protloc.core.thresholds import _Sorted

    p, y = _data(n=150, c=3, seed=12, quant=40)
    srt = _Sorted(p, y)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.integers(0, len(p), len(p))
        w = np.bincount(idx, minlength=len(p)).astype(float)
        np.testing.assert_array_equal(srt.fit("f1", w), best_f1_thresholds(p[idx], y[idx])[0])
        assert srt.fit("global", w)[0] == global_threshold(p[idx], y[idx])[0]
        np.testing.assert_array_equal(apply_thresholds(p[idx], srt.fit("ratio", w)),
                                      apply_thresholds(p[idx], ratio_thresholds(p[idx], y[idx])))


def _noisy(n=400, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.uint8)
    return y, np.clip(0.35 * y + rng.random((n, c)) * 0.65, 0, 1)


def test_cross_fitted_f1_scores_on_images_the_thresholds_were_not_fitted_on():
    """The int8 gate scored both models at the run's thresholds, fitted on the very images it
    scored: fp32 was flattered and int8 looked worse than it is. cross_fitted_f1 fits on one half
    and scores the other: here the fp32 F1 at thresholds fitted on all images is higher than the
    cross-fitted one, and a copy of the model whose probabilities differ by small noise loses less
    when it is scored on images the thresholds never saw."""
    y, p = _noisy()
    noisy = np.clip(p + np.random.default_rng(1).normal(0, 0.03, p.shape), 0, 1)
    in_sample = ThresholdOptimizer(n_bootstrap=50).fit(p, y)
    f_in = [macro_f1(y, in_sample.predict(m)) for m in (p, noisy)]
    r = cross_fitted_f1(y, p, noisy, n_splits=10)
    assert r["f1"][0] < f_in[0]                              # the in-sample figure flatters the reference
    assert r["change"][0] > f_in[1] - f_in[0]                # ... and makes the other model look worse
    assert r["change_sd"][0] > 0 and len(r["f1"]) == 2


def test_cross_fitted_f1_same_model_and_a_worse_one():
    y, p = _noisy(seed=2)
    assert cross_fitted_f1(y, p, p, n_splits=3)["change"] == [0.0]
    worse = p.copy()
    worse[:, 0] = np.random.default_rng(3).random(len(p))   # class 0 now random
    assert cross_fitted_f1(y, p, worse, n_splits=3)["change"][0] < -0.05
    with pytest.raises(InputError, match="shape"):
        cross_fitted_f1(y, p, p[:, :2])
