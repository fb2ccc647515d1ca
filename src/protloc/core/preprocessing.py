"""Preprocessing facts that travel with a model (timm's pretrained_cfg, for microscopy).

Everything needed to turn a file into the tensor a model saw in training: input format,
channel names and order, image size, per-channel mean/std (computed once on the training
data), and the label schema. Saved as ``preprocessing.json`` in every run folder.
"""

from __future__ import annotations

import re
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
    channels: tuple  # names (str) for rgb/hpa-channels runs, indices (int) for TIFF runs
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    schema: LabelSchema

    def __post_init__(self):
        object.__setattr__(self, "channels", typed_channels(self.fmt, self.channels))

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

    def pick_channels(self, raw, *, where: str = "image", channels=None, rgba: bool = False) -> np.ndarray:
        """The run's channels of one raw image: (H, W[, C]) any dtype -> uint8 (H, W, in_chans).

        The rule, in order:

        1. ``channels`` given (TIFF indices chosen by the user): take those.
        2. a TIFF run: take the run's TIFF channel indices (as in training).
        3. ``rgba=True`` (the pixels come from a PNG/JPEG/upload, where a 4th channel is alpha)
           and a 3-channel run: drop the alpha channel; for a 4-channel run an alpha that is
           all 255 is refused (it is not a yellow channel).
        4. the channel count must equal the run's, else :class:`InputError` naming ``where``
           (a 4- or 5-channel TIFF is never cut silently to a 3-channel run's channels).

        Intensities become uint8 by :func:`protloc.core.pixels.to_uint8` (as in training).

        Examples
        --------
        >>> p = Preprocessing("rgb", ("red", "green", "blue"), 8, (0,) * 3, (1,) * 3, LabelSchema("t", ("a",)))
        >>> p.pick_channels(np.zeros((4, 4, 4), np.uint8), rgba=True).shape
        (4, 4, 3)
        >>> p.pick_channels(np.zeros((4, 4, 5), np.uint16), where="x.tif")
        Traceback (most recent call last):
        ...
        protloc.core.errors.InputError: x.tif: expected 3 channels (red, green, blue), got 5 channels. Fix: give images with the run's 3 channels, or choose 3 of the file's channels (e.g. protloc predict --channels 0,1,2).
        """
        from protloc.core.pixels import to_uint8

        a = np.asarray(raw)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise InputError(fmt_problem(where, expected="a 2-D image (H, W) or (H, W, C)",
                                         got=f"shape {a.shape}", fix="give one 2-D image per file"))
        n, have = self.in_chans, a.shape[2]
        names = ", ".join(map(str, self.channels))
        if channels is not None or self.fmt == "tiff":
            idx = [int(c) for c in (self.channels if channels is None else channels)]
            if max(idx) >= have:
                raise InputError(fmt_problem(where, expected=f"at least {max(idx) + 1} channels (channels "
                                             f"{', '.join(map(str, idx))})", got=f"{have}",
                                             fix="check --channels" if channels is not None else
                                             "give images with the run's channels"))
            a = a[..., idx]
        elif rgba and have == 4 and n == 3:
            a = a[..., :3]  # PNG alpha: dropped, as in training
        elif rgba and have == 4 and n == 4 and a.dtype == np.uint8 and bool((a[..., 3] == 255).all()):
            raise InputError(fmt_problem(where, expected=f"{n} channels ({names})",
                                         got="an RGBA image whose 4th channel is a plain alpha (all 255), "
                                             "not a yellow channel",
                                         fix=f"give a {n}-channel TIFF or the HPA channel files together"))
        if a.shape[2] != n:
            got = a.shape[2]
            fix = (f"give images with the run's {n} channels, or choose {n} of the file's channels "
                   f"(e.g. protloc predict --channels {','.join(map(str, range(n)))})" if got > n else
                   "give images with the channels this model was trained on")
            raise InputError(fmt_problem(where, expected=f"{n} channels ({names})", got=f"{got} channels",
                                         fix=fix))
        return to_uint8(a)

    def prepare(self, raw, *, where: str = "image", channels=None, rgba: bool = False,
                on_resize=None) -> np.ndarray:
        """One raw image -> exactly what the model saw in training: uint8 (size, size, in_chans).

        The one place that turns pixels into a run's input: :meth:`pick_channels` (channel
        choice, alpha, count check, intensity) then :func:`~protloc.core.pixels.resize` to
        ``size`` (area averaging when shrinking, as training did). ``on_resize(message)`` is
        called when the image is enlarged or not square (detail the model never saw).

        Examples
        --------
        >>> p = Preprocessing("tiff", (0, 2), 8, (0, 0), (1, 1), LabelSchema("t", ("a",)))
        >>> p.prepare(np.zeros((16, 16, 3), np.uint16)).shape
        (8, 8, 2)
        """
        from protloc.core.pixels import resize

        a = self.pick_channels(raw, where=where, channels=channels, rgba=rgba)
        if on_resize is not None and (min(a.shape[:2]) < self.size or a.shape[0] != a.shape[1]):
            on_resize(f"{where}: image size {a.shape[1]}x{a.shape[0]} differs from the run's "
                      f"{self.size}x{self.size}; images are resized")
        return resize(a, size=self.size)

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
        from protloc.core.paths import path_kind
        from protloc.core.readers import read_json

        path = Path(path)
        if path_kind(path) == "missing":
            raise RunFolderError(f"{path}: missing. Fix: point to a complete run folder "
                                 "(made by `protloc train`)")
        fix = "re-run training or restore the file"
        d = read_json(path, what="preprocessing file", fix=fix, error=RunFolderError)
        try:
            return cls.from_dict(d)
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # InputError is a ValueError
            detail = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            raise RunFolderError(f"{path}: malformed preprocessing file ({detail}). Fix: {fix}") from None


def typed_channels(fmt: str, channels) -> tuple:
    """Channels as the run keeps them: TIFF indices as int, channel names as str.

    Older run folders stored TIFF indices as strings (``"0"``, ``"ch0"``); they are read here,
    once.

    Examples
    --------
    >>> typed_channels("tiff", ["ch0", "2", 3]), typed_channels("rgb", ["red", "green", "blue"])
    ((0, 2, 3), ('red', 'green', 'blue'))
    """
    if fmt != "tiff":
        return tuple(str(c) for c in channels)
    out = []
    for c in channels:
        m = re.fullmatch(r"(?:ch)?(\d+)", str(c).strip())
        if m is None:
            raise ValueError(f"TIFF channel {c!r} is not a channel index")
        out.append(int(m.group(1)))
    return tuple(out)


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
