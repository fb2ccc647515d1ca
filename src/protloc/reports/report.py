"""The evaluation report of a run: one self-contained HTML file (``protloc report``).

What it shows (section titles in :data:`SECTIONS`): a summary with the headline numbers,
training curves, per-class precision/recall/F1 at the chosen thresholds, precision-recall
curves, probability densities of positives vs negatives, a reliability plot, a true-vs-predicted
label co-occurrence matrix, galleries of the worst false positives/negatives per class,
Grad-CAM overlays for a few confident predictions, and how images are read (intensity rule, Z
projection, the training pixel size) with the distribution of out-of-distribution scores.

By default it reports on the out-of-fold probabilities (``RUN/oof.csv``), reading gallery images
from the training image folder recorded in ``RUN/data.json``; with a labeled table it predicts
that set first. Whatever is missing (thresholds, images, training curves, models) is stated in
the report instead of failing.

Examples
--------
>>> page = build_report("runs/r1")  # doctest: +SKIP
>>> page.save("runs/r1/report.html")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from protloc.reports import report_plots as rp
from protloc.core.errors import InputError, RunFolderError
from protloc.reports.html import Page, composite, esc
from protloc.core.runfolder import RunFolder

SECTIONS = ("Summary", "Training curves", "Per-class metrics", "Precision-recall curves",
            "Probability distributions", "Calibration", "Label co-occurrence",
            "Worst false positives and false negatives", "Grad-CAM examples",
            "Image reading and out-of-distribution scores")
THUMB = 96  # gallery thumbnails are at most this many pixels wide
GRADCAM_PX = 120  # side of each Grad-CAM panel


@dataclass
class ReportData:
    """Everything the report draws. ``read(id)`` returns a uint8 image or None."""

    ids: list
    probs: np.ndarray
    y: np.ndarray
    classes: list
    thresholds: np.ndarray
    at_least_one: bool = False
    source: str = "out-of-fold predictions"
    read: Callable | None = None
    metrics: pd.DataFrame | None = None
    notes: list = field(default_factory=list)
    channels: tuple = ()  # the run's channel names/indices (for composites)
    ood: np.ndarray | None = None  # out-of-distribution scores of these images (None: not scored)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def training_images(run: RunFolder) -> tuple[Path | None, str]:
    """The training image folder recorded in ``RUN/data.json``, or ``(None, why not)``."""
    src = run.data_source()
    if src is None:
        return None, "the run records no training data (no data.json: trained before protloc recorded it)"
    folder = Path(src.images)
    if not folder.is_dir():
        return None, f"the training images recorded in the run ({folder}) were not found"
    return folder, str(folder)


def image_reader(read_one) -> Callable:
    """``read(id)``: ``read_one(id)`` (an image as the run sees it) cached, None when unreadable."""
    cache: dict = {}

    def read(iid):
        if iid not in cache:
            try:
                cache[iid] = read_one(str(iid))
            except (InputError, OSError):
                cache[iid] = None
        return cache[iid]

    return read


def folder_reader(folder: Path, pre) -> Callable:
    """Images ``folder/<id>`` read the way the run was trained (:func:`read_for_run`)."""
    from protloc.inference.inputs import read_for_run

    return image_reader(lambda iid: read_for_run(Path(folder) / iid, pre))


def from_oof(run: RunFolder) -> ReportData:
    """Report data from the out-of-fold probabilities and the training images of ``data.json``."""
    pre = run.preprocessing()
    ids, probs, y, _ = run.oof()
    ok = np.isfinite(probs).all(1)
    notes = [] if ok.all() else [f"{int((~ok).sum())} oof.csv rows without probabilities were left out"]
    data = ReportData(ids=[i for i, k in zip(ids, ok) if k], probs=probs[ok], y=y[ok], classes=list(pre.classes),
                      thresholds=np.full(len(pre.classes), 0.5), notes=notes,
                      source=f"out-of-fold predictions ({run.oof_csv.name})", channels=pre.channels)
    folder, msg = training_images(run)
    if folder is None:
        data.notes.append(f"no images found: {msg}; galleries and Grad-CAM are skipped. Pass --images (the "
                          "training images) or --csv/--images to report on a labeled image set.")
    else:
        data.read = folder_reader(folder, pre)
    return data


def from_table(run: RunFolder, table, *, tta: str = "none", progress: bool = False, device=None,
               channels_chosen: bool | None = None) -> ReportData:
    """Predict a labeled :class:`~protloc.data.table.DataTable` with the run, then report on it."""
    from protloc.inference.inputs import read_table_row
    from protloc.inference.predictor import Predictor

    if not table.labeled:
        raise InputError(str(table.csv_path or table.images), expected="a labeled CSV (Label column)",
                         got="no labels", fix="pass --csv with labels, or leave out --csv/--images "
                         "to report on the out-of-fold predictions")
    pred = Predictor.from_run(run.root, device=device)
    pre = pred.preprocessing
    res = pred.predict_table(table, tta=tta, progress=progress, on_error="skip", channels_chosen=channels_chosen)
    pos = {iid: k for k, iid in enumerate(table.ids)}
    y = table.y()[[pos[i] for i in res.ids]]
    notes = [f"{len(res.skipped)} unreadable images were left out (e.g. {res.skipped[0][1]})"] if res.skipped else []
    chosen = channels_chosen if channels_chosen is not None else True
    return ReportData(ids=list(res.ids), probs=np.asarray(res.probs, np.float32), y=y, classes=list(pre.classes),
                      thresholds=np.full(len(pre.classes), 0.5), notes=notes + list(res.notes), ood=res.ood_score,
                      source=f"{table.csv_path.name if table.csv_path else table.images} ({len(res.ids)} "
                             f"images, predicted with tta={tta})", channels=pre.channels,
                      read=image_reader(lambda iid: read_table_row(table, pos[iid], pre, channels_chosen=chosen)))


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------
def _thumb(img: np.ndarray, names) -> np.ndarray:
    from protloc.io.images import resize

    rgb = composite(img, names)
    return resize(rgb, size=THUMB) if rgb.shape[0] > THUMB else rgb


def _labels(row, classes) -> str:
    names = [classes[i] for i in np.flatnonzero(row)]
    return ", ".join(names) if names else "none"


def _summary(page: Page, d: ReportData, y_pred: np.ndarray, rule, run: RunFolder) -> dict:
    from protloc.core.metrics import classification_summary, macro_f1

    s = classification_summary(d.y, y_pred, d.probs, classes=d.classes)
    f05 = macro_f1(d.y, d.probs >= 0.5)
    kpis = [("images", len(d.ids)), ("macro F1 (chosen thresholds)", f"{s['macro_f1']:.3f}"),
            ("macro F1 at 0.5", f"{f05:.3f}"), ("micro F1", f"{s['micro_f1']:.3f}"),
            ("mAP", "–" if s["mAP"] is None else f"{s['mAP']:.3f}"),
            ("calibration error (ECE)", f"{rp.expected_calibration_error(d.y, d.probs):.3f}")]
    thr_note = None if rule.fitted else (f"no thresholds.json: 0.5 is used for every class. Run `protloc "
                                         f"thresholds {run.root}` to tune per-class thresholds.")
    notes = ([thr_note] if thr_note else []) + list(d.notes)
    if s["empty_classes"]:
        notes.append(f"classes with no positive image (left out of macro F1): {', '.join(s['empty_classes'])}")
    body = Page.kpis(kpis) + f"<p>Evaluated on: {esc(d.source)}. Run folder: <code>{esc(run.root)}</code>.</p>"
    body += f"<p>{esc(_run_facts(run, rule))}</p>"
    body += "".join(f'<p class="warn">Note: {esc(n)}</p>' for n in notes)
    page.section(SECTIONS[0], body)
    return s


def _run_facts(run: RunFolder, rule) -> str:
    """One line: model, image size, channels, folds, threshold method."""
    pre = run.preprocessing()
    try:
        backbone = run.model_spec().backbone
    except RunFolderError:
        backbone = "? (model.json missing or unreadable)"
    facts = [f"Model: {backbone} on {pre.size} px {'/'.join(map(str, pre.channels))} images"]
    n = len(run.folds())
    facts.append(f"{n} fold model{'s' if n != 1 else ''}")
    if rule.fitted:
        facts.append(f"per-class thresholds from thresholds.json (method {rule.method}"
                     f"{', at least one label per image' if rule.at_least_one else ''})")
    return "; ".join(facts) + "."


def _training(page: Page, run: RunFolder, metrics: pd.DataFrame | None) -> None:
    if metrics is None:
        metrics = run.metrics()  # a damaged metrics.csv is a RunFolderError naming it
    if metrics is None or metrics.empty:
        page.section(SECTIONS[1], '<p class="warn">No training curves: metrics.csv is missing or empty.</p>')
        return
    page.section(SECTIONS[1], Page.figure(rp.training_curves(metrics), alt="training curves", dpi=80),
                 note="One colour per fold. Validation macro F1 here uses the training threshold.")


def _per_class(page: Page, d: ReportData, s: dict) -> None:
    from protloc.core.metrics import per_class_f1

    f05 = per_class_f1(d.y, d.probs >= 0.5)
    rows = [{"class": r["class"], "threshold": float(d.thresholds[k]), "precision": r["precision"],
             "recall": r["recall"], "F1": r["f1"], "F1 at 0.5": f05[k], "support": r["support"],
             "predicted": r["predicted"], "AP": r["ap"]} for k, r in enumerate(s["per_class"])]
    df = pd.DataFrame(rows).astype({"precision": float, "recall": float, "F1": float, "AP": float})
    page.section(SECTIONS[2], Page.table(df), note="At the chosen per-class thresholds; support = true "
                 "positives in the truth, predicted = images given the class. – means undefined.")


def _galleries(page: Page, d: ReportData, *, k: int) -> None:
    if d.read is None:
        page.section(SECTIONS[7], '<p class="warn">No images available: galleries skipped (see Summary).</p>')
        return
    parts, missing = [], 0
    cell = '<div style="min-width:0">{}</div>'
    for c, (fp, fn) in enumerate(rp.worst_errors(d.y, d.probs, d.thresholds, k=k)):
        if not fp and not fn:
            continue
        parts.append(cell.format(f"<b>{esc(d.classes[c])}</b><br><small>threshold {d.thresholds[c]:.2f}<br>"
                                 f"{len(fp)} FP, {len(fn)} FN shown</small>"))
        for rows in (fp, fn):
            items = []
            for i in rows:
                img = d.read(d.ids[i])
                if img is None:
                    missing += 1
                    continue
                cap = f"{d.ids[i]} · p={d.probs[i, c]:.2f} · true: {_labels(d.y[i], d.classes)}"
                items.append((_thumb(img, d.channels), cap))
            parts.append(cell.format(Page.gallery(items, width=100) if items else "<small>–</small>"))
    if parts:
        head = (cell.format("")
                + cell.format("<b>false positives</b>: predicted, not in the truth (most confident first)")
                + cell.format("<b>false negatives</b>: in the truth, missed (lowest probability first)"))
        parts = ['<div style="display:grid;grid-template-columns:170px 1fr 1fr;gap:10px 18px;'
                 'align-items:start;font-size:13px">' + head + "".join(parts) + "</div>"]
    if missing:
        parts.insert(0, f'<p class="warn">{missing} gallery images could not be read.</p>')
    page.section(SECTIONS[7], "".join(parts) or "<p>No errors at the chosen thresholds.</p>",
                 note=f"Per class, up to {k} of the most confident false positives and the most "
                      "missed false negatives. Composite: red microtubules, green protein, blue nucleus.")


def _gradcam(page: Page, d: ReportData, run: RunFolder, *, n: int, device=None) -> None:
    from protloc.inference.predictor import Predictor
    from protloc.io.images import resize
    from protloc.reports.explain import explain_image, overlay, protein_channel

    if d.read is None:
        page.section(SECTIONS[8], '<p class="warn">No images available: Grad-CAM skipped.</p>')
        return
    try:
        pred = Predictor.from_run(run.root, device=device, engine="torch")  # Grad-CAM needs torch
    except InputError as e:
        page.section(SECTIONS[8], f'<p class="warn">Models could not be loaded ({esc(e)}): Grad-CAM skipped.</p>')
        return
    pre = pred.preprocessing
    chosen, order = [], np.argsort(-(d.probs * d.y), axis=0)  # most confident true positives per class
    for rank in range(min(3, len(d.ids))):
        for c in range(len(d.classes)):
            i = int(order[rank, c])
            if len(chosen) < n and d.y[i, c] and i not in [j for j, _ in chosen]:
                chosen.append((i, c))
    items = []
    for i, c in chosen:
        img = d.read(d.ids[i])
        if img is None:
            continue
        try:
            e = explain_image(pred, pre, img, classes=[c], thresholds=d.thresholds)[0]
            a = pre.as_input(img)
        except InputError:  # e.g. an image with other channels than the run's
            continue
        g = a[..., protein_channel(pre)]
        green = np.stack([np.zeros_like(g), g, np.zeros_like(g)], -1)
        gap = np.full((GRADCAM_PX, 4, 3), 255, np.uint8)
        rgb = composite(a, pre.channels)
        panels = [rgb, overlay(rgb, e["heatmap"]), overlay(green, e["heatmap"])]
        row = np.concatenate([x for p in panels for x in (resize(p, size=GRADCAM_PX), gap)][:-1], axis=1)
        items.append((row, f"{d.ids[i]} · {d.classes[c]} · p={e['prob']:.2f} (threshold {e['threshold']:.2f})"))
    body = Page.gallery(items, width=3 * GRADCAM_PX + 8) if items else "<p>No examples.</p>"
    page.section(SECTIONS[8], body, note="The most confident true positives of each class: image, Grad-CAM "
                 "over the composite, Grad-CAM over the protein channel. Colour = how much a region raised "
                 "the class score (red high, blue low, none: no evidence); see `protloc explain`.")


def build_report(run, data: ReportData | None = None, *, gallery_k: int = 3, n_gradcam: int = 8,
                 device=None) -> Page:
    """Build the report :class:`~protloc.reports.html.Page` (``data`` default: :func:`from_oof`)."""
    run = (run if isinstance(run, RunFolder) else RunFolder(run)).check(need_models=False)
    d = data if data is not None else from_oof(run)
    if not len(d.ids):
        raise InputError(f"{run.root}", expected="at least one image with probabilities",
                         got="none", fix="check oof.csv or the --csv/--images set")
    rule = run.thresholds()
    thr = rule.values
    d.thresholds, d.at_least_one = thr, rule.at_least_one
    y_pred = rule.apply(d.probs)
    name = "/".join(run.root.resolve().parts[-2:])
    page = Page(f"protloc report: {name}", subtitle=f"{len(d.ids)} images · {d.source}")
    s = _summary(page, d, y_pred, rule, run)
    _training(page, run, d.metrics)
    _per_class(page, d, s)
    page.section(SECTIONS[3], Page.figure(rp.pr_curves(d.y, d.probs, thr, d.classes), alt="PR curves", dpi=80),
                 note="Red dot: precision and recall at the chosen threshold; dotted line: the class's "
                      "positive rate (a random model).")
    page.section(SECTIONS[4], Page.figure(rp.prob_densities(d.y, d.probs, thr, d.classes), alt="densities",
                                          dpi=80),
                 note="Kernel density of the predicted probability for images that have the class "
                      "(positives) and those that do not; the dashed line is the threshold.")
    page.section(SECTIONS[5], Page.figure(rp.reliability(d.y, d.probs), alt="reliability", dpi=80),
                 note="Points on the diagonal mean a probability of 0.7 is right 70% of the time.")
    page.section(SECTIONS[6], Page.figure(rp.cooccurrence(d.y, y_pred, d.classes), alt="co-occurrence", dpi=80),
                 note="Rows: true class; columns: predicted class; numbers count images. The diagonal "
                      "holds true positives, bright off-diagonal cells show classes that get confused.")
    _galleries(page, d, k=gallery_k)
    _gradcam(page, d, run, n=n_gradcam, device=device)
    _reading_and_ood(page, d, run)
    return page


def _reading_and_ood(page: Page, d: ReportData, run: RunFolder) -> None:
    """How the run reads images, and the out-of-distribution scores of validation (and these) images."""
    pre = run.preprocessing()
    r = pre.reading
    model_px = r.model_pixel_size(pre.size)
    rows = [("intensity", r.intensity.describe()),
            ("Z stacks", f"{r.z} projection; time series are refused"),
            ("axes of TIFFs without axis metadata", r.axes or "channels for up to 8 planes, else refused "
                                                            "(pass --axes)"),
            ("training pixel size", f"{r.pixel_size:g} µm/px, typical image {r.field} px; the model sees "
                                    f"{model_px:.3g} µm/px" if r.pixel_size else
             "unknown (not in the files, no --pixel-size): images are resized by pixel count")]
    if pre.channel_names:
        rows.append(("channel names (matched in OME files)", ", ".join(pre.channel_names)))
    body = Page.table(pd.DataFrame(rows, columns=["reading", "rule"]))
    try:
        dets = run.ood()
    except RunFolderError as e:
        dets = None
        body += f'<p class="warn">OOD reference unreadable: {esc(e)}</p>'
    if not dets:
        body += ('<p class="warn">No out-of-distribution reference in this run (trained before protloc '
                 'recorded one): predictions carry no OOD score.</p>')
        page.section(SECTIONS[9], body)
        return
    groups = {"validation (held out, calibration)": np.concatenate([det.val_scores_ for det in dets])}
    if d.ood is not None and len(d.ood):
        groups[d.source.split(" (")[0]] = np.asarray(d.ood, float)
    body += Page.figure(rp.ood_scores(groups), alt="out-of-distribution scores", dpi=80)
    q = dets[0].quantile
    note = (f"The score is the larger of two Mahalanobis distances to the training images (the network's "
            f"pooled features, and per-channel intensity and foreground statistics), over the threshold: the "
            f"{100 * q:g}th percentile on each fold's held-out validation images, so about {100 * (1 - q):g} % "
            "of images like them are flagged. A flagged image (score > 1) is unlike anything the model was "
            "trained on: another stain, wrong channel order, an empty field, another microscope.")
    if d.ood is not None and len(d.ood):
        flagged = int((np.asarray(d.ood) > 1).sum())
        note += f" Of the {len(d.ood)} images reported here, {flagged} are flagged."
    page.section(SECTIONS[9], body, note=note)
