"""The loaded run and the prediction pipeline: bounded-concurrency model calls and the
per-image result payloads (probabilities, labels, previews, Grad-CAM overlays), thread safe.

Inference runs in the thread pool behind a bounded semaphore (``workers`` concurrent model
calls, others wait up to ``busy_timeout_s`` and then get 503); decoding is bounded too.
"""

from __future__ import annotations

import io
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np

from protloc.core.errors import InputError
from protloc.io.images import CHANNEL_ROLES
from protloc.reports.html import composite, png_data_uri
from protloc.web.model_card import channel_names, hpa_needed, model_card
from protloc.web.pictures import PREVIEW_MAX, overlay, tinted
from protloc.web.uploads import (MB, UploadError, check_count, check_upload, clean_name, csv_safe, decode_raw,
                                 group_hpa, image_id, sniff, stack_hpa)


def _round(v, nd: int = 4):
    return None if v is None else round(float(v), nd)


class Service:
    """The loaded run (predictor, model card) and the prediction pipeline; thread safe."""

    def __init__(self, run_dir, *, predictor=None, max_upload_mb: float = 20, max_request_mb: float = 100,
                 max_files: int = 64, max_pixels: int = 6144 * 6144, workers: int = 1,
                 busy_timeout_s: float = 120.0):
        from protloc.core.runfolder import RunFolder

        if predictor is None:
            from protloc.inference.predictor import Predictor

            predictor = Predictor.from_run(run_dir)
        self.run = RunFolder(run_dir)
        self.predictor = predictor
        self.pre = predictor.preprocessing
        self.classes = list(predictor.classes)
        self.thresholds = np.asarray(predictor.threshold_rule.values, np.float64)
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
        self.card = model_card(self.run, predictor, max_upload=self.max_upload, max_request=self.max_request,
                               max_files=self.max_files, max_pixels=self.max_pixels)

    @property
    def channel_names(self) -> list[str]:
        return channel_names(self.pre)

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
        check_upload(name, size, max_upload=self.max_upload)

    def check_count(self, n: int) -> None:
        check_count(n, max_files=self.max_files)

    def items_from_uploads(self, uploads) -> list[dict]:
        """[(name, bytes)] -> items {name, id, files, image (H, W, C) raw pixels, meta}, HPA sets
        stacked. Pixels keep their type (8/16 bit): the run's intensity rule comes in ``prepare``."""
        self.check_count(len(uploads))
        decoded, rgba, metas = [], {}, {}
        reading = self.pre.reading
        for i, (raw_name, data) in enumerate(uploads):
            name = clean_name(raw_name, index=i)
            self.check_upload(name, len(data))
            arr, metas[name] = decode_raw(data, name, max_pixels=self.max_pixels, axes=reading.axes, z=reading.z)
            decoded.append((name, arr))
            rgba[name] = sniff(data) != "tiff"  # a 4th PNG channel is alpha, a 4th TIFF channel is data
        items = []
        for kind, key, value in group_hpa(decoded):
            if kind == "one":
                items.append(self._single(key, value, rgba=rgba[key], meta=metas[key]))
            elif len(value) == 1 and value[0][2].ndim == 3 and value[0][2].shape[2] >= 3:
                name = value[0][1]  # an RGB file named *_red.png
                items.append(self._single(name, value[0][2], rgba=rgba[name], meta=metas[name]))
            else:
                item = stack_hpa(key, value, hpa_needed(self.pre))
                from dataclasses import replace

                item["meta"] = replace(metas[value[0][1]], channel_names=None)
                items.append(item)
        return items

    def _single(self, name: str, arr: np.ndarray, *, rgba: bool, meta=None) -> dict:
        """One decoded file with the run's channels (the run's rule:
        :meth:`~protloc.core.preprocessing.Preprocessing.pick_channels`), else 422."""
        try:
            a = self.pre.pick_channels(arr, where=name, rgba=rgba, meta=meta)
        except InputError as e:
            raise UploadError(422, "wrong number of channels", str(e), file=name) from None
        return {"name": name, "id": image_id(name), "files": [name], "image": a, "meta": meta}

    # ------------------------------------------------------------------------------------
    def predict(self, uploads, *, explain: bool = False, preview: bool = False, tta: str = "none") -> dict:
        """The whole pipeline for one request (runs in a worker thread)."""
        t0 = time.perf_counter()
        with self._count_lock:
            self.n_requests += 1
        if tta not in ("none", "flip", "d4"):
            raise UploadError(422, "invalid option", InputError("tta", expected="none, flip or d4",
                                                                 got=repr(tta), fix="use tta=none"))
        with self.slot(decode=True):
            items = self.items_from_uploads(uploads)
        batch = []
        for it in items:
            it["info"] = {}
            try:
                batch.append(self.pre.prepare(it["image"], where=it["name"], meta=it.get("meta"),
                                              pixel_size=self.predictor.pixel_size, info=it["info"]))
            except InputError as e:
                raise UploadError(422, "wrong number of channels", str(e), file=it["name"]) from None
        batch = np.stack(batch)
        heat = [None] * len(items)
        with self.slot(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probs, ood = self.predictor.predict_array(batch, tta=tta, with_ood=True)
            labels, strings = self._labels(probs)
            if explain:
                heat = [self._explain(batch[i], labels[i], probs[i]) for i in range(len(items))]
        results = [self._result(it, probs[i], labels[i], strings[i], heat[i], preview=preview,
                                model_img=batch[i], ood=None if ood is None else float(ood[i]))
                   for i, it in enumerate(items)]
        return {"classes": self.classes, "thresholds": [round(float(t), 4) for t in self.thresholds],
                "results": results, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}

    def _labels(self, probs):
        return self.predictor.labels_from_probs(probs)

    def _explain(self, img: np.ndarray, label_ids, probs) -> dict:
        """{class id: heat (H, W) in [0, 1]} for the predicted classes."""
        if not label_ids:
            return {}
        from protloc.reports.explain import explain_image

        rows = explain_image(self.predictor, self.pre, img, classes=list(label_ids), thresholds=self.thresholds)
        return {int(r["class_idx"]): np.asarray(r["heatmap"], np.float32) for r in rows
                if int(r["class_idx"]) in set(label_ids)}

    def _result(self, it, p, label_ids, label_str, heat, *, preview: bool, model_img, ood=None) -> dict:
        raw = it["image"]
        info = it.get("info", {})
        meta = it.get("meta")
        out = {
            "name": it["name"], "image": it["id"], "files": it["files"],
            "width": int(raw.shape[1]), "height": int(raw.shape[0]),
            "probabilities": {c: round(float(v), 5) for c, v in zip(self.classes, p)},
            "labels": [{"id": int(k), "name": self.classes[k], "probability": round(float(p[k]), 5),
                        "threshold": round(float(self.thresholds[k]), 4)} for k in label_ids],
            "label": label_str,
            "thresholds": {c: round(float(t), 4) for c, t in zip(self.classes, self.thresholds)},
            "input": {"dtype": str(raw.dtype), "axes": getattr(meta, "axes", None),
                      "z_planes": getattr(meta, "z_planes", 1), "intensity": info.get("intensity"),
                      "pixel_size_um": _round(info.get("pixel_size_um")),
                      "pixel_size_source": info.get("pixel_size_source"),
                      "run_pixel_size_um": _round(info.get("run_pixel_size_um")),
                      "geometry": info.get("geometry"), "notes": list(info.get("notes", []))},
            "ood_score": None if ood is None else round(ood, 4),
            "ood_flag": None if ood is None else bool(ood > 1.0),
        }
        if not preview and heat is None:
            return out
        if (info.get("geometry") or "").startswith("scaled"):  # rescaled to the training pixel size: show
            img = model_img                                     # what the model saw (heat maps align)
        else:
            img, _ = self.pre.reading.apply(raw, meta=meta)  # the run's intensity rule, at the image's size
        side = max(img.shape[:2])
        disp = img
        if side > PREVIEW_MAX:  # keep the aspect ratio
            from protloc.io.images import resize

            s = PREVIEW_MAX / side
            disp = resize(img, size=(max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))))
        names = self.channel_names
        rgb = composite(disp, names)
        if preview:
            out["composite"] = png_data_uri(rgb)
            out["channel_images"] = [{"name": n, "role": CHANNEL_ROLES.get(n, n),
                                      "src": png_data_uri(tinted(disp[..., c], n))}
                                     for c, n in enumerate(names[: disp.shape[2]])]
        if heat is not None:
            out["overlays"] = [{"id": int(k), "name": self.classes[k], "probability": round(float(p[k]), 5),
                                "src": png_data_uri(overlay(rgb, heat[k]))} for k in label_ids if k in heat]
        return out

    def to_csv(self, result: dict) -> str:
        import csv

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        scored = any(r.get("ood_score") is not None for r in result["results"])
        w.writerow(["Image", "Label", *self.classes] + (["ood_score", "ood_flag"] if scored else []))
        for r in result["results"]:
            w.writerow([csv_safe(r["image"]), csv_safe(r["label"]),  # no formulas from names
                        *(f"{r['probabilities'][c]:.5f}" for c in self.classes)]
                       + ([f"{r['ood_score']:.4f}", int(r["ood_flag"])] if scored else []))
        return buf.getvalue()
