"""Preprocessing facts that travel with a model (timm's pretrained_cfg, for microscopy).

Everything needed to turn a file into the tensor a model saw in training: input format,
channel names and order, image size, per-channel mean/std (computed once on the training
data), and the label schema. Saved as ``preprocessing.json`` in every run folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError, fmt_problem
from protloc.core.schema import LabelSchema


@dataclass(frozen=True)
class Preprocessing:
    """How images become model input.

    Examples
    --------
    >>> p = Preprocessing(fmt="rgb", channels=("red", "green", "blue"), size=64,
    ...                   mean=(0.1, 0.1, 0.1), std=(0.2, 0.2, 0.2),
    ...                   schema=LabelSchema("tiny", ("a", "b")))
    >>> p.normalize(np.full((1, 64, 64, 3), 51, np.uint8)).shape
    (1, 3, 64, 64)
    """

    fmt: str
    channels: tuple
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    schema: LabelSchema

    @property
    def in_chans(self) -> int:
        return len(self.channels)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.schema.classes

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, C, H, W) normalised with mean/std."""
        x = np.asarray(batch, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def check_array(self, img: np.ndarray, *, where: str = "image") -> np.ndarray:
        """Check one (H, W, C) image against the channels; resize to ``size`` if needed."""
        from protloc.core.pixels import resize, to_uint8

        a = np.asarray(img)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[2] != self.in_chans:
            got = f"shape {a.shape}" if a.ndim != 3 else f"{a.shape[2]} channels"
            raise InputError(fmt_problem(where, expected=f"{self.in_chans} channels "
                                         f"({', '.join(map(str, self.channels))})", got=got,
                                         fix="give images with the channels this model was trained on"))
        return resize(to_uint8(a), size=self.size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["schema"] = self.schema.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(fmt=d["fmt"], channels=tuple(d["channels"]), size=int(d["size"]),
                   mean=tuple(map(float, d["mean"])), std=tuple(map(float, d["std"])),
                   schema=LabelSchema.from_dict(d["schema"]))

    def save(self, path: str | Path) -> Path:
        from protloc.core.atomic import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessing":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise RunFolderError(f"{path}: missing. Fix: point to a complete run folder "
                                 "(made by `protloc train`)") from None
        except (KeyError, ValueError, TypeError) as e:
            raise RunFolderError(f"{path}: malformed preprocessing file ({e}). Fix: re-run training "
                                 "or restore the file") from None


def channel_stats(images: np.ndarray, *, max_images: int = 2000, seed: int = 0):
    """Per-channel mean and std in [0, 1] units from uint8 (N, H, W, C) images (sampled).

    Examples
    --------
    >>> m, s = channel_stats(np.full((4, 8, 8, 2), 255, np.uint8))
    >>> [round(v, 3) for v in m], [round(v, 3) for v in s]
    ([1.0, 1.0], [0.001, 0.001])
    """
    n = len(images)
    idx = np.arange(n) if n <= max_images else np.sort(
        np.random.default_rng(seed).choice(n, max_images, replace=False))
    s = np.zeros(images.shape[-1], np.float64)
    s2 = np.zeros_like(s)
    cnt = 0
    for start in range(0, len(idx), 256):
        b = np.asarray(images[idx[start:start + 256]], dtype=np.float64) / 255.0
        s += b.sum(axis=(0, 1, 2))
        s2 += (b ** 2).sum(axis=(0, 1, 2))
        cnt += b.shape[0] * b.shape[1] * b.shape[2]
    mean = s / max(cnt, 1)
    std = np.sqrt(np.maximum(s2 / max(cnt, 1) - mean ** 2, 0)) + 1e-3
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
