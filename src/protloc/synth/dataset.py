"""Realistic synthetic HPA-like data: ``protloc synth`` and its Python API.

The images imitate the reference task (Human Protein Atlas fields shrunk to 128x128 RGB: red
microtubules, green the protein of interest, blue nuclei; optionally the yellow ER channel of
the HPA-2018 four-file layout), so every stage of protloc can be developed and tested without
the real data. Label sets are drawn from the empirical label-set distribution of the reference
training set (:data:`LABEL_SET_COUNTS`), so class frequencies *and* co-occurrence are real.
Rendering lives in :mod:`protloc.synth.patterns`; image styles (labs, cell lines, microscopes,
pattern renderings; ``--style``) in :mod:`protloc.synth.styles`.

Each image is a pure function of ``(seed, index)``: the same seed gives byte-identical files
whatever ``workers`` is.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from protloc.core.errors import InputError

N_CLASSES = 10
#: Every label set of the reference training set (15,389 images, 122 distinct sets) with its
#: count, computed once from ghent_train_labels.csv (embedded: no data needed at run time).
LABEL_SET_COUNTS = {
    "4": 2218, "4 6": 1401, "6": 1272, "0": 973, "7": 761, "3": 694, "2 4": 682, "9": 654,
    "1": 642, "2": 593, "4 7": 504, "5": 416, "3 4": 398, "0 4": 347, "8": 315, "1 4": 306,
    "6 7": 281, "4 8": 258, "4 5": 218, "2 6": 201, "1 6": 201, "2 4 6": 154, "6 9": 149,
    "4 6 7": 118, "3 6": 104, "3 4 6": 92, "1 4 6": 90, "5 6": 84, "6 8": 81, "0 2": 77, "0 6": 65,
    "4 6 8": 59, "7 9": 57, "4 5 6": 55, "2 7": 45, "4 9": 42, "2 3": 41, "2 3 4": 40, "0 4 6": 35,
    "3 4 7": 33, "1 3": 31, "1 7": 30, "0 9": 26, "0 2 4": 25, "3 7": 23, "1 4 7": 22, "7 8": 19,
    "2 4 7": 19, "0 5": 16, "0 1": 16, "3 5": 15, "2 4 6 7": 15, "3 9": 14, "0 7": 14, "1 3 4": 13,
    "1 2": 13, "1 2 6": 12, "0 2 7": 12, "4 7 8": 12, "6 7 9": 12, "3 4 6 7": 12, "1 2 4": 12,
    "0 4 7": 11, "2 9": 11, "2 8": 11, "2 6 7": 11, "0 8": 10, "5 7": 10, "6 7 8": 8, "0 1 4": 8,
    "2 4 9": 7, "3 8": 7, "5 9": 7, "8 9": 7, "0 4 5": 6, "1 6 7": 6, "3 4 5": 6, "2 4 8": 6,
    "2 3 4 6": 6, "3 6 7": 6, "1 4 8": 6, "4 5 8": 5, "1 8": 5, "0 2 6": 5, "0 6 7": 5, "0 4 8": 5,
    "3 6 9": 4, "2 3 6": 4, "3 4 8": 4, "3 7 9": 3, "2 6 9": 3, "0 1 6": 3, "5 6 7": 3,
    "2 4 7 8": 3, "2 3 9": 3, "2 4 5": 3, "1 5": 3, "2 7 8": 3, "0 3": 2, "1 6 8": 2, "4 5 7": 2,
    "4 7 9": 2, "2 3 4 7": 2, "4 6 9": 2, "1 4 5": 2, "1 2 7": 2, "1 4 5 6": 2, "5 8": 2,
    "0 7 8": 2, "2 6 8": 2, "3 4 6 8": 1, "5 6 9": 1, "1 3 6": 1, "5 6 7 9": 1, "2 4 6 8": 1,
    "1 9": 1, "0 5 6": 1, "7 8 9": 1, "5 6 8": 1, "1 4 6 7": 1, "0 3 4": 1, "0 2 4 6": 1,
}
#: Class frequencies (classes 0..9) and labels-per-image counts of the reference training set.
REFERENCE_CLASS_COUNTS = (1666, 1430, 2025, 1560, 7273, 859, 4574, 2071, 836, 1007)
REFERENCE_LABELS_PER_IMAGE = {1: 8538, 2: 5835, 3: 971, 4: 45}
REFERENCE_N_IMAGES = 15389
DIFFICULTY_LEVELS = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
FORMATS = ("rgb", "hpa-channels")
#: below this many images render in-process: a pool saves little there, and tiny datasets made
#: inside other programs' tests (which may hold threads, e.g. torch) should not fork.
MIN_PARALLEL = 200

_SETS = [tuple(int(t) for t in k.split()) for k in LABEL_SET_COUNTS]
_PROBS = np.array(list(LABEL_SET_COUNTS.values()), dtype=np.float64)
_PROBS /= _PROBS.sum()


def parse_difficulty(value) -> float:
    """A difficulty in [0, 1] from a number or 'easy' (0.2), 'medium' (0.5), 'hard' (0.8).

    Examples
    --------
    >>> parse_difficulty("hard"), parse_difficulty("0.3"), parse_difficulty(1)
    (0.8, 0.3, 1.0)
    """
    if isinstance(value, str) and value.strip().lower() in DIFFICULTY_LEVELS:
        return DIFFICULTY_LEVELS[value.strip().lower()]
    try:
        d = float(value)
    except (TypeError, ValueError):
        d = float("nan")
    if not 0.0 <= d <= 1.0:
        raise InputError("--difficulty", expected="a number in 0..1 or easy|medium|hard",
                         got=repr(value), fix="e.g. --difficulty 0.5 or --difficulty hard")
    return d


def sample_label_sets(n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Draw ``n`` label sets from the reference training set's label-set distribution.

    Examples
    --------
    >>> sets = sample_label_sets(3, np.random.default_rng(0))
    >>> all(1 <= len(s) <= 4 and list(s) == sorted(s) for s in sets)
    True
    """
    idx = rng.choice(len(_SETS), size=int(n), p=_PROBS)
    return [_SETS[i] for i in idx]


def add_label_noise(label_sets, p: float, rng: np.random.Generator) -> tuple[list[tuple[int, ...]], int]:
    """Corrupt each label set with probability ``p`` by one edit (add, drop or swap a class).

    Sets keep 1-4 labels and stay sorted. Returns ``(noisy_sets, n_changed)``.

    Examples
    --------
    >>> noisy, n = add_label_noise([(4,), (2, 4)], 1.0, np.random.default_rng(0))
    >>> n, noisy != [(4,), (2, 4)]
    (2, True)
    """
    out, changed = [], 0
    flips = rng.uniform(0, 1, len(label_sets)) < p
    for labels, flip in zip(label_sets, flips):
        s = set(labels)
        if flip:
            ops = ["swap"] + (["add"] if len(s) < 4 else []) + (["drop"] if len(s) > 1 else [])
            op = ops[int(rng.integers(len(ops)))]
            absent = [c for c in range(N_CLASSES) if c not in s]
            if op in ("drop", "swap"):
                s.discard(sorted(s)[int(rng.integers(len(s)))])
            if op in ("add", "swap"):
                s.add(absent[int(rng.integers(len(absent)))])
            changed += 1
        out.append(tuple(sorted(s)))
    return out, changed


def synth_image(labels, *, size: int = 128, rng: np.random.Generator, difficulty: float = 0.5,
                cell_type: int | None = None, channels: int = 3, style="default") -> np.ndarray:
    """Render one synthetic HPA-like field of view.

    Parameters
    ----------
    labels : sequence of int
        Class ids 0-9 (ghent10) present in the green channel.
    size : int
        Output height and width in pixels (patterns are designed at 128 and scale with size).
    rng : numpy.random.Generator
        Source of all randomness; the image is a pure function of its state.
    difficulty : float
        0..1: scales noise, dimness, blur, expression heterogeneity and pattern ambiguity.
    cell_type : int, optional
        Index into :data:`protloc.synth.patterns.CELL_TYPES` (default: random).
    channels : {3, 4}
        3: red microtubules, green protein, blue nucleus; 4: plus yellow ER. The first three
        planes are identical for the same rng state.
    style : str or Style
        A name from :data:`protloc.synth.styles.STYLES`, ``'random'`` (a style drawn per image)
        or a :class:`protloc.synth.styles.Style`. ``'default'`` is protloc's original look.

    Returns
    -------
    numpy.ndarray
        uint8 (size, size, channels).

    Examples
    --------
    >>> img = synth_image([2, 4], size=64, rng=np.random.default_rng(0))
    >>> img.shape, img.dtype
    ((64, 64, 3), dtype('uint8'))
    >>> synth_image([2, 4], size=64, rng=np.random.default_rng(0), style="widefield-20x").shape
    (64, 64, 3)
    """
    from protloc.synth.patterns import CELL_TYPES, render
    from protloc.synth.styles import get_style

    st = get_style(style)
    if isinstance(st, tuple):
        raise InputError("style", expected="one style per image", got=repr(style),
                         fix="pass a single name; mixes are for make_dataset")

    labels = sorted({int(k) for k in labels})
    if not labels or labels[0] < 0 or labels[-1] >= N_CLASSES:
        raise InputError("labels", expected=f"1 or more class ids 0-{N_CLASSES - 1}",
                         got=repr(labels), fix="pass e.g. [4] or [2, 4]")
    if channels not in (3, 4):
        raise InputError("channels", expected="3 or 4", got=repr(channels), fix="use 3 (RGB) or 4")
    if not 16 <= int(size) <= 2048:
        raise InputError("--size", expected="16..2048 pixels", got=repr(size), fix="e.g. --size 128")
    if cell_type is not None and not 0 <= int(cell_type) < len(CELL_TYPES):
        raise InputError("cell_type", expected=f"0..{len(CELL_TYPES) - 1} or None",
                         got=repr(cell_type), fix="leave it out for a random cell line")
    return render(labels, size=int(size), rng=rng, difficulty=parse_difficulty(difficulty),
                  cell_type=cell_type, channels=channels, style=st)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image number ``index`` of a dataset made with ``seed``."""
    return np.random.default_rng([int(seed), 2, int(index)])


# --------------------------------------------------------------------------- datasets
def _write_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _render_job(job) -> float:
    """Render and write one image; return the CPU seconds it took (for the benchmark)."""
    t0 = time.process_time()
    index, folder, iid, labels, size, fmt, difficulty, seed, style = job
    channels = 4 if fmt == "hpa-channels" else 3
    img = synth_image(labels, size=size, rng=image_rng(seed, index), difficulty=difficulty, channels=channels,
                      style=style)
    folder = Path(folder)
    if fmt == "rgb":
        _write_png(folder / f"{iid}.png", img)
    else:
        for c, name in enumerate(("red", "green", "blue", "yellow")):
            _write_png(folder / f"{iid}_{name}.png", np.ascontiguousarray(img[..., c]))
    return time.process_time() - t0


def _check_args(out, n_train, n_test, size, fmt, label_noise, workers, overwrite):
    for name, v, lo in (("--n-train", n_train, 1), ("--n-test", n_test, 0)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(name, expected=f"an integer >= {lo}", got=repr(v),
                             fix=f"e.g. {name} 100")
    if fmt not in FORMATS:
        raise InputError("--format", expected="rgb or hpa-channels", got=repr(fmt),
                         fix="pick one of the two layouts")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 2048:
        raise InputError("--size", expected="an integer 16..2048", got=repr(size),
                         fix="e.g. --size 128")
    try:
        noise_ok = 0.0 <= float(label_noise) <= 0.5
    except (TypeError, ValueError):
        noise_ok = False
    if not noise_ok:
        raise InputError("--label-noise", expected="a probability 0..0.5", got=repr(label_noise),
                         fix="e.g. --label-noise 0.02 (0 for clean labels)")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise InputError("--workers", expected="an integer >= 1", got=repr(workers),
                         fix="e.g. --workers 2")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out}", expected="a folder", got="a file",
                         fix="choose another OUT path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out}", expected="a new or empty folder",
                         got="a non-empty folder",
                         fix="pass --overwrite (overwrite=True) or choose another OUT")


def _style_plan(style, n: int, seed: int):
    """(style per image, name per image or None, summary name) for ``style`` (name, list, Style)."""
    from protloc.synth.styles import Style, get_style

    if isinstance(style, (list, tuple)) and not isinstance(style, Style):
        style = ",".join(s.name if isinstance(s, Style) else str(s) for s in style)
    st = get_style(style)
    if not isinstance(st, tuple):
        return [st] * n, None, st if isinstance(st, str) else st.name
    if len(st) == 1:
        return [st[0]] * n, None, st[0] if isinstance(st[0], str) else st[0].name
    # a mix: every image gets one of the styles, uniformly, from its own generator (so the ids,
    # labels and the label noise are those of any single-style dataset with the same seed)
    pick = np.random.default_rng([int(seed), 3]).integers(0, len(st), n)
    names = [s if isinstance(s, str) else s.name for s in st]
    return [st[i] for i in pick], [names[i] for i in pick], ",".join(names)


def make_dataset(out, *, n_train: int, n_test: int, seed: int = 0, size: int = 128, fmt: str = "rgb",
                 difficulty: float | str = 0.5, label_noise: float = 0.02, workers: int | None = None,
                 progress: bool = True, overwrite: bool = False, style="default") -> dict:
    """Write a synthetic dataset in the reference task's layout and return a summary.

    Layout: ``out/train/<id>.png``, ``out/test/<id>.png`` (``fmt="hpa-channels"``:
    ``<id>_red|green|blue|yellow.png``), ``out/train.csv`` (``Image,Label``, with label
    noise), ``out/train_clean_labels.csv`` (the labels the images were drawn from),
    ``out/test.csv`` (``Image``), ``out/test_labels.csv`` (truth) and ``out/synth.json``; a mix
    of styles also writes ``out/styles.csv`` (``Image,Style``).
    CSVs are written last and atomically, so an interrupted run leaves no CSV behind.

    Parameters
    ----------
    out : path
        Output folder; must be new or empty unless ``overwrite``.
    n_train, n_test : int
        Number of training (>= 1) and test (>= 0) images.
    seed : int
        Everything (ids, labels, images) is a function of the seed alone.
    size : int
        Image side in pixels (128 like the reference; 32/64 for quick tests).
    fmt : {'rgb', 'hpa-channels'}
    difficulty : float or {'easy', 'medium', 'hard'}
    label_noise : float
        Probability that a training label set gets one wrong edit (add/drop/swap a class).
    workers : int, optional
        Processes (default min(2, cpu count)); output does not depend on it.
    progress : bool
        Show a progress bar.
    overwrite : bool
        Allow a non-empty ``out``; an earlier synth output there is replaced.
    style : str, Style or list
        Image style (:mod:`protloc.synth.styles`): a name, ``'random'`` (each image draws its own
        style), or several names (a list or ``'a,b'``): each image gets one of them.

    Examples
    --------
    >>> import tempfile
    >>> s = make_dataset(tempfile.mkdtemp(), n_train=4, n_test=2, size=32, progress=False)
    >>> s["n_train"], s["n_test"], sorted(s["files"])[:2]
    (4, 2, ['synth.json', 'test.csv'])
    """
    import pandas as pd

    from protloc.core.atomic import write_csv, write_json
    from protloc.core.progress import progress_bar

    difficulty = parse_difficulty(difficulty)
    _check_args(out, n_train, n_test, size, fmt, label_noise, workers, overwrite)
    per_image, style_names_, style_name = _style_plan(style, n_train + n_test, seed)
    out = Path(out)
    t0 = time.perf_counter()
    if overwrite and (out / "synth.json").is_file():  # replace our own earlier output only
        for sub in ("train", "test"):
            shutil.rmtree(out / sub, ignore_errors=True)
    workers = int(workers or min(2, os.cpu_count() or 1))
    n = n_train + n_test
    plan = np.random.default_rng([int(seed), 1])
    ids = plan.choice(max(40000, 3 * n), size=n, replace=False) + 1
    clean = sample_label_sets(n, plan)
    noisy_train, n_noisy = add_label_noise(clean[:n_train], float(label_noise), plan)
    for sub in ("train", "test"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(out / ("train" if i < n_train else "test")), int(ids[i]), clean[i], int(size), fmt,
             difficulty, int(seed), per_image[i]) for i in range(n)]
    cpu = 0.0
    ex = None
    if workers > 1 and n >= MIN_PARALLEL:
        ex = ProcessPoolExecutor(max_workers=workers)
        list(ex.map(abs, range(workers)))  # start the workers before the progress bar's thread
    try:
        with progress_bar(total=n, description=f"synth {n} images", enable=progress) as advance:
            if ex is None:
                for job in jobs:
                    cpu += _render_job(job)
                    advance(1)
            else:
                chunk = max(1, min(32, n // (workers * 8)))
                for job_cpu in ex.map(_render_job, jobs, chunksize=chunk):
                    cpu += job_cpu
                    advance(1)
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def table(iids, sets=None):
        cols = {"Image": iids} if sets is None else {"Image": iids, "Label": [" ".join(map(str, s)) for s in sets]}
        return pd.DataFrame(cols)

    tr_ids, te_ids = [int(i) for i in ids[:n_train]], [int(i) for i in ids[n_train:]]
    write_csv(out / "train_clean_labels.csv", table(tr_ids, clean[:n_train]))
    write_csv(out / "test_labels.csv", table(te_ids, clean[n_train:]))
    write_csv(out / "test.csv", table(te_ids))
    if style_names_ is not None:
        write_csv(out / "styles.csv", pd.DataFrame({"Image": [int(i) for i in ids], "Style": style_names_}))
    else:
        (out / "styles.csv").unlink(missing_ok=True)
    write_csv(out / "train.csv", table(tr_ids, noisy_train))  # last: its presence means "complete"
    seconds = time.perf_counter() - t0
    counts = np.zeros(N_CLASSES, int)
    for s in noisy_train:
        counts[list(s)] += 1
    summary = {
        "out": str(out), "n_train": int(n_train), "n_test": int(n_test), "seed": int(seed), "size": int(size),
        "format": fmt, "difficulty": difficulty, "label_noise": float(label_noise), "style": style_name,
        "n_noisy_train_labels": int(n_noisy), "workers": workers, "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1) if seconds > 0 else None,
        "render_cpu_seconds": round(cpu, 3),
        "train_class_counts": counts.tolist(),
        "files": ["train.csv", "train_clean_labels.csv", "test.csv", "test_labels.csv", "synth.json",
                  "train/", "test/"] + (["styles.csv"] if style_names_ is not None else []),
    }
    if style_names_ is not None:
        summary["style_counts"] = {k: style_names_.count(k) for k in dict.fromkeys(style_names_)}
    elif not isinstance(per_image[0], str) and n:
        summary["style_params"] = per_image[0].describe()
    write_json(out / "synth.json", summary)
    return summary


# --------------------------------------------------------------------------- gallery
def _grid(rows: int, cols: int, *, left: float, top: float = 0.45, cell: float = 1.3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_w, fig_h = cell * cols + left + 0.05, cell * rows * 1.05 + top + 0.05
    fig, axes = plt.subplots(rows, cols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=left / fig_w, right=0.995, bottom=0.005, top=1 - top / fig_h,
                        wspace=0.03, hspace=0.05 * 1.05 + 0.05)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    return fig, axes


def _save_figure(fig, path) -> Path:
    """Save a matplotlib figure as a small palette PNG, atomically."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from protloc.core.atomic import atomic_path

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:  # a 256-colour palette keeps the file small (the images are noisy)
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    path = Path(path)
    with atomic_path(path) as tmp:
        small.save(tmp, format="PNG", optimize=True)
        os.chmod(tmp, 0o644)
    return path


def save_gallery(path, *, size: int = 128, seed: int = 0, difficulty: float | str = 0.5,
                 n_per_class: int = 6, style="default") -> Path:
    """Save a PNG showing ``n_per_class`` single-label images per class and one 4-channel image.

    Rows are classes 0-9 (composite RGB; in the default style, cell lines cycle across columns);
    the last row shows one image's composite and its red, green, blue and yellow channels.
    """
    from protloc.core.schema import GHENT10
    from protloc.synth.patterns import CELL_TYPES
    from protloc.synth.styles import get_style

    d = parse_difficulty(difficulty)
    st = get_style(style)
    name = st if isinstance(st, str) else st.name
    fixed_lines = name == "default"  # other styles choose their own cell lines
    cols = max(int(n_per_class), 5)
    fig, axes = _grid(N_CLASSES + 1, cols, left=1.85)
    for k in range(N_CLASSES):
        for j in range(min(cols, n_per_class)):
            img = synth_image([k], size=size, rng=image_rng(seed, 1000 * k + j), difficulty=d, style=st,
                              cell_type=(j + k) % len(CELL_TYPES) if fixed_lines else None)
            axes[k, j].imshow(img, interpolation="nearest")
        axes[k, 0].set_ylabel(f"{k} {GHENT10[k]}", fontsize=7, rotation=0, ha="right", va="center")
    img4 = synth_image([0, 4], size=size, rng=image_rng(seed, 99999), difficulty=d, channels=4,
                       cell_type=3 if fixed_lines else None, style=st)
    axes[-1, 0].imshow(img4[..., :3], interpolation="nearest")
    axes[-1, 0].set_ylabel("4-channel image\n0 Mitochondria\n+ 4 Nucleoplasm", fontsize=7, rotation=0,
                           ha="right", va="center")
    for c, cname in enumerate(("red: microtubules", "green: protein", "blue: nucleus", "yellow: ER")):
        axes[-1, c + 1].imshow(img4[..., c], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[-1, c + 1].set_title(cname, fontsize=7, pad=2)
    what = "" if fixed_lines else f", style {name}"
    fig.suptitle(f"protloc synth: single-label examples per class ({size}px, difficulty {d:g}{what}, seed {seed})",
                 fontsize=9, y=1 - 0.12 / fig.get_figheight(), va="top")
    return _save_figure(fig, path)


def save_style_gallery(path, *, styles=None, size: int = 128, seed: int = 0, difficulty: float | str = 0.5,
                       n_per_style: int = 2) -> Path:
    """Save a PNG with every class (rows) in every style (``n_per_style`` columns per style).

    ``styles``: names (default: every named style and ``random``). Images are single-label and
    drawn with the same seeds in every style, so a column pair differs only by its style.
    """
    from protloc.core.schema import GHENT10
    from protloc.synth.styles import get_style, style_names

    d = parse_difficulty(difficulty)
    names = list(styles) if styles else style_names()
    resolved = [get_style(n) for n in names]
    n_per = max(int(n_per_style), 1)
    fig, axes = _grid(N_CLASSES, n_per * len(names), left=1.5, top=0.75)
    for si, (name, st) in enumerate(zip(names, resolved)):
        for k in range(N_CLASSES):
            for j in range(n_per):
                img = synth_image([k], size=size, rng=image_rng(seed, 1000 * k + j), difficulty=d, style=st)
                axes[k, si * n_per + j].imshow(img, interpolation="nearest")
        axes[0, si * n_per].set_title(name, fontsize=9, loc="left", pad=3)
    for k in range(N_CLASSES):
        axes[k, 0].set_ylabel(f"{k} {GHENT10[k]}", fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"protloc synth --style: every class in every style ({size}px, difficulty {d:g}, seed {seed}; "
                 f"single-label images, RGB composite)", fontsize=10, y=1 - 0.1 / fig.get_figheight(), va="top")
    return _save_figure(fig, path)
