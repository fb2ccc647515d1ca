"""Self-contained HTML pages (figures embedded as base64 PNG; opens offline).

Used by ``protloc explore`` and ``protloc report``. Build a :class:`Page`, add sections,
figures, tables and image galleries, then ``page.save(path)`` (atomic).
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#14213d;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c9d1e3;font-size:13px}
nav{padding:8px 32px;background:#e9edf3;font-size:13px}nav a{margin-right:14px;color:#14213d}
main{padding:12px 32px 48px;max-width:1400px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:18px;margin:0 0 10px}p.note{color:#555;font-size:13px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px}td,th{padding:4px 10px;border-bottom:1px solid #e3e6eb;text-align:right}
th{background:#f0f2f5}td:first-child,th:first-child{text-align:left}
img.fig{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;font-size:11px;text-align:center;width:var(--w,140px)}
.gallery img{width:100%;image-rendering:pixelated;border-radius:4px}
.kpi{display:inline-block;margin-right:28px}.kpi b{display:block;font-size:26px;color:#14213d}
.warn{color:#9a3412}.ok{color:#166534}
"""


def fig_to_data_uri(fig, *, dpi: int = 100) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_data_uri(img: np.ndarray, *, compress_level: int = 6) -> str:
    """uint8 (H, W) or (H, W, 3) array -> ``data:image/png;base64,...`` (reports and the web app).

    Examples
    --------
    >>> png_data_uri(np.zeros((2, 2, 3), np.uint8))[:22]
    'data:image/png;base64,'
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=compress_level)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def composite(img: np.ndarray, names=None) -> np.ndarray:
    """(H, W, C) uint8 microscopy image -> (H, W, 3) RGB for display (reports and the web app).

    Channels named red, green and blue (R microtubules, G protein, B nucleus) go to their
    colour; a yellow (ER) channel is added to red and green at half strength, as HPA viewers
    do. Without HPA names (``names`` None, TIFF indices...) channels map to red, green, blue in
    order and any further ones count as yellow; one channel is shown in gray.

    Examples
    --------
    >>> composite(np.full((2, 2, 4), 100, np.uint8), ("red", "green", "blue", "yellow"))[0, 0].tolist()
    [150, 150, 100]
    >>> composite(np.full((2, 2, 2), 100, np.uint8), ("green", "blue"))[0, 0].tolist()
    [0, 100, 100]
    """
    from protloc.io.images import HPA_CHANNELS

    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    names = [str(n).lower() for n in (names if names is not None else ())]
    if not set(names) & set(HPA_CHANNELS):
        if img.shape[2] == 1:
            return np.repeat(img, 3, axis=-1)
        names = list(HPA_CHANNELS[:3]) + ["yellow"] * max(0, img.shape[2] - 3)
    if names[: img.shape[2]] == ["red", "green", "blue"] and img.shape[2] == 3:
        return img
    out = np.zeros(img.shape[:2] + (3,), np.float32)
    for c, n in enumerate(names[: img.shape[2]]):
        p = img[..., c].astype(np.float32)
        if n == "yellow":
            out[..., 0] += 0.5 * p
            out[..., 1] += 0.5 * p
        elif n in ("red", "green", "blue"):
            out[..., "rgb".index(n[0])] += p
    return np.clip(out, 0, 255).astype(np.uint8)


def esc(s) -> str:
    return html.escape(str(s))


class Page:
    """An HTML report built section by section.

    Examples
    --------
    >>> p = Page("Report", subtitle="demo")
    >>> p.section("Numbers", "<p>1</p>")
    >>> "<h2" in p.render()
    True
    """

    def __init__(self, title: str, *, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[tuple[str, str, str]] = []

    def section(self, title: str, body_html: str, *, note: str = "") -> None:
        anchor = f"s{len(self.sections)}"
        note_html = f'<p class="note">{esc(note)}</p>' if note else ""
        self.sections.append((anchor, title, note_html + body_html))

    @staticmethod
    def figure(fig, *, alt: str = "figure", dpi: int = 100) -> str:
        return f'<img class="fig" alt="{esc(alt)}" src="{fig_to_data_uri(fig, dpi=dpi)}">'

    @staticmethod
    def table(df, *, float_fmt: str = "{:.3f}") -> str:
        return df.to_html(index=False, border=0, na_rep="–",
                          float_format=lambda v: float_fmt.format(v), escape=True)

    @staticmethod
    def gallery(items, *, width: int = 140, names=None) -> str:
        """items: iterable of (uint8 image, caption); ``names``: channel names for :func:`composite`."""
        figs = "".join(f'<figure><img src="{png_data_uri(composite(im, names))}" alt="{esc(cap)}">'
                       f"<figcaption>{esc(cap)}</figcaption></figure>" for im, cap in items)
        return f'<div class="gallery" style="--w:{width}px">{figs}</div>'

    @staticmethod
    def kpis(pairs) -> str:
        return "".join(f'<span class="kpi"><b>{esc(v)}</b>{esc(k)}</span>' for k, v in pairs)

    def render(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in self.sections)
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(self.title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
                f'<body><header><h1>{esc(self.title)}</h1><p>{esc(self.subtitle)} · generated {stamp} by protloc'
                f'</p></header><nav>{nav}</nav><main>{body}</main></body></html>')

    def save(self, path) -> "Path":  # noqa: F821
        from protloc.core.atomic import write_text

        return write_text(path, self.render())
