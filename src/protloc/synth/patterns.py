"""Rendering of synthetic HPA-like fields: cell layout, the four stains, the microscope.

Internal module of :mod:`protloc.synth.dataset` (use :func:`protloc.synth.dataset.synth_image`). Every length
is given in pixels of a 128-pixel image and scaled by ``size / 128``; every random number comes
from the ``rng`` passed in, in a fixed order, so an image is a pure function of its seed.

Pipeline of :func:`render`: pick a cell type -> place cells (Poisson-disk-like, clustered for
some types, some cut by the border) -> a multiplicatively weighted Voronoi partition with
irregular borders gives each pixel an owner cell, its nucleus and normalised radius -> blue
(textured nuclei with dark nucleoli, condensed mitotic chromatin), red (microtubules radiating
from a perinuclear MTOC), yellow (reticular ER, enriched around nuclei), green (the sum of the
per-class patterns, scaled per cell) -> microscope (bleed-through, uneven illumination, blur,
gain, Poisson-Gaussian noise, 8-bit).

Every step reads its parameters from a :class:`protloc.synth.styles.Style` (``f.st``). The
default style makes exactly the random draws of protloc's original renderer, in the same order,
so its images are byte-identical; other styles draw their extra numbers from a second generator
(``f.rs``) seeded from ``rng``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from protloc.synth.styles import DEFAULT, Style, pick as pick_variant

F32 = np.float32


class _NoDraws:
    """Stands in for the style generator of the default style: any extra draw is a bug."""

    def __getattr__(self, name):
        raise RuntimeError("the default style must not draw extra random numbers (byte-identity)")


@dataclass(frozen=True)
class CellType:
    """Morphology of one cell line (lengths in px at 128 px).

    ``n``: cells per field (lo, hi); ``radius``: equivalent cell radius; ``aspect``: cell
    elongation range; ``nuc``: nucleus radius / cell radius; ``irregular``: border roughness;
    ``clustered``: cells grow in islands; ``pack``: minimum centre spacing in cell diameters.
    """

    name: str
    n: tuple[int, int]
    radius: float
    aspect: tuple[float, float]
    nuc: float
    irregular: float
    clustered: bool
    pack: float
    align: float  # 0 = random orientation, 1 = all cells aligned


CELL_TYPES = (
    CellType("U-2 OS (osteosarcoma, flat)", (6, 12), 17.0, (1.2, 1.9), 0.40, 0.16, False, 0.80, 0.0),
    CellType("A-431 (epithelial, dense)", (20, 32), 10.5, (1.0, 1.35), 0.50, 0.10, True, 0.72, 0.0),
    CellType("U-251 MG (glioma, spread)", (5, 10), 19.0, (1.3, 2.2), 0.34, 0.24, False, 0.75, 0.0),
    CellType("HeLa", (8, 18), 13.0, (1.1, 1.6), 0.45, 0.14, False, 0.75, 0.0),
    CellType("BJ (fibroblast, elongated)", (5, 10), 18.0, (2.4, 3.6), 0.30, 0.12, False, 0.55, 0.7),
    CellType("Jurkat-like (lymphoid, small round)", (16, 30), 7.0, (1.0, 1.12), 0.74, 0.05, False, 0.95, 0.0),
    CellType("CACO-2-like (big flat epithelial)", (5, 10), 22.0, (1.0, 1.3), 0.28, 0.12, True, 0.75, 0.0),
    CellType("MCF7 (islands)", (12, 26), 11.0, (1.0, 1.3), 0.50, 0.10, True, 0.75, 0.0),
    CellType("Hep G2 (clumped, small)", (14, 28), 9.0, (1.0, 1.25), 0.55, 0.08, True, 0.80, 0.0),
    CellType("SH-SY5Y-like (neuronal, polar)", (8, 18), 10.0, (1.6, 2.6), 0.55, 0.20, False, 0.65, 0.3),
)


# --------------------------------------------------------------------------- helpers
def smooth_noise(rng, shape, sigma):
    """Zero-mean, unit-std Gaussian random field with correlation length ``sigma`` px."""
    h, w = shape
    if sigma >= 2.0:  # generate coarse and upsample bilinearly: a big blur is slow
        f = sigma / 1.25
        hs, ws = max(3, int(np.ceil(h / f)) + 3), max(3, int(np.ceil(w / f)) + 3)
        small = ndi.gaussian_filter(rng.standard_normal((hs, ws)).astype(F32), 1.25, mode="wrap")
        out = np.asarray(Image.fromarray(small, mode="F").resize(
            (w, h), Image.Resampling.BILINEAR, box=(1, 1, ws - 2, hs - 2)), dtype=F32)
    else:
        out = ndi.gaussian_filter(rng.standard_normal((h, w), dtype=F32), max(sigma, 0.3), truncate=3.0)
    out = out - out.mean()
    return (out / (out.std() + 1e-6)).astype(F32, copy=False)


def splat(shape, y, x, w=None):
    """Accumulate point weights at sub-pixel positions (bilinear) into an (H, W) image."""
    h, wd = shape
    y = np.asarray(y, F32)
    x = np.asarray(x, F32)
    w = np.ones_like(y) if w is None else np.broadcast_to(np.asarray(w, F32), y.shape)
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    out = np.zeros(h * wd, np.float64)
    for dy, dx, ww in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                       (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
        out += np.bincount(yy[ok] * wd + xx[ok], weights=(w * ww)[ok], minlength=h * wd)
    return out.reshape(h, wd).astype(F32)


def blobs(shape, y, x, sigma, w=None):
    """Gaussian spots of std ``sigma`` px, each with peak ~``w``."""
    sigma = max(float(sigma), 0.35)
    img = ndi.gaussian_filter(splat(shape, y, x, w), sigma, truncate=3.0)
    return img * F32(2 * np.pi * sigma * sigma)


def ridges(rng, shape, scale, width):
    """Network of thin curvy lines: zero-crossings of band-pass noise at ``scale`` px."""
    white = rng.standard_normal(shape).astype(F32)
    band = ndi.gaussian_filter(white, scale) - ndi.gaussian_filter(white, 2 * scale)
    band /= band.std() + 1e-6
    return np.exp(-(band / width) ** 2).astype(F32)


def points_in_ellipse(rng, cy, cx, a, b, th, frac, n):
    """``n`` uniform points in the ellipse (a, b, theta) shrunk by ``frac`` around (cy, cx)."""
    r = np.sqrt(rng.uniform(0, 1, n)) * frac
    phi = rng.uniform(0, 2 * np.pi, n)
    u, v = r * a * np.cos(phi), r * b * np.sin(phi)
    c, s = np.cos(th), np.sin(th)
    return cy + u * s + v * c, cx + u * c - v * s


# --------------------------------------------------------------------------- layout
@dataclass
class Field:
    """Cells of one field and the per-pixel geometry derived from them."""

    size: int
    s: float  # length scale: size / 128 x magnification
    ct: CellType
    # per cell (N,)
    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray
    b: np.ndarray
    th: np.ndarray
    ncy: np.ndarray
    ncx: np.ndarray
    na: np.ndarray
    nb: np.ndarray
    mitotic: np.ndarray
    mtoc_y: np.ndarray
    mtoc_x: np.ndarray
    mtoc_ang: np.ndarray
    # per pixel (H, W)
    owner: np.ndarray = None
    cell: np.ndarray = None
    rho: np.ndarray = None
    nucleus: np.ndarray = None
    dn: np.ndarray = None
    nucleoli: np.ndarray = None  # soft map 0..1
    nucleoli_pts: tuple = None  # (y, x, radius) of every nucleolus
    cache: dict = field(default_factory=dict)
    st: Style = DEFAULT
    rs: object = None  # the style's own generator (see module docstring)
    mag: float = 1.0
    var: dict = field(default_factory=dict)  # rendering per pattern, picked per image
    lobes: tuple = None  # per cell (k, amplitude, phase) of a lobed nucleus

    def variant(self, key: str) -> str:
        if key not in self.var:
            self.var[key] = pick_variant(self.rs, getattr(self.st, key))
        return self.var[key]

    @property
    def n(self) -> int:
        return len(self.cy)

    @property
    def fine(self) -> float:
        """Scale of sub-micron detail (filaments, dots, blur): linear up to 128 px, then sqrt, so
        larger images get sharper, not just magnified, detail (like the real 512 px originals);
        a magnified style magnifies it too."""
        s0 = self.size / 128.0
        return (s0 if s0 <= 1 else float(np.sqrt(s0))) * self.mag


def layout(rng, size, ct: CellType, difficulty: float, st: Style = DEFAULT, rs=None) -> Field:
    s = size / 128.0
    n_target = int(rng.integers(ct.n[0], ct.n[1] + 1))
    mag = 1.0
    if not st.is_default:  # magnification: bigger cells, fewer of them in the same frame
        mag = float(rs.uniform(*st.mag))
        n_target = int(np.clip(round(n_target * rs.uniform(*st.density) / mag ** 2), 1, st.max_cells))
        s = s * mag
    R = ct.radius * s * rng.uniform(0.95, 1.25)
    m = 8 * n_target
    lo, hi = -0.1 * size, 1.1 * size
    if ct.clustered:
        k = int(rng.integers(1, 4))
        cc = rng.uniform(0.1 * size, 0.9 * size, (k, 2))
        pick = rng.integers(0, k, m)
        cand = cc[pick] + rng.normal(0, 0.33 * size, (m, 2))
    else:
        cand = rng.uniform(lo, hi, (m, 2))
    cand = cand[(cand[:, 0] > lo) & (cand[:, 0] < hi) & (cand[:, 1] > lo) & (cand[:, 1] < hi)]
    scale = rng.uniform(0.8, 1.2, len(cand))
    dmin = 2 * R * ct.pack * st.pack
    acc: list[int] = []
    pts, sc = np.empty((n_target, 2)), np.empty(n_target)  # the accepted ones, without re-indexing
    for i in range(len(cand)):
        k = len(acc)
        if k >= n_target:
            break
        if k:
            d = np.hypot(*(pts[:k] - cand[i]).T)
            if np.any(d < dmin * 0.5 * (sc[:k] + scale[i])):
                continue
        pts[k], sc[k] = cand[i], scale[i]
        acc.append(i)
    acc = np.asarray(acc, int)
    n = len(acc)
    cy, cx = cand[acc, 0].astype(F32), cand[acc, 1].astype(F32)
    rr = R * scale[acc]
    asp = rng.uniform(*ct.aspect, n)
    base = rng.uniform(0, np.pi)
    th = np.where(rng.uniform(0, 1, n) < ct.align, base + rng.normal(0, 0.25, n), rng.uniform(0, np.pi, n))
    mitotic = rng.uniform(0, 1, n) < rng.uniform(0.0, 0.08 + 0.06 * difficulty) * st.mitosis
    # mitotic cells round up and shrink
    nuc = ct.nuc * rng.uniform(0.85, 1.15, n) * st.nuc_size
    asp = np.where(mitotic, 1.0, asp)
    rr = np.where(mitotic, np.minimum(rr, rr * nuc * 1.4), rr)
    nuc = np.where(mitotic, 1 / 1.4, nuc)
    a, b = rr * np.sqrt(asp), rr / np.sqrt(asp)
    nasp = 1 + (np.sqrt(asp) - 1) * 0.5 + rng.uniform(0, 0.25, n)
    lobes = None
    shape = "ellipse" if st.is_default else pick_variant(rs, st.nucleus)
    if shape == "round":
        nasp = 1 + rs.uniform(0, 0.12, n)
    elif shape == "elongated":  # spindle-shaped nuclei in cells stretched to hold them
        nasp = rs.uniform(1.7, 2.6, n)
        asp = np.where(mitotic, 1.0, np.maximum(asp, nasp * rs.uniform(1.0, 1.3, n)))
        a, b = rr * np.sqrt(asp), rr / np.sqrt(asp)
    elif shape == "lobed":  # 2-4 lobes (kidney-shaped or multilobed), none in mitosis
        k = rs.integers(2, 5, n)
        amp = np.where(mitotic | (rs.uniform(0, 1, n) < 0.15), 0.0,
                       np.where(k == 2, rs.uniform(0.15, 0.28, n), rs.uniform(0.07, 0.17, n)))
        lobes = (k.astype(F32), amp.astype(F32), rs.uniform(0, 2 * np.pi, n).astype(F32))
    nr = rr * nuc
    na, nb = nr * np.sqrt(nasp), nr / np.sqrt(nasp)
    na, nb = np.minimum(na, 0.8 * a), np.minimum(nb, 0.85 * b)
    # nucleus sits off-centre along the long axis in polarised cells
    off = rng.uniform(-0.3, 0.3, n) * np.maximum(a - na, 0)
    ncy, ncx = cy + off * np.sin(th), cx + off * np.cos(th)
    # condensed chromatin: a bar (metaphase) or compact blob
    na = np.where(mitotic, nr * rng.uniform(0.5, 0.7, n), na)
    nb = np.where(mitotic, nr * rng.uniform(0.18, 0.3, n), nb)
    # MTOC next to the nucleus, on the side away from the cell centre (or random)
    ang = rng.uniform(0, 2 * np.pi, n)
    dist = 1.05 + rng.uniform(0.0, 0.25, n)
    mtoc_y = ncy + np.sin(ang) * nb * dist
    mtoc_x = ncx + np.cos(ang) * na * dist
    return Field(size, s, ct, cy, cx, a.astype(F32), b.astype(F32), th.astype(F32), ncy.astype(F32),
                 ncx.astype(F32), na.astype(F32), nb.astype(F32), mitotic, mtoc_y.astype(F32),
                 mtoc_x.astype(F32), ang.astype(F32), st=st, rs=rs, mag=mag, lobes=lobes)


def geometry(f: Field, rng) -> Field:
    """Per-pixel owner cell, cell mask, normalised radius, nucleus mask (in place)."""
    h = w = f.size
    yy, xx = np.mgrid[0:h, 0:w].astype(F32)
    border = smooth_noise(rng, (h, w), 5 * f.s) * F32(f.ct.irregular)
    nborder = smooth_noise(rng, (h, w), 2.5 * f.s) * F32(0.07 * f.st.nuc_rough)
    if f.n == 0:
        z = np.zeros((h, w), F32)
        f.owner, f.cell, f.rho, f.nucleus, f.dn = np.zeros((h, w), int), z > 0, z + 2, z > 0, z + 2
        return f
    # squared normalised distance to every cell centre as a quadratic form, built from
    # separable (N, 1, W) / (N, H, 1) pieces: 4 full-size passes instead of ~10
    c, s = np.cos(f.th), np.sin(f.th)
    ia, ib = 1 / (f.a * f.a), 1 / (f.b * f.b)
    qa, qb, qc = c * c * ia + s * s * ib, 2 * c * s * (ia - ib), s * s * ia + c * c * ib
    ddx = xx[0][None, :] - f.cx[:, None]  # (N, W)
    ddy = yy[:, 0][None, :] - f.cy[:, None]  # (N, H)
    d2 = (qa[:, None] * ddx * ddx)[:, None, :] + (qc[:, None] * ddy * ddy)[:, :, None]
    d2 += (qb[:, None] * ddy)[:, :, None] * ddx[:, None, :]
    owner = np.argmin(d2, axis=0)
    rho = np.sqrt(np.maximum(np.take_along_axis(d2, owner[None], 0)[0], 0)) + border
    cell = rho < 1.0
    o = owner
    c1, s1 = np.cos(f.th)[o], np.sin(f.th)[o]
    ddy, ddx = yy - f.ncy[o], xx - f.ncx[o]
    un = (ddx * c1 + ddy * s1) / f.na[o]
    vn = (ddy * c1 - ddx * s1) / f.nb[o]
    dn = np.sqrt(un * un + vn * vn)
    if f.lobes is not None:  # radius of the border modulated by k lobes
        k, amp, ph = (v[o] for v in f.lobes)
        dn = dn / (1 + amp * np.cos(k * np.arctan2(vn, un) + ph))
    dn = dn + nborder
    f.owner, f.cell, f.rho, f.dn = owner, cell, rho.astype(F32), dn.astype(F32)
    f.nucleus = cell & (dn < 1.0)
    return f


def nucleoli(f: Field, rng, difficulty: float):
    """1-4 nucleoli per interphase nucleus: a soft 0..1 map and their positions."""
    alive = np.flatnonzero(~f.mitotic)
    k = rng.integers(f.st.nucleoli[0], f.st.nucleoli[1] + 1, len(alive))
    idx = np.repeat(alive, k)
    ny, nx = points_in_ellipse(rng, f.ncy[idx], f.ncx[idx], f.na[idx], f.nb[idx], f.th[idx], 0.55,
                               len(idx))
    rad = np.sqrt(f.na[idx] * f.nb[idx]) * rng.uniform(0.2, 0.34, len(idx)) / np.sqrt(k.repeat(k) * 0.5 + 0.5)
    if f.st.nucleoli_size != 1.0:
        rad = rad * f.st.nucleoli_size
    sig = max(float(np.median(rad)) if len(rad) else 1.0, 0.5)
    m = blobs((f.size, f.size), ny, nx, sig, (rad / sig) ** 2)
    m = np.clip(m * 1.6 - 0.25, 0, 1) * f.nucleus
    f.nucleoli = m.astype(F32)
    f.nucleoli_pts = (ny, nx, rad)
    return f


# --------------------------------------------------------------------------- reference stains
def stain_nuclei(f: Field, rng) -> np.ndarray:
    """Blue: textured nuclei with dark nucleoli; bright condensed chromatin in mitosis."""
    tex = smooth_noise(rng, f.nucleus.shape, 0.8 * f.fine)
    level = rng.uniform(0.55, 1.0, f.n).astype(F32)
    level = np.where(f.mitotic, 1.5, level).astype(F32)
    rim = np.clip(1.25 - 0.35 * f.dn, 0.85, 1.0)  # slightly darker centre, brighter rim
    return f.nucleus * level[f.owner] * (0.8 + 0.2 * tex) * rim * (1 - 0.6 * f.nucleoli)


def stain_microtubules(f: Field, rng, difficulty: float) -> np.ndarray:
    """Red: filaments radiating from the MTOC to the cell border, plus diffuse tubulin."""
    h = w = f.size
    alive = np.flatnonzero(~f.mitotic)
    per = np.clip(np.round(2 * np.pi * np.sqrt(f.a * f.b) / (1.6 * f.fine)), 10, 70).astype(int)[alive]
    ci = np.repeat(alive, per)
    nr = len(ci)
    out = np.zeros((h, w), F32)
    if nr:
        ang = rng.uniform(0, 2 * np.pi, nr)
        curv = rng.normal(0, 0.9, nr)
        inten = rng.uniform(0.2, 0.6, nr)
        length = 1.3 * f.a[ci] + 2
        npts = int(np.ceil(float(length.max()) / 0.75)) + 1
        t = np.linspace(0.0, 1.0, npts, dtype=F32)[None, :]
        L = length[:, None]
        phi = ang[:, None] + curv[:, None] * t
        # half the filaments start at the MTOC, the others at the nuclear periphery (seen from
        # above the network is a mesh, not a perfect star)
        from_mtoc = rng.uniform(0, 1, nr) < 0.5
        sy = np.where(from_mtoc, f.mtoc_y[ci], f.ncy[ci] + np.sin(ang) * f.nb[ci] * 1.05)
        sx = np.where(from_mtoc, f.mtoc_x[ci], f.ncx[ci] + np.cos(ang) * f.na[ci] * 1.05)
        y = sy[:, None] + t * L * np.sin(phi)
        x = sx[:, None] + t * L * np.cos(phi)
        yi, xi = np.clip(np.round(y).astype(int), 0, h - 1), np.clip(np.round(x).astype(int), 0, w - 1)
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        ok = inside & f.cell[yi, xi] & (f.owner[yi, xi] == ci[:, None])
        # a filament ends at the first point outside its cell
        ok = np.cumprod(ok, axis=1).astype(bool)
        wt = inten[:, None] * np.where(f.nucleus[yi, xi], 0.3, 1.0) * (1.0 - 0.4 * t)
        out = blobs((h, w), y[ok], x[ok], 0.45 * f.fine, wt[ok] * 0.6)
    fib = ridges(rng, (h, w), 0.7 * max(f.fine, 0.5), 0.6)
    diffuse = f.cell * np.clip(1.3 - f.rho, 0.2, 1) ** 0.5 * (0.25 + 0.25 * fib)
    mit = f.mitotic[f.owner] & f.cell
    spindle = mit * (0.5 + 0.5 * np.exp(-(f.dn * 0.7) ** 2))
    return np.minimum(out, 1.0) * ~mit + diffuse * ~f.nucleus + 0.1 * diffuse * f.nucleus + spindle


def stain_er(f: Field, rng) -> np.ndarray:
    """Yellow: reticular ER network, densest around the nucleus, with a nuclear-envelope rim."""
    net = ridges(rng, f.cell.shape, 0.9 * max(f.fine, 0.5), 0.5)
    prof = np.clip(1.35 - f.rho, 0, 1) ** 0.7
    rim = np.exp(-(((f.dn - 1.0) / 0.12) ** 2))
    cyto = f.cell & ~f.nucleus
    return cyto * prof * (0.35 + 0.65 * net) + f.cell * rim * 0.7


# --------------------------------------------------------------------------- green patterns
# Each pattern has one or more renderings (styles.VARIANTS); f.variant(key) is the one of this
# image. The first rendering of every pattern is protloc's original, drawn exactly as before.
def _nucleoplasm(f: Field, rng) -> np.ndarray:
    if f.cache.get("np") is None:
        if f.variant("nucleoplasm") == "granular":  # coarse-grained nucleoplasm (granular texture)
            tex = smooth_noise(rng, f.cell.shape, 0.6 * f.fine)
            f.cache["np"] = f.nucleus * (1 - 0.9 * f.nucleoli) * np.clip(0.7 + 0.3 * tex, 0.1, None)
        else:
            tex = smooth_noise(rng, f.cell.shape, 1.0 * f.s)
            f.cache["np"] = f.nucleus * (1 - 0.9 * f.nucleoli) * (0.85 + 0.15 * tex)
    return f.cache["np"]


def _cytoplasm(f: Field, rng) -> np.ndarray:
    if f.cache.get("cyto") is None:
        tex = smooth_noise(rng, f.cell.shape, 1.2 * f.s)
        # graded: thinning towards the cell edge (flat spread cells); flat: even (thick cells)
        prof = np.clip(1.25 - f.rho, 0.15, 1) if f.variant("cytosol") == "graded" else np.clip((1.06 - f.rho) * 5, 0.3, 1)
        f.cache["cyto"] = (f.cell & ~f.nucleus) * prof * (0.85 + 0.15 * tex)
    return f.cache["cyto"]


def _interphase_points(f: Field, rng, lo, hi, frac):
    alive = np.flatnonzero(~f.mitotic)
    k = rng.integers(lo, hi + 1, len(alive))
    idx = np.repeat(alive, k)
    y, x = points_in_ellipse(rng, f.ncy[idx], f.ncx[idx], f.na[idx], f.nb[idx], f.th[idx], frac, len(idx))
    return y, x, len(idx)


def _sample_pixels(rng, weight: np.ndarray, n: int):
    """``n`` sub-pixel positions drawn with probability proportional to ``weight`` (H, W)."""
    w = weight.ravel().astype(np.float64)
    if n <= 0 or w.sum() <= 0:
        return np.zeros(0, F32), np.zeros(0, F32)
    idx = rng.choice(w.size, size=n, p=w / w.sum())
    jit = rng.uniform(-0.5, 0.5, (2, n))
    return (idx // weight.shape[1] + jit[0]).astype(F32), (idx % weight.shape[1] + jit[1]).astype(F32)


def p_mitochondria(f, rng, d):
    cyto = f.cell & ~f.nucleus
    prof = np.clip(1.2 - f.rho, 0, 1) ** 0.5
    v = f.variant("mito")
    if v == "fragmented":  # fission: short rods and puncta scattered through the cytoplasm
        fine = max(f.fine, 0.5)
        n = int(np.clip(cyto.sum() / (9.0 * fine * fine), 4, 4000))
        y, x = _sample_pixels(rng, cyto * prof, n)
        ang, ln = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.3, 1.8, n) * fine
        dots = blobs(f.cell.shape, np.concatenate([y, y + ln * np.sin(ang)]),
                     np.concatenate([x, x + ln * np.cos(ang)]), 0.5 * fine, rng.uniform(0.45, 0.9, 2 * n))
        return cyto * np.minimum(dots, 1.0) * (0.4 + 0.6 * prof) * 1.2 + 0.05 * _cytoplasm(f, rng)
    if v == "tubular":  # fused: long, continuous tubules
        net = ridges(rng, f.cell.shape, 1.5 * max(f.fine, 0.5), 0.42)
        frag = np.clip(smooth_noise(rng, f.cell.shape, 2.5 * f.s) + 1.4, 0, 1)
    else:
        net = ridges(rng, f.cell.shape, 1.1 * max(f.fine, 0.5), 0.45)
        frag = np.clip(smooth_noise(rng, f.cell.shape, 1.6 * f.s) + 0.6, 0, 1)
    return cyto * net * frag * prof * 1.2 + 0.05 * _cytoplasm(f, rng)


#: nuclear bodies: (dots per nucleus lo, hi or None = 3 + 4 * difficulty, dot sigma x fine, weight lo)
_NB = {"standard": (1, None, 0.7, 0.6), "few-large": (1, 3, 1.1, 0.7), "many-small": (3, 7, 0.55, 0.6)}


def p_nuclear_bodies(f, rng, d):
    v = f.variant("nuclear_bodies")
    lo, hi, sig, wlo = _NB[v]
    y, x, n = _interphase_points(f, rng, lo, int(3 + 4 * d) if hi is None else hi, 0.8)
    dots = blobs(f.cell.shape, y, x, sig * f.fine, rng.uniform(wlo, 1.0, n))
    if v == "many-small":  # Cajal/PML-like bodies sit in the nucleoplasm, not in the nucleoli
        dots = dots * (1 - 0.8 * f.nucleoli)
    return np.minimum(dots, 1.0) * f.nucleus + 0.08 * _nucleoplasm(f, rng)


def p_nucleoli(f, rng, d):
    if f.variant("nucleoli_pattern") == "textured":  # granular nucleolar components
        tex = np.clip(0.75 + 0.3 * smooth_noise(rng, f.cell.shape, 0.5 * f.fine), 0.2, 1.1)
        return f.nucleoli * tex + 0.04 * _nucleoplasm(f, rng)
    return f.nucleoli * 1.0 + 0.04 * _nucleoplasm(f, rng)


#: Golgi: (stacks per cell lo, hi (exclusive), angular spread + per difficulty, distance from the
#: nuclear border mean, sd (x nucleus radius), stack sigma x fine, weight lo, hi)
_GOLGI = {"ribbon": (8, 20, 0.45, 0.35, 0.1, 0.25, 0.75, 0.3, 0.8),
          "compact": (6, 12, 0.25, 0.15, 0.04, 0.12, 0.95, 0.5, 0.9),
          "dispersed": (14, 30, 0.9, 0.4, 0.3, 0.45, 0.55, 0.4, 1.0)}


def p_golgi(f, rng, d):
    klo, khi, s0, s1, rmu, rsd, sig, wlo, whi = _GOLGI[f.variant("golgi")]
    alive = np.flatnonzero(~f.mitotic)
    k = rng.integers(klo, khi, len(alive))
    idx = np.repeat(alive, k)
    n = len(idx)
    spread = s0 + s1 * d
    ang = f.mtoc_ang[idx] + rng.normal(0, spread, n)
    r = 1.0 + np.abs(rng.normal(rmu, rsd, n))
    y = f.ncy[idx] + np.sin(ang) * f.nb[idx] * r
    x = f.ncx[idx] + np.cos(ang) * f.na[idx] * r
    g = blobs(f.cell.shape, y, x, sig * f.fine, rng.uniform(wlo, whi, n))
    return np.minimum(g, 1.0) * f.cell * np.where(f.nucleus, 0.6, 1.0) + 0.03 * _cytoplasm(f, rng)


def p_nucleoplasm(f, rng, d):
    return _nucleoplasm(f, rng)


#: fibrillar centers: (dots per nucleolus lo, hi (exclusive) or None = 1, radius share, sigma x fine,
#: weight lo, dim nucleolar glow)
_FC = {"standard": (1, 4, 0.6, 0.45, 0.6, 0.1), "single": (None, None, 0.3, 0.55, 0.7, 0.18),
       "many": (3, 7, 0.75, 0.4, 0.5, 0.14)}


def p_fibrillar_center(f, rng, d):
    lo, hi, share, sig, wlo, glow = _FC[f.variant("fibrillar")]
    ny, nx, rad = f.nucleoli_pts
    k = np.ones(len(ny), int) if lo is None else rng.integers(lo, hi, len(ny))
    idx = np.repeat(np.arange(len(ny)), k)
    r = np.sqrt(rng.uniform(0, 1, len(idx))) * rad[idx] * share
    phi = rng.uniform(0, 2 * np.pi, len(idx))
    dots = blobs(f.cell.shape, ny[idx] + r * np.sin(phi), nx[idx] + r * np.cos(phi), sig * f.fine,
                 rng.uniform(wlo, 1.0, len(idx)))
    return np.minimum(dots, 1.0) * f.nucleus + glow * f.nucleoli


def p_cytosol(f, rng, d):
    return _cytoplasm(f, rng) + 0.12 * _nucleoplasm(f, rng)


def p_plasma_membrane(f, rng, d):
    lab = np.where(f.cell, f.owner, -1)
    v = f.variant("membrane")
    e = np.zeros(lab.shape, bool)
    free = np.zeros(lab.shape, bool)  # edge pixels that face the background (not another cell)
    for sl_a, sl_b in (((slice(1, None),), (slice(None, -1),)), ((slice(None, -1),), (slice(1, None),)),
                       ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                       ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):
        diff = lab[sl_a] != lab[sl_b]
        e[sl_a] |= diff
        if v == "junctions":
            free[sl_a] |= diff & (lab[sl_b] < 0)
    e &= f.cell
    tex = np.clip(1 + 0.3 * smooth_noise(rng, lab.shape, 2 * f.s), 0.3, 1.5)
    edge = e.astype(F32) * tex
    if v == "junctions":  # adherens junctions: cell-cell contacts bright, free edges dim
        edge = edge * np.where(free, 0.3, 1.0).astype(F32)
    elif v == "ruffled":  # lamellipodia / ruffles: thick, patchy bright stretches of the free edge
        patch = (smooth_noise(rng, lab.shape, 3 * f.s) > 0.3) & f.cell
        thick = ndi.binary_dilation(e, iterations=max(1, int(round(1.2 * f.s)))) & patch & f.cell
        edge = edge + thick * F32(0.7) * tex
    mem = ndi.gaussian_filter(edge, 0.5 * f.fine) * 1.6
    return np.minimum(mem, 1.0) + 0.08 * _cytoplasm(f, rng)


#: centrosome: probability of a second centriole dot, its distance (x s), pericentriolar haze
_CENTROSOME = {"mixed": (0.5, 1.4, False), "single": (0.0, 1.4, False), "pair": (1.0, 1.8, False),
               "haze": (0.5, 1.4, True)}


def p_centrosome(f, rng, d):
    p2, dist, haze = _CENTROSOME[f.variant("centrosome")]
    alive = np.flatnonzero(~f.mitotic)
    two = rng.uniform(0, 1, len(alive)) < p2
    off = rng.uniform(0, 2 * np.pi, len(alive))
    y = np.concatenate([f.mtoc_y[alive], (f.mtoc_y[alive] + dist * f.s * np.sin(off))[two]])
    x = np.concatenate([f.mtoc_x[alive], (f.mtoc_x[alive] + dist * f.s * np.cos(off))[two]])
    dots = blobs(f.cell.shape, y, x, 0.55 * f.fine, rng.uniform(0.7, 1.0, len(y)))
    if haze:  # pericentriolar material: a dim cloud around the centrioles
        dots = dots + blobs(f.cell.shape, f.mtoc_y[alive], f.mtoc_x[alive], 2.0 * f.fine,
                            rng.uniform(0.2, 0.35, len(alive)))
    return np.minimum(dots, 1.0) * f.cell + 0.04 * _cytoplasm(f, rng)


#: speckles: (speckles per nucleus lo, hi, sigma x fine, sub-blobs per speckle)
_SPECKLES = {"standard": (8, 25, 0.6, 1), "few-large": (4, 10, 0.8, 3), "many-small": (22, 40, 0.45, 1)}


def p_speckles(f, rng, d):
    lo, hi, sig, sub = _SPECKLES[f.variant("speckles")]
    y, x, n = _interphase_points(f, rng, lo, hi, 0.85)
    w = rng.uniform(0.4, 1.0, n)
    if sub > 1:  # large irregular speckles: a few merged sub-blobs each
        j = rng.normal(0, 0.9 * sig * f.fine, (2, sub * n))
        y, x, w = np.tile(y, sub) + j[0], np.tile(x, sub) + j[1], np.tile(w, sub) * 0.8
    sp = blobs(f.cell.shape, y, x, sig * f.fine, w)
    irregular = np.clip(0.75 + 0.35 * smooth_noise(rng, f.cell.shape, 0.7 * f.fine), 0, 1.3)
    return (np.minimum(sp, 1.0) * irregular + 0.15 * _nucleoplasm(f, rng)) * f.nucleus * (1 - 0.5 * f.nucleoli)


PATTERNS = (p_mitochondria, p_nuclear_bodies, p_nucleoli, p_golgi, p_nucleoplasm, p_fibrillar_center,
            p_cytosol, p_plasma_membrane, p_centrosome, p_speckles)
NUCLEAR = (1, 2, 4, 5, 9)


def stain_protein(f: Field, labels, rng, difficulty: float) -> np.ndarray:
    """Green: sum of the label patterns with random relative intensities and per-cell expression."""
    d = difficulty
    sigma = (0.2 + 0.4 * d) * f.st.expression
    expr = rng.lognormal(0.0, sigma, f.n)
    expr = np.where(rng.uniform(0, 1, f.n) < 0.05 + 0.2 * d, expr * rng.uniform(0.05, 0.3, f.n), expr)
    weights = rng.uniform(0.35, 1.0, len(labels))
    weights /= weights.max()
    g = np.zeros(f.cell.shape, F32)
    mit = (f.mitotic[f.owner] & f.cell).astype(F32)
    for k, wk in zip(labels, weights):
        pat = PATTERNS[k](f, rng, d)
        if k in NUCLEAR:  # nuclear envelope breaks down in mitosis: the protein spreads out
            pat = pat + 0.05 * mit
        g += F32(wk) * pat
    # pattern ambiguity: unspecific cytosolic / nuclear background that grows with difficulty
    amb = rng.uniform(0, 0.2 * d, 2)
    g += F32(amb[0]) * _cytoplasm(f, rng) + F32(amb[1]) * _nucleoplasm(f, rng)
    return g * expr.astype(F32)[f.owner]


# --------------------------------------------------------------------------- microscope
#: autofluorescence relative to each channel's brightest signal (red, green, blue, yellow)
_AUTOFLUORESCENCE = np.array([0.6, 1.0, 0.4, 0.8], F32)


def microscope(chans, rng, difficulty: float, s: float, fine: float, f: Field | None = None) -> np.ndarray:
    """Bleed-through, uneven illumination, blur, auto-exposure, Poisson-Gaussian noise -> uint8.

    ``chans``: list of (H, W) float planes in stain order red, green, blue[, yellow]. ``f``
    carries the style (``f.st``, default: the default style) and, for styles with
    autofluorescence, the cell masks.
    """
    d = difficulty
    st = DEFAULT if f is None else f.st
    red, green, blue = chans[:3]
    bt = rng.uniform(0, st.bleed + st.bleed_d * d, 3)
    green = green + bt[0] * red + bt[1] * blue
    red = red + bt[2] * green
    x = np.stack([red, green, blue] + list(chans[3:]), axis=-1)  # (H, W, C)
    h, w, nc = x.shape
    illum = np.clip(1 + (st.illum + st.illum_d * d) * smooth_noise(rng, (h, w), 0.4 * h), 0.3, 2.0)
    # detector gains: green is often dim (weakly expressed protein, short exposure)
    pk = st.peaks
    peaks = np.array([rng.uniform(*pk[0]), rng.uniform(*pk[1]) * (1 - 0.6 * d * rng.uniform()),
                      rng.uniform(*pk[2]), rng.uniform(*pk[3])], F32)
    q = (rng.uniform(*st.photons, 4) * (1.3 - d)).astype(F32)  # photons per grey level
    sd = rng.uniform(st.read_noise[0], st.read_noise[1] + st.read_noise_d * d, 4).astype(F32)  # read noise
    offset = rng.uniform(*st.offset, 4).astype(F32)
    blur = rng.uniform(st.blur[0], st.blur[1] + st.blur_d * d) * fine + 0.05
    if not st.is_default:
        rs = f.rs
        if st.autofluorescence[1] > 0:  # flavins and lipofuscin: a dim cellular glow in every channel
            mx0 = x.reshape(-1, nc).max(0)
            glow = f.cell * (0.6 + 0.25 * smooth_noise(rs, (h, w), 2.0 * s)) * np.where(f.nucleus, 0.5, 1.0)
            gy, gx = _sample_pixels(rs, f.cell & ~f.nucleus, int(0.004 * h * w))
            gran = blobs((h, w), gy, gx, 0.6 * fine, rs.uniform(0.5, 1.5, len(gy)))
            af = rs.uniform(*st.autofluorescence) * _AUTOFLUORESCENCE[:nc] * mx0
            x += (glow + 0.8 * np.minimum(gran, 1.5)).astype(F32)[..., None] * af.astype(F32)
        if f.variant("illumination") == "vignette":  # objective vignetting: darker corners
            yy, xx = np.mgrid[0:h, 0:w].astype(F32)
            cy, cx = rs.uniform(0.3, 0.7, 2) * (h, w)
            r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / F32(0.5 * h * h)
            illum = illum * np.clip(1 - rs.uniform(0.35, 0.6) * r2, 0.25, 1)
    x *= illum[..., None]
    haze = ndi.uniform_filter(x, (int(st.haze_px * s) + 1,) * 2 + (1,))  # out-of-focus haze
    if not st.is_default:  # a smoother (tent-shaped) out-of-focus spread
        haze = ndi.uniform_filter(haze, (int(st.haze_px * s) + 1,) * 2 + (1,))
    x += st.haze * haze
    x = ndi.gaussian_filter(x, (blur, blur, 0), truncate=3.0)
    mx = x.reshape(-1, nc).max(0)
    x *= np.where(mx > 1e-6, peaks[:nc] / np.maximum(mx, 1e-6), 1).astype(F32)
    if not st.is_default and st.exposure[1] > 1:  # over-exposure: the brightest pixels clip at 255
        x *= F32(f.rs.uniform(*st.exposure))
    np.maximum(x, 0, out=x)
    out = np.empty((h, w, nc), np.uint8)
    for c in range(nc):  # Poisson-Gaussian noise: shot noise (normal approx.) + read noise + offset
        xc = x[..., c]
        xc += rng.standard_normal((h, w), dtype=F32) * np.sqrt(xc / q[c] + sd[c] * sd[c]) + offset[c]
        np.clip(np.round(xc), 0, 255, out=xc)
        out[..., c] = xc
    return out


def debris(chans, rng, difficulty: float, f: Field) -> None:
    """Occasional bright specks of dust/precipitate (mostly green, sometimes in every channel)."""
    if rng.uniform() >= (0.1 + 0.25 * difficulty) * f.st.debris:
        return
    k = int(rng.integers(1, 4))
    y, x = rng.uniform(0, f.size, k), rng.uniform(0, f.size, k)
    spot = blobs(f.cell.shape, y, x, rng.uniform(0.5, 1.5) * f.s, rng.uniform(0.3, 1.2, k))
    everywhere = rng.uniform() < 0.3
    for c, plane in enumerate(chans):
        if c == 1 or everywhere:
            plane += spot * F32(float(plane.max()) if c != 1 else float(max(plane.max(), 1e-3)))


def resolve_style(style, rng) -> tuple[Style, object]:
    """The concrete style of one image and its extra generator (see the module docstring).

    ``style``: a :class:`Style` or ``'random'`` (a style drawn from ``rng``).
    """
    if isinstance(style, str):  # "random": domain randomisation, a fresh style per image
        from protloc.synth.styles import random_style

        style = random_style(np.random.default_rng(rng.integers(2**63)))
    if style.is_default:
        return style, _NoDraws()
    return style, np.random.default_rng(rng.integers(2**63))


def render(labels, *, size, rng, difficulty, cell_type, channels, style: Style | str = DEFAULT) -> np.ndarray:
    """The whole pipeline for one image (see module docstring)."""
    d = float(difficulty)
    st, rs = resolve_style(style, rng)
    types = st.cell_types or range(len(CELL_TYPES))
    ct = CELL_TYPES[types[int(rng.integers(len(types)))] if cell_type is None else int(cell_type)]
    f = layout(rng, size, ct, d, st, rs)
    geometry(f, rng)
    nucleoli(f, rng, d)
    rng_er = np.random.default_rng(rng.integers(2**63))  # same RGB whether or not yellow is drawn
    red = stain_microtubules(f, rng, d) * rng.uniform(0.7, 1.0, f.n).astype(F32)[f.owner]
    blue = stain_nuclei(f, rng)
    green = stain_protein(f, list(labels), rng, d)
    chans = [red, green, blue]
    rng_mic = np.random.default_rng(rng.integers(2**63))
    if channels == 4:
        chans.append(stain_er(f, rng_er))
    debris(chans, rng_mic, d, f)
    img = microscope(chans, rng_mic, d, f.s, f.fine, f)
    return img
