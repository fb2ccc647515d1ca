"""The ``GET /model`` card: labels and thresholds, channels, image size, training data summary,
validation macro F1 and upload limits, read once from the run folder (damaged optional files
are skipped, never fatal)."""

from __future__ import annotations

import json

import numpy as np

from protloc.web.pictures import CHANNEL_ROLES
from protloc.web.uploads import HPA_ORDER, MB


def channel_names(pre) -> list[str]:
    """The channel names of a run's :class:`~protloc.core.preprocessing.Preprocessing` (HPA colours
    for an RGB or unnamed layout of up to 4 channels)."""
    if pre.fmt == "rgb" or not set(map(str, pre.channels)) & set(HPA_ORDER):
        if pre.in_chans <= 4 and pre.fmt != "tiff":
            return list(HPA_ORDER[: pre.in_chans])
    return [str(c) for c in pre.channels]


def hpa_needed(pre) -> list[str]:
    """The HPA channel files a request must send for one image, in stacking order."""
    names = channel_names(pre)
    return names if set(names) <= set(HPA_ORDER) else list(HPA_ORDER[: pre.in_chans])


def model_card(run, predictor, *, max_upload: int, max_request: int, max_files: int, max_pixels: int) -> dict:
    """The model card of the loaded ``predictor`` from the run folder ``run`` (a ``RunFolder``)."""
    pre = predictor.preprocessing
    thresholds = np.asarray(predictor.thresholds, np.float64)
    summary, config, thr = _safe(run.summary, {}), _safe(run.config, {}), _safe(run.thresholds, None)
    spec = _safe(lambda: json.loads(run.model_json.read_text()), {})
    per_class = {int(r.get("id", i)): r for i, r in enumerate((thr or {}).get("per_class") or [])}
    classes = []
    for k, name in enumerate(predictor.classes):
        row = per_class.get(k, {})
        classes.append({"id": k, "name": name, "threshold": round(float(thresholds[k]), 4),
                        "n_positives": row.get("n_positives"), "f1": row.get("f1_after")})
    names = channel_names(pre)
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
        "ensemble": len(getattr(predictor, "models", []) or []) or None,
        "thresholds": {
            "source": "thresholds.json" if thr else "default 0.5 (no thresholds.json)",
            "method": (thr or {}).get("method"),
            "at_least_one": bool(getattr(predictor, "at_least_one", False)),
            "macro_f1_after": (thr or {}).get("macro_f1_after"),
        },
        "validation": {"macro_f1": f1, "threshold": summary.get("threshold", 0.5) if f1 is not None else None,
                       "macro_f1_tuned": (thr or {}).get("macro_f1_after")},
        "training": _training_summary(summary, config, thr),
        "limits": {"max_upload_mb": round(max_upload / MB, 2),
                   "max_request_mb": round(max_request / MB, 2),
                   "max_files": max_files, "max_pixels": max_pixels,
                   "types": ["PNG", "JPEG", "TIFF"]},
    }


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
