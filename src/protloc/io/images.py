"""Reading microscopy images in the formats protloc supports, exactly.

Formats
-------
``rgb``
    ``<DIR>/<Image>.png`` 8-bit RGB (R microtubules, G protein, B nucleus); also JPEG/TIFF.
``hpa-channels``
    ``<DIR>/<Id>_red|green|blue|yellow.png`` (8-bit) or ``.tif`` (16-bit), the 2018 Human
    Protein Atlas layout; the caller picks which channels to stack and in which order.
``tiff``
    One multi-channel TIFF per image, 8 or 16 bit, (C,H,W) or (H,W,C).

Everything returns ``uint8`` arrays of shape (H, W, C). 16-bit data is scaled to 8 bit by
``round(x / 257)`` (full range preserved). All functions are pure apart from reading files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from protloc.core.errors import InputError, fmt_problem
from protloc.core.pixels import resize, to_uint8  # noqa: F401 - re-exported for readers

FORMATS = ("rgb", "hpa-channels", "tiff")
#: the HPA channel names, in stacking order: the one channel-name table of protloc
HPA_CHANNELS = ("red", "green", "blue", "yellow")
#: what each HPA channel shows
CHANNEL_ROLES = {"red": "microtubules", "green": "protein of interest", "blue": "nucleus",
                 "yellow": "endoplasmic reticulum"}
RGB_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
HPA_EXTS = (".png", ".tif", ".tiff")
TIFF_EXTS = (".tif", ".tiff")
#: Maximum pixels we accept in one image (guards against decompression bombs).
MAX_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageReadError(InputError):
    """An image file could not be read or has the wrong shape/depth."""


def _open_pil(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif mode in ("CMYK", "YCbCr", "LA"):
                    im = im.convert("RGB" if mode != "LA" else "L")
                elif mode == "1":
                    im = im.convert("L")
                arr = np.asarray(im)
                if mode.startswith("I;16") or mode == "I":
                    arr = arr.astype(np.uint16) if arr.max(initial=0) <= 65535 else arr
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found. Fix: check the --images folder and the id")
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError) as e:
        kind = "too large" if "ecompression" in type(e).__name__ else "unreadable, corrupt or truncated"
        raise ImageReadError(f"{path}: {kind} image ({e}). Fix: re-export the file as PNG/TIFF "
                             "or remove its row") from None
    return arr


def _open_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            shape = tf.series[0].shape
            if int(np.prod([d for d in shape[-3:]], dtype=np.int64)) > 8 * MAX_PIXELS:
                raise ImageReadError(f"{path}: too large image ({'x'.join(map(str, shape))}). Fix: downscale "
                                     "it (protloc works at 128-512 px) or remove its row")
            arr = tf.series[0].asarray()
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found. Fix: check the --images folder and the id")
    except Exception as e:  # noqa: BLE001 - tifffile raises many types on bad files
        raise ImageReadError(f"{path}: unreadable, corrupt or truncated TIFF ({e}). Fix: re-export "
                             "the file or remove its row") from None
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[0] <= 8 and arr.shape[-1] > 8:
        arr = np.moveaxis(arr, 0, -1)  # (C,H,W) -> (H,W,C)
    return arr


def sniff_format(path: str | Path) -> str | None:
    """The real format of a file from its first bytes: 'PNG', 'JPEG', 'TIFF' or None.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.tif")
    >>> Image.fromarray(np.zeros((4, 4), np.uint8)).save(p, "PNG")
    >>> sniff_format(p)
    'PNG'
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"\x89PNG"):
        return "PNG"
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def read_array(path: str | Path) -> np.ndarray:
    """Read any supported file as a raw array (H,W) or (H,W,C), original dtype.

    The decoder follows the file's content (magic bytes), not its extension, so a PNG named
    ``.tif`` still reads (``protloc validate`` reports it as misnamed).
    """
    path = Path(path)
    real = sniff_format(path)
    if real == "TIFF" or (real is None and path.suffix.lower() in TIFF_EXTS):
        return _open_tiff(path)
    return _open_pil(path)


def read_rgb(path: str | Path, *, size: int | None = None, allow_rgba: bool = True) -> np.ndarray:
    """Read one 3-channel image (PNG/JPEG/TIFF) as uint8 (H, W, 3).

    RGBA loses its alpha channel; grayscale or other channel counts raise ``ImageReadError``.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "1.png")
    >>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    >>> read_rgb(p, size=4).shape
    (4, 4, 3)
    """
    arr = read_array(path)
    if arr.ndim == 3 and arr.shape[2] == 4 and allow_rgba:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        got = "grayscale (1 channel)" if arr.ndim == 2 else f"{arr.shape[2] if arr.ndim == 3 else '?'} channels"
        raise ImageReadError(fmt_problem(str(path), expected="an RGB image (3 channels)", got=got,
                                         fix="use --format hpa-channels/tiff for other layouts, "
                                             "or convert the image to RGB"))
    arr = to_uint8(arr)
    return resize(arr, size=size) if size else arr


def read_tiff_stack(path: str | Path, *, channels: tuple[int, ...] | None = None,
                    size: int | None = None) -> np.ndarray:
    """Read a multi-channel TIFF as uint8 (H, W, C), optionally picking channel indices."""
    arr = read_array(path)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageReadError(fmt_problem(str(path), expected="a 2-D multi-channel TIFF",
                                         got=f"shape {arr.shape}", fix="save one (C,H,W) or (H,W,C) stack per image"))
    if channels is not None:
        if max(channels) >= arr.shape[2]:
            raise ImageReadError(fmt_problem(str(path), expected=f"at least {max(channels) + 1} channels",
                                             got=f"{arr.shape[2]}", fix="check --channels"))
        arr = arr[..., list(channels)]
    arr = to_uint8(arr)
    return resize(arr, size=size) if size else arr


def hpa_channel_path(folder: str | Path, image_id: str, channel: str) -> Path | None:
    """Return the existing file for one HPA channel (``.png`` then ``.tif``), or None."""
    folder = Path(folder)
    for ext in HPA_EXTS:
        p = folder / f"{image_id}_{channel}{ext}"
        if p.is_file():
            return p
    return None


def read_hpa_channels(folder: str | Path, image_id: str, *, channels=("red", "green", "blue"),
                      size: int | None = None) -> np.ndarray:
    """Stack HPA channel files ``<id>_<channel>.png|tif`` into uint8 (H, W, len(channels)).

    Channels of different sizes are each resized to the first one's size (or ``size``).
    """
    planes = []
    for ch in channels:
        p = hpa_channel_path(folder, image_id, ch)
        if p is None:
            raise _missing_error(folder, image_id, "hpa-channels", (ch,),
                                 default=f"{Path(folder) / (image_id + '_' + ch + '.png')}: channel file "
                                 "missing (also looked for .tif). Fix: add the file, or choose "
                                 "channels with --channels")
        a = read_array(p)
        if a.ndim == 3:  # some tools save a gray channel as RGB: keep the matching plane
            a = a[..., min(HPA_CHANNELS.index(ch), a.shape[2] - 1)] if ch in HPA_CHANNELS[:3] else a.max(-1)
        planes.append(to_uint8(a))
    h, w = planes[0].shape[:2] if size is None else (size, size)
    planes = [resize(p[..., None], size=(h, w))[..., 0] for p in planes]
    return np.stack(planes, axis=-1)


def detect_format(folder: str | Path, image_id: str) -> str:
    """Guess the format of one image id in ``folder``: 'hpa-channels', 'rgb' or 'tiff'."""
    folder = Path(folder)
    if hpa_channel_path(folder, image_id, "green") is not None:
        return "hpa-channels"
    for ext in (".png", ".jpg", ".jpeg"):
        if (folder / f"{image_id}{ext}").is_file():
            return "rgb"
    for ext in TIFF_EXTS:
        if (folder / f"{image_id}{ext}").is_file():
            return "tiff"
    if (folder / image_id).is_file():
        return "tiff" if Path(image_id).suffix.lower() in TIFF_EXTS else "rgb"
    odd = not_a_file(folder, image_id, "rgb") + not_a_file(folder, image_id, "hpa-channels", ("green",))
    if odd:
        raise ImageReadError(f"{folder / odd[0][0]} is {odd[0][1]}, not an image file",
                             fix="replace it with the image file, or delete the row")
    raise ImageReadError(f"{folder / image_id}: no image file for this id (looked for .png, .jpg, "
                         ".tif and <id>_green.png). Fix: check --images and the CSV ids")


def image_path(folder: str | Path, image_id: str, fmt: str) -> Path | None:
    """The single file holding ``image_id`` for 'rgb'/'tiff' formats, or None if absent."""
    folder = Path(folder)
    exts = RGB_EXTS if fmt == "rgb" else TIFF_EXTS
    if (folder / image_id).is_file() and Path(image_id).suffix.lower() in exts:
        return folder / image_id
    for ext in exts:
        p = folder / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


def not_a_file(folder: str | Path, image_id: str, fmt: str, channels=()) -> list[tuple[str, str]]:
    """``(name, what it is)`` of the entries that carry an image's file name but are no regular
    file: a folder, a named pipe, a socket, a symlink loop or a broken link named ``36115.png``.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); os.mkdir(os.path.join(d, "7.png"))
    >>> not_a_file(d, "7", "rgb")
    [('7.png', 'a folder')]
    """
    from protloc.core.paths import path_kind

    folder = Path(folder)
    if fmt == "hpa-channels":
        names = [f"{image_id}_{c}{e}" for c in channels for e in HPA_EXTS]
    else:
        names = [image_id] + [image_id + e for e in (RGB_EXTS if fmt == "rgb" else TIFF_EXTS)]
    kinds = {"dir": "a folder", "fifo": "a named pipe (FIFO)", "socket": "a socket", "device": "a device",
             "loop": "a symlink loop", "broken-link": "a broken symlink"}
    found = [(n, path_kind(folder / n)) for n in dict.fromkeys(names)]
    return [(n, kinds[k]) for n, k in found if k in kinds]


def _missing_error(folder, image_id: str, fmt: str, channels=(), *, default: str) -> ImageReadError:
    odd = not_a_file(folder, image_id, fmt, channels)
    if odd:
        name, kind = odd[0]
        return ImageReadError(f"{Path(folder) / name} is {kind}, not an image file",
                              fix="replace it with the image file, or delete the row")
    return ImageReadError(default)


def read_image(folder: str | Path, image_id: str, *, fmt: str = "auto", channels=None,
               size: int | None = None) -> np.ndarray:
    """Read the image ``image_id`` from ``folder`` in ``fmt`` as uint8 (H, W, C).

    ``channels``: for 'hpa-channels' a sequence of names (default red, green, blue); for 'tiff'
    a sequence of channel indices (default all).
    """
    if fmt == "auto":
        fmt = detect_format(folder, image_id)
    if fmt == "hpa-channels":
        return read_hpa_channels(folder, image_id, channels=tuple(channels or HPA_CHANNELS[:3]), size=size)
    if fmt not in ("rgb", "tiff"):
        raise InputError(fmt_problem("--format", expected="one of auto, rgb, hpa-channels, tiff",
                                     got=repr(fmt), fix="pick a supported format"))
    p = image_path(folder, image_id, fmt)
    if p is None:
        raise _missing_error(folder, image_id, fmt, default=f"{Path(folder) / image_id}: image file missing "
                             f"(format {fmt}). Fix: check --images and the CSV ids")
    if fmt == "rgb":
        return read_rgb(p, size=size)
    return read_tiff_stack(p, channels=tuple(channels) if channels else None, size=size)
