"""Image styles of ``protloc synth``: named, frozen parameter sets for labs, cell lines, microscopes.

A recipe chosen on one look of the data may not transfer to another (issue 10). A *style* fixes
everything that differs between labs, cell lines and microscopes while the biology (the ten
classes and the real label statistics) stays the same:

- the sample: cell lines, magnification (pixel size: the same field at 20x or 63x), cell
  density and packing, nucleus shape (round, elongated, lobed), nucleoli count and size;
- the rendering of each class's pattern (mitochondria as networks, long tubules or fragmented
  puncta; speckles few-large or many-small; Golgi ribbon, compact cap or dispersed stacks;
  centrosome one dot, a pair, or with pericentriolar haze; plasma membrane smooth, ruffled or
  junction-enriched; ...), as weighted mixes drawn per image;
- the microscope: PSF blur, widefield out-of-focus haze, uneven illumination (smooth or
  vignetting), channel bleed-through, autofluorescence, camera offset, photons per grey level
  (shot noise), read noise, stain brightness and over-exposure (saturation at 255).

:data:`STYLES` holds the named styles (``default`` is protloc's original look, byte-identical to
earlier versions); :func:`random_style` draws a fresh style per image from wide ranges (domain
randomisation, ``--style random``). :func:`get_style` resolves a name. :func:`image_stats`
measures what makes styles differ from the pixels alone (nucleus area, nucleus count,
background, high-frequency energy), for tests and docs/synth.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from protloc.core.errors import InputError
from protloc.core.pixels import nucleus_mask, otsu_threshold

#: a weighted choice of renderings, e.g. (("network", 0.7), ("fragmented", 0.3))
Mix = tuple[tuple[str, float], ...]
Range = tuple[float, float]

#: every rendering of every pattern (the first one is protloc's original rendering)
VARIANTS = {
    "nucleus": ("ellipse", "round", "elongated", "lobed"),
    "mito": ("network", "tubular", "fragmented"),
    "nuclear_bodies": ("standard", "few-large", "many-small"),
    "nucleoli_pattern": ("solid", "textured"),
    "golgi": ("ribbon", "compact", "dispersed"),
    "nucleoplasm": ("smooth", "granular"),
    "fibrillar": ("standard", "single", "many"),
    "cytosol": ("graded", "flat"),
    "membrane": ("smooth", "ruffled", "junctions"),
    "centrosome": ("mixed", "single", "pair", "haze"),
    "speckles": ("standard", "few-large", "many-small"),
    "illumination": ("smooth", "vignette"),
}


def _one(name: str) -> Mix:
    return ((name, 1.0),)


@dataclass(frozen=True)
class Style:
    """One image style: a frozen parameter set (lengths in px of a 128-px image at ``mag`` 1).

    Ranges ``(lo, hi)`` are drawn per image (``mag``, ``density``) or per channel/cell; ``Mix``
    fields pick one rendering per image with the given weights. Fields whose name ends in
    ``_d`` add ``value * difficulty`` to the upper end of the matching range, as the default
    style always did, so ``--difficulty`` keeps its meaning in every style.
    """

    name: str
    summary: str = ""
    # ---- sample and cell lines
    cell_types: tuple[int, ...] = ()  # indices into patterns.CELL_TYPES; () = all ten, uniformly
    mag: Range = (1.0, 1.0)  # magnification vs the default: every length x mag, cells per field / mag^2
    density: Range = (1.0, 1.0)  # cells per field x this
    pack: float = 1.0  # minimum cell spacing x this (< 1: packed)
    max_cells: int = 80
    nucleus: Mix = _one("ellipse")
    nuc_size: float = 1.0  # nucleus / cell radius x this
    nuc_rough: float = 1.0  # nuclear border roughness x this
    mitosis: float = 1.0  # mitotic fraction x this
    nucleoli: tuple[int, int] = (1, 4)  # nucleoli per interphase nucleus (inclusive)
    nucleoli_size: float = 1.0
    # ---- renderings of the green patterns
    mito: Mix = _one("network")
    nuclear_bodies: Mix = _one("standard")
    nucleoli_pattern: Mix = _one("solid")
    golgi: Mix = _one("ribbon")
    nucleoplasm: Mix = _one("smooth")
    fibrillar: Mix = _one("standard")
    cytosol: Mix = _one("graded")
    membrane: Mix = _one("smooth")
    centrosome: Mix = _one("mixed")
    speckles: Mix = _one("standard")
    expression: float = 1.0  # per-cell expression heterogeneity (log-normal sigma) x this
    # ---- microscope
    bleed: float = 0.02  # channel bleed-through fraction: uniform(0, bleed + bleed_d * d)
    bleed_d: float = 0.06
    illumination: Mix = _one("smooth")
    illum: float = 0.1  # uneven-illumination amplitude: illum + illum_d * d
    illum_d: float = 0.25
    haze: float = 0.04  # widefield out-of-focus haze fraction
    haze_px: float = 12.0  # its extent (px at 128)
    blur: Range = (0.3, 0.5)  # PSF sigma x fine scale: uniform(lo, hi + blur_d * d)
    blur_d: float = 0.9
    autofluorescence: Range = (0.0, 0.0)  # cellular background in every channel, x channel max
    peaks: tuple[Range, Range, Range, Range] = ((50, 140), (110, 255), (90, 230), (80, 220))
    exposure: Range = (1.0, 1.0)  # > 1: the brightest pixels saturate at 255
    photons: Range = (0.6, 2.5)  # photons per grey level x (1.3 - d): shot noise
    read_noise: Range = (0.5, 1.5)  # grey levels: uniform(lo, hi + read_noise_d * d)
    read_noise_d: float = 3.0
    offset: Range = (1.0, 6.0)  # camera offset, grey levels
    debris: float = 1.0  # probability of dust specks x this

    @property
    def is_default(self) -> bool:
        return self == DEFAULT

    def describe(self) -> dict:
        """Plain dict of every parameter (for synth.json and the docs)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = ({k: w for k, w in v} if f.name in VARIANTS or f.name == "illumination"
                           else list(v) if isinstance(v, tuple) else v)
        return out


DEFAULT = Style("default", "protloc's original look: ten cell lines, 128-px HPA-like confocal fields, "
                           "moderate noise, each class in one rendering")

STYLES: dict[str, Style] = {s.name: s for s in (
    DEFAULT,
    Style(
        "confocal-63x",
        "63x oil confocal of sparse, large, flat cells (U-2 OS, U-251 MG, HeLa, BJ, CACO-2): 2-6 cells "
        "per field, crisp PSF, high signal, flat background; tubular mitochondria, compact Golgi, "
        "centrosome pairs with pericentriolar haze, few large speckles, 1-2 big nucleoli, ruffled membranes",
        cell_types=(0, 2, 3, 4, 6), mag=(1.45, 1.75), density=(0.9, 1.15),
        nucleus=(("ellipse", 0.6), ("round", 0.4)), nucleoli=(1, 2), nucleoli_size=1.25,
        mito=(("tubular", 0.7), ("network", 0.3)), nuclear_bodies=(("few-large", 0.5), ("standard", 0.5)),
        golgi=(("compact", 0.7), ("ribbon", 0.3)), fibrillar=(("many", 0.6), ("standard", 0.4)),
        membrane=(("ruffled", 0.6), ("smooth", 0.4)), centrosome=(("haze", 0.5), ("pair", 0.5)),
        speckles=(("few-large", 0.7), ("standard", 0.3)), nucleoli_pattern=(("textured", 0.5), ("solid", 0.5)),
        bleed=0.005, bleed_d=0.02, illum=0.04, illum_d=0.08, haze=0.015, blur=(0.25, 0.35), blur_d=0.3,
        peaks=((70, 150), (130, 255), (110, 235), (90, 220)), photons=(2.0, 5.0),
        read_noise=(0.4, 1.0), read_noise_d=1.0, offset=(1.0, 4.0), debris=0.5),
    Style(
        "widefield-20x",
        "20x widefield high-content screen of packed epithelial monolayers (A-431, MCF7, Hep G2, HeLa): "
        "40-80 small cells, out-of-focus haze, vignetting, camera offset, bleed-through; fragmented "
        "mitochondria, dispersed Golgi, junction-enriched membranes, many small speckles and nucleoli",
        cell_types=(1, 3, 7, 8), mag=(0.7, 0.8), density=(1.15, 1.45), pack=0.9,
        nucleus=(("round", 0.5), ("ellipse", 0.5)), nuc_size=1.1, nucleoli=(2, 4), nucleoli_size=0.85,
        mito=(("fragmented", 0.7), ("network", 0.3)), nuclear_bodies=(("many-small", 0.6), ("standard", 0.4)),
        golgi=(("dispersed", 0.6), ("ribbon", 0.4)), fibrillar=(("standard", 0.6), ("single", 0.4)),
        cytosol=(("flat", 0.6), ("graded", 0.4)), membrane=(("junctions", 0.8), ("smooth", 0.2)),
        centrosome=(("single", 0.6), ("mixed", 0.4)), speckles=(("many-small", 0.7), ("standard", 0.3)),
        bleed=0.03, bleed_d=0.03, illumination=_one("vignette"), illum=0.25, illum_d=0.2,
        haze=0.22, haze_px=22.0, blur=(0.45, 0.6), blur_d=0.5, autofluorescence=(0.04, 0.12),
        peaks=((60, 140), (110, 230), (100, 210), (70, 200)), photons=(0.8, 2.0),
        read_noise=(1.5, 2.5), read_noise_d=2.0, offset=(12.0, 25.0)),
    Style(
        "spinning-disk",
        "low-light spinning-disk confocal of elongated, polarised cells (BJ fibroblasts, SH-SY5Y, "
        "U-251 MG, U-2 OS): elongated nuclei, dim stains, few photons per grey level (shot noise "
        "dominates), mixed mitochondria and Golgi renderings, granular nucleoplasm",
        cell_types=(0, 2, 4, 9), mag=(1.05, 1.25), density=(0.9, 1.2),
        nucleus=(("elongated", 0.65), ("ellipse", 0.35)), nucleoli=(1, 3),
        mito=(("network", 0.5), ("fragmented", 0.25), ("tubular", 0.25)),
        golgi=(("dispersed", 0.5), ("ribbon", 0.5)), nucleoplasm=(("granular", 0.6), ("smooth", 0.4)),
        membrane=(("smooth", 0.5), ("ruffled", 0.5)), centrosome=(("pair", 0.5), ("mixed", 0.5)),
        speckles=(("standard", 0.6), ("few-large", 0.4)), expression=1.3,
        bleed=0.02, bleed_d=0.04, illum=0.15, illum_d=0.2, haze=0.06, blur=(0.35, 0.55), blur_d=0.5,
        autofluorescence=(0.0, 0.04), peaks=((45, 100), (60, 150), (70, 150), (45, 120)),
        photons=(0.4, 0.9), read_noise=(2.0, 3.5), read_noise_d=2.0, offset=(3.0, 8.0)),
    Style(
        "epi-saturated",
        "epifluorescence of bright, over-exposed stains (clipped at 255) in cancer lines with lobed, "
        "irregular nuclei (HeLa, U-2 OS, MCF7, A-431): strong autofluorescence, bleed-through and "
        "uneven illumination; mixed renderings of every pattern",
        cell_types=(0, 1, 3, 7), mag=(0.9, 1.05), density=(1.0, 1.2),
        nucleus=(("lobed", 0.7), ("ellipse", 0.3)), nuc_rough=2.5, nucleoli=(1, 4),
        mito=(("network", 0.5), ("fragmented", 0.5)), nuclear_bodies=(("few-large", 0.5), ("standard", 0.5)),
        golgi=(("compact", 0.5), ("dispersed", 0.5)), fibrillar=(("many", 0.5), ("standard", 0.5)),
        membrane=(("ruffled", 0.5), ("junctions", 0.5)), centrosome=(("haze", 0.6), ("single", 0.4)),
        speckles=(("standard", 0.5), ("few-large", 0.5)),
        bleed=0.07, bleed_d=0.05, illum=0.25, illum_d=0.2, haze=0.12, haze_px=16.0,
        blur=(0.45, 0.65), blur_d=0.5, autofluorescence=(0.08, 0.2),
        peaks=((120, 200), (160, 255), (150, 250), (120, 220)), exposure=(1.2, 1.7),
        photons=(1.0, 3.0), read_noise=(0.5, 1.5), read_noise_d=1.5, offset=(2.0, 6.0), debris=1.5),
    Style(
        "suspension",
        "cytospin of small round suspension cells (lymphoid/monocyte-like): large round or kidney-"
        "shaped (lobed) nuclei, a thin cytoplasm rim, more mitoses, widefield-like blur",
        cell_types=(5,), mag=(1.45, 1.7), density=(0.8, 1.3), pack=1.05,
        nucleus=(("lobed", 0.55), ("round", 0.45)), nuc_size=0.8, mitosis=1.6, nucleoli=(1, 3),
        mito=(("fragmented", 0.5), ("network", 0.5)), golgi=(("compact", 0.7), ("ribbon", 0.3)),
        membrane=(("smooth", 0.5), ("ruffled", 0.5)), centrosome=(("single", 0.5), ("mixed", 0.5)),
        speckles=(("standard", 0.5), ("many-small", 0.5)), cytosol=(("flat", 0.5), ("graded", 0.5)),
        bleed=0.03, bleed_d=0.04, illum=0.12, illum_d=0.2, haze=0.08, blur=(0.45, 0.65), blur_d=0.5,
        autofluorescence=(0.0, 0.06), photons=(0.6, 2.0), read_noise=(1.0, 2.0), read_noise_d=2.5,
        offset=(2.0, 10.0)),
    Style(
        "hcs-confocal-20x",
        "20x spinning-disk high-content confocal of spread cells (U-2 OS, HeLa, BJ, SH-SY5Y): 20-60 "
        "small cells at low magnification, so every structure is a few pixels, but confocal: little "
        "haze, low offset, moderate noise; network/tubular mitochondria, ribbon or compact Golgi, "
        "centrosome pairs, standard or few-large speckles and nuclear bodies",
        cell_types=(0, 3, 4, 9), mag=(0.6, 0.75), density=(0.8, 1.1),
        nucleus=(("ellipse", 0.5), ("elongated", 0.3), ("round", 0.2)), nucleoli=(1, 3),
        mito=(("network", 0.6), ("tubular", 0.4)), nuclear_bodies=(("standard", 0.6), ("few-large", 0.4)),
        golgi=(("ribbon", 0.5), ("compact", 0.5)), fibrillar=(("standard", 0.5), ("many", 0.5)),
        membrane=(("smooth", 0.6), ("ruffled", 0.4)), centrosome=(("pair", 0.5), ("mixed", 0.5)),
        speckles=(("standard", 0.6), ("few-large", 0.4)),
        bleed=0.01, bleed_d=0.03, illum=0.12, illum_d=0.15, haze=0.03, blur=(0.3, 0.45), blur_d=0.4,
        autofluorescence=(0.0, 0.03), photons=(1.0, 3.0), read_noise=(1.0, 2.0), read_noise_d=1.5,
        offset=(4.0, 10.0)),
)}

#: names accepted by ``--style`` besides the named styles
SPECIAL = ("random",)


def style_names() -> list[str]:
    """Every value ``--style`` accepts (named styles, then ``random``).

    Examples
    --------
    >>> style_names()[:2], style_names()[-1]
    (['default', 'confocal-63x'], 'random')
    """
    return [*STYLES, *SPECIAL]


def get_style(name) -> Style | str:
    """The :class:`Style` called ``name`` (a Style passes through; ``'random'`` stays a string).

    A comma list (``'a,b'``) is checked name by name and returned as a tuple of styles.

    Examples
    --------
    >>> get_style("default").name
    'default'
    >>> get_style("random")
    'random'
    """
    if isinstance(name, Style) or name == "random":
        return name
    if isinstance(name, str) and "," in name:
        return tuple(get_style(n.strip()) for n in name.split(",") if n.strip())
    if isinstance(name, str) and name.strip().lower() in STYLES:
        return STYLES[name.strip().lower()]
    raise InputError("--style", expected="one of " + ", ".join(style_names()),
                     got=repr(name), fix="e.g. --style confocal-63x (see docs/synth.md)")


def _wide(rng, lo, hi):
    a, b = sorted(rng.uniform(lo, hi, 2))
    return float(a), float(b)


def _any_mix(rng, key) -> Mix:
    names = VARIANTS[key]
    w = rng.dirichlet(np.ones(len(names)))
    return tuple((n, float(x)) for n, x in zip(names, w))


def random_style(rng: np.random.Generator) -> Style:
    """A style drawn from wide ranges that cover and exceed the named styles (``--style random``).

    Examples
    --------
    >>> a, b = random_style(np.random.default_rng(0)), random_style(np.random.default_rng(1))
    >>> a.name, a != b, 0.6 <= a.mag[0] <= a.mag[1] <= 1.8
    ('random', True, True)
    """
    u = rng.uniform
    mag = float(u(0.65, 1.75))
    peaks = tuple(_wide(rng, lo, 255) for lo in (35, 60, 60, 40))
    return replace(
        DEFAULT, name="random", summary="drawn per image from wide ranges (domain randomisation)",
        mag=(mag, mag), density=(float(u(0.7, 1.5)),) * 2, pack=float(u(0.85, 1.1)),
        nucleus=_any_mix(rng, "nucleus"), nuc_size=float(u(0.85, 1.15)), nuc_rough=float(u(0.5, 3.0)),
        mitosis=float(u(0.5, 2.0)),
        nucleoli=(int(rng.integers(1, 3)), int(rng.integers(2, 6))), nucleoli_size=float(u(0.75, 1.3)),
        **{k: _any_mix(rng, k) for k in ("mito", "nuclear_bodies", "nucleoli_pattern", "golgi",
                                         "nucleoplasm", "fibrillar", "cytosol", "membrane",
                                         "centrosome", "speckles", "illumination")},
        expression=float(u(0.6, 1.5)),
        bleed=float(u(0.0, 0.08)), bleed_d=float(u(0.0, 0.06)), illum=float(u(0.03, 0.3)),
        illum_d=float(u(0.05, 0.25)), haze=float(u(0.0, 0.35)), haze_px=float(u(8, 24)),
        blur=_wide(rng, 0.25, 0.7), blur_d=float(u(0.2, 0.9)), autofluorescence=_wide(rng, 0.0, 0.2),
        peaks=peaks, exposure=(1.0, float(u(1.0, 1.7))), photons=_wide(rng, 0.25, 5.0),
        read_noise=_wide(rng, 0.4, 3.5), read_noise_d=float(u(0.5, 3.0)), offset=_wide(rng, 0.0, 25.0),
        debris=float(u(0.3, 1.5)))


def pick(rng, mix: Mix) -> str:
    """One rendering from a weighted mix (no random draw when the mix has one entry)."""
    if len(mix) == 1:
        return mix[0][0]
    w = np.array([x for _, x in mix], float)
    return mix[int(rng.choice(len(mix), p=w / w.sum()))][0]


# --------------------------------------------------------------------------- statistics
def image_stats(img: np.ndarray) -> dict:
    """Style statistics of one uint8 (H, W, C>=3) image, from its pixels alone.

    ``nucleus_area``: fraction of pixels above Otsu's threshold in blue; ``nuclei``: connected
    blue components of >= 4 px (touching nuclei count once); ``nucleus_px``: their mean area
    (magnification); ``cell_area``: fraction of pixels in cells (smoothed red above Otsu's
    threshold, or nucleus); ``nucleus_share``: nucleus / cell area; ``background``: 5th percentile of red and green (offset +
    haze + autofluorescence); ``hf_energy``: share of the blue channel's variance in its
    Laplacian (sharpness; blur lowers it, shot noise raises it); ``saturated``: fraction of
    pixels at 255 in any channel; ``green_p99``: 99th percentile of green.

    Examples
    --------
    >>> img = np.zeros((32, 32, 3), np.uint8); img[8:16, 8:16, 2] = 200
    >>> s = image_stats(img); s["nuclei"], round(s["nucleus_area"], 4), s["nucleus_px"]
    (1, 0.0625, 64.0)
    """
    from scipy import ndimage as ndi

    blue = img[..., 2]
    nuc = nucleus_mask(blue)
    lab, n = ndi.label(nuc)
    sizes = np.bincount(lab.ravel())[1:]
    b = blue.astype(np.float32)
    lap = ndi.laplace(b)
    big = int((sizes >= 4).sum())
    red = ndi.gaussian_filter(img[..., 0].astype(np.float32), 2.0)  # microtubules fill the cytoplasm
    cells = nuc | (red > max(otsu_threshold(np.clip(red, 0, 255).astype(np.uint8)), float(np.percentile(red, 5)) + 4))
    return {"nucleus_area": float(nuc.mean()), "nuclei": big,
            "nucleus_px": float(sizes[sizes >= 4].mean()) if big else 0.0,
            "cell_area": float(cells.mean()), "nucleus_share": float(nuc.sum() / max(cells.sum(), 1)),
            "background": float(np.percentile(img[..., :2], 5)),
            "hf_energy": float(lap.var() / (b.var() + 1e-6)),
            "saturated": float((img == 255).any(-1).mean()),
            "green_p99": float(np.percentile(img[..., 1], 99))}
