"""Figures and HTML blocks of ``protloc explore``.

The figure functions take plain arrays and names, never a table, so they are easy to test and
reuse; ``protloc.reports.html.Page.figure`` embeds them as base64 PNG.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from protloc.reports.html import Page, esc

#: display colours of the channel roles (histograms).
ROLE_COLORS = {"microtubules": "#d62728", "protein": "#2ca02c", "nucleus": "#1f77b4", "ER": "#d4a017"}
BAR = "#14213d"
BAR2 = "#e07a1f"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def class_frequency_figure(names, counts, n_images: int, *, test_counts=None, n_test: int | None = None):
    """Horizontal bars: images per class, annotated with count and % of images.

    Examples
    --------
    >>> fig = class_frequency_figure(["A", "B"], np.array([3, 1]), 4)
    >>> len(fig.axes)
    1
    """
    plt = _plt()
    names, counts = list(names), np.asarray(counts)
    fig, ax = plt.subplots(figsize=(6.8, 0.32 * len(names) + 1.1))
    y = np.arange(len(names))
    if test_counts is None:
        ax.barh(y, counts, color=BAR)
        for yi, c in zip(y, counts):
            ax.text(c, yi, f" {int(c)} ({100 * c / max(n_images, 1):.1f}%)", va="center", fontsize=8)
        ax.set_xlabel("images")
        ax.set_xlim(0, max(counts.max(initial=1) * 1.25, 1))
    else:
        tr = 100 * counts / max(n_images, 1)
        te = 100 * np.asarray(test_counts) / max(n_test or 1, 1)
        ax.barh(y - 0.2, tr, height=0.4, color=BAR, label=f"train ({n_images} images)")
        ax.barh(y + 0.2, te, height=0.4, color=BAR2, label=f"test ({n_test} images)")
        ax.set_xlabel("% of images")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def labels_per_image_figure(counts):
    """Bars: number of images with k labels (``counts[k]``)."""
    plt = _plt()
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    k = np.arange(len(counts))
    ax.bar(k, counts, color=BAR)
    total = max(int(counts.sum()), 1)
    for ki, c in zip(k, counts):
        if c:
            ax.text(ki, c, f"{int(c)}\n{100 * c / total:.1f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(k)
    ax.set_xlabel("labels per image")
    ax.set_ylabel("images")
    ax.set_ylim(0, max(counts.max(initial=1) * 1.3, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def heatmap_figure(mat, names, *, title: str, cmap: str = "Blues", fmt: str = "{:d}", vmin=None,
                   vmax=None, diagonal: bool = True):
    """Annotated class x class heatmap (annotations only up to 16 classes).

    ``diagonal=False`` greys out the diagonal (e.g. phi of a class with itself is always 1).
    """
    plt = _plt()
    mat = np.asarray(mat, dtype=float)
    n = len(names)
    side = min(max(3.8, 0.3 * n + 1.9), 14)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    shown = np.ma.masked_invalid(mat.copy())
    if not diagonal:
        shown = np.ma.array(shown, mask=np.ma.getmaskarray(shown) | np.eye(n, dtype=bool))
    cm = plt.get_cmap(cmap).with_extremes(bad="#e6e6e6")
    im = ax.imshow(shown, cmap=cm, vmin=vmin, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    short = [s if len(s) <= 18 else s[:16] + "…" for s in names]
    ax.set_xticks(range(n), short, rotation=55, ha="right", fontsize=9 if n <= 16 else 7)
    ax.set_yticks(range(n), short, fontsize=9 if n <= 16 else 7)
    ax.set_title(title, fontsize=10)
    if n <= 16:
        lo, hi = im.get_clim()
        for i in range(n):
            for j in range(n):
                v = mat[i, j]
                if not np.isfinite(v) or (not diagonal and i == j):
                    continue
                txt = fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v)
                frac = (v - lo) / (hi - lo) if hi > lo else 0.0
                dark = frac > 0.6 if cmap != "RdBu_r" else abs(frac - 0.5) > 0.3
                ax.text(j, i, txt, ha="center", va="center", fontsize=7.5,
                        color="white" if dark else "#1d2430")
    return fig


def combinations_figure(labels, counts):
    """Horizontal bars of the most frequent label combinations (``labels``: display strings)."""
    plt = _plt()
    counts = np.asarray(counts)
    fig, ax = plt.subplots(figsize=(5.0, 0.3 * len(labels) + 1.0))
    y = np.arange(len(labels))
    ax.barh(y, counts, color=BAR)
    for yi, c in zip(y, counts):
        ax.text(c, yi, f" {int(c)}", va="center", fontsize=8)
    short = [s if len(s) <= 48 else s[:46] + "…" for s in labels]
    ax.set_yticks(y, short, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_xlim(0, max(counts.max(initial=1) * 1.15, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def histograms_figure(hists, roles):
    """Per-channel intensity histograms (0-255, log y), one panel per channel.

    Examples
    --------
    >>> fig = histograms_figure(np.ones((3, 256)), ["microtubules", "protein", "nucleus"])
    >>> len(fig.axes)
    3
    """
    plt = _plt()
    hists = np.asarray(hists, dtype=float)
    c = len(hists)
    fig, axes = plt.subplots(1, c, figsize=(3.2 * c, 2.6), sharey=True, squeeze=False)
    x = np.arange(hists.shape[1])
    for k, ax in enumerate(axes[0]):
        h = hists[k]
        total = max(h.sum(), 1.0)
        color = ROLE_COLORS.get(roles[k], "#555555")
        ax.fill_between(x, np.where(h > 0, h / total, np.nan), step="mid", color=color, alpha=0.75)
        ax.set_yscale("log")
        ax.set_xlim(0, 255)
        ax.set_title(roles[k], fontsize=10)
        ax.set_xlabel("intensity (8 bit)")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("fraction of pixels (log)")
    fig.tight_layout()
    return fig


#: extra CSS of the explore page (side-by-side blocks, sample cards, left-aligned tables).
STYLE = ("<style>.kpi{margin-bottom:12px}"
         ".xrow{display:flex;flex-wrap:wrap;gap:12px 28px;align-items:flex-start}"
         ".xcards{display:flex;flex-wrap:wrap;gap:10px 22px}.xcard{width:min-content}"
         ".xcard .gallery{flex-wrap:nowrap;gap:3px}.xcap{font-size:11px;color:#555;margin-top:2px}"
         "h3{font-size:14px;margin:14px 0 6px}.xfig2{display:flex;flex-wrap:wrap;gap:8px}"
         ".xfig2 img{max-width:49%}section td,section th{text-align:left!important;max-width:440px}</style>")


def row(*parts) -> str:
    """HTML blocks side by side (wrapping on narrow screens)."""
    return '<div class="xrow">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def stretch(channel, *, pct: float = 99.5) -> np.ndarray:
    """Contrast-stretch one uint8 channel for display: its ``pct`` percentile becomes 255.

    Examples
    --------
    >>> stretch(np.array([[0, 10], [20, 40]], np.uint8), pct=100).tolist()
    [[0, 64], [128, 255]]
    """
    hi = float(np.percentile(channel, pct))
    if hi <= 0:
        return np.asarray(channel, np.uint8)
    return np.clip(np.round(channel.astype(np.float32) * (255.0 / hi)), 0, 255).astype(np.uint8)


def sample_card(img, roles, caption: str, labels: str = "") -> str:
    """HTML of one sample: the composite then each channel in gray, captioned.

    Examples
    --------
    >>> html = sample_card(np.zeros((8, 8, 3), np.uint8), ["a", "b", "c"], "id 1")
    >>> html.count("<img")
    4
    """
    from protloc.io.images import resize

    img = resize(img, size=128) if max(img.shape[:2]) > 128 else img
    items = [(img, caption)] + [(stretch(img[..., c]), r) for c, r in enumerate(roles)]
    width = 84 if len(roles) <= 3 else 68
    return f'<div class="xcard">{Page.gallery(items, width=width)}<div class="xcap">{esc(labels)}</div></div>'


# ----------------------------------------------------------------------------- HTML sections
def overview_section(page, table, test_table, roles) -> None:
    """'Overview': sizes, labels, schema, format and which channel is which (also adds the CSS)."""
    kp = [("images", len(table)), ("labels", "yes" if table.labeled else "none"),
          (f"classes ({table.schema.name})", table.schema.n_classes), ("format", table.fmt),
          ("channels", len(roles))]
    if table.labeled:
        kp.append(("labels per image (mean)", f"{np.mean([len(v) for v in table.labels]):.2f}"))
    if test_table is not None:
        kp.append(("test images", len(test_table)))
    rows = [("images", str(table.images)), ("CSV", str(table.csv_path or "none (every image in the folder)")),
            ("channels", ", ".join(f"{c} = {r}" for c, r in zip(table.channels, roles)))]
    if test_table is not None:
        rows += [("test images", str(test_table.images)), ("test CSV", str(test_table.csv_path or "none"))]
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    notes = "".join(f'<p class="warn">{esc(n)}</p>' for n in table.notes[:20])
    body = STYLE + Page.kpis(kp) + f"<table>{cells}</table>" + notes
    page.section("Overview", body)


def file_section(page, parts, *, max_headers: int) -> None:
    """'Image files': per set, file count, MB per image and the header summary table."""
    body, notes = "", []
    for label, table, idx, summary in parts:
        sizes = [f.stat().st_size for i in idx[:2000] for f in table.files(int(i)) if f.is_file()]
        per_img = sum(sizes) / max(min(len(idx), 2000), 1)
        kp = [("images", len(table)), ("images with headers read", len(idx)),
              ("MB per image", f"{per_img / 1e6:.3f}"), ("GB in all (est.)", f"{per_img * len(table) / 1e9:.2f}")]
        body += (f"<h3>{esc(label)}</h3>" + Page.kpis(kp)
                 + Page.table(summary))
        if summary["bits"].nunique() > 1:
            notes.append(f"{label}: files mix bit depths; each is scaled to 8 bit on its own.")
        if summary["size"].nunique() > 1:
            notes.append(f"{label}: image sizes differ; images are resized to the training size.")
    body += "".join(f'<p class="warn">{esc(n)}</p>' for n in notes)
    page.section("Image files", body, note=f"From the file headers (no pixel decoding) of up to {max_headers} "
                                           "randomly chosen images per set.")


DUP_CODES = ("leak", "duplicate_image", "near_duplicate")


def finding_members(where: str) -> list[tuple[str, str]]:
    """``[(id, set), ...]`` named by a duplicate / leak finding's ``where``.

    Examples
    --------
    >>> finding_members("1003 (train), t7 (test) ...")
    [('1003', 'train'), ('t7', 'test')]
    """
    import re

    return re.findall(r"(?:^|, )(.+?) \((train|test)\)(?=, |$| \.\.\.)", where)


def duplicate_gallery(findings, tables, *, max_groups: int = 6, max_members: int = 4) -> str:
    """Composites of the images in the first duplicate / leak findings, side by side (so a person
    can judge them); images that cannot be read are left out."""
    from protloc.io.images import read_image, resize

    blocks = []
    for f in [f for f in findings if f.code in DUP_CODES][:max_groups]:
        items = []
        for iid, set_name in finding_members(f.where)[:max_members]:
            t = tables.get(set_name)
            if t is None:
                continue
            try:
                img = read_image(t.images, iid, fmt=t.fmt, channels=t.channels)
            except Exception:  # noqa: BLE001 - a picture is a bonus; the table lists the finding
                continue
            items.append((img if max(img.shape[:2]) <= 128 else resize(img, size=128), f"{iid} ({set_name})"))
        if items:
            blocks.append(f'<div><div class="xcap">{esc(f.code)}</div>{Page.gallery(items, width=96)}</div>')
    return f'<h3>The first duplicate groups</h3><div class="xrow">{"".join(blocks)}</div>' if blocks else ""


def findings_section(page, findings, note: str, *, tables=None) -> None:
    """'Duplicates and leaks': the findings of protloc validate (duplicates and leaks first), with
    pictures of the first duplicate groups when ``tables`` ({'train': table, 'test': table}) is given."""
    if findings is None:
        page.section("Duplicates and leaks", "", note=note)
        return
    if not findings:
        page.section("Duplicates and leaks", '<p class="ok">No duplicates, train/test leaks or file problems '
                                             "found.</p>")
        return
    rank = {c: k for k, c in enumerate(DUP_CODES)}
    fs = sorted(findings, key=lambda f: (rank.get(f.code, 9), f.severity != "error"))
    counts = pd.DataFrame(Counter((f.severity, f.code, f.set) for f in fs).most_common(),
                          columns=["key", "findings"])
    counts = pd.concat([pd.DataFrame(counts["key"].tolist(), columns=["severity", "code", "set"]),
                        counts["findings"]], axis=1)
    rows = pd.DataFrame([(f.severity, f.code, f.set, f.where, f.message, f.fix) for f in fs[:100]],
                        columns=["severity", "code", "set", "where", "problem", "fix"])
    n_dup = sum(f.code in DUP_CODES for f in fs)
    pics = duplicate_gallery(fs, tables) if tables else ""
    page.section("Duplicates and leaks", Page.table(counts) + pics + "<h3>Findings</h3>" + Page.table(rows)
                 + (f'<p class="note">{len(fs) - 100} more: run `protloc validate --json FILE`.</p>'
                    if len(fs) > 100 else ""),
                 note=f"{n_dup} duplicate/leak findings, {len(fs) - n_dup} other file/label findings (from "
                      "protloc validate). Leaks across train/test inflate the test score; split keeps duplicates "
                      "in one fold.")
