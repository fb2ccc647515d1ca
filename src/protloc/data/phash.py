"""Perceptual hashes and fast near-duplicate search.

An image's hash is the 64-bit DCT hash (pHash) of its protein channel followed by the pHash of
its nucleus channel: 128 bits stored as two ``uint64``. pHash keeps the signs of the lowest
spatial frequencies relative to their median, so it survives re-encoding, resizing, noise and
brightness changes: two exports of the same field of view hash within a few bits of each other
while different fields differ in about half of the bits. (A difference hash, :func:`dhash64`,
is kept for reference; it is less stable on the dark, noisy backgrounds of microscopy.)

Near-duplicate search uses the pigeonhole principle: split the 128 bits into ``t + 1`` bands;
two hashes within Hamming distance ``t`` agree exactly on at least one band. Only hashes that
share a band value are compared, so the search is close to linear in the number of images.
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


def _bands(hashes: np.ndarray, n_bands: int) -> list[np.ndarray]:
    """Split 128-bit hashes into ``n_bands`` integer band values (each < 2**63)."""
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8).reshape(len(hashes), 16), axis=1)
    edges = np.linspace(0, 128, n_bands + 1).astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        w = (1 << np.arange(hi - lo, dtype=np.int64))[::-1]
        out.append(bits[:, lo:hi].astype(np.int64) @ w)
    return out


def near_duplicate_pairs(hashes: np.ndarray, *, threshold: int = DEFAULT_THRESHOLD, queries=None) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``threshold`` bits.

    Every close pair of *distinct* hashes is returned; images that share one identical hash
    are each paired with the first of them only (enough for grouping, and linear in their
    number), and a close pair of such sets is represented by their first images.

    Parameters
    ----------
    hashes : (N, 2) uint64
    threshold : int
        Maximum Hamming distance (of 128 bits).
    queries : (N,) bool, optional
        Only look for close pairs that involve at least one of these hashes (faster).

    Returns
    -------
    (M, 3) int array of ``(i, j, distance)``.

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
    pairs: set[tuple[int, int, int]] = set()
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    members = np.split(order, starts[1:])
    for m in members:  # identical hashes: a star to the first image (linear even for 10k blanks)
        m = np.sort(m)
        pairs.update((int(m[0]), int(b), 0) for b in m[1:])
    # banded search among distinct hashes
    uq = np.ones(len(uniq), bool)
    if queries is not None:
        uq[:] = False
        uq[inv[np.asarray(queries, bool)]] = True
    close: set[tuple[int, int]] = set()
    if len(uniq) > 1 and threshold > 0:
        for band in _bands(uniq, min(max(threshold + 1, 3), 64)):
            o = np.argsort(band, kind="stable")
            s = np.flatnonzero(np.r_[True, np.diff(band[o]) != 0])
            for grp in np.split(o, s[1:]):
                if len(grp) < 2:
                    continue
                rows = grp[uq[grp]]
                for k0 in range(0, len(rows), 512):  # bounded memory for big buckets
                    blk = rows[k0:k0 + 512]
                    d = hamming(uniq[blk][:, None, :], uniq[grp][None, :, :])
                    ii, jj = np.nonzero(d <= threshold)
                    for a, b in zip(blk[ii].tolist(), grp[jj].tolist()):
                        if a != b:
                            close.add((min(a, b), max(a, b)))
    for ua, ub in close:
        a, b = int(np.min(members[ua])), int(np.min(members[ub]))
        pairs.add((min(a, b), max(a, b), int(hamming(uniq[ua], uniq[ub]))))
    if not pairs:
        return np.zeros((0, 3), int)
    return np.array(sorted(pairs), dtype=int)


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
