"""Pixel operations shared by every reader and the run's preprocessing (pure functions on arrays).

Intensity: :class:`Intensity` is the rule a run records (``preprocessing.json``) that turns raw
pixel values (8, 12, 16 bit, float) into the uint8 the model sees:

``scale``
    a fixed division by the data's range: 8-bit data is kept, 16-bit data is divided by
    ``(2**bits - 1) / 255`` where ``bits`` is what the file declares (OME ``SignificantBits``,
    TIFF ``BitsPerSample`` < 16) or, when it declares nothing, 12 for an image whose maximum is
    at most 4,095 (a 12-bit camera in a 16-bit container) and 16 otherwise. ``bits="container"``
    is the rule of runs made before protloc recorded one: always ``/257`` for 16-bit data.
``percentile``
    per image and channel, ``(x - P_low) / (P_high - P_low)`` clipped to [0, 1] (Cellpose-style,
    default 0.1 / 99.9 %): a dim and a bright image of the same cells look the same.
``auto``
    ``scale`` for 8-bit data (so 8-bit PNG runs keep their numbers), ``percentile`` for anything
    deeper (12/16-bit, float).

Geometry: :func:`resize` (area averaging when shrinking, bilinear when enlarging, any dtype) and
:func:`fit_field` (scale by a physical factor, then centre crop or pad to a square).
:class:`ImageMeta` carries what a file says about its pixels (bits, pixel size, axes, channel
names) from :mod:`protloc.io.images` to :class:`~protloc.core.preprocessing.Preprocessing`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from protloc.core.errors import InputError

__all__ = ["ImageMeta", "Intensity", "INTENSITY_RULES", "to_uint8", "scale_to_uint8", "percentile_to_uint8",
           "significant_bits", "resize", "fit_field"]

#: the intensity rules a run can record
INTENSITY_RULES = ("auto", "scale", "percentile")


@dataclass(frozen=True)
class ImageMeta:
    """What an image file says about its pixels (every field optional: None = not said).

    Attributes
    ----------
    dtype : str              the stored pixel type (``uint16``)
    bits : int               significant bits declared by the file (e.g. 12 in a 16-bit container)
    pixel_size : tuple       physical pixel size (y, x) in micrometres
    pixel_size_source : str  where it came from (``OME PhysicalSizeX``, ``TIFF resolution``...)
    axes : str               the file's axes as read (``ZCYX``), before projection
    channel_names : tuple    one name per channel of the returned array (OME/ImageJ labels)
    z_planes : int           Z planes projected into the image (1 = none)
    notes : tuple            things the reader did that a user should know

    Examples
    --------
    >>> ImageMeta(pixel_size=(0.1, 0.1)).um_per_px
    0.1
    """

    dtype: str | None = None
    bits: int | None = None
    pixel_size: tuple | None = None
    pixel_size_source: str | None = None
    axes: str | None = None
    channel_names: tuple | None = None
    z_planes: int = 1
    notes: tuple = ()

    @property
    def um_per_px(self) -> float | None:
        """The mean of the y and x pixel sizes (µm), or None."""
        return None if self.pixel_size is None else float(np.mean(self.pixel_size))

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def significant_bits(arr: np.ndarray, *, declared: int | None = None) -> int:
    """The bit depth an image's values use: ``declared`` when the file says, else from the dtype
    and the maximum (a 16-bit image whose maximum is at most 4,095 is 12-bit data).

    Examples
    --------
    >>> significant_bits(np.array([0, 4000], np.uint16)), significant_bits(np.array([0, 40000], np.uint16))
    (12, 16)
    >>> significant_bits(np.array([0, 9], np.uint16), declared=14), significant_bits(np.zeros(2, np.uint8))
    (14, 8)
    """
    a = np.asarray(arr)
    if a.dtype == np.uint8 or a.dtype == np.bool_:
        return 8
    full = 8 * a.dtype.itemsize if np.issubdtype(a.dtype, np.integer) else 16
    if declared and 8 <= int(declared) <= full:
        return int(declared)
    if np.issubdtype(a.dtype, np.integer):
        return 12 if int(a.max(initial=0)) <= 4095 else min(full, 16)
    return 16


def _check_dtype(arr: np.ndarray) -> None:
    ok = arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if not ok:
        raise InputError(f"unsupported pixel type {arr.dtype}", fix="save 8- or 16-bit images")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """The rule of runs made before protloc recorded one (``scale`` with ``bits='container'``).

    uint16 is scaled by 1/257 (65535 -> 255); floats in [0, 1] are scaled by 255.

    Examples
    --------
    >>> to_uint8(np.array([0, 257, 65535], dtype=np.uint16)).tolist()
    [0, 1, 255]
    """
    return scale_to_uint8(arr, bits=None)


def scale_to_uint8(arr: np.ndarray, *, bits: int | None = None) -> np.ndarray:
    """Divide by the data's range: ``x / (2**bits - 1) * 255`` (``bits`` None: the container's
    range, 16 for any integer type wider than 8 bit, as protloc always did); floats in [0, 1]
    are scaled by 255, other floats clipped.

    Examples
    --------
    >>> scale_to_uint8(np.array([0, 4095], np.uint16), bits=12).tolist()
    [0, 255]
    >>> scale_to_uint8(np.array([0, 4095], np.uint16)).tolist()
    [0, 16]
    """
    arr = np.asarray(arr)
    _check_dtype(arr)
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        div = 257.0 if bits is None else (2.0 ** int(bits) - 1) / 255.0
        return np.clip(np.round(arr.astype(np.float32) / div), 0, 255).astype(np.uint8)
    a = np.nan_to_num(arr.astype(np.float32))
    scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.round(a * scale), 0, 255).astype(np.uint8)


def percentile_to_uint8(arr: np.ndarray, *, low: float = 0.1, high: float = 99.9) -> np.ndarray:
    """Per channel, ``(x - P_low) / (P_high - P_low)`` clipped to [0, 1], times 255.

    ``arr`` is (H, W) or (H, W, C). A channel with ``P_high == P_low`` (a constant or almost
    empty channel) becomes 0 where it equals ``P_low`` and 255 above it.

    Examples
    --------
    >>> a = np.array([[0, 100, 200, 4000]], np.uint16)
    >>> percentile_to_uint8(a, low=0, high=100).tolist()
    [[0, 6, 13, 255]]
    >>> percentile_to_uint8(a * 16, low=0, high=100).tolist()  # the same at another brightness
    [[0, 6, 13, 255]]
    """
    arr = np.asarray(arr)
    _check_dtype(arr)
    a = arr[..., None] if arr.ndim == 2 else arr
    out = np.empty(a.shape, np.uint8)
    for c in range(a.shape[-1]):
        x = np.nan_to_num(a[..., c].astype(np.float32))
        lo, hi = np.percentile(x, [float(low), float(high)])
        if hi > lo:
            out[..., c] = np.clip(np.round((x - lo) * (255.0 / (hi - lo))), 0, 255)
        else:
            out[..., c] = np.where(x > lo, 255, 0)
    return out[..., 0] if arr.ndim == 2 else out


@dataclass(frozen=True)
class Intensity:
    """How raw intensities become uint8 (see the module docstring); recorded in every run.

    Examples
    --------
    >>> rule = Intensity("auto")
    >>> rule.resolve(np.uint8), rule.resolve(np.uint16)
    ('scale', 'percentile')
    >>> dim12 = np.array([[0, 50, 100, 800]], np.uint16)   # a dim 12-bit image
    >>> Intensity("scale").apply(dim12)[0].tolist(), Intensity("scale", bits="container").apply(dim12)[0].tolist()
    ([[0, 3, 6, 50]], [[0, 0, 0, 3]])
    >>> Intensity("scale").apply(dim12)[1]
    'scale 12-bit (x / 16.06)'
    """

    rule: str = "auto"
    low: float = 0.1
    high: float = 99.9
    bits: str = "auto"  # scale: "auto" (declared, else 12-bit when max <= 4095) | "container" (/257)

    def __post_init__(self):
        if self.rule not in INTENSITY_RULES:
            raise InputError("intensity rule", expected=" | ".join(INTENSITY_RULES), got=repr(self.rule),
                             fix="use --intensity auto, scale or percentile")
        if not 0 <= float(self.low) < float(self.high) <= 100:
            raise InputError("intensity percentiles", expected="0 <= low < high <= 100",
                             got=f"{self.low}, {self.high}", fix="e.g. 0.1 and 99.9")
        if self.bits not in ("auto", "container"):
            raise InputError("intensity bits", expected="auto or container", got=repr(self.bits),
                             fix="use bits='auto'")

    def resolve(self, dtype) -> str:
        """The rule applied to data of ``dtype``: 'scale' or 'percentile'."""
        if self.rule != "auto":
            return self.rule
        return "scale" if np.dtype(dtype) in (np.uint8, np.bool_) else "percentile"

    def apply(self, arr: np.ndarray, *, bits: int | None = None) -> tuple[np.ndarray, str]:
        """``(uint8 array, what was done)`` for raw ``arr``; ``bits``: the file's significant bits."""
        arr = np.asarray(arr)
        _check_dtype(arr)
        if self.resolve(arr.dtype) == "percentile":
            return percentile_to_uint8(arr, low=self.low, high=self.high), f"percentile {self.low:g}-{self.high:g} %"
        if arr.dtype == np.uint8:
            return arr, "scale 8-bit (as stored)"
        if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
            return scale_to_uint8(arr), f"scale {arr.dtype}"
        if self.bits == "container":
            return scale_to_uint8(arr), "scale /257 (16-bit container)"
        b = significant_bits(arr, declared=bits)
        div = (2.0 ** b - 1) / 255.0
        return scale_to_uint8(arr, bits=b), f"scale {b}-bit (x / {div:.2f})"

    def describe(self) -> str:
        """One line for people (report, web page).

        Examples
        --------
        >>> Intensity("auto").describe()
        'auto: 8-bit data as stored, deeper data per-image percentiles 0.1-99.9 %'
        """
        pct = f"per-image percentiles {self.low:g}-{self.high:g} %"
        scale = ("16-bit data divided by 257" if self.bits == "container" else
                 "deeper data divided by its bit range (12-bit when the maximum is <= 4095)")
        return {"auto": f"auto: 8-bit data as stored, deeper data {pct}",
                "scale": f"scale: 8-bit data as stored, {scale}",
                "percentile": f"percentile: {pct} for every image"}[self.rule]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> "Intensity":
        """From ``preprocessing.json``'s ``intensity`` (a dict, or a bare rule name)."""
        if isinstance(d, str):
            return cls(rule=d)
        return cls(rule=str(d.get("rule", "scale")), low=float(d.get("low", 0.1)), high=float(d.get("high", 99.9)),
                   bits=str(d.get("bits", "auto")))


def otsu_threshold(img: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image: the grey level that best splits it in two classes.

    Examples
    --------
    >>> otsu_threshold(np.array([[10, 10, 200, 200]], np.uint8))
    10.0
    """
    hist = np.bincount(np.asarray(img, np.uint8).ravel(), minlength=256).astype(float)
    p = hist / max(hist.sum(), 1)
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(np.argmax(between))  # a constant image: 0


def nucleus_mask(nucleus: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D uint8 nucleus-channel image that belong to nuclei.

    Above Otsu's threshold and at least 8 grey levels above the image's 5th percentile (so an
    empty or flat field finds no nuclei).

    Examples
    --------
    >>> img = np.zeros((16, 16), np.uint8); img[4:8, 4:8] = 120
    >>> int(nucleus_mask(img).sum()), int(nucleus_mask(np.full((16, 16), 90, np.uint8)).sum())
    (16, 0)
    """
    nucleus = np.asarray(nucleus)
    return nucleus > max(otsu_threshold(nucleus), float(np.percentile(nucleus, 5)) + 8)


def nucleus_areas(nucleus: np.ndarray, *, min_px: int = 4) -> np.ndarray:
    """Areas in pixels of the nuclei of a 2-D uint8 nucleus-channel image (how large the cells
    are at this pixel size): connected components of :func:`nucleus_mask` of at least ``min_px``
    pixels. Touching nuclei count as one.

    Examples
    --------
    >>> img = np.zeros((32, 32), np.uint8); img[8:16, 8:16] = 200; img[20:24, 20:30] = 150
    >>> nucleus_areas(img).tolist()
    [64, 40]
    """
    from scipy import ndimage as ndi

    lab, _ = ndi.label(nucleus_mask(nucleus))
    sizes = np.bincount(lab.ravel())[1:]
    return sizes[sizes >= min_px]


def resize(img: np.ndarray, *, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, C) image to ``size`` (area averaging when shrinking, bilinear when
    enlarging); uint8 stays uint8, other types are resampled in float32 and cast back.

    Examples
    --------
    >>> resize(np.zeros((512, 512, 4), np.uint8), size=128).shape
    (128, 128, 4)
    >>> resize(np.full((4, 4, 1), 4000, np.uint16), size=2)[..., 0].tolist()
    [[4000, 4000], [4000, 4000]]
    """
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] == (h, w):
        return img
    shrink = img.shape[0] > h or img.shape[1] > w
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    if img.dtype == np.uint8:
        chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize((w, h), method))
                 for c in range(img.shape[2])]
        return np.stack(chans, axis=-1)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F")
                        .resize((w, h), method)) for c in range(img.shape[2])]
    out = np.stack(chans, axis=-1)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(img.dtype)


def fit_field(img: np.ndarray, *, scale: tuple[float, float], size: int) -> tuple[np.ndarray, str]:
    """Scale an (H, W, C) image by ``scale`` = (sy, sx), then centre-crop or zero-pad it to
    ``size`` x ``size``: the image keeps its physical scale instead of being stretched.

    Returns ``(image, what happened)``.

    Examples
    --------
    >>> out, how = fit_field(np.ones((40, 40, 1), np.uint8), scale=(0.5, 0.5), size=32)
    >>> out.shape, int(out.sum()), how
    ((32, 32, 1), 400, 'scaled x0.5 to 20x20 px, padded to 32x32')
    """
    h, w = img.shape[:2]
    nh, nw = max(1, int(round(h * scale[0]))), max(1, int(round(w * scale[1])))
    a = resize(img, size=(nh, nw))
    done = [f"scaled x{scale[1]:.3g} to {nw}x{nh} px"]
    if nh > size or nw > size:
        y0, x0 = max(0, (nh - size) // 2), max(0, (nw - size) // 2)
        a = a[y0:y0 + size, x0:x0 + size]
        done.append(f"centre {min(nw, size)}x{min(nh, size)} px kept")
    if a.shape[0] < size or a.shape[1] < size:
        out = np.zeros((size, size, a.shape[2]), a.dtype)
        y0, x0 = (size - a.shape[0]) // 2, (size - a.shape[1]) // 2
        out[y0:y0 + a.shape[0], x0:x0 + a.shape[1]] = a
        a = out
        done.append(f"padded to {size}x{size}")
    return a, ", ".join(done)
