"""Perceptual hashes and fast near-duplicate search.

An image's hash is the 64-bit DCT hash (pHash) of its protein channel followed by the pHash of
its nucleus channel: 128 bits stored as two ``uint64``. pHash keeps the signs of the lowest
spatial frequencies relative to their median, so it survives re-encoding, resizing, noise and
brightness changes: two exports of the same field of view hash within a few bits of each other
while different fields differ in about half of the bits. (A difference hash, :func:`dhash64`,
is kept for reference; it is less stable on the dark, noisy backgrounds of microscopy.)

Near-duplicate search uses the pigeonhole principle (multi-index hashing): split the 128 bits
into ``m`` bands; two hashes within Hamming distance ``t`` differ in at most ``r`` bits of some
band when ``m (r + 1) > t``. Each band is sorted once per set of ``r`` masked bit positions and
only hashes with equal keys are compared. ``r = 1`` (7 bands of 18 bits for ``t = 12``) keeps
chance candidates ~13x fewer than 13 exact 10-bit bands (1M hashes: ~8 min on one loaded core).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: default Hamming threshold (of 128 bits) for "near duplicate".
DEFAULT_THRESHOLD = 12
_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)


def dhash64(plane: np.ndarray) -> np.uint64:
    """64-bit difference hash of one 2-D uint8 plane (9x8 box-resampled, row gradients).

    Examples
    --------
    >>> ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    >>> int(dhash64(ramp)) == 2**64 - 1   # brightness rises left to right everywhere
    True
    >>> int(dhash64(ramp[:, ::-1]))
    0
    """
    small = np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((9, 8), Image.Resampling.BOX),
                       dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return np.bitwise_or.reduce(_BITS[bits], initial=np.uint64(0))


def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(32)


def phash64(plane: np.ndarray) -> np.uint64:
    """64-bit perceptual hash of one 2-D uint8 plane: 32x32 box resample, 2-D DCT, the 8x8
    lowest frequencies compared with their median (DC term excluded from the median).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = np.asarray(Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8)).resize((64, 64)))
    >>> b = np.clip(a * 0.8 + rng.normal(10, 8, a.shape), 0, 255).astype(np.uint8)  # dimmer, noisy
    >>> bin(int(phash64(a)) ^ int(phash64(b))).count("1") <= 4
    True
    """
    return _bits64(_dct8(plane))


def _dct8(plane: np.ndarray) -> np.ndarray:
    x = np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((32, 32), Image.Resampling.BOX),
                   dtype=np.float64)
    return (_DCT @ x @ _DCT.T)[:8, :8]


def _bits64(d8: np.ndarray) -> np.uint64:
    d = d8.ravel()
    bits = d > np.median(d[1:])
    bits[0] = False
    return np.bitwise_or.reduce(_BITS[bits], initial=np.uint64(0))


_ALT = (-1.0) ** np.arange(8)
#: sign patterns of the 8x8 DCT under vertical / horizontal flips (DCT-II: x[::-1] -> (-1)^u)
_FLIPS = [np.ones((8, 8)), np.outer(_ALT, np.ones(8)), np.outer(np.ones(8), _ALT), np.outer(_ALT, _ALT)]


def image_hashes_d4(img: np.ndarray, *, protein: int = 1, nucleus: int = 2) -> np.ndarray:
    """Hashes of the 8 rotations/flips of an image, (8, 2) uint64; row 0 is :func:`image_hash`.

    Computed from one DCT per channel (flips change coefficient signs, a transpose swaps
    the axes), so it costs about as much as one hash.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> a = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    >>> h = image_hashes_d4(a)
    >>> bool((h[0] == image_hash(a)).all())
    True
    >>> rotated = image_hash(np.ascontiguousarray(np.rot90(a)))
    >>> int(hamming(h, rotated).min())
    0
    """
    out = np.zeros((8, 2), np.uint64)
    for c, ch in enumerate((protein, nucleus)):
        d = _dct8(img[..., ch])
        for k, base in enumerate((d, d.T)):
            for j, sign in enumerate(_FLIPS):
                out[k * 4 + j, c] = _bits64(base * sign)
    return out


def hash_channels(fmt: str, channels) -> tuple[int, int]:
    """Indices (protein, nucleus) of the stacked channels to hash for a format.

    Examples
    --------
    >>> hash_channels("hpa-channels", ("red", "green", "blue", "yellow"))
    (1, 2)
    >>> hash_channels("tiff", (0,))
    (0, 0)
    """
    channels = tuple(channels)
    if fmt == "hpa-channels":
        g = channels.index("green") if "green" in channels else 0
        b = channels.index("blue") if "blue" in channels else g
        return g, b
    n = len(channels) or 3
    return (1, 2) if n >= 3 else (0, n - 1)


def image_hash(img: np.ndarray, *, protein: int = 1, nucleus: int = 2) -> np.ndarray:
    """128-bit perceptual hash of a uint8 (H, W, C) image as two ``uint64``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.integers(0, 255, (64, 64, 3)).astype(np.uint8)
    >>> image_hash(a).shape, image_hash(a).dtype
    ((2,), dtype('uint64'))
    """
    return np.array([phash64(img[..., protein]), phash64(img[..., nucleus])], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between (..., 2) uint64 hashes (broadcasting).

    Examples
    --------
    >>> int(hamming(np.array([0, 0], np.uint64), np.array([7, 1], np.uint64)))
    4
    """
    x = np.bitwise_xor(a, b)
    return np.bitwise_count(x).sum(axis=-1).astype(int) if hasattr(np, "bitwise_count") \
        else np.vectorize(lambda v: bin(int(v)).count("1"))(x).sum(axis=-1)


def _band_values(h: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bits ``lo..hi-1`` (bit 0 = lowest bit of ``h[:, 0]``, 64 = lowest of ``h[:, 1]``) as uint64."""
    w = hi - lo
    mask = np.uint64((1 << w) - 1) if w < 64 else np.uint64(2**64 - 1)
    if hi <= 64:
        v = h[:, 0] >> np.uint64(lo)
    elif lo >= 64:
        v = h[:, 1] >> np.uint64(lo - 64)
    else:
        v = (h[:, 0] >> np.uint64(lo)) | (h[:, 1] << np.uint64(64 - lo))
    return v & mask


def search_plan(n: int, threshold: int) -> tuple[int, int]:
    """``(bands, flips)`` of the multi-index search for ``n`` distinct hashes (cheapest estimate).

    Pigeonhole: split the 128 bits into ``bands`` bands; two hashes within ``threshold`` bits
    differ in at most ``flips`` bits of some band when ``bands * (flips + 1) > threshold``. Each
    band is joined once per set of ``flips`` masked bit positions (sort + equal keys), so wider
    bands give fewer chance candidates but more joins. ``(0, 0)`` means compare all pairs.

    Examples
    --------
    >>> search_plan(20_000, 12), search_plan(1_000_000, 12), search_plan(3, 12)
    ((13, 0), (7, 1), (0, 0))
    """
    from math import comb, log2

    best, plan = n * (n - 1) / 2 * 60.0, (0, 0)  # brute force (numpy broadcasting): ~60 units per pair
    for flips in (0, 1, 2):
        bands = -(-(threshold + 1) // (flips + 1))
        if bands > 64 or bands < 1:
            continue
        width = 128 // bands
        joins = bands * comb(width, flips)
        chance = joins * n * n / 2 / 2.0 ** (width - flips)
        cost = joins * n * (12 + 2 * log2(max(n, 2))) + chance * 6
        if cost < best:
            best, plan = cost, (bands, flips)
    return plan


def _pairs_in_groups(key: np.ndarray, *, max_pairs: int = 4_000_000):
    """Yield (i, j) index arrays of every pair with equal ``key`` (i != j), in bounded blocks."""
    o = np.argsort(key, kind="stable")
    ks = key[o]
    n = len(ks)
    new = np.r_[True, ks[1:] != ks[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], n]
    c = ends[np.cumsum(new) - 1] - np.arange(n) - 1  # partners after each sorted position
    pos = np.flatnonzero(c > 0)
    if not len(pos):
        return
    cnt = c[pos]
    cum = np.cumsum(cnt)
    lo = 0
    while lo < len(pos):  # blocks of about max_pairs candidate pairs
        hi = max(lo + 1, int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + max_pairs, side="right")))
        p, k = pos[lo:hi], cnt[lo:hi]
        left = np.repeat(p, k)
        right = left + 1 + (np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k))
        yield o[left], o[right]
        lo = hi


def _close_pairs(u: np.ndarray, threshold: int, active: np.ndarray | None, plan=None) -> np.ndarray:
    """(M, 3) rows ``(a, b, d)``, a < b, of distinct hashes ``u`` within ``threshold`` bits."""
    from itertools import combinations

    n = len(u)
    bands, flips = plan or search_plan(n, threshold)
    found = []

    def keep(i, j):
        d = hamming(u[i], u[j])
        m = d <= threshold
        if active is not None:
            m &= active[i] | active[j]
        if m.any():
            found.append(np.stack([np.minimum(i[m], j[m]), np.maximum(i[m], j[m]), d[m]], 1))

    if bands == 0:  # few hashes: all pairs, in blocks
        rows = np.arange(n) if active is None else np.flatnonzero(active)
        for s in range(0, len(rows), 512):
            blk = rows[s:s + 512]
            ii, jj = np.nonzero(hamming(u[blk][:, None, :], u[None, :, :]) <= threshold)
            i, j = blk[ii], jj
            sel = i != j
            keep(i[sel], j[sel])
    else:
        edges = np.linspace(0, 128, bands + 1).astype(int)
        for lo, hi in zip(edges[:-1], edges[1:]):
            band = _band_values(u, int(lo), int(hi))
            for masked in combinations(range(hi - lo), flips):
                key = band & ~np.uint64(sum(1 << b for b in masked)) if masked else band
                for i, j in _pairs_in_groups(key):
                    keep(i, j)
    if not found:
        return np.zeros((0, 3), np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def near_duplicate_pairs(hashes: np.ndarray, *, threshold: int = DEFAULT_THRESHOLD, queries=None) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits.

    Every close pair of *distinct* hashes is returned; images that share one identical hash
    are each paired with the first of them only (enough for grouping, and linear in their
    number), and a close pair of such sets is represented by their first images.

    Exact (no missed pair): a multi-index search (:func:`search_plan`) over the distinct hashes,
    in numpy; ~8 min and 0.6 GB for a million hashes on a loaded core, 3.6x faster than the
    old 13-band search at 200k (benchmarks/bench_neardup.py, docs/scale.md).

    Parameters
    ----------
    hashes : (N, 2) uint64
    threshold : int
        Maximum Hamming distance (of 128 bits).
    queries : (N,) bool, optional
        Only look for close pairs that involve at least one of these hashes (faster).

    Returns
    -------
    (M, 3) int array of ``(i, j, distance)``, sorted.

    Examples
    --------
    >>> h = np.array([[0, 0], [1, 0], [2**63, 2**62]], dtype=np.uint64)
    >>> near_duplicate_pairs(h, threshold=2).tolist()
    [[0, 1, 1], [0, 2, 2]]
    """
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, 2)
    n = len(hashes)
    if n < 2:
        return np.zeros((0, 3), int)
    # identical hashes first (also keeps degenerate buckets, e.g. blank images, out of the search)
    uniq, inv = np.unique(hashes, axis=0, return_inverse=True)
    inv = inv.ravel()
    first = np.full(len(uniq), n, np.int64)
    np.minimum.at(first, inv, np.arange(n))
    dup = np.flatnonzero(first[inv] != np.arange(n))  # a star to the first image (linear for 10k blanks)
    parts = [np.stack([first[inv[dup]], dup, np.zeros(len(dup), np.int64)], 1)]
    active = None
    if queries is not None:
        active = np.zeros(len(uniq), bool)
        active[inv[np.asarray(queries, bool)]] = True
    if len(uniq) > 1 and threshold > 0:
        close = _close_pairs(uniq, int(threshold), active)
        a, b = first[close[:, 0]], first[close[:, 1]]
        parts.append(np.stack([np.minimum(a, b), np.maximum(a, b), close[:, 2]], 1))
    pairs = np.concatenate(parts).astype(int)
    if not len(pairs):
        return np.zeros((0, 3), int)
    return pairs[np.lexsort((pairs[:, 2], pairs[:, 1], pairs[:, 0]))]


def groups_from_pairs(n: int, pairs) -> list[list[int]]:
    """Connected components (size >= 2) of the graph on ``n`` nodes with the given edges.

    Examples
    --------
    >>> groups_from_pairs(5, [(0, 1), (1, 3)])
    [[0, 1, 3]]
    """
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = find(int(p[0])), find(int(p[1]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def array_duplicate_groups(images, *, fmt: str = "rgb", channels=("red", "green", "blue"),
                           threshold: int = DEFAULT_THRESHOLD, skip=(), rotations: bool = False) -> list[list[int]]:
    """Near-duplicate groups of already decoded images (N, H, W, C) uint8, e.g. a cache memmap.

    ``skip``: indices to leave out (unreadable images cached as black).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> imgs = rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    >>> imgs[3] = imgs[1]
    >>> array_duplicate_groups(imgs)
    [[1, 3]]
    """
    p, n = hash_channels(fmt, channels)
    skip = set(int(i) for i in skip)
    keep = [i for i in range(len(images)) if i not in skip]
    if len(keep) < 2:
        return []
    fn, search = (image_hashes_d4, near_duplicate_pairs_d4) if rotations else (image_hash, near_duplicate_pairs)
    h = np.stack([fn(np.asarray(images[i]), protein=p, nucleus=n) for i in keep])
    pairs = search(h, threshold=threshold)
    return groups_from_pairs(len(images), [(keep[a], keep[b]) for a, b, _ in pairs])


def near_duplicate_pairs_d4(hashes8: np.ndarray, *, threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """Like :func:`near_duplicate_pairs` but also matching rotated/flipped copies.

    ``hashes8``: (N, 8, 2) from :func:`image_hashes_d4`. The search runs over all 8N hashes
    (several times slower than the plain search). Returns ``(i, j, distance)`` rows, ``i < j``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.integers(0, 255, (3, 64, 64, 3)).astype(np.uint8)
    >>> a[2] = a[0][:, ::-1]                      # a mirrored copy
    >>> near_duplicate_pairs_d4(np.stack([image_hashes_d4(x) for x in a]))[:, :2].tolist()
    [[0, 2]]
    """
    hashes8 = np.asarray(hashes8, dtype=np.uint64)
    n = len(hashes8)
    identity = np.zeros((n, 8), bool)
    identity[:, 0] = True  # compare each image as it is with every rotation/flip of the others
    pairs = near_duplicate_pairs(hashes8.reshape(-1, 2), threshold=threshold, queries=identity.ravel())
    best: dict[tuple[int, int], int] = {}
    for a, b, d in pairs.tolist():
        oa, ob = a // 8, b // 8
        if oa != ob:
            key = (min(oa, ob), max(oa, ob))
            best[key] = min(d, best.get(key, 999))
    # (identical-hash sets are linked through their first member only: enough for grouping)
    if not best or not n:
        return np.zeros((0, 3), int)
    return np.array(sorted((a, b, d) for (a, b), d in best.items()), dtype=int)
