"""Uploads: limits, magic-byte sniffing, decoding from bytes, HPA channel grouping.

Everything is decoded from bytes in memory; client file names are only echoed back (cleaned),
never used as paths. Every problem is an :class:`UploadError` (a 4xx/5xx JSON answer).
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError
from protloc.io.images import HPA_CHANNELS

MB = 1024 * 1024

#: first bytes of the accepted file types
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),      # classic TIFF
    (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),      # BigTIFF
)
HPA_NAME = re.compile(r"^(?P<id>.+)_(?P<ch>red|green|blue|yellow)\.(?:png|tiff?|jpe?g)$", re.IGNORECASE)


class UploadError(Exception):
    """A request problem that becomes a 4xx/5xx JSON answer ``{"error", "detail", "file"}``."""

    def __init__(self, status: int, error: str, detail, *, file: str | None = None):
        detail = str(detail)  # an InputError (what, expected, got, fix) becomes its one-line message
        super().__init__(detail)
        self.status, self.error, self.detail, self.file = status, error, detail, file

    def body(self) -> dict:
        out = {"error": self.error, "detail": self.detail}
        if self.file is not None:
            out["file"] = self.file
        return out


def clean_name(name, *, index: int = 0) -> str:
    """A client file name made safe to show: last path part, printable, at most 120 characters.

    Examples
    --------
    >>> clean_name("../../etc/passwd.png")
    'passwd.png'
    >>> clean_name("C:\\\\x\\\\cell 1.png"), clean_name("", index=2)
    ('cell 1.png', 'upload-2')
    """
    s = str(name or "").replace("\\", "/").split("/")[-1]
    s = "".join(ch for ch in s if ch.isprintable()).strip().lstrip(".")
    return s[:120] or f"upload-{index}"


#: first characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text) -> str:
    """A text cell for a CSV export that no spreadsheet runs as a formula: a leading ``= + - @``,
    tab or CR (also after spaces) gets a ``'`` in front.

    Examples
    --------
    >>> [csv_safe(s) for s in ("=HYPERLINK(1)", "-2+3", " @x", "cell_1", "1 4")]
    ["'=HYPERLINK(1)", "'-2+3", "' @x", 'cell_1', '1 4']
    """
    s = str(text)
    return "'" + s if s.lstrip(" ")[:1] in FORMULA_PREFIXES and s.strip(" ") else s


def image_id(name: str) -> str:
    """The id of a file name as ``protloc predict`` writes it (the name without extension).

    Examples
    --------
    >>> image_id("cell_7.png"), image_id("noext")
    ('cell_7', 'noext')
    """
    return name.rsplit(".", 1)[0] if "." in name else name


def sniff(data: bytes) -> str | None:
    """'png', 'jpeg' or 'tiff' from the first bytes, else None.

    Examples
    --------
    >>> sniff(b"\\x89PNG\\r\\n\\x1a\\n...."), sniff(b"%PDF-1.4")
    ('png', None)
    """
    for magic, kind in MAGIC:
        if data.startswith(magic):
            return kind
    return None


def _describe(data: bytes) -> str:
    head = data[:8]
    if head.startswith((b"%PDF",)):
        return "a PDF file"
    if head.startswith(b"GIF8"):
        return "a GIF image"
    if head.startswith(b"BM"):
        return "a BMP image"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"RIFF"):
        return "a RIFF (WebP/AVI) file"
    try:
        data[:64].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"unknown bytes {head.hex(' ')}"


def _pil_cost(mode: str, bands: int) -> tuple[int, int]:
    """(working bytes per pixel while decoding, uint8 channels kept) for a PIL image mode.

    Working bytes: PIL's own buffer (1 byte per pixel for 1/L/P, 2 for 16 bit, 4 otherwise), a
    converted copy (P, CMYK, YCbCr, LA, 1), the numpy array twice (``np.asarray`` goes through
    ``tobytes``, which joins its chunks), and ``to_uint8``'s float32 temporaries for 16/32-bit
    images. Measured peaks (3000x3000 PNG, fresh process): L 3.0, RGB 10.0, RGBA 12.0, I;16 12.0
    bytes per pixel; this gives 3, 10, 12 and 15.
    """
    internal = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    converted = {"P": 4, "CMYK": 4, "YCbCr": 4, "LA": 1, "1": 1}.get(mode, 0)
    channels = {"P": 4, "CMYK": 3, "YCbCr": 3, "LA": 1, "1": 1}.get(mode, bands)
    item = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    floats = 9 * channels if item > 1 else 0
    return internal + converted + 2 * channels * item + floats, channels


@dataclass(frozen=True)
class Header:
    """What an image file declares before any decoding: its size and the memory decoding takes.

    ``out_bytes``: the uint8 array kept for the request; ``work_bytes``: the peak while this one
    image decodes (decoder buffers, conversions, the array).
    """

    kind: str
    shape: str
    pixels: int
    out_bytes: int
    work_bytes: int


def read_header(data: bytes, name: str, *, max_pixels: int) -> Header | None:
    """Read an image's declared size from its header only (PIL ``Image.open``, tifffile's series
    shape), never decoding pixels. 413 :class:`UploadError` above ``max_pixels`` pixels per image;
    None when the header cannot be read (decoding then says what is wrong).

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (2000, 1000)).save(buf, "PNG")
    >>> len(buf.getvalue()) < 20_000, read_header(buf.getvalue(), "big.png", max_pixels=10**7).out_bytes
    (True, 6000000)
    >>> read_header(buf.getvalue(), "big.png", max_pixels=10**6)
    Traceback (most recent call last):
    ...
    protloc.web.uploads.UploadError: big.png: expected at most 1,000,000 pixels per image, got 2000x1000 pixels. Fix: downscale or crop the image first.
    """
    kind = sniff(data)
    if kind is None:
        return None

    def too_big(shape) -> UploadError:
        return UploadError(413, "image too large", InputError(name, expected=f"at most {max_pixels:,} pixels per "
                                                                "image", got=f"{shape}",
                                                                fix="downscale or crop the image first"), file=name)

    if kind == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                series = tif.series[0]
                shape = tuple(int(v) for v in series.shape)
                item = int(np.dtype(series.dtype).itemsize)
                uint8 = np.dtype(series.dtype) == np.uint8
        except Exception:  # noqa: BLE001 - tifffile raises many types on bad files; decoding reports it
            return None
        samples = int(np.prod(shape, dtype=np.int64)) if shape else 0
        pixels = samples // max(1, min(shape) if len(shape) > 2 else 1)
        if pixels > max_pixels or samples > 8 * max_pixels:
            raise too_big(shape)
        work = samples * item + (0 if uint8 else 9 * samples)
        return Header(kind, f"{shape} {series.dtype}", pixels, samples, work)
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind.upper()]) as im:
                width, height, mode, bands = im.width, im.height, im.mode, len(im.getbands())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_big("a decompression bomb") from None
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        return None
    pixels = width * height
    if pixels > max_pixels:
        raise too_big(f"{width}x{height} pixels")
    per_pixel, channels = _pil_cost(mode, bands)
    return Header(kind, f"{width}x{height} pixels, mode {mode}", pixels, pixels * channels, pixels * per_pixel)


def request_cost(headers) -> int:
    """Peak bytes of decoded pixels for one request: every image's uint8 array is kept until the
    answer is built, and the largest decoding's working memory comes on top.

    Examples
    --------
    >>> request_cost([Header("png", "", 100, 300, 700), Header("png", "", 10, 30, 70)])
    730
    """
    headers = [h for h in headers if h is not None]
    if not headers:
        return 0
    return sum(h.out_bytes for h in headers) + max(h.work_bytes - h.out_bytes for h in headers)


def check_request_pixels(uploads, *, max_pixels: int, max_bytes: int) -> int:
    """Read every upload's header and return the request's :func:`request_cost`; 413 naming the
    file at which it passes ``max_bytes`` (nothing decoded yet).

    ``uploads``: [(name, bytes)] with cleaned names.
    """
    headers = []
    for k, (name, data) in enumerate(uploads):
        headers.append(read_header(data, name, max_pixels=max_pixels))
        cost = request_cost(headers)
        if cost > max_bytes:
            h = headers[-1]
            one = request_cost([h])
            fix = ("downscale or crop the image, or start the server with a larger --max-decoded-mb" if one > max_bytes
                   else f"send at most {max(1, k)} image(s) like these per request, or smaller images")
            raise UploadError(413, "images too large to decode",
                              InputError(name, expected=f"the images of one request to decode to at most "
                                          f"{max_bytes / MB:g} MB", got=f"{cost / MB:,.0f} MB with the first {k + 1} "
                                          f"of {len(uploads)} files (this one: {h.shape}, {one / MB:,.0f} MB)",
                                          fix=fix), file=name)
    return request_cost(headers)


class PixelBudget:
    """Server-wide memory for decoded pixels, shared by all requests (a semaphore counted in bytes).

    ``take`` waits (first come, first served) until the request's bytes fit, at most ``timeout_s``,
    then answers 503; ``give`` returns them when the request ends.

    Examples
    --------
    >>> import asyncio
    >>> b = PixelBudget(100)
    >>> asyncio.run(b.take(60, timeout_s=0)), b.used
    (60, 60)
    >>> asyncio.run(b.take(60, timeout_s=0.05))
    Traceback (most recent call last):
    ...
    protloc.web.uploads.UploadError: the server is decoding other requests' images (60 of 100 bytes in use; this request needs 60). Fix: retry in a moment, or send fewer or smaller images per request.
    """

    def __init__(self, total: int):
        self.total = int(total)
        self.used = 0
        self._lock = threading.Lock()
        self._queue: deque = deque()

    def _try(self, n: int, ticket) -> bool:
        with self._lock:
            if self._queue and self._queue[0] is not ticket:
                return False
            if self.used + n > self.total and self.used > 0:
                return False
            self.used += n
            return True

    async def take(self, n: int, *, timeout_s: float) -> int:
        ticket = object()
        with self._lock:
            self._queue.append(ticket)
        try:
            deadline = time.monotonic() + timeout_s
            while not self._try(n, ticket):
                if time.monotonic() >= deadline:
                    unit = "bytes" if self.total < MB else "MB"
                    div = 1 if unit == "bytes" else MB
                    raise UploadError(503, "server busy",
                                      f"the server is decoding other requests' images ({self.used / div:,.0f} of "
                                      f"{self.total / div:,.0f} {unit} in use; this request needs {n / div:,.0f}). "
                                      "Fix: retry in a moment, or send fewer or smaller images per request.")
                await asyncio.sleep(0.02)
            return n
        finally:
            with self._lock:
                if ticket in self._queue:
                    self._queue.remove(ticket)

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - int(n))


def decode_raw(data: bytes, name: str, *, max_pixels: int, axes: str | None = None, z: str = "max"):
    """Decode PNG/JPEG/TIFF bytes (in memory) to ``(raw array (H, W) or (H, W, C), ImageMeta)``.

    The pixels keep their type (8/16 bit, float): the run's intensity rule is applied later, by
    :meth:`~protloc.core.preprocessing.Preprocessing.prepare`. TIFF axes, Z projection, pixel
    size and channel names are read as :func:`protloc.io.images.read_raw` reads files.

    Raises :class:`UploadError`: 400 empty, 415 not PNG/JPEG/TIFF, 413 too many pixels (read from
    the header, before decoding), 422 corrupt, undecodable or an unusable layout (time series,
    ambiguous axes).
    """
    from protloc.io.images import ImageReadError, decode_bytes

    if not data:
        raise UploadError(400, "empty file", InputError(name, expected="an image file", got="0 bytes",
                                                         fix="upload the file again"), file=name)
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, "unsupported file type",
                          InputError(name, expected="a PNG, JPEG or TIFF image", got=_describe(data),
                                      fix="export the image as PNG or TIFF"), file=name)
    read_header(data, name, max_pixels=max_pixels)  # 413 before any pixel is decoded
    try:
        arr, meta = decode_bytes(data, where=name, axes=axes, z=z)
    except ImageReadError as e:
        if e.expected is not None:  # a layout the reader refuses (time series, unnamed axes...)
            raise UploadError(422, "unsupported image layout", str(e), file=name) from None
        raise UploadError(422, "corrupt image", f"{name}: unreadable, corrupt or truncated {kind.upper()} image. "
                          "Fix: re-export the file as PNG or TIFF", file=name) from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise UploadError(422, "unsupported image layout",
                          InputError(name, expected="a 2-D image (H, W) or (H, W, C)",
                                      got=f"shape {tuple(arr.shape)}", fix="save one 2-D image per file"),
                          file=name)
    if arr.dtype != np.bool_ and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise UploadError(422, "unsupported pixel type", f"{name}: unsupported pixel type {arr.dtype}. Fix: save "
                          "8- or 16-bit images", file=name)
    return arr, meta


def decode_image(data: bytes, name: str, *, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes (in memory) to uint8 (H, W) or (H, W, C) (:func:`decode_raw`,
    then 16-bit data divided by 257; the prediction path keeps the raw pixels instead).

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(buf, "PNG")
    >>> decode_image(buf.getvalue(), "a.png", max_pixels=100).shape
    (4, 5, 3)
    """
    from protloc.io.images import to_uint8

    arr, _ = decode_raw(data, name, max_pixels=max_pixels)
    try:
        return to_uint8(arr)
    except InputError as e:
        raise UploadError(422, "unsupported pixel type", f"{name}: {e}", file=name) from None


# --------------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------------
def check_upload(name: str, size: int, *, max_upload: int) -> None:
    """413 when one file has more than ``max_upload`` bytes."""
    if size > max_upload:
        raise UploadError(413, "file too large",
                          InputError(name, expected=f"at most {max_upload / MB:g} MB per file",
                                      got=f"{size / MB:.1f} MB", fix="downscale or crop the image, "
                                      "or start the server with a larger --max-upload-mb"), file=name)


def check_count(n: int, *, max_files: int) -> None:
    """400 for no files, 413 for more than ``max_files``."""
    if n == 0:
        raise UploadError(400, "no files", InputError("request", expected="one or more files in the "
                          "multipart field 'files'", got="none", fix="attach images as files=@cell.png"))
    if n > max_files:
        raise UploadError(413, "too many files", InputError("request", expected=f"at most {max_files} "
                          "files", got=str(n), fix="send the images in several requests"))


# --------------------------------------------------------------------------------------------
# HPA channel files
# --------------------------------------------------------------------------------------------
def group_hpa(decoded) -> list[tuple]:
    """[(name, array)] -> in upload order ``("one", name, arr)`` or ``("hpa", id, members)``
    with members ``[(channel, name, arr)]`` for files named ``<id>_red|green|blue|yellow.<ext>``.

    Examples
    --------
    >>> a = np.zeros((2, 2), np.uint8)
    >>> [(g[0], g[1]) for g in group_hpa([("x_red.png", a), ("y.png", a), ("x_blue.png", a)])]
    [('hpa', 'x'), ('one', 'y.png')]
    """
    groups: dict[str, list] = {}
    order: list = []
    for k, (name, arr) in enumerate(decoded):
        m = HPA_NAME.match(name)
        if m:
            key = ("hpa", m["id"])
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append((m["ch"].lower(), name, arr))
        else:
            order.append(("one", k))
    return [("one", *decoded[key[1]]) if key[0] == "one" else ("hpa", key[1], groups[key]) for key in order]


def stack_hpa(iid: str, members, need) -> dict:
    """Stack the channel files ``members`` of HPA image ``iid`` in the order ``need``:
    an item ``{name, id, files, image (H, W, C)}``; 422 for a duplicate or missing channel."""
    have = {}
    for ch, name, arr in members:
        if ch in have:
            raise UploadError(422, "duplicate channel file",
                              InputError(f"HPA image '{iid}'", expected=f"one {ch} file", got=f"{have[ch][0]} "
                                          f"and {name}", fix="upload each channel file once"), file=name)
        if arr.ndim == 3:  # a grey channel saved as RGB: keep the matching plane
            arr = arr[..., min(HPA_CHANNELS.index(ch), arr.shape[2] - 1)] if ch != "yellow" else arr.max(-1)
        have[ch] = (name, arr)
    missing = [c for c in need if c not in have]
    if missing:
        ext = Path(members[0][1]).suffix or ".png"
        raise UploadError(422, "incomplete HPA channel set",
                          InputError(f"HPA image '{iid}'", expected="the channel files "
                                      + ", ".join(f"{iid}_{c}{ext}" for c in need),
                                      got="only " + ", ".join(have[c][0] for c in HPA_CHANNELS if c in have),
                                      fix="select all channel files of the image together"),
                          file=f"{iid}_{missing[0]}{ext}")
    from protloc.io.images import stack_planes

    img = stack_planes([have[c][1] for c in need])
    return {"name": iid, "id": iid, "files": [have[c][0] for c in HPA_CHANNELS if c in have], "image": img}
