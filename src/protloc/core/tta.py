"""Test-time augmentation views and probability merging for :mod:`protloc.inference.predictor`.

Pure helpers on (N, C, H, W) batches (numpy arrays or torch tensors): ``tta='d4'`` gives the 8
flips/rotations of the square image (deterministic order), ``'flip'`` the identity and the
horizontal flip, ``'none'`` the batch alone. :func:`merge_probs` merges the per-view (and
per-fold) probabilities with ``'mean'`` or ``'max'``.

Examples
--------
>>> x = np.zeros((2, 3, 8, 8))
>>> [v.shape for v in tta_views(x, "flip")]
[(2, 3, 8, 8), (2, 3, 8, 8)]
"""

from __future__ import annotations

import numpy as np

from protloc.inference.inputs import check_choice

TTA_MODES = ("none", "flip", "d4")
MERGES = ("mean", "max")

__all__ = ["d4_views", "tta_views", "merge_probs", "TTA_MODES", "MERGES"]


def d4_views(x):
    """The 8 dihedral views (4 rotations x optional horizontal flip) of a batch (N, C, H, W).

    Works on torch tensors and numpy arrays; the order is fixed (deterministic): view ``k`` is
    ``k % 4`` quarter turns then a horizontal flip when ``k >= 4`` (``protloc.training.augment.d4``, which
    is used for tensors), so view 0 is the input itself.

    Examples
    --------
    >>> v = d4_views(np.arange(4).reshape(1, 1, 2, 2))
    >>> len(v), v[0].ravel().tolist(), v[1].ravel().tolist()
    (8, [0, 1, 2, 3], [1, 3, 0, 2])
    """
    if isinstance(x, np.ndarray):
        rot = [np.rot90(x, k, axes=(2, 3)) for k in range(4)]
        return rot + [np.flip(r, axis=3) for r in rot]
    from protloc.training.augment import d4  # the training engine's helper (imports torch)

    return [d4(x, k) for k in range(8)]


def tta_views(x, tta: str = "none"):
    """Views of a (N, C, H, W) batch for ``tta`` in {'none', 'flip', 'd4'}.

    Examples
    --------
    >>> [len(tta_views(np.zeros((1, 1, 4, 4)), t)) for t in TTA_MODES]
    [1, 2, 8]
    """
    check_choice("tta", tta, TTA_MODES)
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, np.flip(x, axis=3) if isinstance(x, np.ndarray) else x.flip(3)]
    return d4_views(x)


def merge_probs(stack: np.ndarray, merge: str = "mean") -> np.ndarray:
    """Merge probabilities (K, N, C) over the first axis (views x folds) -> (N, C) float32.

    Examples
    --------
    >>> merge_probs(np.array([[[0.2]], [[0.6]]]), "max").tolist()
    [[0.6000000238418579]]
    """
    check_choice("merge", merge, MERGES)
    s = np.asarray(stack, dtype=np.float32)
    return (s.mean(0) if merge == "mean" else s.max(0)).astype(np.float32)
