"""Pictures for the page: composite and tinted channel previews, Grad-CAM overlays, PNG data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np

from protloc.web.uploads import HPA_ORDER

#: what each channel shows (the reference data and the HPA layout)
CHANNEL_ROLES = {"red": "microtubules", "green": "protein of interest", "blue": "nucleus",
                 "yellow": "endoplasmic reticulum"}
#: display tint of each named channel
TINTS = {"red": (1.0, 0.2, 0.2), "green": (0.2, 1.0, 0.3), "blue": (0.3, 0.55, 1.0),
         "yellow": (1.0, 0.9, 0.2)}
PREVIEW_MAX = 256


def png_data_uri(img: np.ndarray) -> str:
    """uint8 (H, W[, 3]) -> ``data:image/png;base64,...``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def composite(img: np.ndarray, names) -> np.ndarray:
    """(H, W, C) uint8 -> RGB using channel names (red/green/blue, yellow adds to red+green).

    Unnamed channels map to R, G, B in order.

    Examples
    --------
    >>> composite(np.full((2, 2, 4), 100, np.uint8), ("red", "green", "blue", "yellow"))[0, 0].tolist()
    [150, 150, 100]
    """
    names = [str(n).lower() for n in names]
    if not set(names) & set(HPA_ORDER):
        names = list(HPA_ORDER[:3]) + ["yellow"] * max(0, len(names) - 3)
    out = np.zeros(img.shape[:2] + (3,), np.float32)
    for c, n in enumerate(names[: img.shape[2]]):
        p = img[..., c].astype(np.float32)
        if n == "yellow":
            out[..., 0] += 0.5 * p
            out[..., 1] += 0.5 * p
        elif n in ("red", "green", "blue"):
            out[..., "rgb".index(n[0])] += p
    return np.clip(out, 0, 255).astype(np.uint8)


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
