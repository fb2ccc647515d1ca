"""Uploads: limits, magic-byte sniffing, decoding from bytes, HPA channel grouping.

Everything is decoded from bytes in memory; client file names are only echoed back (cleaned),
never used as paths. Every problem is an :class:`UploadError` (a 4xx/5xx JSON answer).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError, fmt_problem
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

    def __init__(self, status: int, error: str, detail: str, *, file: str | None = None):
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


def decode_image(data: bytes, name: str, *, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes (in memory) to uint8 (H, W) or (H, W, C).

    Raises :class:`UploadError`: 400 empty, 415 not PNG/JPEG/TIFF, 413 too many pixels,
    422 corrupt or undecodable.

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(buf, "PNG")
    >>> decode_image(buf.getvalue(), "a.png", max_pixels=100).shape
    (4, 5, 3)
    """
    from protloc.io.images import to_uint8

    if not data:
        raise UploadError(400, "empty file", fmt_problem(name, expected="an image file", got="0 bytes",
                                                         fix="upload the file again"), file=name)
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, "unsupported file type",
                          fmt_problem(name, expected="a PNG, JPEG or TIFF image", got=_describe(data),
                                      fix="export the image as PNG or TIFF"), file=name)
    too_big = UploadError(413, "image too large", "", file=name)

    def check_pixels(n_pixels: int, shape) -> None:
        if n_pixels > max_pixels:
            too_big.detail = fmt_problem(name, expected=f"at most {max_pixels:,} pixels per image",
                                         got=f"{shape}", fix="downscale or crop the image first")
            raise too_big

    corrupt = (f"{name}: unreadable, corrupt or truncated {kind.upper()} image ({{}}). "
               "Fix: re-export the file as PNG or TIFF")
    if kind == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                series = tif.series[0]
                shape = tuple(int(v) for v in series.shape)
                check_pixels(int(np.prod(shape)) // max(1, min(shape) if len(shape) > 2 else 1), shape)
                if int(np.prod(shape)) > 8 * max_pixels:
                    check_pixels(max_pixels + 1, shape)
                arr = series.asarray()
        except UploadError:
            raise
        except Exception as e:  # noqa: BLE001 - tifffile raises many types on bad files
            raise UploadError(422, "corrupt image", corrupt.format(type(e).__name__), file=name) from None
        arr = np.squeeze(arr)
        if arr.ndim == 3 and arr.shape[0] <= 8 and arr.shape[-1] > 8:
            arr = np.moveaxis(arr, 0, -1)  # (C, H, W) -> (H, W, C)
    else:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=[kind.upper()]) as im:
                    check_pixels(im.width * im.height, f"{im.width}x{im.height} pixels")
                    im.load()
                    mode = im.mode
                    if mode == "P":
                        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    elif mode in ("CMYK", "YCbCr"):
                        im = im.convert("RGB")
                    elif mode in ("LA", "1"):
                        im = im.convert("L")
                    arr = np.asarray(im)
        except UploadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            check_pixels(max_pixels + 1, "a decompression bomb")
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
            raise UploadError(422, "corrupt image", corrupt.format(type(e).__name__), file=name) from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise UploadError(422, "unsupported image layout",
                          fmt_problem(name, expected="a 2-D image (H, W) or (H, W, C)",
                                      got=f"shape {tuple(arr.shape)}", fix="save one 2-D image per file"),
                          file=name)
    try:
        return to_uint8(arr)
    except InputError as e:
        raise UploadError(422, "unsupported pixel type", f"{name}: {e}", file=name) from None


def _resize_plane(p: np.ndarray, hw) -> np.ndarray:
    from protloc.io.images import resize

    return resize(p[..., None], size=tuple(hw))[..., 0]


# --------------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------------
def check_upload(name: str, size: int, *, max_upload: int) -> None:
    """413 when one file has more than ``max_upload`` bytes."""
    if size > max_upload:
        raise UploadError(413, "file too large",
                          fmt_problem(name, expected=f"at most {max_upload / MB:g} MB per file",
                                      got=f"{size / MB:.1f} MB", fix="downscale or crop the image, "
                                      "or start the server with a larger --max-upload-mb"), file=name)


def check_count(n: int, *, max_files: int) -> None:
    """400 for no files, 413 for more than ``max_files``."""
    if n == 0:
        raise UploadError(400, "no files", fmt_problem("request", expected="one or more files in the "
                          "multipart field 'files'", got="none", fix="attach images as files=@cell.png"))
    if n > max_files:
        raise UploadError(413, "too many files", fmt_problem("request", expected=f"at most {max_files} "
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
                              fmt_problem(f"HPA image '{iid}'", expected=f"one {ch} file", got=f"{have[ch][0]} "
                                          f"and {name}", fix="upload each channel file once"), file=name)
        if arr.ndim == 3:  # a grey channel saved as RGB: keep the matching plane
            arr = arr[..., min(HPA_CHANNELS.index(ch), arr.shape[2] - 1)] if ch != "yellow" else arr.max(-1)
        have[ch] = (name, arr)
    missing = [c for c in need if c not in have]
    if missing:
        ext = Path(members[0][1]).suffix or ".png"
        raise UploadError(422, "incomplete HPA channel set",
                          fmt_problem(f"HPA image '{iid}'", expected="the channel files "
                                      + ", ".join(f"{iid}_{c}{ext}" for c in need),
                                      got="only " + ", ".join(have[c][0] for c in HPA_CHANNELS if c in have),
                                      fix="select all channel files of the image together"),
                          file=f"{iid}_{missing[0]}{ext}")
    planes = [have[c][1] for c in need]
    hw = planes[0].shape[:2]
    img = np.stack([p if p.shape[:2] == hw else _resize_plane(p, hw) for p in planes], -1)
    return {"name": iid, "id": iid, "files": [have[c][0] for c in HPA_CHANNELS if c in have], "image": img}
