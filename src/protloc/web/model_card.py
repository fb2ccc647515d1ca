"""The ``GET /model`` card: labels and thresholds, channels, image size, training data and recipe,
validation macro F1 and upload limits, read once from the run folder through
:class:`~protloc.core.runfolder.RunFolder` (typed; an optional file that is missing or damaged
leaves its part of the card empty, with a note, and never stops the server)."""

from __future__ import annotations

from protloc.core.errors import RunFolderError
from protloc.io.images import CHANNEL_ROLES, HPA_CHANNELS
from protloc.web.uploads import MB


def channel_names(pre) -> list[str]:
    """The channel names of a run's :class:`~protloc.core.preprocessing.Preprocessing` (HPA colours
    for an RGB or unnamed layout of up to 4 channels)."""
    if pre.fmt == "rgb" or not set(map(str, pre.channels)) & set(HPA_CHANNELS):
        if pre.in_chans <= 4 and pre.fmt != "tiff":
            return list(HPA_CHANNELS[: pre.in_chans])
    return [str(c) for c in pre.channels]


def hpa_needed(pre) -> list[str]:
    """The HPA channel files a request must send for one image, in stacking order."""
    names = channel_names(pre)
    return names if set(names) <= set(HPA_CHANNELS) else list(HPA_CHANNELS[: pre.in_chans])


def _optional(read, notes: list):
    """``read()``, or None with a note when the file is missing or damaged."""
    try:
        return read()
    except RunFolderError as e:
        notes.append(str(e))
        return None


def model_card(run, predictor, *, max_upload: int, max_request: int, max_files: int, max_pixels: int) -> dict:
    """The model card of the loaded ``predictor`` from the run folder ``run`` (a ``RunFolder``)."""
    pre = predictor.preprocessing
    rule = predictor.threshold_rule
    notes: list[str] = []
    summary = _optional(run.summary, notes)
    config = _optional(run.config, notes) if run.config_yaml.is_file() else None
    spec = _optional(run.model_spec, notes)
    source = _optional(run.data_source, notes)
    rows = {r["id"]: r for r in rule.per_class()}
    classes = [{"id": k, "name": name, "threshold": round(float(rule.values[k]), 4),
                "n_positives": rows.get(k, {}).get("n_positives"), "f1": rows.get(k, {}).get("f1_after")}
               for k, name in enumerate(predictor.classes)]
    opt = rule.optimizer
    f1 = summary.val_macro_f1 if summary is not None else None
    return {
        "run": run.root.resolve().name,
        "schema": pre.schema.name,
        "classes": classes,
        "format": pre.fmt,
        "channels": [{"name": n, "role": CHANNEL_ROLES.get(n, n)} for n in channel_names(pre)],
        "image_size": pre.size,
        "normalization": {"mean": [round(v, 4) for v in pre.mean], "std": [round(v, 4) for v in pre.std]},
        "backbone": spec.backbone if spec is not None else (config.model if config is not None else None),
        "ensemble": len(getattr(predictor, "models", []) or []) or None,
        "thresholds": {
            "source": "default 0.5 (no thresholds.json)" if rule.source == "default 0.5" else rule.source,
            "method": rule.method,
            "at_least_one": rule.at_least_one,
            "macro_f1_after": opt.macro_f1_after_ if opt is not None else None,
        },
        "validation": {"macro_f1": None if f1 is None else round(float(f1), 4),
                       "threshold": summary.threshold if f1 is not None else None,
                       "macro_f1_tuned": opt.macro_f1_after_ if opt is not None else None},
        "training": _training_summary(summary, config, source, opt),
        "reading": _reading(pre, predictor),
        "ood": _ood(predictor),
        "limits": {"max_upload_mb": round(max_upload / MB, 2),
                   "max_request_mb": round(max_request / MB, 2),
                   "max_files": max_files, "max_pixels": max_pixels,
                   "types": ["PNG", "JPEG", "TIFF"]},
        "notes": notes,
    }


def _reading(pre, predictor) -> dict:
    """How uploads are read: the intensity rule, Z projection, training pixel size (the card's
    ``reading``; the page shows it above the results)."""
    r = pre.reading
    model_px = r.model_pixel_size(pre.size)
    return {"intensity": r.intensity.describe(), "intensity_rule": r.intensity.to_dict(), "z_projection": r.z,
            "axes_default": r.axes, "pixel_size_um": r.pixel_size, "field_px": r.field,
            "model_pixel_size_um": None if model_px is None else round(model_px, 4),
            "pixel_size_given_um": getattr(predictor, "pixel_size", None),
            "pixel_size_note": ("images whose pixel size is known are scaled to the training images' "
                                f"{r.pixel_size:g} µm/px" if r.pixel_size else
                                "the run records no training pixel size: images are resized by pixel count")}


def _ood(predictor) -> dict:
    """Whether predictions carry an out-of-distribution score, and its calibration."""
    dets = getattr(predictor, "ood", None)
    if not dets:
        return {"available": False, "note": "this run has no out-of-distribution reference (trained before "
                                            "protloc recorded one): no warning for unusual images"}
    return {"available": True, "quantile": dets[0].quantile, "n_train": sum(d.n_train_ for d in dets),
            "n_validation": sum(d.n_val_ for d in dets),
            "note": f"an image scores above 1 (flagged) when it is farther from the training images than "
                    f"{100 * dets[0].quantile:g} % of the held-out validation images"}


def _training_summary(summary, config, source, opt) -> dict:
    """The training facts a biologist asks about (data, size, folds, recipe), for the model card."""
    out: dict = {}

    def put(label, value):
        if value is not None and value != "":
            out[label] = round(value, 4) if isinstance(value, float) else value

    if source is not None:
        put("labels CSV", source.csv)
        put("images", source.images)
        put("data", f"{source.n_images} images ({source.fmt}, channels "
                    f"{', '.join(map(str, source.channels))}; schema {source.schema})")
    if summary is not None:
        n_train = sorted(set(summary.n_train))
        if n_train:
            put("training images" + (" per fold" if len(summary.fold_summaries) > 1 else ""),
                str(n_train[0]) if len(n_train) == 1 else f"{n_train[0]}-{n_train[-1]}")
    n_val = (summary.oof_images or summary.n_val or None) if summary is not None else None
    if n_val is None and opt is not None:
        n_val = opt.n_samples_ or None
    put("validation images", n_val)
    put("folds", summary.n_folds if summary is not None and summary.n_folds else
        (config.folds if config is not None else None))
    if config is not None:
        for key, label in (("preset", "recipe"), ("model", "network"), ("pretrained", "pretrained weights"),
                           ("size", "image size"), ("epochs", "epochs"), ("batch_size", "batch size"),
                           ("loss", "loss"), ("sampler", "sampler"), ("augment", "augmentation")):
            put(label, getattr(config, key))
    if summary is not None:
        if summary.val_mAP is not None:
            put("validation mAP", float(summary.val_mAP))
        if summary.empty_classes:
            put("classes without validation images", ", ".join(map(str, summary.empty_classes)))
        secs = summary.fit_seconds
        if secs:
            put("training time", f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.0f} s")
    return out
