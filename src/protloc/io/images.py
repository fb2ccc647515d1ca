"""Reading microscopy images in the formats protloc supports, exactly.

Formats
-------
``rgb``
    ``<DIR>/<Image>.png`` 8-bit RGB (R microtubules, G protein, B nucleus); also JPEG/TIFF.
``hpa-channels``
    ``<DIR>/<Id>_red|green|blue|yellow.png`` (8-bit) or ``.tif`` (16-bit), the 2018 Human
    Protein Atlas layout; the caller picks which channels to stack and in which order.
``tiff``
    One TIFF per image, 8/12/16 bit or float: OME-TIFF, ImageJ hyperstacks, or plain (C,H,W) /
    (H,W,C) stacks.

TIFF axes
---------
The axes come from the file (tifffile's ``series.axes``: OME-XML, ImageJ and tifffile metadata,
samples per pixel), never from the shape. T (time) with more than one point is refused; Z is
projected (``z='max'|'mean'|'middle'``); C and S (RGB samples) are the channels. A page stack
without axis metadata (tifffile axes ``I``/``Q``) is read as channels when it has at most 8
pages of at least 9x9 pixels (protloc's documented (C,H,W) layout); anything else is ambiguous
(a Z stack? an (H,W,C) array saved page by page?) and refused unless ``axes`` names the axes
(``--axes CYX``), which is used only for files that do not declare their own.

Metadata
--------
:func:`read_raw` returns the raw array with an :class:`~protloc.core.pixels.ImageMeta`: the
declared significant bits (OME ``SignificantBits``, TIFF ``BitsPerSample`` below the container),
the physical pixel size (OME ``PhysicalSizeX/Y`` with units; ImageJ unit + resolution; TIFF
resolution tags in centimetres; inch resolutions are print DPI, e.g. the 72 dpi default of many
programs, and are ignored with a note), and the channel names (OME ``Channel Name``).

Intensities are not changed here: :class:`~protloc.core.preprocessing.Reading` applies the run's
intensity rule (:func:`read_image` does it for the readers that make uint8 images). All
functions are pure apart from reading files.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from protloc.core.errors import InputError
from protloc.core.pixels import ImageMeta, resize, to_uint8  # noqa: F401 - re-exported for readers

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
#: a page stack without axis metadata is read as channels up to this many pages
MAX_GUESSED_CHANNELS = 8
#: micrometres per unit of the length units found in OME-XML and ImageJ metadata
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "\\u00b5m": 1.0,
                "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
                "m": 1e6, "meter": 1e6, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6}


class ImageReadError(InputError):
    """An image file could not be read or has the wrong shape/depth."""


def _pil_array(im) -> np.ndarray:
    """The pixels of an opened PIL image (palette, CMYK, YCbCr, LA and 1-bit converted)."""
    im.load()
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("CMYK", "YCbCr"):
        im = im.convert("RGB")
    elif mode in ("LA", "1"):
        im = im.convert("L")
    arr = np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        arr = arr.astype(np.uint16) if arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0 else arr
    return arr


def _open_pil(src, where: str) -> tuple[np.ndarray, ImageMeta]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                arr = _pil_array(im)
    except FileNotFoundError:
        raise ImageReadError(f"{where}: file not found", fix="check the --images folder and the id") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            OSError, SyntaxError, ValueError) as e:
        kind = "too large" if "ecompression" in type(e).__name__ else "unreadable, corrupt or truncated"
        raise ImageReadError(f"{where}: {kind} image ({e})", fix="re-export the file as PNG/TIFF "
                             "or remove its row") from None
    return arr, ImageMeta(dtype=str(arr.dtype))


# --------------------------------------------------------------------------------------------
# TIFF: axes and metadata from the file
# --------------------------------------------------------------------------------------------
def _um(value, unit) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    factor = _UM_PER_UNIT.get(str(unit or "µm").strip().lower())
    return v * factor if factor is not None and v > 0 else None


def _ome_facts(xml: str | None) -> dict:
    """Pixel size, significant bits and channel names from the first image of an OME-XML."""
    if not xml:
        return {}
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {"notes": ("the OME-XML metadata could not be parsed; axes come from the TIFF only",)}
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    out: dict = {}
    a = pixels.attrib
    x = _um(a.get("PhysicalSizeX"), a.get("PhysicalSizeXUnit"))
    y = _um(a.get("PhysicalSizeY"), a.get("PhysicalSizeYUnit"))
    if x or y:
        out["pixel_size"] = (y or x, x or y)
        out["pixel_size_source"] = "OME PhysicalSizeX/Y"
    if a.get("SignificantBits", "").isdigit():
        out["bits"] = int(a["SignificantBits"])
    names = [el.attrib.get("Name") for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"]
    if names and all(names):
        out["channel_names"] = tuple(str(n) for n in names)
    return out


def _resolution_facts(tf, page) -> dict:
    """Pixel size from ImageJ metadata or the TIFF resolution tags (centimetres only)."""
    tags = page.tags
    if "XResolution" not in tags:
        return {}
    try:
        xr = tags["XResolution"].value
        yr = tags["YResolution"].value if "YResolution" in tags else xr
        xres, yres = xr[0] / xr[1], yr[0] / yr[1]
    except (TypeError, ZeroDivisionError, IndexError):
        return {}
    if not (xres > 0 and yres > 0) or (xres, yres) == (1.0, 1.0):
        return {}
    ij = tf.imagej_metadata or {}
    if ij.get("unit"):
        unit = str(ij["unit"]).strip().lower()
        if unit in ("pixel", "pixels", "inch", ""):
            return {}
        x, y = _um(1.0 / xres, unit), _um(1.0 / yres, unit)
        return {"pixel_size": (y, x), "pixel_size_source": f"ImageJ resolution ({unit})"} if x and y else {}
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit == 3:  # centimetre
        return {"pixel_size": (1e4 / yres, 1e4 / xres), "pixel_size_source": "TIFF resolution (cm)"}
    if unit == 2:
        return {"notes": (f"the TIFF resolution is {xres:g} dots per inch, a print size, not a microscope's "
                          "pixel size; it is ignored (pass --pixel-size)",)}
    return {}


def _layout(shape: tuple, axes: str, where: str, user_axes: str | None) -> str:
    """The axes to use for an array of ``shape`` whose file says ``axes`` (see the module docstring)."""
    from protloc.core.preprocessing import check_axes

    axes = "".join("_" if c in "QI" and n == 1 else c for c, n in zip(axes, shape))  # dropped later
    unknown = [c for c in axes if c in "QI"]
    if not unknown:
        return axes
    size_of = dict(zip(axes, shape))
    fix = ("name the axes with --axes (e.g. --axes CYX for channel planes, ZYX for a Z stack, YXC for an "
           "(H, W, C) array saved page by page), or save the file as OME-TIFF")
    if user_axes is not None:
        user = check_axes(user_axes)
        if len(user) == len(shape):
            return user
        kept = [n for n in shape if n > 1]
        if len(user) == len(kept):  # the user named the axes of the squeezed array
            it = iter(user)
            return "".join(next(it) if n > 1 else "_" for n in shape)  # single axes are dropped
        raise ImageReadError(where, expected=f"--axes with {len(shape)} letters (one per axis of shape "
                             f"{tuple(shape)})", got=repr(user_axes), fix="name every axis of the file, e.g. --axes CYX")
    if len(unknown) == 1 and "S" not in axes:
        n = size_of[unknown[0]]
        h, w = size_of.get("Y", 0), size_of.get("X", 0)
        if n <= MAX_GUESSED_CHANNELS and min(h, w) > MAX_GUESSED_CHANNELS:
            return axes.replace(unknown[0], "C")
        got = (f"{n} planes of {w}x{h} pixels without axis metadata (channels? a Z stack? time?)" if n > 8 else
               f"{n} pages of {w}x{h} pixels without axis metadata (an (H, W, C) image saved page by page?)")
        raise ImageReadError(where, expected="a TIFF whose axes are known", got=got, fix=fix)
    raise ImageReadError(where, expected="a TIFF whose axes are known",
                         got=f"shape {tuple(shape)} with axes {axes!r} ({len(unknown)} of them unnamed)", fix=fix)


def _project(arr: np.ndarray, axes: str, *, z: str, where: str) -> tuple[np.ndarray, str, dict]:
    """Drop single axes, refuse T, project Z, merge C and S into one channel axis -> (Y, X[, C])."""
    facts: dict = {"z_planes": 1}
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes or len(set(axes)) != len(axes):
        raise ImageReadError(where, expected="an image whose axes name every dimension, Y and X included",
                             got=f"axes {axes!r} for shape {tuple(arr.shape)}",
                             fix="re-export the file, or name its axes with --axes (e.g. --axes CYX)")
    keep = [i for i, (c, n) in enumerate(zip(axes, arr.shape)) if n > 1 or c in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "T" in axes:
        raise ImageReadError(where, expected="one time point per image",
                             got=f"{arr.shape[axes.index('T')]} time points (axes {axes}, shape {arr.shape})",
                             fix="save one time point per file (Fiji: Image > Duplicate with one frame), or "
                                 "split the time series first")
    other = [c for c in axes if c not in "ZCSYX"]  # (single axes, "_" included, were dropped above)
    if other:
        raise ImageReadError(where, expected="axes from T, Z, C, S, Y, X",
                             got=f"axis {other[0]!r} of length {arr.shape[axes.index(other[0])]} (axes {axes})",
                             fix="save one 2-D (multi-channel) image per file, or name the axes with --axes")
    if "Z" in axes:
        k = axes.index("Z")
        n = arr.shape[k]
        if z == "max":
            arr = arr.max(axis=k)
        elif z == "middle":
            arr = np.take(arr, n // 2, axis=k)
        else:  # mean, kept in the file's integer type so the intensity rule sees its bit depth
            m = arr.mean(axis=k, dtype=np.float64)
            arr = np.round(m).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else m.astype(arr.dtype)
        axes = axes.replace("Z", "")
        facts["z_planes"] = int(n)
        facts["notes"] = (f"Z stacks are reduced by a {z} projection",)
    chan = [c for c in axes if c in "CS"]
    order = [axes.index("Y"), axes.index("X")] + [axes.index(c) for c in chan]
    if sorted(order) != list(range(arr.ndim)):  # pragma: no cover - the checks above leave none
        raise ImageReadError(where, expected="an image with Y, X and channel axes",
                             got=f"axes {axes!r} for shape {tuple(arr.shape)}", fix="re-export the file")
    arr = np.transpose(arr, order)
    if len(chan) > 1:
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    return arr, "YX" + ("C" if chan else ""), facts


def _tiff_facts(tf, series) -> dict:
    """What a TIFF's header says (pixel size, channel names, significant bits, notes): OME-XML
    first, then the resolution tags (pixel size) and BitsPerSample (12-bit data in 16-bit files)."""
    page = tf.pages[0]
    facts = _ome_facts(tf.ome_metadata) if tf.is_ome else {}
    if "pixel_size" not in facts:
        res = _resolution_facts(tf, page)
        facts = {**res, **facts, "notes": facts.get("notes", ()) + res.get("notes", ())}
    bps = int(getattr(page, "bitspersample", 0) or 0)
    if "bits" not in facts and 8 < bps < 8 * np.dtype(series.dtype).itemsize:
        facts["bits"] = bps
    return facts


def _read_tiff(src, where: str, *, axes: str | None = None, z: str = "max") -> tuple[np.ndarray, ImageMeta]:
    import tifffile

    try:
        with tifffile.TiffFile(src) as tf:
            series = tf.series[0]
            shape = tuple(int(v) for v in series.shape)
            if int(np.prod(shape, dtype=np.int64)) > 8 * MAX_PIXELS:
                raise ImageReadError(f"{where}: too large image ({'x'.join(map(str, shape))})",
                                     fix="downscale it (protloc works at 128-512 px) or remove its row")
            file_axes = str(series.axes)
            facts = _tiff_facts(tf, series)
            n_series = len(tf.series)
            arr = series.asarray()
            if arr.shape != shape:  # a damaged file: the pages disagree with the series it declares
                if arr.size != int(np.prod(shape, dtype=np.int64)):
                    raise ImageReadError(where, expected=f"pixels of shape {shape} (axes {file_axes})",
                                         got=f"an array of shape {arr.shape}: corrupt or truncated TIFF",
                                         fix="re-export the file or remove its row")
                arr = arr.reshape(shape)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{where}: file not found", fix="check the --images folder and the id") from None
    except Exception as e:  # noqa: BLE001 - tifffile raises many types on bad files
        raise ImageReadError(f"{where}: unreadable, corrupt or truncated TIFF ({e})",
                             fix="re-export the file or remove its row") from None
    use = _layout(arr.shape, file_axes, where, axes)
    arr, _, proj = _project(arr, use, z=z, where=where)
    notes = tuple(facts.get("notes", ())) + tuple(proj.get("notes", ()))
    if n_series > 1:
        notes += ("a TIFF holding several images: the first is used",)
    names = facts.get("channel_names")
    n_chan = arr.shape[2] if arr.ndim == 3 else 1
    if names is not None and len(names) != n_chan:
        names = None
    return arr, ImageMeta(dtype=str(arr.dtype), bits=facts.get("bits"), pixel_size=facts.get("pixel_size"),
                          pixel_size_source=facts.get("pixel_size_source"), axes=file_axes if use == file_axes
                          else f"{use} (given; the file says {file_axes})", channel_names=names,
                          z_planes=proj["z_planes"], notes=notes)


def read_raw(path: str | Path, *, axes: str | None = None, z: str = "max") -> tuple[np.ndarray, ImageMeta]:
    """Read any supported file: ``(raw array (H, W) or (H, W, C) in its own dtype, ImageMeta)``.

    The decoder follows the file's content (magic bytes), not its extension, so a PNG named
    ``.tif`` still reads (``protloc validate`` reports it as misnamed). TIFFs follow the axes
    rules of the module docstring (``axes``: for files that do not name theirs; ``z``: the Z
    projection).

    Examples
    --------
    >>> import tempfile, os, tifffile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.ome.tif")
    >>> tifffile.imwrite(p, np.zeros((3, 2, 16, 16), np.uint16), ome=True,
    ...                  metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    >>> arr, meta = read_raw(p)
    >>> arr.shape, meta.axes, meta.pixel_size, meta.z_planes
    ((16, 16, 2), 'ZCYX', (0.2, 0.2), 3)
    """
    path = Path(path)
    real = sniff_format(path)
    if real == "TIFF" or (real is None and path.suffix.lower() in TIFF_EXTS):
        return _read_tiff(path, str(path), axes=axes, z=z)
    return _open_pil(path, str(path))


def decode_bytes(data: bytes, *, where: str, axes: str | None = None, z: str = "max") -> tuple[np.ndarray, ImageMeta]:
    """:func:`read_raw` for the bytes of a PNG, JPEG or TIFF file (uploads), in memory."""
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _read_tiff(io.BytesIO(data), where, axes=axes, z=z)
    return _open_pil(io.BytesIO(data), where)


def read_meta(path: str | Path) -> tuple[tuple, ImageMeta]:
    """``(shape, ImageMeta)`` of a file from its header only (no pixels decoded): the size and the
    physical pixel size of training images, before decoding them."""
    path = Path(path)
    real = sniff_format(path)
    if real == "TIFF" or (real is None and path.suffix.lower() in TIFF_EXTS):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                facts = _tiff_facts(tf, series)
                axes, shape = str(series.axes), tuple(int(v) for v in series.shape)
        except Exception as e:  # noqa: BLE001
            raise ImageReadError(f"{path}: unreadable TIFF ({e})", fix="re-export the file or remove its row") from None
        hw = (shape[axes.index("Y")], shape[axes.index("X")]) if "Y" in axes and "X" in axes else shape[-2:]
        return hw, ImageMeta(dtype=str(series.dtype), pixel_size=facts.get("pixel_size"),
                             pixel_size_source=facts.get("pixel_size_source"), axes=axes,
                             channel_names=facts.get("channel_names"), bits=facts.get("bits"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                dtype = ("uint16" if im.mode.startswith("I;16") else "int32" if im.mode == "I" else
                         "float32" if im.mode == "F" else "uint8")
                return (im.height, im.width), ImageMeta(dtype=dtype)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path}: unreadable image ({e})", fix="re-export the file or remove its row") from None


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
    """Read any supported file as a raw array (H,W) or (H,W,C), original dtype (:func:`read_raw`
    without the metadata)."""
    return read_raw(path)[0]


def _default_reading(reading):
    from protloc.core.preprocessing import default_reading

    return reading if reading is not None else default_reading()


def read_rgb_raw(path: str | Path, *, allow_rgba: bool = True, reading=None) -> tuple[np.ndarray, ImageMeta]:
    """One 3-channel image (PNG/JPEG/TIFF), raw: ``((H, W, 3) array, ImageMeta)``.

    RGBA loses its alpha channel; grayscale or other channel counts raise ``ImageReadError``.
    """
    r = _default_reading(reading)
    arr, meta = read_raw(path, axes=r.axes, z=r.z)
    if arr.ndim == 3 and arr.shape[2] == 4 and allow_rgba:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        got = "grayscale (1 channel)" if arr.ndim == 2 else f"{arr.shape[2] if arr.ndim == 3 else '?'} channels"
        raise ImageReadError(str(path), expected="an RGB image (3 channels)", got=got,
                             fix="use --format hpa-channels/tiff for other layouts, or convert the image to RGB")
    return arr, meta


def read_rgb(path: str | Path, *, size: int | None = None, allow_rgba: bool = True, reading=None,
             pixel_size: float | None = None) -> np.ndarray:
    """Read one 3-channel image (PNG/JPEG/TIFF) as uint8 (H, W, 3) (``size``: (size, size, 3)).

    ``reading``: the :class:`~protloc.core.preprocessing.Reading` (intensity rule, pixel size...;
    default: the ``auto`` intensity rule, nothing else).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "1.png")
    >>> Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    >>> read_rgb(p, size=4).shape
    (4, 4, 3)
    """
    r = _default_reading(reading)
    arr, meta = read_rgb_raw(path, allow_rgba=allow_rgba, reading=r)
    return r.apply(arr, size=size, meta=meta, pixel_size=pixel_size, where=str(path))[0]


def read_tiff_raw(path: str | Path, *, channels: tuple[int, ...] | None = None,
                  reading=None) -> tuple[np.ndarray, ImageMeta]:
    """A multi-channel TIFF, raw: ``((H, W, C) array, ImageMeta)``, optionally picking channel indices."""
    r = _default_reading(reading)
    arr, meta = read_raw(path, axes=r.axes, z=r.z)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageReadError(str(path), expected="a 2-D multi-channel TIFF", got=f"shape {arr.shape}",
                             fix="save one (C,H,W) or (H,W,C) stack per image")
    if channels is not None:
        if max(channels) >= arr.shape[2]:
            raise ImageReadError(str(path), expected=f"at least {max(channels) + 1} channels",
                                 got=f"{arr.shape[2]}", fix="check --channels")
        arr = arr[..., list(channels)]
        if meta.channel_names is not None:
            from dataclasses import replace

            meta = replace(meta, channel_names=tuple(meta.channel_names[c] for c in channels))
    return arr, meta


def read_tiff_stack(path: str | Path, *, channels: tuple[int, ...] | None = None,
                    size: int | None = None, reading=None, pixel_size: float | None = None) -> np.ndarray:
    """Read a multi-channel TIFF as uint8 (H, W, C), optionally picking channel indices."""
    r = _default_reading(reading)
    arr, meta = read_tiff_raw(path, channels=channels, reading=r)
    return r.apply(arr, size=size, meta=meta, pixel_size=pixel_size, where=str(path))[0]


def hpa_channel_path(folder: str | Path, image_id: str, channel: str) -> Path | None:
    """Return the existing file for one HPA channel (``.png`` then ``.tif``), or None."""
    folder = Path(folder)
    for ext in HPA_EXTS:
        p = folder / f"{image_id}_{channel}{ext}"
        if p.is_file():
            return p
    return None


def read_hpa_raw(folder: str | Path, image_id: str, *, channels=("red", "green", "blue"),
                 reading=None) -> tuple[np.ndarray, ImageMeta]:
    """Stack HPA channel files ``<id>_<channel>.png|tif``, raw: ``((H, W, len(channels)), ImageMeta)``.

    Channels of different sizes are resized to the first one's size; 8-bit planes stacked with
    16-bit ones are widened exactly (x 257). The metadata is the first file's (bits only when
    every file declares the same).
    """
    r = _default_reading(reading)
    planes, metas = [], []
    for ch in channels:
        p = hpa_channel_path(folder, image_id, ch)
        if p is None:
            raise _missing_error(folder, image_id, "hpa-channels", (ch,), default=ImageReadError(
                f"{Path(folder) / (image_id + '_' + ch + '.png')}: channel file missing (also looked for .tif)",
                fix="add the file, or choose channels with --channels"))
        a, m = read_raw(p, axes=r.axes, z=r.z)
        if a.ndim == 3:  # some tools save a gray channel as RGB: keep the matching plane
            a = a[..., min(HPA_CHANNELS.index(ch), a.shape[2] - 1)] if ch in HPA_CHANNELS[:3] else a.max(-1)
        planes.append(a)
        metas.append(m)
    from dataclasses import replace

    out = stack_planes(planes)
    bits = {m.bits for m in metas}
    meta = replace(metas[0], dtype=str(out.dtype), bits=bits.pop() if len(bits) == 1 else None,
                   channel_names=None, notes=tuple(n for m in metas for n in m.notes))
    return out, meta


def stack_planes(planes) -> np.ndarray:
    """Stack 2-D channel planes into (H, W, C): planes of another size are resized to the first
    one's, 8-bit planes stacked with 16-bit ones are widened exactly (x 257, so every intensity
    rule reads them as before).

    Examples
    --------
    >>> stack_planes([np.full((2, 2), 255, np.uint8), np.zeros((4, 4), np.uint16)])[..., 0].tolist()
    [[65535, 65535], [65535, 65535]]
    """
    planes = [np.asarray(p) for p in planes]
    if len({p.dtype for p in planes}) > 1:
        wide = np.result_type(*[p.dtype for p in planes])
        planes = [p.astype(np.uint16) * 257 if p.dtype == np.uint8 and wide == np.uint16 else p.astype(wide)
                  for p in planes]
    h, w = planes[0].shape[:2]
    planes = [p if p.shape[:2] == (h, w) else resize(p[..., None], size=(h, w))[..., 0] for p in planes]
    return np.stack(planes, axis=-1)


def read_hpa_channels(folder: str | Path, image_id: str, *, channels=("red", "green", "blue"),
                      size: int | None = None, reading=None, pixel_size: float | None = None) -> np.ndarray:
    """Stack HPA channel files ``<id>_<channel>.png|tif`` into uint8 (H, W, len(channels))
    (``size``: resized to (size, size)), with the ``reading``'s intensity rule."""
    r = _default_reading(reading)
    arr, meta = read_hpa_raw(folder, image_id, channels=channels, reading=r)
    return r.apply(arr, size=size, meta=meta, pixel_size=pixel_size, where=str(Path(folder) / image_id))[0]


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
                         ".tif and <id>_green.png)", fix="check --images and the CSV ids")


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


def _missing_error(folder, image_id: str, fmt: str, channels=(), *, default: ImageReadError) -> ImageReadError:
    odd = not_a_file(folder, image_id, fmt, channels)
    if odd:
        name, kind = odd[0]
        return ImageReadError(f"{Path(folder) / name} is {kind}, not an image file",
                              fix="replace it with the image file, or delete the row")
    return default


def read_image(folder: str | Path, image_id: str, *, fmt: str = "auto", channels=None,
               size: int | None = None, reading=None, pixel_size: float | None = None) -> np.ndarray:
    """Read the image ``image_id`` from ``folder`` in ``fmt`` as uint8 (H, W, C).

    ``channels``: for 'hpa-channels' a sequence of names (default red, green, blue); for 'tiff'
    a sequence of channel indices (default all). ``reading``: how raw pixels become uint8 (the
    run's :class:`~protloc.core.preprocessing.Reading`; default: the ``auto`` intensity rule);
    ``pixel_size``: the images' pixel size in µm (overrides the files'); ``size``: the side of the
    square result (the reading's physical scaling or a resize), else the image's own size.
    """
    if fmt == "auto":
        fmt = detect_format(folder, image_id)
    if fmt == "hpa-channels":
        return read_hpa_channels(folder, image_id, channels=tuple(channels or HPA_CHANNELS[:3]), size=size,
                                 reading=reading, pixel_size=pixel_size)
    if fmt not in ("rgb", "tiff"):
        raise InputError("--format", expected="one of auto, rgb, hpa-channels, tiff", got=repr(fmt),
                         fix="pick a supported format")
    p = image_path(folder, image_id, fmt)
    if p is None:
        raise _missing_error(folder, image_id, fmt, default=ImageReadError(
            f"{Path(folder) / image_id}: image file missing (format {fmt})", fix="check --images and the CSV ids"))
    if fmt == "rgb":
        return read_rgb(p, size=size, reading=reading, pixel_size=pixel_size)
    return read_tiff_stack(p, channels=tuple(channels) if channels else None, size=size, reading=reading,
                           pixel_size=pixel_size)
