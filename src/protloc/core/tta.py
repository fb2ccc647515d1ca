"""Test-time augmentation: the D4 group, views of a batch and probability merging.

The one TTA implementation of protloc: training (validation probabilities), the Predictor and
the web app use it. Pure helpers on (N, C, H, W) batches that work on numpy arrays and torch
tensors alike (duck typing: this module never imports torch). ``tta='d4'`` gives the 8
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

from protloc.core.errors import check_choice

TTA_MODES = ("none", "flip", "d4")
MERGES = ("mean", "max")

__all__ = ["d4", "d4_inverse", "d4_views", "tta_views", "merge_probs", "TTA_MODES", "MERGES"]


def d4(x, k: int):
    """Element ``k`` (0..7) of the dihedral group D4 applied to the last two dims.

    ``k % 4`` quarter turns (counter-clockwise, like ``np.rot90``), then a horizontal flip when
    ``k >= 4``; ``k = 0`` is the identity. ``x`` is a numpy array or a torch tensor (its own
    ``rot90``/``flip`` methods are used, so the result stays on its device).

    Examples
    --------
    >>> x = np.arange(4).reshape(1, 1, 2, 2)
    >>> d4(x, 1).ravel().tolist(), d4(x, 4).ravel().tolist()
    ([1, 3, 0, 2], [1, 0, 3, 2])
    """
    k = int(k)
    if not 0 <= k < 8:
        raise ValueError(f"d4: k must be in 0..7, got {k}")
    if isinstance(x, np.ndarray):
        y = np.rot90(x, k % 4, axes=(-2, -1)) if k % 4 else x
        return np.flip(y, axis=-1) if k >= 4 else y
    y = x.rot90(k % 4, (-2, -1)) if k % 4 else x  # torch.Tensor (or anything with rot90/flip)
    return y.flip(-1) if k >= 4 else y


def d4_inverse(k: int) -> int:
    """Index of the inverse element: ``d4(d4(x, k), d4_inverse(k)) == x``.

    Examples
    --------
    >>> [d4_inverse(k) for k in range(8)]
    [0, 3, 2, 1, 4, 5, 6, 7]
    """
    return (4 - k) % 4 if k < 4 else k


def d4_views(x) -> list:
    """The 8 dihedral views ``[d4(x, 0), ..., d4(x, 7)]`` of a batch (N, C, H, W); view 0 is ``x``.

    Examples
    --------
    >>> v = d4_views(np.arange(4).reshape(1, 1, 2, 2))
    >>> len(v), v[0].ravel().tolist(), v[1].ravel().tolist()
    (8, [0, 1, 2, 3], [1, 3, 0, 2])
    """
    return [d4(x, k) for k in range(8)]


def tta_views(x, tta: str = "none") -> list:
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
        return [x, d4(x, 4)]
    return d4_views(x)


def merge_probs(stack, merge: str = "mean") -> np.ndarray:
    """Merge probabilities (K, N, C) over the first axis (views x folds) -> (N, C) float32.

    Examples
    --------
    >>> merge_probs(np.array([[[0.2]], [[0.6]]]), "max").tolist()
    [[0.6000000238418579]]
    """
    check_choice("merge", merge, MERGES)
    s = np.asarray(stack, dtype=np.float32)
    return (s.mean(0) if merge == "mean" else s.max(0)).astype(np.float32)
