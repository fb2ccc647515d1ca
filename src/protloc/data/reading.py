"""How a run reads its training images, decided once from the files (``protloc train`` and
``protloc cache`` share it, so a prebuilt cache is the one training uses).

Examples
--------
>>> reading, names, notes = training_reading(table)  # doctest: +SKIP
>>> reading.intensity.rule, reading.pixel_size  # doctest: +SKIP
('scale', None)
"""

from __future__ import annotations

import numpy as np

__all__ = ["training_reading", "nucleus_scale"]


def training_reading(table, *, intensity: str = "auto", z: str = "max", pixel_size: float | None = None,
                     sample: int = 32):
    """How a run trained on ``table`` reads its images: ``(Reading, channel names or None, notes)``.

    ``intensity`` and ``z`` are ``protloc train``'s options; ``--intensity auto`` is decided here,
    once, from the training files: ``scale`` when they are all 8-bit, else ``percentile``, and the
    run records the decided rule (so every image it reads later, of any bit depth, is scaled as the
    training images were). The axes of undeclared TIFFs come from the table (``--axes``). The
    training images' pixel size is ``pixel_size`` (``--pixel-size``) when given, else
    the median of what the headers of up to ``sample`` files declare (unknown when none does);
    ``field`` is their median side in pixels at that pixel size. TIFF channel names (OME) are
    the first file's, for the run's channels.
    """
    from protloc.core.pixels import Intensity
    from protloc.core.preprocessing import Reading
    from protloc.io.images import ImageReadError, read_meta

    rows = np.linspace(0, len(table) - 1, min(sample, len(table))).round().astype(int)
    sides, sizes, names, dtypes = [], [], None, set()
    for i in np.unique(rows):
        found = []
        for f in table.files(int(i)):
            try:
                found.append(read_meta(f))
            except (ImageReadError, OSError):
                continue
        if not found:
            continue
        dtypes.update(m.dtype for _, m in found)
        (h, w), meta = found[0]
        sides.append(float(np.sqrt(h * w)))
        sizes.append(meta.um_per_px)
        if names is None and meta.channel_names and table.fmt == "tiff":
            chans = list(table.channels)
            names = tuple(meta.channel_names[c] for c in chans) if max(chans) < len(meta.channel_names) else None
    notes = []
    known = [v for v in sizes if v]
    if pixel_size:
        px, source = float(pixel_size), "--pixel-size"
    elif known:
        px, source = float(np.median(known)), "file metadata"
        if len(known) < len(sizes):
            notes.append(f"{len(sizes) - len(known)} of {len(sizes)} sampled training files declare no pixel size")
    else:
        px, source = None, None
        notes.append("the training images declare no pixel size (pass --pixel-size to record one): new images "
                     "are resized by pixel count")
    field = None
    if sides:
        scaled = [s * (v / px) if (px and v and not pixel_size) else s for s, v in zip(sides, sizes)]
        field = int(round(float(np.median(scaled))))
    if px:
        notes.append(f"training pixel size {px:g} µm ({source}), typical image {field} px")
    rule = intensity
    if rule == "auto":
        rule = "scale" if dtypes <= {"uint8"} else "percentile"
        notes.append(f"--intensity auto: {rule} (the training images are "
                     f"{'8-bit' if rule == 'scale' else ', '.join(sorted(dtypes))})")
    reading = Reading(Intensity(rule), z=z, axes=table.axes, pixel_size=px, field=field if px else None)
    return reading, names, notes


def nucleus_scale(table, *, size: int = 128, reading=None, pixel_size: float | None = None,
                  sample: int = 48) -> float | None:
    """How large the training images' nuclei are in pixels when the images are read at ``size``:
    the median over up to ``sample`` evenly spaced images of each image's median nucleus area
    (:func:`protloc.core.pixels.nucleus_areas` on the nucleus channel; touching nuclei count as
    one, hence medians). ``None`` when the images have no separate nucleus channel or no nuclei
    were found. Unreadable images are left out (training reports them).

    Examples
    --------
    >>> nucleus_scale(table, size=128)  # doctest: +SKIP
    86.0
    """
    from protloc.core.errors import InputError
    from protloc.core.pixels import nucleus_areas
    from protloc.data.phash import hash_channels
    from protloc.io.images import read_image

    protein, nucleus = hash_channels(table.fmt, table.channels)
    if nucleus == protein or not len(table):
        return None
    rows = np.unique(np.linspace(0, len(table) - 1, min(sample, len(table))).round().astype(int))
    medians = []
    for i in rows:
        try:
            img = read_image(table.images, table.ids[int(i)], fmt=table.fmt, channels=table.channels, size=size,
                             reading=reading, pixel_size=pixel_size)
        except (InputError, OSError):
            continue
        areas = nucleus_areas(img[..., min(nucleus, img.shape[2] - 1)])
        if areas.size:
            medians.append(float(np.median(areas)))
    return float(np.median(medians)) if medians else None
