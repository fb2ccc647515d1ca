"""Pixel operations shared by every reader and the run's preprocessing (pure functions on arrays).

``to_uint8`` is the intensity rule that turns any pixel type into 8 bit; ``resize`` changes the
image size (area averaging when shrinking, bilinear when enlarging).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from protloc.core.errors import InputError


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert integer/float image data to uint8.

    uint16 is scaled by 1/257 (65535 -> 255); floats in [0, 1] are scaled by 255.

    Examples
    --------
    >>> to_uint8(np.array([0, 257, 65535], dtype=np.uint16)).tolist()
    [0, 1, 255]
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint16, np.int32, np.uint32, np.int64) or arr.dtype == np.int16:
        return np.clip(np.round(arr.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float32))
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    raise InputError(f"unsupported pixel type {arr.dtype}. Fix: save 8- or 16-bit images")


def resize(img: np.ndarray, *, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to ``size`` (area averaging when shrinking).

    Examples
    --------
    >>> resize(np.zeros((512, 512, 4), np.uint8), size=128).shape
    (128, 128, 4)
    """
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize((w, h), method))
             for c in range(img.shape[2])]
    return np.stack(chans, axis=-1)
