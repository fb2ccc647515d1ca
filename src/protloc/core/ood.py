"""Is an image like the training images? Out-of-distribution scores (pure numpy statistics).

At training time each fold's model describes its typical inputs twice:

- **features**: the network's pooled features (what its classifier head sees) of the training
  images, summarised by their mean and a Ledoit-Wolf shrunk covariance; a new image's distance
  is its Mahalanobis distance to them;
- **pixels**: cheap per-channel statistics of the model's uint8 input (:func:`image_stats`:
  mean, spread and foreground fraction), also as a Gaussian and a Mahalanobis distance.

Both distances are divided by their median on held-out validation images (never trained on),
the larger of the two is the raw score, and the flag threshold is its ``quantile`` (default
0.99) on those validation images. The score reported for an image is ``raw / threshold``: 1.0
is the threshold, so ``ood_score > 1`` is flagged and about 1 % of images like the validation
images are flagged by construction. :class:`OODDetector` is a scikit-learn style estimator
(``fit`` on training images, ``calibrate`` on held-out images, ``score``); it is saved next to
each fold model (``models/fold{k}.ood.npz``) and read back by :meth:`OODDetector.load`.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> train, val = rng.normal(size=(400, 8)), rng.normal(size=(200, 8))
>>> stats = lambda n: rng.normal(size=(n, 3))
>>> det = OODDetector().fit(train, stats(400)).calibrate(val, stats(200))
>>> far = det.score(rng.normal(size=(50, 8)) + 6, stats(50))
>>> bool((far > 1).all()), round(float((det.score(rng.normal(size=(500, 8)), stats(500)) > 1).mean()), 2) < 0.05
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError

__all__ = ["image_stats", "STAT_NAMES", "ledoit_wolf", "Gaussian", "OODDetector", "combine_folds"]

#: the per-channel statistics of :func:`image_stats`, in order
STAT_NAMES = ("mean", "std", "foreground")
#: pixels above this uint8 level count as foreground in :func:`image_stats`
FOREGROUND_LEVEL = 64


def image_stats(batch: np.ndarray) -> np.ndarray:
    """Per-channel mean, standard deviation and foreground fraction (pixels > 64) of uint8
    (N, H, W, C) images, in [0, 1]: (N, 3 * C) float32, channel by channel.

    Examples
    --------
    >>> b = np.zeros((1, 4, 4, 2), np.uint8); b[0, :2, :, 1] = 255
    >>> image_stats(b).round(2).tolist()
    [[0.0, 0.0, 0.0, 0.5, 0.5, 0.5]]
    """
    b = np.asarray(batch)
    if b.ndim != 4:
        raise InputError("images", expected="a uint8 batch (N, H, W, C)", got=f"shape {b.shape}",
                         fix="stack the images along a first axis")
    x = b.reshape(b.shape[0], -1, b.shape[-1]).astype(np.float32) / 255.0
    fg = (b.reshape(b.shape[0], -1, b.shape[-1]) > FOREGROUND_LEVEL).mean(1)
    out = np.stack([x.mean(1), x.std(1), fg], axis=-1)  # (N, C, 3)
    return out.reshape(b.shape[0], -1).astype(np.float32)


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


class OODDetector:
    """Out-of-distribution scores from features and image statistics (see the module docstring).

    Parameters
    ----------
    quantile : float   share of held-out validation images scored at or below the threshold

    Attributes (after ``fit`` and ``calibrate``)
    ---------------------------------------------
    features_, stats_ : Gaussian   the training images' references
    scale_ : ndarray (2,)          median feature and statistics distances on validation images
    threshold_ : float             the ``quantile`` of the combined validation score
    val_scores_ : ndarray          the validation images' scores (``raw / threshold``)
    n_train_, n_val_ : int
    """

    def __init__(self, quantile: float = 0.99):
        if not 0.5 <= float(quantile) < 1:
            raise InputError("OOD quantile", expected="a number in [0.5, 1)", got=str(quantile), fix="e.g. 0.99")
        self.quantile = float(quantile)

    def fit(self, features: np.ndarray, stats: np.ndarray) -> "OODDetector":
        """Describe the training images: their features (N, F) and :func:`image_stats` (N, S)."""
        self.features_ = Gaussian.fit(features)
        self.stats_ = Gaussian.fit(stats)
        self.n_train_ = int(len(features))
        return self

    def distances(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Raw Mahalanobis distances (N, 2): features, image statistics."""
        return np.stack([self.features_.distance(features), self.stats_.distance(stats)], axis=1)

    def calibrate(self, features: np.ndarray, stats: np.ndarray) -> "OODDetector":
        """Set the scales and the threshold on held-out images (never used in ``fit``)."""
        d = self.distances(features, stats)
        if len(d) < 2:
            raise InputError("OOD calibration", expected="at least 2 held-out images", got=str(len(d)),
                             fix="use a validation split (--folds K or --val-fraction)")
        self.scale_ = np.maximum(np.median(d, axis=0), 1e-6).astype(np.float32)
        raw = (d / self.scale_).max(1)
        self.threshold_ = float(np.quantile(raw, self.quantile))
        self.val_scores_ = (raw / self.threshold_).astype(np.float32)
        self.n_val_ = int(len(d))
        return self

    def score(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Scores (N,): the larger scaled distance over the threshold; > 1 is out of distribution."""
        return ((self.distances(features, stats) / self.scale_).max(1) / self.threshold_).astype(np.float32)

    def parts(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """(N, 2) the feature and the statistics score alone (each over the threshold)."""
        return (self.distances(features, stats) / self.scale_ / self.threshold_).astype(np.float32)

    # ------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        from protloc.core.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, version=np.int64(1), quantile=self.quantile, feat_mean=self.features_.mean,
                         feat_precision=self.features_.precision, stat_mean=self.stats_.mean,
                         stat_precision=self.stats_.precision, scale=self.scale_, threshold=self.threshold_,
                         val_scores=self.val_scores_, n_train=self.n_train_, n_val=self.n_val_)
        return path

    @classmethod
    def load(cls, path) -> "OODDetector":
        path = Path(path)
        fix = "retrain the run, or delete the file (predictions then carry no OOD score)"
        try:
            with np.load(path) as z:
                det = cls(float(z["quantile"]))
                det.features_ = Gaussian(z["feat_mean"], z["feat_precision"])
                det.stats_ = Gaussian(z["stat_mean"], z["stat_precision"])
                det.scale_, det.threshold_ = z["scale"], float(z["threshold"])
                det.val_scores_ = z["val_scores"]
                det.n_train_, det.n_val_ = int(z["n_train"]), int(z["n_val"])
        except FileNotFoundError:
            raise RunFolderError(f"{path}: missing", fix=fix) from None
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise RunFolderError(f"{path}: unreadable OOD reference ({type(e).__name__})", fix=fix) from None
        return det

    @property
    def n_features(self) -> int:
        return int(self.features_.mean.shape[0])


def combine_folds(scores) -> np.ndarray:
    """One score per image from the scores of several fold models (N,) each: their mean.

    Examples
    --------
    >>> combine_folds([np.array([0.5, 2.0]), np.array([0.7, 1.6])]).tolist()
    [0.6000000238418579, 1.7999999523162842]
    """
    return np.mean(np.stack([np.asarray(s, np.float32) for s in scores]), axis=0).astype(np.float32)
