"""Is an image like the training images? Out-of-distribution scores (pure numpy statistics).

At training time each fold describes its typical inputs three ways (``models/fold{k}.ood.npz``):

- **pixels**: per-channel statistics of the model's uint8 input (:func:`image_stats`: mean,
  spread, foreground share, the 50/90/99th percentiles, high-frequency share, edge sharpness,
  and the correlation of every pair of channels), summarised as a Gaussian (mean and Ledoit-Wolf
  shrunk covariance): a new image's part is its Mahalanobis distance;
- **channel order**: a logistic regression that tells the training images' per-channel
  statistics from the same statistics with the channels permuted (every other order of the
  run's channels): an image whose channels are in another order, or whose channels do not look
  like the run's, scores high;
- **features**: the network's pooled features (what its classifier head sees) of up to 2,000
  training images; the part is one minus the cosine similarity to the 20th nearest of them
  (nearest-neighbour distance in the features: it looks at content, not pixels).

Each part is centred on its median and divided by its spread to the 99th percentile on the fold's
held-out validation images (never trained on); the score is the largest part divided by its own
``quantile`` (default 0.99) on those validation images. So ``ood_score`` 1.0 is the threshold,
``> 1`` is flagged, and about 1 % of images like the validation images are flagged by
construction. :class:`OODDetector` is a scikit-learn style estimator (``fit`` on training
images, ``calibrate`` on held-out images, ``score``), saved next to each fold model and read
back by :meth:`OODDetector.load`. ``benchmarks/bench_ood.py`` chose these parts on selection
inputs and measures them on others (docs/images.md).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> imgs = lambda n, hi=60: rng.integers(0, hi, (n, 16, 16, 2)).astype(np.uint8)
>>> feats = lambda n, shift=0.0: rng.normal(size=(n, 8)) + 3 + shift
>>> det = OODDetector().fit(feats(300), image_stats(imgs(300))).calibrate(feats(200), image_stats(imgs(200)))
>>> bool((det.score(feats(20), image_stats(imgs(20, hi=255))) > 1).all())   # brighter than anything seen
True
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError

__all__ = ["image_stats", "channel_stats_names", "ledoit_wolf", "Gaussian", "ChannelOrder", "FeatureKNN",
           "OODDetector", "combine_folds", "PARTS"]

#: the per-channel statistics of :func:`image_stats`, in order (then the channel-pair correlations)
STAT_NAMES = ("mean", "std", "foreground", "p50", "p90", "p99", "high_frequency", "sharpness")
#: pixels above this uint8 level count as foreground
FOREGROUND_LEVEL = 64
#: the parts of the score, in the order of :meth:`OODDetector.parts`
PARTS = ("pixels", "channel_order", "features")


def image_stats(batch: np.ndarray) -> np.ndarray:
    """Per-channel statistics of uint8 (N, H, W, C) images, then the correlation of each channel
    pair: (N, 8 * C + C * (C - 1) / 2) float32. Channel c's statistics are columns
    ``8 c .. 8 c + 7`` (:data:`STAT_NAMES`), intensities in [0, 1].

    Examples
    --------
    >>> b = np.zeros((1, 4, 4, 2), np.uint8); b[0, :2, :, 1] = 255; b[0, :, :2, 0] = 255
    >>> s = image_stats(b)
    >>> s.shape, s[0, [0, 2, 8, 10]].round(2).tolist(), round(float(s[0, -1]), 2)   # means, foregrounds, corr
    ((1, 17), [0.5, 0.5, 0.5, 0.5], 0.0)
    """
    b = np.asarray(batch)
    if b.ndim != 4:
        raise InputError("images", expected="a uint8 batch (N, H, W, C)", got=f"shape {b.shape}",
                         fix="stack the images along a first axis")
    if b.dtype != np.uint8:
        b = np.clip(b, 0, 255).astype(np.uint8)
    if len(b) == 0:
        return np.zeros((0, len(channel_stats_names(b.shape[-1]))), np.float32)
    # chunks of 8 images keep the float copies in cache: 2.8x faster than the whole batch at
    # once (benchmarks/bench_predict.py, issue 13)
    return np.concatenate([_stats_chunk(b[s:s + STATS_CHUNK]) for s in range(0, len(b), STATS_CHUNK)])


#: images per chunk of :func:`image_stats`
STATS_CHUNK = 8


def _stats_chunk(b: np.ndarray) -> np.ndarray:
    """:func:`image_stats` of a few uint8 (n, H, W, C) images."""
    n, h, w, c = b.shape
    npx = h * w
    x = np.ascontiguousarray(b.transpose(0, 3, 1, 2))  # (n, c, h, w): each channel plane contiguous
    # one 256-bin histogram per image and channel gives the mean, spread, foreground and the
    # percentiles exactly (numpy's linear interpolation), without float copies of the pixels
    hist = np.empty((n, c, 256), np.float64)
    for i in range(n):
        for k in range(c):
            hist[i, k] = np.bincount(x[i, k].ravel(), minlength=256)
    v = np.arange(256, dtype=np.float64)
    mean = hist @ v / npx
    var = np.maximum(hist @ (v * v) / npx - mean ** 2, 0.0)
    mean, var = mean / 255.0, var / 255.0 ** 2
    std = np.sqrt(var)
    cols = [mean, std, hist[..., FOREGROUND_LEVEL + 1:].sum(-1) / npx]
    cum = np.cumsum(hist, -1)
    for q in (50, 90, 99):
        at = q / 100.0 * (npx - 1)
        lo, hi = np.floor(at), np.ceil(at)
        v_lo, v_hi = (cum <= lo).sum(-1), (cum <= hi).sum(-1)  # sorted values at positions lo, hi
        cols.append((v_lo + (v_hi - v_lo) * (at - lo)) / 255.0)
    f = x.astype(np.float32)  # integers: every sum of a few of them is exact in float32
    if h > 2 and w > 2:
        lap = 4 * f[:, :, 1:-1, 1:-1]
        for view in (f[:, :, :-2, 1:-1], f[:, :, 2:, 1:-1], f[:, :, 1:-1, :-2], f[:, :, 1:-1, 2:]):
            lap -= view
        lap = lap.reshape(n, c, -1)
        lap2 = np.einsum("ncp,ncp->nc", lap, lap).astype(np.float64) / ((h - 2) * (w - 2)) / 255.0 ** 2
        cols.append(np.log(lap2 + 1e-6) - np.log(var + 1e-6))
        gy = f[:, :, 1:, :-1] - f[:, :, :-1, :-1]
        gx = f[:, :, :-1, 1:] - f[:, :, :-1, :-1]
        gy *= gy
        gx *= gx
        gx += gy
        np.sqrt(gx, out=gx)
        grad = gx.reshape(n, c, -1).sum(-1, dtype=np.float64) / ((h - 1) * (w - 1)) / 255.0
        cols.append(grad / (std + 1e-3))
    else:
        cols += [np.zeros_like(mean), np.zeros_like(mean)]
    per = np.stack(cols, axis=-1).reshape(n, -1)  # channel-major: c0's 8 statistics, then c1's...
    if c < 2:
        return per.astype(np.float32)
    ff = f.reshape(n, c, npx)
    gram = np.matmul(ff, ff.transpose(0, 2, 1)).astype(np.float64) / npx / 255.0 ** 2  # E[x_i x_j]
    sd = std + 1e-6
    cor = [(gram[:, i, j] - mean[:, i] * mean[:, j]) / (sd[:, i] * sd[:, j]) for i in range(c) for j in range(i + 1, c)]
    return np.concatenate([per, np.stack(cor, 1)], axis=1).astype(np.float32)


def channel_stats_names(n_channels: int) -> list[str]:
    """Column names of :func:`image_stats` for ``n_channels`` channels.

    Examples
    --------
    >>> channel_stats_names(2)[:2], channel_stats_names(2)[-1]
    (['c0 mean', 'c0 std'], 'corr c0-c1')
    """
    return ([f"c{c} {s}" for c in range(n_channels) for s in STAT_NAMES]
            + [f"corr c{i}-c{j}" for i in range(n_channels) for j in range(i + 1, n_channels)])


def ledoit_wolf(X: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``X``: ``(covariance, shrinkage)``.

    ``(1 - s) * S + s * mu * I`` with ``S`` the empirical covariance, ``mu`` its mean variance and
    ``s`` the shrinkage that minimises the expected squared error (the same estimate as
    ``sklearn.covariance.ledoit_wolf``).

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(30, 5))
    >>> cov, s = ledoit_wolf(X)
    >>> cov.shape, 0 <= s <= 1
    ((5, 5), True)
    """
    X = np.asarray(X, np.float64)
    n, p = X.shape
    Xc = X - X.mean(0)
    emp = Xc.T @ Xc / n
    X2 = Xc ** 2
    mu = np.trace(emp) / p
    beta_ = float(np.sum(X2.T @ X2))
    delta_ = float(np.sum(emp ** 2))
    beta = 1.0 / (p * n) * (beta_ / n - delta_)
    delta = (delta_ - 2.0 * mu * np.trace(emp) + p * mu ** 2) / p
    beta = min(beta, delta)
    s = 0.0 if beta == 0 or delta == 0 else beta / delta
    cov = (1.0 - s) * emp
    cov.flat[:: p + 1] += s * mu
    return cov, float(s)


@dataclass
class Gaussian:
    """Mean and precision (inverse shrunk covariance) of a set of vectors; Mahalanobis distances.

    Examples
    --------
    >>> g = Gaussian.fit(np.random.default_rng(0).normal(size=(200, 3)))
    >>> d = g.distance(np.array([[0.0, 0, 0], [10, 10, 10]]))
    >>> bool(d[0] < 1 < 10 < d[1])
    True
    """

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> "Gaussian":
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or len(X) < 2:
            raise InputError("OOD reference", expected="at least 2 images", got=f"{len(X)}",
                             fix="train on more images")
        cov, _ = ledoit_wolf(X)
        w, v = np.linalg.eigh(cov)
        w = np.maximum(w, max(float(w.max()), 1e-12) * 1e-6)  # a constant dimension stays finite
        return cls(X.mean(0).astype(np.float32), ((v / w) @ v.T).astype(np.float32))

    def distance(self, X: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of the rows of ``X``."""
        d = np.asarray(X, np.float32) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0)).astype(np.float32)


class ChannelOrder:
    """A logistic regression telling per-channel statistics in the run's channel order from the
    same statistics with the channels permuted (the training images, every other order).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b = np.concatenate([rng.integers(0, 40, (200, 8, 8, 1)), rng.integers(100, 255, (200, 8, 8, 1))], -1)
    >>> co = ChannelOrder().fit(image_stats(b.astype(np.uint8)), n_channels=2)
    >>> bool(co.logit(image_stats(b[:5, ..., ::-1].astype(np.uint8))).min() > co.logit(image_stats(b[:5].astype(np.uint8))).max())
    True
    """

    def __init__(self, lam: float = 1e-2, iters: int = 30):
        self.lam, self.iters = float(lam), int(iters)

    @staticmethod
    def _per_channel(stats: np.ndarray, n_channels: int) -> np.ndarray:
        return np.asarray(stats, np.float64)[:, : len(STAT_NAMES) * n_channels]

    def fit(self, stats: np.ndarray, *, n_channels: int, max_orders: int = 23) -> "ChannelOrder":
        self.n_channels = int(n_channels)
        per = self._per_channel(stats, n_channels).reshape(len(stats), n_channels, -1)
        orders = [p for p in permutations(range(n_channels)) if list(p) != list(range(n_channels))][:max_orders]
        X = np.concatenate([per.reshape(len(per), -1)] + [per[:, list(p)].reshape(len(per), -1) for p in orders])
        y = np.r_[np.zeros(len(per)), np.ones(len(per) * len(orders))]
        self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-6
        Xs = np.c_[(X - self.mean_) / self.scale_, np.ones(len(X))]
        wts = np.r_[np.full(len(per), float(len(orders))), np.ones(len(per) * len(orders))]  # balanced classes
        w = np.zeros(Xs.shape[1])
        reg = self.lam * np.r_[np.ones(len(w) - 1), 0.0]
        for _ in range(self.iters):  # Newton steps (IRLS)
            p = 1 / (1 + np.exp(-np.clip(Xs @ w, -30, 30)))
            g = Xs.T @ (wts * (p - y)) + reg * w
            H = (Xs * (wts * p * (1 - p))[:, None]).T @ Xs + np.diag(reg + 1e-9)
            w -= np.linalg.solve(H, g)
        self.coef_ = w
        return self

    def logit(self, stats: np.ndarray) -> np.ndarray:
        """(N,) log-odds that the channels are not in the run's order (or do not look like its channels)."""
        X = self._per_channel(stats, self.n_channels)
        return (np.c_[(X - self.mean_) / self.scale_, np.ones(len(X))] @ self.coef_).astype(np.float32)


class FeatureKNN:
    """Cosine distance to the ``k``-th nearest reference feature vector (L2-normalised, float16).

    Examples
    --------
    >>> ref = np.random.default_rng(0).normal(size=(100, 8)) + 5
    >>> knn = FeatureKNN(k=5).fit(ref)
    >>> bool(knn.distance(ref[:3]).max() < knn.distance(-ref[:3]).min())
    True
    """

    def __init__(self, k: int = 20):
        self.k = int(k)

    @staticmethod
    def _unit(F) -> np.ndarray:
        F = np.asarray(F, np.float32)
        return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)

    def fit(self, features: np.ndarray, *, max_ref: int = 2000, seed: int = 0) -> "FeatureKNN":
        F = np.asarray(features)
        if len(F) > max_ref:
            F = F[np.sort(np.random.default_rng(seed).choice(len(F), max_ref, replace=False))]
        self.ref_ = self._unit(F).astype(np.float16)
        self.k = min(self.k, len(self.ref_))
        return self

    def distance(self, features: np.ndarray) -> np.ndarray:
        # the float32 copy of the (float16) references is made once, not per call: converting
        # 2,000 x 1,280 float16 values took 14 ms of every 64-image batch, holding the GIL
        src, ref = getattr(self, "_ref32", (None, None))
        if src is not self.ref_:  # first call, or ref_ was replaced (fit, load)
            ref = self.ref_.astype(np.float32)
            self._ref32 = (self.ref_, ref)
        sims = self._unit(features) @ ref.T
        kth = -np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1]
        return (1.0 - kth).astype(np.float32)


class OODDetector:
    """Out-of-distribution scores from pixel statistics, channel order and features (see the
    module docstring).

    Parameters
    ----------
    quantile : float   share of held-out validation images scored at or below the threshold

    Attributes (after ``fit`` and ``calibrate``)
    ---------------------------------------------
    stats_ : Gaussian        the training images' :func:`image_stats`
    order_ : ChannelOrder or None   (None for a one-channel run)
    features_ : FeatureKNN   reference features of (up to 2,000) training images
    center_, spread_ : ndarray (3,)   each part's median and (99th percentile - median) on validation
    threshold_ : float       the ``quantile`` of the combined validation score
    val_scores_ : ndarray    the validation images' scores (``raw / threshold``)
    n_train_, n_val_ : int
    """

    def __init__(self, quantile: float = 0.99):
        if not 0.5 <= float(quantile) < 1:
            raise InputError("OOD quantile", expected="a number in [0.5, 1)", got=str(quantile), fix="e.g. 0.99")
        self.quantile = float(quantile)

    def fit(self, features: np.ndarray, stats: np.ndarray, *, seed: int = 0) -> "OODDetector":
        """Describe the training images: their features (N, F) and :func:`image_stats` (N, S)."""
        stats = np.asarray(stats)
        n_ch = _n_channels(stats.shape[1])
        self.stats_ = Gaussian.fit(stats)
        self.order_ = ChannelOrder().fit(stats, n_channels=n_ch) if n_ch > 1 else None
        self.features_ = FeatureKNN().fit(features, seed=seed)
        self.n_train_ = int(len(features))
        return self

    def distances(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Raw parts (N, 3): pixel-statistics distance, channel-order log-odds, feature distance."""
        order = self.order_.logit(stats) if self.order_ is not None else np.zeros(len(stats), np.float32)
        return np.stack([self.stats_.distance(stats), order, self.features_.distance(features)], axis=1)

    def calibrate(self, features: np.ndarray, stats: np.ndarray) -> "OODDetector":
        """Set each part's scale and the threshold on held-out images (never used in ``fit``)."""
        d = self.distances(features, stats)
        if len(d) < 2:
            raise InputError("OOD calibration", expected="at least 2 held-out images", got=str(len(d)),
                             fix="use a validation split (--folds K or --val-fraction)")
        self.center_ = np.median(d, axis=0).astype(np.float32)
        self.spread_ = np.maximum(np.quantile(d, self.quantile, axis=0) - self.center_, 1e-6).astype(np.float32)
        raw = self._raw(d)
        self.threshold_ = float(max(np.quantile(raw, self.quantile), 1e-6))
        self.val_scores_ = (raw / self.threshold_).astype(np.float32)
        self.n_val_ = int(len(d))
        return self

    def _scaled(self, d: np.ndarray) -> np.ndarray:
        s = (d - self.center_) / self.spread_
        if self.order_ is None:
            s[:, 1] = -np.inf
        return s

    def _raw(self, d: np.ndarray) -> np.ndarray:
        # shifted so that a typical image is ~1 part-spread below the threshold; max over parts
        return np.maximum(self._scaled(d).max(1) + 1.0, 1e-3)

    def score(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Scores (N,): the largest scaled part over the threshold; > 1 is out of distribution."""
        return (self._raw(self.distances(features, stats)) / self.threshold_).astype(np.float32)

    def parts(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """(N, 3) each part's score alone (:data:`PARTS`, over the same threshold)."""
        s = np.maximum(self._scaled(self.distances(features, stats)) + 1.0, 1e-3)
        return (s / self.threshold_).astype(np.float32)

    # ------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        from protloc.core.atomic import atomic_path

        path = Path(path)
        o = self.order_
        arrays = dict(version=np.int64(2), quantile=self.quantile, stat_mean=self.stats_.mean,
                      stat_precision=self.stats_.precision, knn_ref=self.features_.ref_, knn_k=self.features_.k,
                      center=self.center_, spread=self.spread_, threshold=self.threshold_,
                      val_scores=self.val_scores_, n_train=self.n_train_, n_val=self.n_val_)
        if o is not None:
            arrays.update(order_coef=o.coef_, order_mean=o.mean_, order_scale=o.scale_, order_channels=o.n_channels)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path) -> "OODDetector":
        path = Path(path)
        fix = "retrain the run, or delete the file (predictions then carry no OOD score)"
        try:
            with np.load(path) as z:
                if int(z["version"]) != 2:
                    raise ValueError(f"version {int(z['version'])}")
                det = cls(float(z["quantile"]))
                det.stats_ = Gaussian(z["stat_mean"], z["stat_precision"])
                det.features_ = FeatureKNN(int(z["knn_k"]))
                det.features_.ref_ = z["knn_ref"]
                det.order_ = None
                if "order_coef" in z:
                    det.order_ = ChannelOrder()
                    det.order_.coef_, det.order_.mean_ = z["order_coef"], z["order_mean"]
                    det.order_.scale_, det.order_.n_channels = z["order_scale"], int(z["order_channels"])
                det.center_, det.spread_, det.threshold_ = z["center"], z["spread"], float(z["threshold"])
                det.val_scores_ = z["val_scores"]
                det.n_train_, det.n_val_ = int(z["n_train"]), int(z["n_val"])
        except FileNotFoundError:
            raise RunFolderError(f"{path}: missing", fix=fix) from None
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise RunFolderError(f"{path}: unreadable OOD reference ({type(e).__name__}: {e})", fix=fix) from None
        return det

    @property
    def n_features(self) -> int:
        return int(self.features_.ref_.shape[1])


def _n_channels(n_stats: int) -> int:
    """The channel count C of :func:`image_stats` columns (8 C + C (C - 1) / 2)."""
    for c in range(1, 64):
        if len(STAT_NAMES) * c + c * (c - 1) // 2 == n_stats:
            return c
    raise InputError("image statistics", expected="the columns of image_stats", got=f"{n_stats} columns",
                     fix="compute them with protloc.core.ood.image_stats")


def combine_folds(scores) -> np.ndarray:
    """One score per image from the scores of several fold models (N,) each: their mean.

    Examples
    --------
    >>> combine_folds([np.array([0.5, 2.0]), np.array([0.7, 1.6])]).tolist()
    [0.6000000238418579, 1.7999999523162842]
    """
    return np.mean(np.stack([np.asarray(s, np.float32) for s in scores]), axis=0).astype(np.float32)
