"""The protloc web app: one page for biologists plus a small JSON API, on top of one run folder.

Routes
------
``GET /``            the page (``static/index.html`` + ``app.js`` + ``style.css``; no CDN).
``GET /health``      ``{"status": "ok", ...}``.
``GET /model``       the model card: labels and thresholds, channels, image size, training data
                     summary, validation macro F1, upload limits.
``POST /predict``    multipart ``files`` (one or many). Query options: ``explain=true`` adds
                     Grad-CAM overlays (base64 PNG data URIs) per predicted class,
                     ``preview=true`` adds the composite and per-channel pictures,
                     ``tta=none|flip|d4``, ``format=json|csv``.
``GET /docs``, ``GET /openapi.json``   FastAPI's OpenAPI docs.

Uploads
-------
PNG, JPEG or TIFF (recognised by their first bytes, never by the name), 8 or 16 bit, with the
run's channel count (an RGBA PNG loses its alpha for a 3-channel run). HPA channel files
``<id>_red|green|blue|yellow.png|tif`` sent together are stacked per id. Everything is decoded
from bytes in memory; client file names are only echoed back (cleaned), never used as paths.

Safety
------
Bodies are limited per request (413 before parsing) and per file (413); at most ``max_files``
files and ``max_pixels`` pixels per image; every user error is a 4xx JSON
``{"error": ..., "detail": ..., "file": ...}``. Inference runs in the thread pool behind a
bounded semaphore (``workers`` concurrent model calls, others wait up to ``busy_timeout_s``
and then get 503), so concurrent requests are safe.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from protloc.errors import InputError, fmt_problem

STATIC_DIR = Path(__file__).parent / "static"
MB = 1024 * 1024

#: first bytes of the accepted file types
MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),      # classic TIFF
    (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),      # BigTIFF
)
HPA_NAME = re.compile(r"^(?P<id>.+)_(?P<ch>red|green|blue|yellow)\.(?:png|tiff?|jpe?g)$", re.IGNORECASE)
HPA_ORDER = ("red", "green", "blue", "yellow")
#: what each channel shows (the reference data and the HPA layout)
CHANNEL_ROLES = {"red": "microtubules", "green": "protein of interest", "blue": "nucleus",
                 "yellow": "endoplasmic reticulum"}
#: display tint of each named channel
TINTS = {"red": (1.0, 0.2, 0.2), "green": (0.2, 1.0, 0.3), "blue": (0.3, 0.55, 1.0),
         "yellow": (1.0, 0.9, 0.2)}
PREVIEW_MAX = 256

CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# pure helpers: names, sniffing, decoding
# --------------------------------------------------------------------------------------------
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
    from protloc.imageio import to_uint8

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
    from protloc.imageio import resize

    return resize(p[..., None], size=tuple(hw))[..., 0]


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------
def png_data_uri(img: np.ndarray) -> str:
    """uint8 (H, W[, 3]) -> ``data:image/png;base64,...``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def composite(img: np.ndarray, names) -> np.ndarray:
    """(H, W, C) uint8 -> RGB using channel names (red/green/blue, yellow adds to red+green).

    Unnamed channels map to R, G, B in order.

    Examples
    --------
    >>> composite(np.full((2, 2, 4), 100, np.uint8), ("red", "green", "blue", "yellow"))[0, 0].tolist()
    [150, 150, 100]
    """
    names = [str(n).lower() for n in names]
    if not set(names) & set(HPA_ORDER):
        names = list(HPA_ORDER[:3]) + ["yellow"] * max(0, len(names) - 3)
    out = np.zeros(img.shape[:2] + (3,), np.float32)
    for c, n in enumerate(names[: img.shape[2]]):
        p = img[..., c].astype(np.float32)
        if n == "yellow":
            out[..., 0] += 0.5 * p
            out[..., 1] += 0.5 * p
        elif n in ("red", "green", "blue"):
            out[..., "rgb".index(n[0])] += p
    return np.clip(out, 0, 255).astype(np.uint8)


def tinted(plane: np.ndarray, name: str, *, autocontrast: bool = True) -> np.ndarray:
    """One channel (H, W) shown in its colour (grey for unknown names), stretched so its 99.5th
    percentile is full brightness (display only; the model sees the raw values).

    Examples
    --------
    >>> tinted(np.array([[0, 50]], np.uint8), "green")[0, 1].tolist()
    [51, 255, 76]
    """
    p = plane.astype(np.float32)
    if autocontrast:
        top = float(np.percentile(p, 99.5))
        if top > 0:
            p = p * (255.0 / top)
    t = np.asarray(TINTS.get(str(name).lower(), (1.0, 1.0, 1.0)), np.float32)
    return np.clip(p[..., None] * t, 0, 255).astype(np.uint8)


_HEAT_X = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_RGB = np.array([[48, 18, 59], [40, 140, 235], [60, 220, 120], [250, 200, 40], [220, 40, 20]], np.float32)


def heat_overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a [0, 1] heat map (turbo-like colours) onto an RGB image; cold areas stay visible.

    Examples
    --------
    >>> heat_overlay(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2))).shape
    (2, 2, 3)
    """
    h = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0, 1)
    col = np.stack([np.interp(h, _HEAT_X, _HEAT_RGB[:, k]) for k in range(3)], -1)
    a = (0.15 + 0.5 * h)[..., None]
    return np.clip(rgb.astype(np.float32) * (1 - a) + col * a, 0, 255).astype(np.uint8)


def _resize_heat(heat: np.ndarray, hw) -> np.ndarray:
    from PIL import Image

    h = np.asarray(heat, np.float32)
    if h.shape == tuple(hw):
        return h
    return np.asarray(Image.fromarray(h, mode="F").resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def _gradcam(models, pre, img: np.ndarray, class_ids) -> dict:
    """Fallback Grad-CAM (used only when ``protloc.explain`` is unavailable): {class: (H, W)}."""
    import torch

    x = torch.from_numpy(pre.normalize(img[None]))
    maps = {int(c): np.zeros(img.shape[:2], np.float32) for c in class_ids}
    with torch.enable_grad():
        for m in models:
            dev = next(m.parameters()).device
            feats = m.forward_features(x.to(dev)).detach().requires_grad_(True)
            logits = m.forward_head(feats)
            for c in maps:
                (g,) = torch.autograd.grad(logits[0, c], feats, retain_graph=True)
                cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * feats).sum(1))[0]
                cam = cam.detach().float().cpu().numpy()
                maps[c] += _resize_heat(cam, img.shape[:2])
    for c, h in maps.items():
        top = float(h.max())
        maps[c] = h / top if top > 0 else h
    return maps


# --------------------------------------------------------------------------------------------
# the service: one loaded run
# --------------------------------------------------------------------------------------------
class Service:
    """The loaded run (predictor, model card) and the prediction pipeline; thread safe."""

    def __init__(self, run_dir, *, predictor=None, max_upload_mb: float = 20, max_request_mb: float = 100,
                 max_files: int = 64, max_pixels: int = 6144 * 6144, workers: int = 1,
                 busy_timeout_s: float = 120.0):
        from protloc.runfolder import RunFolder

        if predictor is None:
            from protloc.predict import Predictor

            predictor = Predictor.from_run(run_dir)
        self.run = RunFolder(run_dir)
        self.predictor = predictor
        self.pre = predictor.preprocessing
        self.classes = list(predictor.classes)
        self.thresholds = np.asarray(predictor.thresholds, np.float64)
        self.max_upload = int(max_upload_mb * MB)
        self.max_request = int(max(max_request_mb, max_upload_mb) * MB)
        self.max_files = int(max_files)
        self.max_pixels = int(max_pixels)
        self.busy_timeout_s = float(busy_timeout_s)
        self._slots = threading.BoundedSemaphore(max(1, int(workers)))
        #: decoding runs outside the model slots but is bounded too (memory of decoded images)
        self._decode_slots = threading.BoundedSemaphore(max(2, 2 * int(workers)))
        self.started = time.time()
        self.n_requests = 0
        self._count_lock = threading.Lock()
        self.card = self._model_card()

    # ------------------------------------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        pre = self.pre
        if pre.fmt == "rgb" or not set(map(str, pre.channels)) & set(HPA_ORDER):
            if pre.in_chans <= 4 and pre.fmt != "tiff":
                return list(HPA_ORDER[: pre.in_chans])
        return [str(c) for c in pre.channels]

    def _hpa_needed(self) -> list[str]:
        names = self.channel_names
        return names if set(names) <= set(HPA_ORDER) else list(HPA_ORDER[: self.pre.in_chans])

    def _model_card(self) -> dict:
        pre, run = self.pre, self.run
        summary, config, thr = _safe(run.summary, {}), _safe(run.config, {}), _safe(run.thresholds, None)
        spec = _safe(lambda: json.loads(run.model_json.read_text()), {})
        per_class = {int(r.get("id", i)): r for i, r in enumerate((thr or {}).get("per_class") or [])}
        classes = []
        for k, name in enumerate(self.classes):
            row = per_class.get(k, {})
            classes.append({"id": k, "name": name, "threshold": round(float(self.thresholds[k]), 4),
                            "n_positives": row.get("n_positives"), "f1": row.get("f1_after")})
        names = self.channel_names
        f1 = _find_number(summary, ("val_macro_f1", "oof_macro_f1", "macro_f1", "macro_f1_oof"))
        return {
            "run": run.root.resolve().name,
            "schema": pre.schema.name,
            "classes": classes,
            "format": pre.fmt,
            "channels": [{"name": n, "role": CHANNEL_ROLES.get(n, n)} for n in names],
            "image_size": pre.size,
            "normalization": {"mean": [round(v, 4) for v in pre.mean], "std": [round(v, 4) for v in pre.std]},
            "backbone": spec.get("backbone") or config.get("model") or config.get("backbone"),
            "ensemble": len(getattr(self.predictor, "models", []) or []) or None,
            "thresholds": {
                "source": "thresholds.json" if thr else "default 0.5 (no thresholds.json)",
                "method": (thr or {}).get("method"),
                "at_least_one": bool(getattr(self.predictor, "at_least_one", False)),
                "macro_f1_after": (thr or {}).get("macro_f1_after"),
            },
            "validation": {"macro_f1": f1, "threshold": summary.get("threshold", 0.5) if f1 is not None else None,
                           "macro_f1_tuned": (thr or {}).get("macro_f1_after")},
            "training": _training_summary(summary, config, thr),
            "limits": {"max_upload_mb": round(self.max_upload / MB, 2),
                       "max_request_mb": round(self.max_request / MB, 2),
                       "max_files": self.max_files, "max_pixels": self.max_pixels,
                       "types": ["PNG", "JPEG", "TIFF"]},
        }

    # ------------------------------------------------------------------------------------
    @contextmanager
    def slot(self, *, decode: bool = False):
        """One of ``workers`` model slots (or decode slots); 503 after ``busy_timeout_s``."""
        sem = self._decode_slots if decode else self._slots
        if not sem.acquire(timeout=self.busy_timeout_s):
            raise UploadError(503, "server busy", f"no free {'decoding' if decode else 'model'} slot within "
                              f"{self.busy_timeout_s:g} s. Fix: retry in a moment, or send fewer images per request")
        try:
            yield
        finally:
            sem.release()

    def check_upload(self, name: str, size: int) -> None:
        if size > self.max_upload:
            raise UploadError(413, "file too large",
                              fmt_problem(name, expected=f"at most {self.max_upload / MB:g} MB per file",
                                          got=f"{size / MB:.1f} MB", fix="downscale or crop the image, "
                                          "or start the server with a larger --max-upload-mb"), file=name)

    def check_count(self, n: int) -> None:
        if n == 0:
            raise UploadError(400, "no files", fmt_problem("request", expected="one or more files in the "
                              "multipart field 'files'", got="none", fix="attach images as files=@cell.png"))
        if n > self.max_files:
            raise UploadError(413, "too many files", fmt_problem("request", expected=f"at most {self.max_files} "
                              "files", got=str(n), fix="send the images in several requests"))

    def items_from_uploads(self, uploads) -> list[dict]:
        """[(name, bytes)] -> items {name, id, files, image (H, W, C) uint8}, HPA sets stacked."""
        self.check_count(len(uploads))
        decoded = []
        for i, (raw_name, data) in enumerate(uploads):
            name = clean_name(raw_name, index=i)
            self.check_upload(name, len(data))
            decoded.append((name, decode_image(data, name, max_pixels=self.max_pixels)))
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
        items = []
        for key in order:
            if key[0] == "one":
                name, arr = decoded[key[1]]
                items.append(self._single(name, arr))
                continue
            members = groups[key]
            if len(members) == 1 and members[0][2].ndim == 3 and members[0][2].shape[2] >= 3:
                items.append(self._single(members[0][1], members[0][2]))  # an RGB file named *_red.png
            else:
                items.append(self._hpa(key[1], members))
        return items

    def _single(self, name: str, arr: np.ndarray) -> dict:
        pre = self.pre
        a = arr if arr.ndim == 3 else arr[..., None]
        if a.shape[2] == 4 and pre.in_chans == 3:
            a = a[..., :3]  # RGBA: drop alpha (or an HPA 4-channel stack: drop yellow), as in training
        elif a.shape[2] > pre.in_chans and pre.fmt == "tiff":
            idx = [int(str(c).removeprefix("ch")) for c in pre.channels if str(c).removeprefix("ch").isdigit()]
            if len(idx) == pre.in_chans and max(idx) < a.shape[2]:
                a = a[..., idx]
        opaque_alpha = a.shape[2] == 4 and pre.in_chans == 4 and bool((a[..., 3] == 255).all())
        if a.shape[2] != pre.in_chans or opaque_alpha:
            got = "a grayscale image (1 channel)" if a.shape[2] == 1 else f"{a.shape[2]} channels"
            if opaque_alpha:
                got = "an RGBA image whose 4th channel is a plain alpha (all 255), not a yellow channel"
            fix = ("upload an RGB image (red microtubules, green protein, blue nucleus)" if pre.in_chans == 3
                   else f"upload a {pre.in_chans}-channel TIFF or the HPA channel files "
                        f"<id>_{'/'.join(self._hpa_needed())}.png together")
            if a.shape[2] == 1:
                fix += ", or all HPA channel files <id>_red|green|blue.png of the image together"
            raise UploadError(422, "wrong number of channels",
                              fmt_problem(name, expected=f"{pre.in_chans} channels ({', '.join(self.channel_names)})",
                                          got=got, fix=fix), file=name)
        return {"name": name, "id": image_id(name), "files": [name], "image": a}

    def _hpa(self, iid: str, members) -> dict:
        need = self._hpa_needed()
        have = {}
        for ch, name, arr in members:
            if ch in have:
                raise UploadError(422, "duplicate channel file",
                                  fmt_problem(f"HPA image '{iid}'", expected=f"one {ch} file", got=f"{have[ch][0]} "
                                              f"and {name}", fix="upload each channel file once"), file=name)
            if arr.ndim == 3:  # a grey channel saved as RGB: keep the matching plane
                arr = arr[..., min(HPA_ORDER.index(ch), arr.shape[2] - 1)] if ch != "yellow" else arr.max(-1)
            have[ch] = (name, arr)
        missing = [c for c in need if c not in have]
        if missing:
            ext = Path(members[0][1]).suffix or ".png"
            raise UploadError(422, "incomplete HPA channel set",
                              fmt_problem(f"HPA image '{iid}'", expected="the channel files "
                                          + ", ".join(f"{iid}_{c}{ext}" for c in need),
                                          got="only " + ", ".join(have[c][0] for c in HPA_ORDER if c in have),
                                          fix="select all channel files of the image together"),
                              file=f"{iid}_{missing[0]}{ext}")
        planes = [have[c][1] for c in need]
        hw = planes[0].shape[:2]
        img = np.stack([p if p.shape[:2] == hw else _resize_plane(p, hw) for p in planes], -1)
        return {"name": iid, "id": iid, "files": [have[c][0] for c in HPA_ORDER if c in have], "image": img}

    # ------------------------------------------------------------------------------------
    def predict(self, uploads, *, explain: bool = False, preview: bool = False, tta: str = "none") -> dict:
        """The whole pipeline for one request (runs in a worker thread)."""
        t0 = time.perf_counter()
        with self._count_lock:
            self.n_requests += 1
        if tta not in ("none", "flip", "d4"):
            raise UploadError(422, "invalid option", fmt_problem("tta", expected="none, flip or d4",
                                                                 got=repr(tta), fix="use tta=none"))
        with self.slot(decode=True):
            items = self.items_from_uploads(uploads)
        batch = []
        for it in items:
            try:
                batch.append(self.pre.check_array(it["image"], where=it["name"]))
            except InputError as e:
                raise UploadError(422, "wrong number of channels", str(e), file=it["name"]) from None
        batch = np.stack(batch)
        heat = [None] * len(items)
        with self.slot(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probs = self.predictor.predict_array(batch, tta=tta)
            labels, strings = self._labels(probs)
            if explain:
                heat = [self._explain(batch[i], labels[i], probs[i]) for i in range(len(items))]
        results = [self._result(it, probs[i], labels[i], strings[i], heat[i], preview=preview,
                                model_img=batch[i]) for i, it in enumerate(items)]
        return {"classes": self.classes, "thresholds": [round(float(t), 4) for t in self.thresholds],
                "results": results, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}

    def _labels(self, probs):
        if hasattr(self.predictor, "labels_from_probs"):
            return self.predictor.labels_from_probs(probs)
        hot = probs >= self.thresholds[None]
        labels = [np.flatnonzero(r).tolist() for r in hot]
        return labels, [" ".join(map(str, ls)) for ls in labels]

    def _explain(self, img: np.ndarray, label_ids, probs) -> dict:
        """{class id: heat (H, W) in [0, 1]} for the predicted classes."""
        if not label_ids:
            return {}
        try:
            from protloc.explain import explain_image
        except ImportError:
            explain_image = None
        if explain_image is None:
            return _gradcam(self.predictor.models, self.pre, img, label_ids)
        rows = explain_image(self.predictor, self.pre, img, classes=list(label_ids), thresholds=self.thresholds)
        return {int(r["class_idx"]): np.asarray(r["heatmap"], np.float32) for r in rows
                if int(r["class_idx"]) in set(label_ids)}

    def _result(self, it, p, label_ids, label_str, heat, *, preview: bool, model_img) -> dict:
        img = it["image"]
        out = {
            "name": it["name"], "image": it["id"], "files": it["files"],
            "width": int(img.shape[1]), "height": int(img.shape[0]),
            "probabilities": {c: round(float(v), 5) for c, v in zip(self.classes, p)},
            "labels": [{"id": int(k), "name": self.classes[k], "probability": round(float(p[k]), 5),
                        "threshold": round(float(self.thresholds[k]), 4)} for k in label_ids],
            "label": label_str,
            "thresholds": {c: round(float(t), 4) for c, t in zip(self.classes, self.thresholds)},
        }
        if not preview and heat is None:
            return out
        side = max(img.shape[:2])
        disp = img
        if side > PREVIEW_MAX:  # keep the aspect ratio
            from protloc.imageio import resize

            s = PREVIEW_MAX / side
            disp = resize(img, size=(max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))))
        names = self.channel_names
        rgb = composite(disp, names)
        if preview:
            out["composite"] = png_data_uri(rgb)
            out["channel_images"] = [{"name": n, "role": CHANNEL_ROLES.get(n, n), "src": png_data_uri(tinted(disp[..., c], n))}
                                     for c, n in enumerate(names[: disp.shape[2]])]
        if heat is not None:
            out["overlays"] = [{"id": int(k), "name": self.classes[k], "probability": round(float(p[k]), 5),
                                "src": png_data_uri(self._overlay(rgb, heat[k]))} for k in label_ids if k in heat]
        return out

    @staticmethod
    def _overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
        h = _resize_heat(heat, rgb.shape[:2])
        try:
            from protloc.explain import overlay
        except ImportError:
            return heat_overlay(rgb, h)
        return np.asarray(overlay(rgb, h), np.uint8)

    def to_csv(self, result: dict) -> str:
        import csv

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["Image", "Label", *self.classes])
        for r in result["results"]:
            image = "'" + r["image"] if r["image"][:1] in ("=", "+", "@") else r["image"]  # no formulas
            w.writerow([image, r["label"], *(f"{r['probabilities'][c]:.5f}" for c in self.classes)])
        return buf.getvalue()


def _safe(fn, default):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a damaged optional file must not stop the server
        return default


def _find_number(d, keys, depth: int = 0):
    if not isinstance(d, dict) or depth > 2:
        return None
    for k in keys:
        v = d.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
            return round(float(v), 4)
    for sub in ("oof", "overall", "validation", "val", "metrics"):
        v = _find_number(d.get(sub), keys, depth + 1)
        if v is not None:
            return v
    return None


def _training_summary(summary: dict, config: dict, thr) -> dict:
    """The training facts a biologist asks about (data size, folds, recipe), for the model card."""
    summary, config = summary or {}, config or {}
    out: dict = {}

    def put(label, value):
        if value is not None and value != "" and not isinstance(value, (dict, list)):
            out[label] = round(value, 4) if isinstance(value, float) else value

    folds = summary.get("fold_summaries") or []
    n_train = sorted({int(f["n_train"]) for f in folds if isinstance(f, dict) and f.get("n_train")})
    n_val = sum(int(f.get("n_val", 0)) for f in folds if isinstance(f, dict))
    for key in ("data", "csv", "images", "dataset"):
        put("data" if key != "csv" else "labels CSV", config.get(key) if isinstance(config.get(key), str) else None)
    if n_train:
        put("training images" + (" per fold" if len(folds) > 1 else ""),
            str(n_train[0]) if len(n_train) == 1 else f"{n_train[0]}-{n_train[-1]}")
    put("validation images", summary.get("oof_images") or n_val or (thr or {}).get("n_images") or None)
    put("folds", summary.get("n_folds") or config.get("folds") or summary.get("folds"))
    for key, label in (("preset", "recipe"), ("model", "network"), ("pretrained", "pretrained weights"),
                       ("size", "image size"), ("epochs", "epochs"), ("batch_size", "batch size"),
                       ("loss", "loss"), ("sampler", "sampler"), ("augment", "augmentation")):
        put(label, config.get(key))
    if isinstance(summary.get("val_mAP"), (int, float)):
        put("validation mAP", float(summary["val_mAP"]))
    if summary.get("empty_classes"):
        put("classes without validation images", ", ".join(map(str, summary["empty_classes"])))
    secs = summary.get("fit_seconds")
    if isinstance(secs, (int, float)) and secs > 0:
        put("training time", f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.0f} s")
    return out


# --------------------------------------------------------------------------------------------
# ASGI guard: request size limit + security headers
# --------------------------------------------------------------------------------------------
class _Guard:
    """Reject bodies over ``max_bytes`` with 413 before any parsing; add security headers."""

    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._with_headers(scope, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reply(send, 400, "bad request", "Content-Length: expected an integer. "
                                         "Fix: send a valid request")
            if n > self.max_bytes:
                await self._drain(receive, limit=min(n, 2 * self.max_bytes))
                return await self._too_large(send, n)
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                if msg.get("more_body"):
                    await self._drain(receive, limit=2 * self.max_bytes - total)
                return await self._too_large(send, total, at_least=True)
            chunks.append(body)
            if not msg.get("more_body"):
                break
        data, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive, *, limit: int) -> None:
        """Read (and drop) a bit more of a refused body so the client sees the 413 cleanly."""
        seen = 0
        while seen < limit:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            if not msg.get("more_body"):
                return

    async def _too_large(self, send, n: int, *, at_least: bool = False):
        got = f"{'more than ' if at_least else ''}{n / MB:.1f} MB"
        return await self._reply(send, 413, "request too large",
                                 fmt_problem("request", expected=f"at most {self.max_bytes / MB:g} MB in one "
                                             "request", got=got, fix="send fewer or smaller images per "
                                             "request, or start the server with a larger --max-request-mb"))

    @staticmethod
    async def _reply(send, status: int, error: str, detail: str):
        body = json.dumps({"error": error, "detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _with_headers(scope, send):
        extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        if scope.get("path") in ("/", "/index.html"):
            extra += [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]

        async def wrapped(msg):
            if msg["type"] == "http.response.start":
                msg = dict(msg)
                msg["headers"] = list(msg.get("headers") or []) + extra
            await send(msg)

        return wrapped


# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------
def create_app(run_dir, *, max_upload_mb: float = 20, max_request_mb: float = 100, max_files: int = 64,
               max_pixels: int = 6144 * 6144, workers: int = 1, busy_timeout_s: float = 120.0,
               predictor=None):
    """Build the FastAPI app serving the run folder ``run_dir`` (loaded once, here).

    Parameters
    ----------
    run_dir : path of a trained run folder.
    max_upload_mb, max_request_mb : size limits per file and per request (413 above).
    max_files : files per request; max_pixels : pixels per image.
    workers : concurrent model calls (a bounded semaphore); ``busy_timeout_s``: wait before 503.
    predictor : an already loaded :class:`protloc.predict.Predictor` (tests, embedding).
    """
    from protloc import __version__

    service = Service(run_dir, predictor=predictor, max_upload_mb=max_upload_mb, max_request_mb=max_request_mb,
                      max_files=max_files, max_pixels=max_pixels, workers=workers, busy_timeout_s=busy_timeout_s)
    app = FastAPI(title="protloc", version=__version__,
                  description="Predict where a protein lives in the cell from fluorescence microscopy "
                              f"images. Serving run **{service.card['run']}** "
                              f"({len(service.classes)} classes, {service.pre.in_chans} channels, "
                              f"{service.pre.size} px).")
    app.state.service = service

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid request",
                             "detail": "; ".join(parts) + ". Fix: send multipart/form-data with one or more "
                                                          "image files in the field 'files'"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail) if exc.status_code != 404 else "not found",
                             "detail": f"{request.method} {request.url.path}: {exc.detail}"},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # pragma: no cover - last resort
        return JSONResponse({"error": "internal error", "detail": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", tags=["service"], summary="Liveness and what is loaded")
    def health():
        return {"status": "ok", "run": service.card["run"], "classes": len(service.classes),
                "models": service.card["ensemble"], "uptime_s": round(time.time() - service.started, 1),
                "requests": service.n_requests}

    @app.get("/model", tags=["model"], summary="The model card")
    def model():
        return service.card

    @app.post("/predict", tags=["model"], summary="Predict localizations for uploaded images",
              responses={400: {"description": "no files"}, 413: {"description": "too large / too many"},
                         415: {"description": "not a PNG, JPEG or TIFF"},
                         422: {"description": "corrupt image, wrong channels, incomplete HPA set"},
                         503: {"description": "server busy"}})
    async def predict(files: list[UploadFile] = File(..., description="images (PNG/JPEG/TIFF) or HPA "
                                                     "channel files <id>_red|green|blue|yellow.png"),
                      explain: bool = Query(False, description="add Grad-CAM overlays per predicted class"),
                      preview: bool = Query(False, description="add composite and channel pictures"),
                      tta: str = Query("none", description="test-time augmentation: none, flip, d4"),
                      format: str = Query("json", description="json or csv (Image,Label,<probabilities>)"),
                      explain_field: bool | None = Form(None, alias="explain", description="same as the "
                                                        "query option explain (for curl -F explain=true)")):
        explain = bool(explain or explain_field)
        if format not in ("json", "csv"):
            raise UploadError(422, "invalid option", fmt_problem("format", expected="json or csv",
                                                                 got=repr(format), fix="use format=json"))
        service.check_count(len(files))
        uploads = []
        for i, f in enumerate(files):
            name = clean_name(f.filename, index=i)
            if f.size is not None:
                service.check_upload(name, f.size)
            data = await f.read(service.max_upload + 1)
            service.check_upload(name, len(data))
            uploads.append((name, data))
            await f.close()
        result = await run_in_threadpool(service.predict, uploads, explain=explain, preview=preview, tta=tta)
        if format == "csv":
            return PlainTextResponse(service.to_csv(result), media_type="text/csv",
                                     headers={"content-disposition": 'attachment; filename="protloc_predictions.csv"'})
        return result

    app.add_middleware(_Guard, max_bytes=service.max_request)  # size limit before any parsing
    return app

