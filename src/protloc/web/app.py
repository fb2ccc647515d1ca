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
Bodies are limited per request (counted while they stream in: 413 as soon as the limit is
crossed) and per file (413); at most ``max_files`` files and ``max_pixels`` pixels per image.
Before any pixel is decoded, every file's header is read and the request's decoded-pixel memory
is charged against a per-request budget (413 naming the file) and a server-wide budget (waits,
then 503). Every user error is a 4xx JSON ``{"error": ..., "detail": ..., "file": ...}``; every
response carries the security headers (CSP, X-Frame-Options, X-Content-Type-Options,
Referrer-Policy). Inference runs in the thread pool behind a bounded semaphore (``workers``
concurrent model calls, others wait up to ``busy_timeout_s`` and then get 503), so concurrent
requests are safe. ``protloc serve`` adds read timeouts and connection caps
(:func:`protloc.web.guard.guarded_protocol`).

Modules
-------
:mod:`~protloc.web.uploads` (limits, sniffing, decoding, HPA channel sets),
:mod:`~protloc.web.pictures` (previews, overlays), :mod:`~protloc.web.model_card` (``/model``),
:mod:`~protloc.web.inference` (:class:`Service`: bounded model calls, result payloads),
:mod:`~protloc.web.guard` (streamed size limit, security headers, connection guard); this module
builds the app.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from protloc.core.errors import InputError
from protloc.web.guard import CSP, Guard
from protloc.web.inference import Service
from protloc.web.model_card import model_card
from protloc.web.pictures import PREVIEW_MAX, TINTS, tinted
from protloc.web.uploads import (HPA_NAME, MAGIC, MB, PixelBudget, UploadError, check_request_pixels, clean_name,
                                 decode_image, image_id, sniff)

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["CSP", "HPA_NAME", "MAGIC", "MB", "PREVIEW_MAX", "STATIC_DIR", "TINTS", "Guard", "Service",
           "UploadError", "clean_name", "create_app", "decode_image", "image_id", "model_card", "sniff",
           "tinted"]


class _App(FastAPI):
    """FastAPI with :class:`~protloc.web.guard.Guard` outside everything, Starlette's error
    middleware included, so even a last-resort 500 carries the security headers."""

    guard_options: dict = {}

    def build_middleware_stack(self):
        return Guard(super().build_middleware_stack(), **self.guard_options)


def create_app(run_dir, *, max_upload_mb: float = 20, max_request_mb: float = 100, max_files: int = 64,
               max_pixels: int = 6144 * 6144, max_decoded_mb: float = 512, max_decoded_total_mb: float = 768,
               max_active: int = 16, workers: int = 1, busy_timeout_s: float = 120.0, predictor=None):
    """Build the FastAPI app serving the run folder ``run_dir`` (loaded once, here).

    Parameters
    ----------
    run_dir : path of a trained run folder.
    max_upload_mb, max_request_mb : size limits per file and per request (413 above).
    max_files : files per request; max_pixels : pixels per image.
    max_decoded_mb : memory the decoded pixels of one request may take, estimated from the file
        headers before decoding (413 above); max_decoded_total_mb : the same for all requests at
        once (a request waits up to ``busy_timeout_s`` for room, then 503).
    max_active : requests uploading at the same time (503 above; GET routes are never refused).
    workers : concurrent model calls (a bounded semaphore); ``busy_timeout_s``: wait before 503.
    predictor : an already loaded :class:`protloc.inference.predictor.Predictor` (tests, embedding).
    """
    from protloc import __version__

    service = Service(run_dir, predictor=predictor, max_upload_mb=max_upload_mb, max_request_mb=max_request_mb,
                      max_files=max_files, max_pixels=max_pixels, workers=workers, busy_timeout_s=busy_timeout_s)
    app = _App(title="protloc", version=__version__,
                  description="Predict where a protein lives in the cell from fluorescence microscopy "
                              f"images. Serving run **{service.card['run']}** "
                              f"({len(service.classes)} classes, {service.pre.in_chans} channels, "
                              f"{service.pre.size} px).")
    app.state.service = service
    max_decoded = int(max_decoded_mb * MB)
    budget = PixelBudget(max(int(max_decoded_total_mb * MB), max_decoded))
    app.state.pixel_budget = budget
    app.guard_options = {"max_bytes": service.max_request, "max_active": max_active}
    service.card.setdefault("limits", {}).update(max_decoded_mb=max_decoded_mb,
                                                 max_decoded_total_mb=round(budget.total / MB, 2))

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
    async def _crash(request: Request, exc: Exception):  # last resort: no traceback, no message text
        logging.getLogger("protloc.web").error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error",
                             "detail": f"{request.method} {request.url.path}: the server failed "
                                       f"({type(exc).__name__}). Fix: retry; if it happens again, report it "
                                       "with the server's log"}, status_code=500)

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
            raise UploadError(422, "invalid option", InputError("format", expected="json or csv",
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
        cost = await run_in_threadpool(check_request_pixels, uploads, max_pixels=service.max_pixels,
                                       max_bytes=max_decoded)  # headers only: 413 before decoding
        await budget.take(cost, timeout_s=service.busy_timeout_s)  # 503 when other requests hold it
        try:
            result = await run_in_threadpool(service.predict, uploads, explain=explain, preview=preview, tta=tta)
        finally:
            budget.give(cost)
        if format == "csv":
            return PlainTextResponse(service.to_csv(result), media_type="text/csv",
                                     headers={"content-disposition": 'attachment; filename="protloc_predictions.csv"'})
        return result

    return app
