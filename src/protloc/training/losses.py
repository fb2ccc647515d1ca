"""Multi-label losses on logits (N, C) and multi-hot targets (N, C).

Every loss returns a scalar averaged over all N*C elements (soft-F1: over classes), so terms
are on comparable scales and can be summed: :func:`make_loss` parses ``"bce+0.5*softf1"``.

Names: ``bce`` (optionally with per-class ``pos_weight``), ``focal`` (``gamma``; gamma=0 is
BCE), ``asl`` (timm's ``AsymmetricLossMultiLabel``, gamma_neg=4, gamma_pos=0, clip=0.05, mean
reduction), ``softf1`` (the reference notebook's macro soft-F1: 1 - mean over classes of the
soft F1 computed over the batch).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protloc.core.errors import InputError

LOSS_NAMES = ("bce", "focal", "asl", "softf1")


def bce_loss(logits, target, *, pos_weight=None):
    """Binary cross-entropy with logits, mean over elements.

    Examples
    --------
    >>> round(float(bce_loss(torch.zeros(2, 3), torch.ones(2, 3))), 4)
    0.6931
    """
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=pos_weight)


def focal_loss(logits, target, *, gamma: float = 2.0, alpha: float | None = None, pos_weight=None):
    """Focal loss (Lin et al. 2017) on sigmoid outputs; ``gamma=0, alpha=None`` equals BCE.

    Examples
    --------
    >>> x, y = torch.randn(4, 3), (torch.rand(4, 3) > 0.5).float()
    >>> bool(torch.isclose(focal_loss(x, y, gamma=0.0), bce_loss(x, y)))
    True
    """
    logits, target = logits.float(), target.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)
    if gamma:
        p = torch.sigmoid(logits)
        pt = p * target + (1 - p) * (1 - target)
        ce = ce * (1 - pt).pow(gamma)
    if alpha is not None:
        ce = ce * (alpha * target + (1 - alpha) * (1 - target))
    return ce.mean()


def soft_f1_loss(logits, target, *, eps: float = 1e-16):
    """1 - mean over classes of the soft F1 (probabilities as soft counts over the batch).

    Examples
    --------
    >>> y = torch.tensor([[1., 0.], [0., 1.]])
    >>> round(float(soft_f1_loss(torch.tensor([[20., -20.], [-20., 20.]]), y)), 4)
    0.0
    >>> round(float(soft_f1_loss(torch.zeros(2, 2), y)), 4)
    0.5
    """
    p = torch.sigmoid(logits.float())
    y = target.float()
    tp = (p * y).sum(0)
    fp = (p * (1 - y)).sum(0)
    fn = ((1 - p) * y).sum(0)
    f1 = 2 * tp / (2 * tp + fn + fp + eps)
    return (1 - f1).mean()


class _Term(nn.Module):
    def __init__(self, name: str, *, pos_weight=None, gamma: float = 2.0):
        super().__init__()
        self.name = name
        self.gamma = gamma
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32))
        if name == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            self.asl = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, reduction="mean")

    def forward(self, logits, target):
        if self.name == "bce":
            return bce_loss(logits, target, pos_weight=self.pos_weight)
        if self.name == "focal":
            return focal_loss(logits, target, gamma=self.gamma, pos_weight=self.pos_weight)
        if self.name == "asl":
            return self.asl(logits, target)
        return soft_f1_loss(logits, target)


class CombinedLoss(nn.Module):
    """Weighted sum of loss terms; ``str(loss)`` gives back the spec."""

    def __init__(self, terms: list[tuple[float, str]], *, pos_weight=None, gamma: float = 2.0):
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.spec = "+".join(n if w == 1 else f"{w:g}*{n}" for w, n in terms)
        self.terms = nn.ModuleList(_Term(n, pos_weight=pos_weight, gamma=gamma) for _, n in terms)

    def forward(self, logits, target):
        return sum(w * t(logits, target) for w, t in zip(self.weights, self.terms))

    def extra_repr(self) -> str:
        return self.spec


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """``"bce+0.5*softf1"`` -> ``[(1.0, 'bce'), (0.5, 'softf1')]``.

    Examples
    --------
    >>> parse_loss_spec("bce + 0.5*softf1")
    [(1.0, 'bce'), (0.5, 'softf1')]
    """
    terms = []
    for part in str(spec).replace(" ", "").lower().split("+"):
        m = re.fullmatch(r"(?:([0-9.eE-]+)\*)?([a-z0-9_]+)", part)
        name = m.group(2) if m else None
        name = {"soft_f1": "softf1", "softf1": "softf1", "wbce": "bce"}.get(name, name)
        if not m or name not in LOSS_NAMES:
            raise InputError("--loss", expected=f"terms from {', '.join(LOSS_NAMES)} joined "
                             "by + with optional weights", got=repr(spec),
                             fix="e.g. --loss bce, --loss asl or --loss bce+0.5*softf1")
        try:
            w = float(m.group(1)) if m.group(1) else 1.0
        except ValueError:
            raise InputError("--loss", expected="numeric weights like 0.5*softf1",
                             got=repr(part), fix="write WEIGHT*NAME") from None
        terms.append((w, name))
    return terms


def auto_pos_weight(y: np.ndarray, *, clip: tuple[float, float] = (1.0, 10.0)) -> np.ndarray:
    """Per-class ``neg/pos`` from training labels, clipped (classes without positives -> max).

    Examples
    --------
    >>> auto_pos_weight(np.array([[1, 0], [0, 0], [0, 1], [0, 1]])).tolist()
    [3.0, 1.0]
    """
    y = np.asarray(y, dtype=np.float64)
    pos = y.sum(0)
    neg = len(y) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), clip[1])
    return np.clip(w, *clip).astype(np.float32)


def make_loss(spec: str, *, y_train: np.ndarray | None = None, pos_weight: str = "none",
              gamma: float = 2.0) -> CombinedLoss:
    """Build the loss module for a spec; ``pos_weight='auto'`` uses :func:`auto_pos_weight`."""
    pw = None
    if pos_weight not in ("none", "", None):
        if pos_weight != "auto":
            raise InputError("--pos-weight", expected="none or auto", got=repr(pos_weight),
                             fix="use --pos-weight auto")
        if y_train is None:
            raise InputError("pos_weight=auto needs training labels", fix="pass y_train")
        pw = auto_pos_weight(y_train)
    return CombinedLoss(parse_loss_spec(spec), pos_weight=pw, gamma=gamma)
