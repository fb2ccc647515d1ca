"""Pictures for the page: tinted channel previews and Grad-CAM overlays (the composite and the
PNG data URIs come from :mod:`protloc.reports.html`, shared with the reports)."""

from __future__ import annotations

import numpy as np

#: display tint of each named channel
TINTS = {"red": (1.0, 0.2, 0.2), "green": (0.2, 1.0, 0.3), "blue": (0.3, 0.55, 1.0),
         "yellow": (1.0, 0.9, 0.2)}
PREVIEW_MAX = 256


def tinted(plane: np.ndarray, name: str, *, autocontrast: bool = True) -> np.ndarray:
    """One channel (H, W) shown in its colour (grey for unknown names), stretched so its 99.5th
    percentile is full brightness (display only; the model sees the raw values).

    Examples
    --------
    >>> tinted(np.array([[0, 50]], np.uint8), "green")[0, 1].tolist()
    [51, 255, 76]
    """
    p = plane.astype(np.float32)
    if autocontrast:
        top = float(np.percentile(p, 99.5))
        if top > 0:
            p = p * (255.0 / top)
    t = np.asarray(TINTS.get(str(name).lower(), (1.0, 1.0, 1.0)), np.float32)
    return np.clip(p[..., None] * t, 0, 255).astype(np.uint8)


def _resize_heat(heat: np.ndarray, hw) -> np.ndarray:
    from PIL import Image

    h = np.asarray(heat, np.float32)
    if h.shape == tuple(hw):
        return h
    return np.asarray(Image.fromarray(h, mode="F").resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A Grad-CAM heat map (any size, [0, 1]) blended onto the RGB picture ``rgb``."""
    from protloc.reports.explain import overlay as _overlay

    return np.asarray(_overlay(rgb, _resize_heat(heat, rgb.shape[:2])), np.uint8)
