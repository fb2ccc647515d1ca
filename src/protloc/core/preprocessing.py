"""Preprocessing facts that travel with a model (timm's pretrained_cfg, for microscopy).

Everything needed to turn a file into the tensor a model saw in training: input format,
channel names and order, image size, per-channel mean/std (computed once on the training
data), the label schema, and how a file's raw pixels are read (:class:`Reading`: the intensity
rule, the Z projection, the axes of files that do not declare theirs, the training images'
physical pixel size). Saved as ``preprocessing.json`` in every run folder.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, RunFolderError
from protloc.core.pixels import ImageMeta, Intensity, fit_field, resize
from protloc.core.schema import LabelSchema

#: Z projections of a stack (``--z``)
Z_RULES = ("max", "mean", "middle")
#: axis letters a user may give with ``--axes`` (S, RGB samples, counts as channels)
AXES_LETTERS = "TZCSYX"


def check_axes(axes: str | None, *, flag: str = "--axes") -> str | None:
    """A normalised ``--axes`` string (upper case; Y and X once; letters from TZCSYX) or None.

    Examples
    --------
    >>> check_axes("cyx"), check_axes(None)
    ('CYX', None)
    >>> check_axes("CXC")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --axes: expected letters from T, Z, C, S, Y, X with Y and X once each and no letter twice (e.g. CYX, ZCYX, YXC), got 'CXC'. Fix: name every axis of the TIFF in order, e.g. --axes CYX.
    """
    if axes is None or str(axes).strip() == "":
        return None
    a = str(axes).strip().upper()
    if set(a) - set(AXES_LETTERS) or len(set(a)) != len(a) or "Y" not in a or "X" not in a:
        raise InputError(flag, expected="letters from T, Z, C, S, Y, X with Y and X once each and no letter "
                                        "twice (e.g. CYX, ZCYX, YXC)", got=repr(axes),
                         fix="name every axis of the TIFF in order, e.g. --axes CYX")
    return a


#: the rule of runs made before protloc recorded how intensities were scaled (16-bit: /257)
LEGACY_INTENSITY = Intensity("scale", bits="container")


@dataclass(frozen=True)
class Reading:
    """How a file's raw pixels become a run's uint8 image (one rule for training and prediction).

    Attributes
    ----------
    intensity : Intensity      8/12/16-bit values -> uint8 (:class:`~protloc.core.pixels.Intensity`)
    z : str                    projection of a Z stack: max, mean or middle
    axes : str or None         axes of TIFFs that do not declare theirs (``--axes`` at training)
    pixel_size : float or None the training images' physical pixel size (µm); None: unknown
    field : int or None        side (px) of a typical training image, at ``pixel_size``

    With ``pixel_size`` and ``field`` known, an image whose own pixel size is known is scaled to
    the training images' physical scale (the model then sees cells at the size it learned them):
    by ``its pixel size / pixel_size`` and then the model's resize ``size / field``, and centre-
    cropped or zero-padded to the model's square (:func:`~protloc.core.pixels.fit_field`). Without
    either pixel size an image is resized to the model's size by pixel count, as before.

    Examples
    --------
    >>> r = Reading(Intensity("scale"), pixel_size=0.2, field=64)
    >>> img = np.full((64, 64, 1), 4095, np.uint16)   # 12-bit, 0.1 µm/px: half the training field
    >>> out, facts = r.apply(img, size=32, meta=ImageMeta(pixel_size=(0.1, 0.1)))
    >>> out.shape, int(out.max()), facts["intensity"], facts["geometry"]
    ((32, 32, 1), 255, 'scale 12-bit (x / 16.06)', 'scaled x0.25 to 16x16 px, padded to 32x32')
    """

    intensity: Intensity = LEGACY_INTENSITY
    z: str = "max"
    axes: str | None = None
    pixel_size: float | None = None
    field: int | None = None

    def __post_init__(self):
        if self.z not in Z_RULES:
            raise InputError("--z", expected=" | ".join(Z_RULES), got=repr(self.z), fix="use --z max")
        object.__setattr__(self, "axes", check_axes(self.axes))
        if self.pixel_size is not None and not float(self.pixel_size) > 0:
            raise InputError("--pixel-size", expected="a pixel size in µm > 0", got=str(self.pixel_size),
                             fix="e.g. --pixel-size 0.1 (leave it out when unknown)")

    def model_pixel_size(self, size: int) -> float | None:
        """µm per pixel of the model's input (None when the run's pixel size is unknown)."""
        if self.pixel_size is None or not self.field:
            return None
        return float(self.pixel_size) * float(self.field) / float(size)

    def apply(self, a: np.ndarray, *, size: int | None = None, meta: ImageMeta | None = None,
              pixel_size: float | None = None, where: str = "image", on_resize=None) -> tuple[np.ndarray, dict]:
        """Raw (H, W, C) pixels -> ``(uint8 image, facts)``: intensity rule, then (``size`` given)
        the geometry: physical scaling when both pixel sizes are known, else resizing.

        ``pixel_size`` (µm) overrides the file's (``--pixel-size``); ``on_resize(message)`` is
        called when a plain resize enlarges or stretches the image. ``facts`` says what was done
        (``intensity``, ``pixel_size_um`` and its ``pixel_size_source``, ``geometry``, ``notes``:
        sentences that hold for every image read this way, without the image's name).
        """
        meta = meta or ImageMeta()
        out, how = self.intensity.apply(a, bits=meta.bits)
        facts = {"intensity": how, "pixel_size_um": None, "pixel_size_source": None,
                 "run_pixel_size_um": self.pixel_size, "geometry": None, "notes": list(meta.notes)}
        if pixel_size is not None:
            facts["pixel_size_um"], facts["pixel_size_source"] = float(pixel_size), "--pixel-size"
            pyx = (float(pixel_size), float(pixel_size))
        elif meta.pixel_size is not None:
            facts["pixel_size_um"], facts["pixel_size_source"] = meta.um_per_px, meta.pixel_size_source
            pyx = tuple(float(v) for v in meta.pixel_size)
        else:
            pyx = None
        if size is None:
            return out, facts
        model_px = self.model_pixel_size(size)
        if model_px is not None and pyx is not None:
            out, facts["geometry"] = fit_field(out, scale=(pyx[0] / model_px, pyx[1] / model_px), size=size)
            return out, facts
        if self.pixel_size is not None and pyx is None:
            facts["notes"].append(f"pixel size unknown, so images are resized by pixel count (the run was trained "
                                  f"at {self.pixel_size:g} µm/px; pass --pixel-size)")
        elif self.pixel_size is None and pyx is not None:
            facts["notes"].append("the run records no training pixel size, so the images' own pixel size is not "
                                  "used; they are resized by pixel count")
        h, w = out.shape[:2]
        if on_resize is not None and (min(h, w) < size or h != w):
            on_resize(f"{where}: image size {w}x{h} differs from the run's {size}x{size}; images are resized")
        facts["geometry"] = None if (h, w) == (size, size) else f"resized {w}x{h} -> {size}x{size} px"
        return resize(out, size=size), facts

    def describe(self) -> dict:
        """The reading facts for people (report, web model card)."""
        return {"intensity": self.intensity.describe(), "z_projection": self.z, "axes_default": self.axes,
                "pixel_size_um": self.pixel_size, "field_px": self.field}

    def to_dict(self) -> dict:
        return {"intensity": self.intensity.to_dict(), "z": self.z, "axes": self.axes,
                "pixel_size_um": self.pixel_size, "field_px": self.field}

    @classmethod
    def from_dict(cls, d: dict) -> "Reading":
        """From ``preprocessing.json`` (keys missing in older runs: the legacy rule, nothing else)."""
        ps, fld = d.get("pixel_size_um"), d.get("field_px")
        return cls(intensity=Intensity.from_dict(d["intensity"]) if "intensity" in d else LEGACY_INTENSITY,
                   z=str(d.get("z") or "max"), axes=d.get("axes"), pixel_size=None if ps is None else float(ps),
                   field=None if fld is None else int(fld))


def default_reading() -> Reading:
    """The reading of readers given none (explore, validate, the cache): the ``auto`` intensity
    rule (the default of ``protloc train --intensity``), max Z projection, no pixel size."""
    return Reading(Intensity("auto"))


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
    #: how raw pixels are read (intensity rule, Z projection, pixel size); default: the rule of
    #: runs made before it was recorded
    reading: Reading = field(default_factory=Reading)
    #: the channels' names in the training files' metadata (OME), to find them in other files
    channel_names: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "channels", typed_channels(self.fmt, self.channels))
        if self.channel_names is not None:
            object.__setattr__(self, "channel_names", tuple(str(c) for c in self.channel_names))

    def with_reading(self, **changes) -> "Preprocessing":
        """A copy whose :class:`Reading` has ``changes`` (None values ignored), e.g. ``z='mean'``."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, reading=replace(self.reading, **changes)) if changes else self

    @property
    def in_chans(self) -> int:
        return len(self.channels)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.schema.classes

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, C, H, W) normalised with mean/std.

        ``(x / 255 - mean) / std`` as one multiply-add per channel written straight into the
        (N, C, H, W) output (9x faster than the float copies and transpose it replaced:
        ``benchmarks/bench_predict.py``; equal to float32 rounding, < 1e-6)."""
        b = np.asarray(batch)
        if b.ndim != 4:
            raise InputError("batch", expected="an (N, H, W, C) array", got=f"shape {b.shape}",
                             fix="stack the images along a first axis")
        n, h, w, c = b.shape
        if c != len(self.mean):
            raise InputError("batch", expected=f"{len(self.mean)} channels (the run's mean/std)", got=f"{c}",
                             fix="give images with the run's channels")
        std = np.asarray(self.std, np.float64)
        scale = (1.0 / (255.0 * std)).astype(np.float32)
        bias = (-np.asarray(self.mean, np.float64) / std).astype(np.float32)
        out = np.empty((n, c, h, w), np.float32)
        for k in range(c):
            np.multiply(b[..., k], scale[k], out=out[:, k], dtype=np.float32)
            out[:, k] += bias[k]
        return out

    def pick_channels(self, raw, *, where: str = "image", channels=None, rgba: bool = False,
                      meta: ImageMeta | None = None) -> np.ndarray:
        """The run's channels of one raw image: (H, W[, C]) -> (H, W, in_chans), same dtype.

        The rule, in order:

        1. ``channels`` given (TIFF indices chosen by the user): take those.
        2. the file names its channels (``meta.channel_names``, e.g. OME) and the run recorded
           the names of its channels: take them by name (case-insensitive), in the run's order.
        3. a TIFF run: take the run's TIFF channel indices (as in training).
        4. ``rgba=True`` (the pixels come from a PNG/JPEG/upload, where a 4th channel is alpha)
           and a 3-channel run: drop the alpha channel; for a 4-channel run an alpha that is
           all 255 is refused (it is not a yellow channel).
        5. the channel count must equal the run's, else :class:`InputError` naming ``where``
           (a 4- or 5-channel TIFF is never cut silently to a 3-channel run's channels).

        Intensities are left as they are (:meth:`prepare` applies the run's intensity rule).

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
        a = np.asarray(raw)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise InputError(where, expected="a 2-D image (H, W) or (H, W, C)", got=f"shape {a.shape}",
                             fix="give one 2-D image per file")
        n, have = self.in_chans, a.shape[2]
        names = ", ".join(map(str, self.channels))
        by_name = self._channels_by_name(meta, have) if channels is None else None
        if by_name is not None:
            a = a[..., by_name]
        elif channels is not None or self.fmt == "tiff":
            idx = [int(c) for c in (self.channels if channels is None else channels)]
            if max(idx) >= have:
                raise InputError(where, expected=f"at least {max(idx) + 1} channels (channels "
                                 f"{', '.join(map(str, idx))})", got=f"{have}",
                                 fix="check --channels" if channels is not None else
                                 "give images with the run's channels")
            a = a[..., idx]
        elif rgba and have == 4 and n == 3:
            a = a[..., :3]  # PNG alpha: dropped, as in training
        elif rgba and have == 4 and n == 4 and a.dtype == np.uint8 and bool((a[..., 3] == 255).all()):
            raise InputError(where, expected=f"{n} channels ({names})",
                             got="an RGBA image whose 4th channel is a plain alpha (all 255), not a yellow channel",
                             fix=f"give a {n}-channel TIFF or the HPA channel files together")
        if a.shape[2] != n:
            got = a.shape[2]
            fix = (f"give images with the run's {n} channels, or choose {n} of the file's channels "
                   f"(e.g. protloc predict --channels {','.join(map(str, range(n)))})" if got > n else
                   "give images with the channels this model was trained on")
            raise InputError(where, expected=f"{n} channels ({names})", got=f"{got} channels", fix=fix)
        return a

    def _channels_by_name(self, meta: ImageMeta | None, have: int) -> list[int] | None:
        """Indices of the run's named channels in a file that names its channels, else None."""
        if meta is None or not meta.channel_names or not self.channel_names or len(meta.channel_names) != have:
            return None
        low = [str(c).strip().lower() for c in meta.channel_names]
        want = [str(c).strip().lower() for c in self.channel_names]
        if len(set(low)) != len(low) or not all(w in low for w in want):
            return None
        return [low.index(w) for w in want]

    def prepare(self, raw, *, where: str = "image", channels=None, rgba: bool = False,
                on_resize=None, meta: ImageMeta | None = None, pixel_size: float | None = None,
                info: dict | None = None) -> np.ndarray:
        """One raw image -> exactly what the model saw in training: uint8 (size, size, in_chans).

        The one place that turns pixels into a run's input: :meth:`pick_channels` (channel
        choice, alpha, count check), then the run's :class:`Reading` (the intensity rule, then
        the physical pixel size or a resize to ``size``, area averaging when shrinking, as
        training did). ``meta``: what the file says (:class:`~protloc.core.pixels.ImageMeta`:
        bits, pixel size, channel names); ``pixel_size``: the user's pixel size in µm (overrides
        the file's). ``on_resize(message)`` is called when the image is enlarged or not square
        (detail the model never saw); ``info`` (a dict) receives what was done (intensity rule,
        pixel size used, geometry, notes).

        Examples
        --------
        >>> p = Preprocessing("tiff", (0, 2), 8, (0, 0), (1, 1), LabelSchema("t", ("a",)))
        >>> p.prepare(np.zeros((16, 16, 3), np.uint16)).shape
        (8, 8, 2)
        """
        a = self.pick_channels(raw, where=where, channels=channels, rgba=rgba, meta=meta)
        out, facts = self.reading.apply(a, size=self.size, meta=meta, pixel_size=pixel_size, where=where,
                                        on_resize=on_resize)
        if info is not None:
            info.update(facts)
        return out

    def as_input(self, img, **kw) -> np.ndarray:
        """``img`` unchanged when it already is a model input (uint8 (size, size, in_chans), e.g. from
        :meth:`prepare` or ``read_for_run``), else :meth:`prepare` (``kw``): the rule of
        ``Predictor.predict_array``, so an image is never put through the intensity rule twice.

        Examples
        --------
        >>> p = Preprocessing("rgb", ("red", "green", "blue"), 4, (0,) * 3, (1,) * 3, LabelSchema("t", ("a",)),
        ...                   reading=Reading(Intensity("percentile")))
        >>> x = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
        >>> bool((p.as_input(x) == x).all()), bool((p.prepare(x) == x).all())
        (True, False)
        """
        a = np.asarray(img)
        if a.dtype == np.uint8 and a.shape == (self.size, self.size, self.in_chans):
            return a
        return self.prepare(a, **kw)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("reading", "channel_names")}
        d["channels"] = list(self.channels)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["schema"] = self.schema.to_dict()
        d.update(self.reading.to_dict())
        d["channel_names"] = None if self.channel_names is None else list(self.channel_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        """From ``preprocessing.json``; a file written before the reading facts were recorded
        gets :data:`LEGACY_INTENSITY` (16-bit / 257), max Z projection and no pixel size."""
        names = d.get("channel_names")
        return cls(fmt=d["fmt"], channels=tuple(d["channels"]), size=int(d["size"]),
                   mean=tuple(map(float, d["mean"])), std=tuple(map(float, d["std"])),
                   schema=LabelSchema.from_dict(d["schema"]), reading=Reading.from_dict(d),
                   channel_names=None if names is None else tuple(names))

    def save(self, path: str | Path) -> Path:
        from protloc.core.atomic import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessing":
        from protloc.core.paths import path_kind
        from protloc.core.readers import read_json

        path = Path(path)
        if path_kind(path) == "missing":
            raise RunFolderError(f"{path}: missing", fix="point to a complete run folder "
                                 "(made by `protloc train`)")
        fix = "re-run training or restore the file"
        d = read_json(path, what="preprocessing file", fix=fix, error=RunFolderError)
        try:
            return cls.from_dict(d)
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # InputError is a ValueError
            detail = str(e) if isinstance(e, InputError) else f"{type(e).__name__}: {e}"
            raise RunFolderError(f"{path}: malformed preprocessing file ({detail})", fix=f"{fix}") from None


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
