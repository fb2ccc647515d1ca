"""Grad-CAM explanations: which pixels made the model call a class.

Grad-CAM (Selvaraju et al. 2017) weights each channel of the last feature map by the mean
gradient of one class logit with respect to it, sums the channels, keeps the positive part and
upsamples the result (bilinear) to the input size. For a fold ensemble the per-model heatmaps
are averaged. Heatmaps are float32 in [0, 1] (1 = the most important pixel).

The public functions, used by ``protloc explain``, ``protloc report`` and the web app:

:func:`gradcam`           one (H, W) heatmap for one class, from normalised input.
:func:`explain_image`     heatmaps for the predicted classes of one uint8 image.
:func:`overlay`           heatmap blended onto an RGB image (uint8 RGB out).
:func:`render_explanation`  a figure: one row per class (composite, overlay, protein overlay).

Examples
--------
>>> import numpy as np
>>> from protloc.models.network import ModelSpec, build_model
>>> from protloc.core.preprocessing import Preprocessing
>>> from protloc.core.schema import LabelSchema
>>> pre = Preprocessing("rgb", ("red", "green", "blue"), 32, (.1,) * 3, (.2,) * 3,
...                     LabelSchema("t", ("a", "b")))
>>> net = build_model(ModelSpec("test_resnet", num_classes=2)).eval()
>>> ex = explain_image([net], pre, np.zeros((32, 32, 3), np.uint8), classes=["b"])
>>> ex[0]["name"], ex[0]["heatmap"].shape
('b', (32, 32))
"""

from __future__ import annotations

import io

import numpy as np

from protloc.core.errors import InputError
from protloc.reports.html import composite

__all__ = ["gradcam", "explain_image", "overlay", "render_explanation", "resolve_classes",
           "protein_channel"]


def _models_of(models) -> list:
    """A module, a list of modules, or anything with a ``.models`` list (a Predictor)."""
    if hasattr(models, "models"):
        models = models.models
    if not isinstance(models, (list, tuple)):
        models = [models]
    if not models:
        raise InputError("models", expected="at least one model", got="none",
                         fix="pass a trained run (models/fold*.pt)")
    return list(models)


def _normalize01(cam: np.ndarray) -> np.ndarray:
    top = float(cam.max()) if cam.size else 0.0
    return (cam / top).astype(np.float32) if top > 0 else np.zeros_like(cam, dtype=np.float32)


def gradcam(model, x_norm, class_idx: int) -> np.ndarray:
    """Grad-CAM heatmap of class ``class_idx`` for one normalised input.

    Parameters
    ----------
    model : ProtlocNet, or a list of them (ensemble: heatmaps are averaged)
        Anything with ``forward_features(x)`` (last feature map) and ``forward_head(feats)``.
    x_norm : tensor or ndarray (1, C, H, W)
        Normalised input (``Preprocessing.normalize``).
    class_idx : int

    Returns
    -------
    ndarray (H, W) float32 in [0, 1]; all zeros when no feature pushes the logit up.

    Examples
    --------
    >>> import torch
    >>> from protloc.models.network import ModelSpec, build_model
    >>> net = build_model(ModelSpec("test_resnet", num_classes=3)).eval()
    >>> h = gradcam(net, torch.randn(1, 3, 32, 32), 1)
    >>> h.shape, h.dtype.name, bool(0 <= h.min() and h.max() <= 1)
    ((32, 32), 'float32', True)
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(x_norm) if not isinstance(x_norm, torch.Tensor) else x_norm)
    if x.ndim != 4 or x.shape[0] != 1:
        raise InputError("gradcam input", expected="a (1, C, H, W) tensor",
                         got=f"shape {tuple(x.shape)}", fix="explain one image at a time")
    h, w = x.shape[-2:]
    acc = np.zeros((h, w), np.float32)
    models = _models_of(model)
    for m in models:
        dev = next(m.parameters()).device
        with torch.inference_mode(False), torch.enable_grad():
            with torch.no_grad():
                feats = m.forward_features(x.float().to(dev))
            feats = feats.detach().clone().requires_grad_(True)  # backprop through the head only
            logit = m.forward_head(feats)[0, int(class_idx)]
            (grad,) = torch.autograd.grad(logit, feats)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam.float(), size=(h, w), mode="bilinear", align_corners=False)
        acc += _normalize01(cam[0, 0].cpu().numpy())
    return _normalize01(acc / len(models))


def resolve_classes(classes, names) -> list[int]:
    """Class names or numbers -> indices into ``names``; unknown ones raise InputError.

    Examples
    --------
    >>> resolve_classes(["b", 0], ["a", "b"])
    [1, 0]
    """
    out = []
    lower = {n.lower(): i for i, n in enumerate(names)}
    for c in ([classes] if isinstance(classes, (str, int)) else classes):
        s = str(c).strip()
        if s.lower() in lower:
            out.append(lower[s.lower()])
        elif s.isdigit() and int(s) < len(names):
            out.append(int(s))
        else:
            raise InputError("--class", expected=f"one of {', '.join(names)} (or 0-{len(names) - 1})",
                             got=repr(s), fix="pass a class name of the run's schema, "
                             "quoted if it has spaces")
    return out


def explain_image(models_or_predictor, preprocessing, image, *, classes=None, thresholds=None) -> list[dict]:
    """Grad-CAM for one uint8 (H, W, C) image.

    Parameters
    ----------
    models_or_predictor : ProtlocNet, list of them, or a ``Predictor`` (its ``models`` are used
        and its ``preprocessing``/``thresholds`` fill in missing arguments).
    preprocessing : Preprocessing or None (taken from the predictor)
    image : (H, W, C) array with the run's channels; made the model's input by
        :meth:`~protloc.core.preprocessing.Preprocessing.prepare` (resized if needed).
    classes : names or indices, optional
        Default: every class at or above its threshold, most probable first; the top-1 class
        when none passes.
    thresholds : (C,) array, optional (default: the predictor's, else 0.5)

    Returns
    -------
    list of dict(class_idx, name, prob, threshold, heatmap ((size, size) float32 in [0, 1]))
    """
    import torch

    pred = models_or_predictor
    if preprocessing is None:
        preprocessing = getattr(pred, "preprocessing", None)
    if preprocessing is None:
        raise InputError("explain_image", expected="a Preprocessing", got="None",
                         fix="pass the run's preprocessing")
    models = _models_of(pred)
    names = list(preprocessing.classes)
    if thresholds is None:
        thresholds = getattr(pred, "thresholds", None)
    thr = np.full(len(names), 0.5) if thresholds is None else np.asarray(thresholds, float)
    img = preprocessing.as_input(image)  # a model input as is, else prepared
    x = torch.from_numpy(preprocessing.normalize(img[None]))
    with torch.no_grad():
        probs = np.mean([torch.sigmoid(m(x.to(next(m.parameters()).device)).float()).cpu().numpy()[0]
                         for m in models], axis=0)
    if classes is None:
        idx = [int(i) for i in np.argsort(-probs) if probs[i] >= thr[i]] or [int(np.argmax(probs))]
    else:
        idx = resolve_classes(classes, names)
    return [dict(class_idx=i, name=names[i], prob=float(probs[i]), threshold=float(thr[i]),
                 heatmap=gradcam(models, x, i)) for i in idx]


def overlay(image_rgb, heatmap, *, alpha: float = 0.55, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heatmap onto an image; hot pixels get colour, cold ones stay as they are.

    ``image_rgb``: uint8 (H, W, 3) (other channel counts go through ``htmlreport.composite``);
    the heatmap is resized (bilinear) to the image if needed. Returns uint8 (H, W, 3).

    Examples
    --------
    >>> out = overlay(np.zeros((8, 8, 3), np.uint8), np.ones((4, 4), np.float32))
    >>> out.shape, out.dtype.name, int(out[..., 0].max()) > 0
    ((8, 8, 3), 'uint8', True)
    """
    import matplotlib
    from PIL import Image

    img = composite(np.asarray(image_rgb)).astype(np.float32)
    hm = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0, 1)
    if hm.shape != img.shape[:2]:
        hm = np.asarray(Image.fromarray(hm, mode="F").resize(img.shape[1::-1], Image.Resampling.BILINEAR))
        hm = np.clip(hm, 0, 1)
    color = matplotlib.colormaps[cmap](hm * 0.85)[..., :3].astype(np.float32) * 255  # top: red, not maroon
    a = (alpha * np.sqrt(hm))[..., None]
    return np.clip(img * (1 - a) + color * a, 0, 255).astype(np.uint8)


def protein_channel(preprocessing) -> int:
    """Index of the protein-of-interest (green) channel; 1 if no channel is named green."""
    chans = [str(c).lower() for c in preprocessing.channels]
    return chans.index("green") if "green" in chans else min(1, len(chans) - 1)


def render_explanation(image, explanations, *, preprocessing, as_png: bool = False, dpi: int = 100):
    """Figure with one row per explanation: image, overlay on composite, overlay on protein.

    Each row's title gives the class name and ``p=0.82 >= threshold 0.40`` (or ``<``). The size
    is fixed: 900 x (300 x rows + 60) pixels at ``dpi=100``. Returns uint8 RGB (H, W, 3), or PNG
    bytes with ``as_png=True``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = preprocessing.as_input(image)  # a model input as is, else prepared
    rgb = composite(img, preprocessing.channels)
    green = img[..., protein_channel(preprocessing)]
    green_rgb = np.stack([np.zeros_like(green), green, np.zeros_like(green)], -1)
    rows = max(1, len(explanations))
    height = 3 * rows + 0.6
    fig = Figure(figsize=(9, height), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, squeeze=False)
    for r in range(rows):
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
        if not explanations:
            axes[r, 0].imshow(rgb)
            axes[r, 1].set_title("nothing to explain")
            continue
        e = explanations[r]
        passed = e["prob"] >= e["threshold"]
        axes[r, 0].imshow(rgb)
        axes[r, 0].set_title("image (composite)", fontsize=9)
        axes[r, 1].imshow(overlay(rgb, e["heatmap"]))
        axes[r, 1].set_title(f"{e['name']}: p={e['prob']:.2f} {'≥' if passed else '<'} "
                             f"threshold {e['threshold']:.2f}", fontsize=10,
                             color="#166534" if passed else "#9a3412", fontweight="bold")
        axes[r, 2].imshow(overlay(green_rgb, e["heatmap"]))
        empty = not np.asarray(e["heatmap"]).any()
        axes[r, 2].set_title("no positive evidence found" if empty else "Grad-CAM on protein channel",
                             fontsize=9)
    fig.suptitle("Grad-CAM: where the model looked for each class", fontsize=11, y=1 - 0.08 / height,
                 va="top")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.1 / height, top=1 - 0.72 / height,
                        wspace=0.05, hspace=0.3 / 2.7)
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if not as_png:
        return arr
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
