"""The numbers and matplotlib figures behind ``protloc report``.

Pure functions: arrays in, numbers or a ``matplotlib.figure.Figure`` out (no pyplot state, so
they are safe in threads and in the web app). ``y`` is the (N, C) multi-hot truth, ``probs``
the (N, C) probabilities, ``thresholds`` the (C,) per-class cut (a label is predicted when
``prob >= threshold``).
"""

from __future__ import annotations

import numpy as np

POS, NEG, THR = "#2a9d8f", "#8d99ae", "#d62828"


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------
def calibration_bins(y, probs, *, n_bins: int = 10):
    """Reliability table over all (image, class) pairs.

    Returns ``(mean_prob, frac_positive, count)`` per equal-width bin (NaN for empty bins).

    Examples
    --------
    >>> m, f, n = calibration_bins([[1, 0], [1, 0]], [[0.95, 0.05], [0.85, 0.15]], n_bins=2)
    >>> f.tolist(), n.tolist()
    ([0.0, 1.0], [2, 2])
    """
    y = np.asarray(y, float).ravel()
    p = np.asarray(probs, float).ravel()
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, p, n_bins) / count
        frac = np.bincount(b, y, n_bins) / count
    return mean_p, frac, count


def expected_calibration_error(y, probs, *, n_bins: int = 10) -> float:
    """Count-weighted mean |confidence - accuracy| over the reliability bins.

    Examples
    --------
    >>> expected_calibration_error([[1], [0]], [[1.0], [0.0]])
    0.0
    """
    m, f, n = calibration_bins(y, probs, n_bins=n_bins)
    ok = n > 0
    return float(np.sum(n[ok] * np.abs(m[ok] - f[ok])) / max(n.sum(), 1))


def cooccurrence_matrix(y_true, y_pred) -> np.ndarray:
    """``M[i, j]`` = images whose truth has class i and whose prediction has class j.

    The diagonal counts true positives; off-diagonal cells show which classes are predicted
    alongside (or instead of) a true class.

    Examples
    --------
    >>> cooccurrence_matrix([[1, 0], [1, 1]], [[0, 1], [1, 1]]).tolist()
    [[1, 2], [1, 1]]
    """
    t = np.asarray(y_true, np.int64)
    p = np.asarray(y_pred, np.int64)
    return t.T @ p


def worst_errors(y, probs, thresholds, *, k: int = 3):
    """Per class, the ``k`` most confident false positives and the ``k`` worst false negatives.

    Returns ``[(fp_rows, fn_rows), ...]`` per class: row indices, FP by descending probability
    (negatives at or above threshold), FN by ascending probability (positives below it).

    Examples
    --------
    >>> worst_errors([[0], [1], [0]], [[0.9], [0.2], [0.6]], [0.5], k=1)
    [([0], [1])]
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(probs, float)
    thr = np.asarray(thresholds, float)
    out = []
    for c in range(y.shape[1]):
        fp = np.flatnonzero(~y[:, c] & (p[:, c] >= thr[c]))
        fn = np.flatnonzero(y[:, c] & (p[:, c] < thr[c]))
        fp = fp[np.argsort(-p[fp, c], kind="stable")][:k]
        fn = fn[np.argsort(p[fn, c], kind="stable")][:k]
        out.append((fp.tolist(), fn.tolist()))
    return out


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _fig(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _grid(n, *, ncols=5, w=2.6, h=2.2):
    ncols = min(ncols, max(n, 1))
    nrows = int(np.ceil(n / ncols))
    fig = _fig(w * ncols, h * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _short(name: str, n: int = 24) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def training_curves(metrics):
    """Loss (train solid, validation dashed) and validation macro F1 per epoch, a colour per fold."""
    import pandas as pd

    df = pd.DataFrame(metrics).copy()
    if "fold" not in df:
        df["fold"] = 0
    x = "epoch" if "epoch" in df else None
    f1_cols = [c for c in ("val_macro_f1", "val_f1") if c in df] or [c for c in df if "f1" in c.lower()]
    fig = _fig(11, 3.4)
    ax_l, ax_f = fig.subplots(1, 2)
    for k, (fold, g) in enumerate(df.groupby("fold", sort=True)):
        g = g.sort_values(x) if x else g
        xs = g[x] if x else np.arange(len(g))
        color = f"C{k % 10}"
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in g and g[col].notna().any():
                ax_l.plot(xs, g[col], style, color=color, marker=".", label=f"fold {fold} {col.split('_')[0]}")
        if f1_cols and g[f1_cols[0]].notna().any():
            ax_f.plot(xs, g[f1_cols[0]], "-", color=color, marker="o", ms=3, label=f"fold {fold}")
    ax_l.set(title="loss (solid: train, dashed: validation)", xlabel="epoch", ylabel="loss")
    ax_f.set(title="validation macro F1", xlabel="epoch", ylabel="macro F1")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_l, ax_f):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    return fig


def pr_curves(y, probs, thresholds, classes):
    """One precision-recall curve per class; the dot marks the chosen threshold."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(y).astype(bool)
    p = np.asarray(probs, float)
    fig, axes = _grid(len(classes))
    for c, name in enumerate(classes):
        ax = axes[c]
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if not y[:, c].any():
            ax.text(0.5, 0.5, "no positives", ha="center", va="center", color="#777")
            ax.set_title(_short(name), fontsize=9)
            continue
        prec, rec, _ = precision_recall_curve(y[:, c], p[:, c])
        ax.plot(rec, prec, color=POS, lw=1.5)
        pred = p[:, c] >= thresholds[c]
        tp = float((pred & y[:, c]).sum())
        r = tp / y[:, c].sum()
        pr = tp / pred.sum() if pred.any() else 1.0
        ax.plot([r], [pr], "o", color=THR, ms=6, label=f"t={thresholds[c]:.2f}")
        ax.axhline(y[:, c].mean(), color=NEG, lw=0.8, ls=":")
        ax.set_title(f"{_short(name)}\nAP={average_precision_score(y[:, c], p[:, c]):.2f}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax.tick_params(labelsize=7)
    for ax in axes[: len(classes)]:
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
    return fig


def _density(values, grid):
    from scipy.stats import gaussian_kde

    v = np.asarray(values, float)
    if len(v) >= 3 and np.ptp(v) > 1e-6:
        try:
            return gaussian_kde(v)(grid)
        except (np.linalg.LinAlgError, ValueError):
            pass
    hist, edges = np.histogram(v, bins=20, range=(0, 1), density=True)
    return np.interp(grid, (edges[:-1] + edges[1:]) / 2, hist)


def prob_densities(y, probs, thresholds, classes):
    """Per class, the density (KDE) of predicted probability for positives vs negatives."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(probs, float)
    grid = np.linspace(0, 1, 201)
    fig, axes = _grid(len(classes))
    for c, name in enumerate(classes):
        ax = axes[c]
        peaks = {}
        for mask, color, label in ((~y[:, c], NEG, "negatives"), (y[:, c], POS, "positives")):
            if mask.sum():
                d = _density(p[mask, c], grid)
                peaks[label] = float(d.max())
                ax.fill_between(grid, d, color=color, alpha=0.35, lw=0)
                ax.plot(grid, d, color=color, lw=1.2, label=label)
        ax.axvline(thresholds[c], color=THR, ls="--", lw=1.2, label="threshold")
        ax.set_xlim(0, 1)
        if "positives" in peaks and peaks.get("negatives", 0) > 4 * peaks["positives"]:
            ax.set_ylim(0, 4 * peaks["positives"] * 1.1)  # negatives' spike cut so positives stay visible
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(f"{_short(name)}\n{int(y[:, c].sum())} pos / {int((~y[:, c]).sum())} neg, "
                     f"t={thresholds[c]:.2f}", fontsize=9)
        ax.set_xlabel("predicted probability", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=3, fontsize=8, frameon=False)
    return fig


def reliability(y, probs, *, n_bins: int = 10):
    """Reliability diagram (all classes pooled) and how many predictions fall in each bin."""
    m, f, n = calibration_bins(y, probs, n_bins=n_bins)
    ece = expected_calibration_error(y, probs, n_bins=n_bins)
    fig = _fig(10, 3.6)
    ax, ax2 = fig.subplots(1, 2)
    ax.plot([0, 1], [0, 1], ":", color=NEG, label="perfectly calibrated")
    ok = n > 0
    ax.plot(m[ok], f[ok], "o-", color=POS, label="model")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="fraction positive",
           title=f"reliability (all classes pooled), ECE={ece:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    edges = np.linspace(0, 1, n_bins + 1)
    ax2.bar(edges[:-1], n, width=1 / n_bins, align="edge", color=POS, alpha=0.7, edgecolor="white")
    ax2.set_yscale("log")
    ax2.set(xlim=(0, 1), xlabel="predicted probability", ylabel="(image, class) pairs",
            title="predictions per bin")
    return fig


def cooccurrence(y_true, y_pred, classes):
    """Heatmap of true class (rows) vs predicted class (columns), shares of each true class."""
    mat = cooccurrence_matrix(y_true, y_pred)
    support = np.asarray(y_true).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = mat / np.maximum(support[:, None], 1)
    c = len(classes)
    fig = _fig(max(5.5, 0.5 * c + 2.5), max(4.0, 0.42 * c + 1.8))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            if mat[i, j]:
                ax.text(j, i, str(int(mat[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.55 else "#1d2430")
    labels = [_short(n, 18) for n in classes]
    ax.set_xticks(range(c), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), [f"{lab} ({int(s)})" for lab, s in zip(labels, support)], fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class (support)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class's images")
    return fig


def ood_scores(groups: dict, *, threshold: float = 1.0):
    """Histogram of out-of-distribution scores, one colour per group (``{name: scores}``), on a
    log x axis with the flag threshold (1.0) marked; the legend gives each group's flagged share.

    Examples
    --------
    >>> fig = ood_scores({"validation": np.array([0.5, 0.8, 1.2])})
    >>> len(fig.axes)
    1
    """
    fig = _fig(7.5, 3.2)
    ax = fig.subplots()
    vals = [np.asarray(v, float) for v in groups.values() if len(v)]
    allv = np.concatenate(vals) if vals else np.array([threshold])
    allv = allv[np.isfinite(allv) & (allv > 0)]
    lo, hi = (min(allv.min(), threshold) * 0.8, max(allv.max(), threshold) * 1.25) if len(allv) else (0.1, 10)
    bins = np.geomspace(lo, hi, 40)
    colors = [POS, "#e76f51", "#264653", "#e9c46a", NEG, "#9b5de5", "#f15bb5", "#00bbf9"]
    for k, (name, v) in enumerate(groups.items()):
        c = colors[k % len(colors)]
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        share = float((v > threshold).mean())
        ax.hist(np.clip(v, lo, hi), bins=bins, color=c, alpha=0.55, density=True,
                label=f"{name}: {len(v)} images, {100 * share:.1f} % flagged")
    ax.axvline(threshold, color=THR, ls="--", lw=1.2, label="flag threshold")
    ax.set_xscale("log")
    ax.set(xlabel="out-of-distribution score (1 = threshold)", ylabel="density",
           title="how far images are from the training images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
