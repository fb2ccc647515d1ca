"""Data exploration report: what is in a dataset before training on it.

:func:`explore` writes one self-contained HTML file (figures embedded; opens offline) with class
frequencies, labels per image, label co-occurrence and phi correlation, the most frequent label
combinations, per-class sample galleries (composite + each channel), per-channel intensity
histograms, a file format / size / bit-depth summary and the duplicate / leak findings of
``protloc validate``. Label statistics use every row; images are read for a random sample only,
so 20,000 images take well under two minutes.

The statistics are pure functions on the (N, C) multi-hot label matrix ``y``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from protloc.reports import explore_plots as plots
from protloc.core.errors import InputError
from protloc.reports.html import Page, esc

#: what each stacked channel shows, by HPA channel name (rgb files: red, green, blue).
CHANNEL_ROLES = {"red": "microtubules", "green": "protein", "blue": "nucleus", "yellow": "ER"}
POSITION_ROLES = ("microtubules", "protein", "nucleus", "ER")
#: at most this many images have their file headers read (a random sample).
MAX_HEADERS = 5000
#: images are decoded at their common size, but at most this size (sample histograms, galleries).
MAX_DECODE_SIZE = 256


# ----------------------------------------------------------------------------- label statistics
def class_counts(y) -> np.ndarray:
    """Images per class.

    Examples
    --------
    >>> class_counts(np.array([[1, 0, 1], [1, 1, 0]])).tolist()
    [2, 1, 1]
    """
    return np.asarray(y, dtype=np.int64).sum(axis=0)


def labels_per_image(y) -> np.ndarray:
    """``out[k]`` = number of images with exactly ``k`` labels (k = 0 .. C).

    Examples
    --------
    >>> labels_per_image(np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0]])).tolist()
    [0, 2, 1, 0]
    """
    y = np.asarray(y, dtype=np.int64)
    return np.bincount(y.sum(axis=1), minlength=y.shape[1] + 1)


def cooccurrence(y) -> np.ndarray:
    """(C, C) counts of images having both classes; the diagonal is the class count.

    Examples
    --------
    >>> cooccurrence(np.array([[1, 1], [1, 0]])).tolist()
    [[2, 1], [1, 1]]
    """
    y = np.asarray(y, dtype=np.int64)
    return y.T @ y


def phi_coefficients(y) -> np.ndarray:
    """(C, C) phi coefficient (Pearson correlation of the 0/1 columns); NaN for a class that
    is on for all or none of the images.

    Examples
    --------
    >>> phi_coefficients(np.array([[1, 0], [0, 1], [1, 0], [0, 1]])).round(2).tolist()
    [[1.0, -1.0], [-1.0, 1.0]]
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n == 0:
        return np.full((y.shape[1], y.shape[1]), np.nan)
    p = y.mean(axis=0)
    cov = (y.T @ y) / n - np.outer(p, p)
    sd = np.sqrt(p * (1 - p))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = cov / np.outer(sd, sd)
    phi[~np.isfinite(phi)] = np.nan
    return np.clip(phi, -1.0, 1.0)


def top_combinations(y, *, k: int = 15) -> list[tuple[tuple[int, ...], int]]:
    """The ``k`` most frequent label sets as ``((class ids...), count)``, most frequent first
    (ties: fewer labels, then lower ids first).

    Examples
    --------
    >>> top_combinations(np.array([[1, 0, 1], [1, 0, 1], [0, 1, 0]]), k=2)
    [((0, 2), 2), ((1,), 1)]
    """
    y = np.asarray(y)
    counts = Counter(tuple(int(c) for c in np.flatnonzero(row)) for row in y)
    return sorted(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0]))[:k]


def channel_histograms(images, *, bins: int = 256) -> np.ndarray:
    """(C, bins) pixel counts per channel of uint8 images (N, H, W, C).

    Examples
    --------
    >>> channel_histograms(np.full((2, 4, 4, 3), 7, np.uint8))[:, 7].tolist()
    [32, 32, 32]
    """
    images = np.asarray(images)
    return np.stack([np.bincount(images[..., c].ravel(), minlength=bins)[:bins]
                     for c in range(images.shape[-1])]).astype(np.int64)


def channel_roles(fmt: str, channels) -> list[str]:
    """What each stacked channel shows (microtubules / protein / nucleus / ER).

    Examples
    --------
    >>> channel_roles("hpa-channels", ("red", "green", "blue", "yellow"))
    ['microtubules', 'protein', 'nucleus', 'ER']
    """
    if fmt == "hpa-channels":
        return [CHANNEL_ROLES.get(str(c), str(c)) for c in channels]
    return [POSITION_ROLES[k] if k < len(POSITION_ROLES) else f"channel {c}" for k, c in enumerate(channels)]


# ----------------------------------------------------------------------------- sampling, headers
def sample_indices(n: int, *, sample: int, seed: int = 0) -> np.ndarray:
    """Sorted random indices of ``min(n, sample)`` of ``n`` items (all of them if n <= sample)."""
    if n <= sample:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def gallery_indices(y, *, per_class: int = 3, seed: int = 0) -> list[list[int]]:
    """For each class up to ``per_class`` random images having it; single-label images first
    (they show the pattern alone)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    single = y.sum(axis=1) == 1
    out = []
    for c in range(y.shape[1]):
        idx = []
        for mask in (y[:, c].astype(bool) & single, y[:, c].astype(bool) & ~single):
            cand = np.flatnonzero(mask)
            take = min(per_class - len(idx), len(cand))
            idx += sorted(rng.choice(cand, take, replace=False).tolist()) if take > 0 else []
        out.append([int(i) for i in idx])
    return out


def _header(path: Path) -> dict:
    """Format, mode, bit depth and size of one file from its header (no pixel decoding)."""
    from protloc.io.images import TIFF_EXTS

    try:
        if path.suffix.lower() in TIFF_EXTS:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                s = tf.series[0]
                shape = [d for d in s.shape if d != 1]
                ch = 1 if len(shape) == 2 else min(shape)
                hw = [d for d in shape if d != ch or len(shape) == 2][-2:]
                return {"format": "TIFF", "mode": str(s.dtype), "bits": s.dtype.itemsize * 8,
                        "size": f"{hw[-1]}x{hw[0]}", "channels": ch}
        from PIL import Image

        with Image.open(path) as im:
            bits = 16 if im.mode.startswith("I;16") or im.mode == "I" else 32 if im.mode == "F" else 8
            return {"format": im.format, "mode": im.mode, "bits": bits, "size": f"{im.size[0]}x{im.size[1]}",
                    "channels": len(im.getbands())}
    except Exception as e:  # noqa: BLE001 - unreadable files are reported, not fatal
        kind = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
        return {"format": kind, "mode": "", "bits": 0, "size": "", "channels": 0}


def header_summary(table, idx) -> pd.DataFrame:
    """Counts of files per (format, mode, bit depth, size, channels) for the images ``idx``."""
    recs = [_header(f) for i in idx for f in table.files(int(i))]
    if not recs:
        return pd.DataFrame(columns=["format", "mode", "bits", "size", "channels", "files"])
    df = pd.DataFrame(recs)
    return (df.groupby(["format", "mode", "bits", "size", "channels"], dropna=False).size()
            .reset_index(name="files").sort_values("files", ascending=False))


def decode_size(summary: pd.DataFrame) -> int:
    """The side to decode sample images at: their most common height, at most MAX_DECODE_SIZE."""
    for s in summary["size"] if len(summary) else []:
        if s:
            w, h = (int(v) for v in str(s).split("x"))
            return max(8, min(max(w, h), MAX_DECODE_SIZE))
    return 128


def validation_findings(table, *, test_table=None, progress: bool = True, workers: int | None = None):
    """``(findings, note)`` from :func:`protloc.data.validate.validate_dataset`; on any failure
    ``(None, note)`` so the report never breaks because of it."""
    from protloc.data.validate import validate_dataset

    try:
        rep = validate_dataset(table, test_table=test_table, near_dup=True, progress=progress, workers=workers)
        return list(rep.findings), ""
    except Exception as e:  # noqa: BLE001 - the report must not depend on validate working
        return None, f"The dataset check failed ({type(e).__name__}: {e}); run `protloc validate` to see why."


# ----------------------------------------------------------------------------- sections
def _tab(df) -> str:
    return Page.table(df, float_fmt="{:.1f}")


def _pct(a, n) -> np.ndarray:
    return 100.0 * np.asarray(a, dtype=float) / max(n, 1)


def _label_sections(page: Page, table, test_table) -> None:
    y, names, n = table.y(), list(table.schema.classes), len(table)
    counts = class_counts(y)
    df = pd.DataFrame({"id": range(len(names)), "class": names, "images": counts, "% of images": _pct(counts, n)})
    test_counts = None
    if test_table is not None and test_table.labeled:
        test_counts = class_counts(test_table.y())
        df["test images"] = test_counts
        df["test %"] = _pct(test_counts, len(test_table))
    fig = plots.class_frequency_figure(names, counts, n, test_counts=test_counts,
                                       n_test=None if test_table is None else len(test_table))
    empty = [nm for nm, c in zip(names, counts) if c == 0]
    warn = f'<p class="warn">No images of: {esc(", ".join(empty))}.</p>' if empty else ""
    ratio = counts.max() / counts[counts > 0].min() if counts.any() else 0.0
    page.section("Class frequency", warn + plots.row(Page.figure(fig, alt="class frequency"), _tab(df)),
                 note=f"All {n} images; an image with several labels counts once for each. "
                      f"Most / least frequent class: {ratio:.1f}x.")
    lpi = labels_per_image(y)
    last = max(int(np.flatnonzero(lpi).max(initial=1)), 1)
    lpi_df = pd.DataFrame({"labels": range(last + 1), "images": lpi[:last + 1], "%": _pct(lpi[:last + 1], n)})
    lpi_fig = Page.figure(plots.labels_per_image_figure(lpi[:last + 1]), alt="labels per image")
    page.section("Labels per image", plots.row(lpi_fig, _tab(lpi_df)),
                 note=f"{_pct(lpi[1], n):.1f}% of images have exactly one label; mean {y.sum(1).mean():.2f}.")
    co, phi = cooccurrence(y), phi_coefficients(y)
    figs = (Page.figure(plots.heatmap_figure(co, names, title="images with both classes (count)"), alt="counts")
            + Page.figure(plots.heatmap_figure(phi, names, title="phi coefficient (correlation)", cmap="RdBu_r",
                                               fmt="{:.2f}", vmin=-1, vmax=1, diagonal=False), alt="phi"))
    iu = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if np.isfinite(phi[i, j])]
    iu.sort(key=lambda ij: -abs(phi[ij]))
    pairs = pd.DataFrame([(names[i], names[j], int(co[i, j]), phi[i, j]) for i, j in iu[:8]],
                         columns=["class", "class ", "both", "phi"])
    page.section("Label co-occurrence", f'<div class="{"xfig2" if len(names) <= 16 else ""}">{figs}</div>'
                 "<h3>Strongest pairs</h3>" + Page.table(pairs, float_fmt="{:+.2f}"),
                 note="Counts: images labeled with both classes (diagonal: images of the class). Phi: correlation "
                      "of the two labels, +1 = always together, -1 = never together, 0 = independent.")
    combos = top_combinations(y, k=15)
    text = [" + ".join(names[c] for c in ids) or "(no label)" for ids, _ in combos]
    cdf = pd.DataFrame({"rank": range(1, len(combos) + 1), "classes": text,
                        "ids": [table.schema.format(ids) for ids, _ in combos],
                        "images": [c for _, c in combos], "% of images": _pct([c for _, c in combos], n)})
    n_distinct = len({tuple(r) for r in np.asarray(y)})
    cfig = Page.figure(plots.combinations_figure(text, cdf["images"].to_numpy()), alt="label combinations")
    page.section("Label combinations", plots.row(cfig, _tab(cdf)),
                 note=f"The {len(combos)} most frequent label sets of {n_distinct} distinct ones.")


def _read_sample(table, hist_idx, keep, *, size: int, workers, progress: bool):
    """Decode images ``hist_idx`` + ``keep`` in chunks; return (histograms over the readable
    ``hist_idx``, {i: image for i in keep}, number of unreadable images)."""
    from protloc.data.cache import decode_table
    from protloc.core.progress import progress_bar

    hist = np.zeros((table.n_channels, 256), np.int64)
    kept, bad, keep, in_hist = {}, 0, set(keep), set(int(i) for i in hist_idx)
    idx = np.union1d(hist_idx, sorted(keep)).astype(int)
    with progress_bar(total=len(idx), description="reading sample images", enable=progress) as advance:
        for s in range(0, len(idx), 512):
            chunk = [int(i) for i in idx[s:s + 512]]
            ds = decode_table(table.subset(chunk), size=size, workers=workers, progress=False, skip_bad=True)
            good_set = set(range(len(chunk))) - set(ds.bad)
            bad += sum(chunk[k] in in_hist for k in ds.bad)
            hist += channel_histograms(ds.images[[k for k in sorted(good_set) if chunk[k] in in_hist]])
            for k, i in enumerate(chunk):
                if i in keep and k in good_set:
                    kept[i] = np.array(ds.images[k])
            advance(len(chunk))
    return hist, kept, bad


def _image_sections(page: Page, table, *, size: int, sample: int, seed: int, per_class: int, progress: bool,
                    workers) -> None:
    roles = channel_roles(table.fmt, table.channels)
    hist_idx = sample_indices(len(table), sample=sample, seed=seed)
    if table.labeled:
        counts = class_counts(table.y())
        gal = gallery_indices(table.y(), per_class=per_class, seed=seed)
    else:
        gal = [sample_indices(len(table), sample=4 * per_class, seed=seed + 1).tolist()]
    gal_flat = sorted({i for g in gal for i in g})
    hist, kept, bad = _read_sample(table, hist_idx, gal_flat, size=size, workers=workers, progress=progress)
    names = table.schema.classes
    blocks = []
    for c, idx in enumerate(gal):
        title = f"{names[c]} ({counts[c]} images)" if table.labeled else "random images"
        cards = [plots.sample_card(kept[i], roles, f"id {table.ids[i]}",
                                   " + ".join(names[k] for k in table.labels[i]) if table.labeled else "")
                 for i in idx if i in kept]
        blocks.append(f"<h3>{esc(title)}</h3>" + (f'<div class="xcards">{"".join(cards)}</div>' if cards
                                                   else '<p class="note">no readable images</p>'))
    note = ("Single-label images first, so each pattern is seen alone; " if table.labeled else "") + \
        f"composite (as recorded) then each channel in gray ({', '.join(roles)}), contrast-stretched for display."
    page.section("Sample images per class" if table.labeled else "Sample images", "".join(blocks), note=note)
    total = hist.sum(axis=1, keepdims=True).clip(1)
    mean = (hist * np.arange(256)).sum(1) / total[:, 0]
    cdf = np.cumsum(hist, axis=1) / total
    stats = pd.DataFrame({"channel": [f"{c} ({r})" for c, r in zip(table.channels, roles)], "mean": mean,
                          "median": (cdf < 0.5).sum(1), "99th pct": (cdf < 0.99).sum(1),
                          "% zero": 100 * hist[:, 0] / total[:, 0],
                          "% saturated (255)": 100 * hist[:, 255] / total[:, 0]})
    page.section("Channel intensities", Page.figure(plots.histograms_figure(hist, roles), alt="histograms")
                 + _tab(stats),
                 note=f"{len(hist_idx) - bad} randomly sampled images (of {len(table)}), decoded at {size}x{size} "
                      "px, 8 bit (deeper files normalised per image: the auto intensity rule)."
                      + (f" {bad} unreadable, skipped." if bad else ""))


# ----------------------------------------------------------------------------- the report
def explore(table, *, out, test_table=None, sample: int = 2000, seed: int = 0, progress: bool = True,
            per_class: int = 3, validate: bool = True, workers: int | None = None) -> Path:
    """Write the exploration report of ``table`` (and ``test_table``) to ``out`` (HTML).

    Parameters
    ----------
    table, test_table : DataTable
        The dataset; labels are optional (unlabeled sets skip the label sections).
    out : path
        The HTML file to write (atomically).
    sample : int
        Images decoded for the intensity histograms (a random sample; galleries add a few).
    per_class : int
        Gallery images per class.
    validate : bool
        Run the duplicate / leak checks of ``protloc validate`` (reads every file once).

    Examples
    --------
    >>> explore(load_table("train.csv", "train/"), out="explore.html")  # doctest: +SKIP
    PosixPath('explore.html')
    """
    if sample < 1:
        raise InputError("--sample", expected="an integer >= 1", got=str(sample),
                         fix="e.g. --sample 2000")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError("--out", expected="an .html file", got=repr(str(out)),
                         fix="e.g. --out explore.html")
    t0 = time.time()
    name = table.csv_path.name if table.csv_path is not None else str(table.images)
    page = Page("protloc explore", subtitle=f"{name} · {len(table)} images"
                + (f" · test {len(test_table)} images" if test_table is not None else ""))
    parts = []
    for label, t in (("train", table), ("test", test_table)):
        if t is not None:
            idx = sample_indices(len(t), sample=MAX_HEADERS, seed=seed)
            parts.append((label, t, idx, header_summary(t, idx)))
    plots.overview_section(page, table, test_table, channel_roles(table.fmt, table.channels))
    if table.labeled:
        _label_sections(page, table, test_table)
    else:
        page.section("Labels", "", note="This set has no label column: class frequencies, labels per "
                                        "image, co-occurrence and combinations are skipped.")
    _image_sections(page, table, size=decode_size(parts[0][3]), sample=sample, seed=seed, per_class=per_class,
                    progress=progress, workers=workers)
    plots.file_section(page, parts, max_headers=MAX_HEADERS)
    if validate:
        findings, note = validation_findings(table, test_table=test_table, progress=progress, workers=workers)
    else:
        findings, note = None, "Skipped (--no-validate). Run `protloc validate` for duplicates and leaks."
    plots.findings_section(page, findings, note, tables={"train": table, "test": test_table})
    page.subtitle += f" · {time.time() - t0:.0f} s"
    path = page.save(out)
    mask = os.umask(0o022)
    os.umask(mask)
    path.chmod(0o666 & ~mask)  # atomic writes create 0600 files; a report is meant to be shared
    return path
