"""The multi-index near-duplicate search is exact: every plan equals brute force."""

import numpy as np
import pytest

from protloc.data.phash import _close_pairs, hamming, near_duplicate_pairs, search_plan


def _planted(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64 - 1, (n, 2), dtype=np.uint64)
    for k in range(0, 300, 2):  # close pairs with 1..16 flipped bits, across the 64-bit boundary too
        h[k + 1] = h[k]
        for b in rng.choice(128, 1 + (k // 2) % 16, replace=False):
            h[k + 1, b // 64] ^= np.uint64(1) << np.uint64(b % 64)
    h[400:405] = h[300]  # identical hashes: a star to the first
    h[500] = h[401]
    h[500, 1] ^= np.uint64(1 << 63)  # close to the identical set
    return h


def _brute(h, t, queries=None):
    """The documented semantics, by brute force."""
    n = len(h)
    d = hamming(h[:, None, :], h[None, :, :])
    uniq, first, inv = np.unique(h, axis=0, return_index=True, return_inverse=True)
    out = {(int(first[inv[i]]), i, 0) for i in range(n) if first[inv[i]] != i}
    q = np.ones(n, bool) if queries is None else np.asarray(queries, bool)
    qu = np.zeros(len(uniq), bool)
    qu[inv[q]] = True
    dd = d[np.ix_(first, first)]
    a, b = np.nonzero(np.triu(dd <= t, 1))
    for x, y in zip(a.tolist(), b.tolist()):
        if qu[x] or qu[y]:
            fa, fb = int(first[x]), int(first[y])
            out.add((min(fa, fb), max(fa, fb), int(dd[x, y])))
    return sorted(out)


@pytest.mark.parametrize("plan", [(0, 0), (13, 0), (7, 1), (5, 2)])
def test_every_plan_is_exact(plan):
    h = np.unique(_planted(520), axis=0)
    for t in (3, 12):
        d = hamming(h[:, None, :], h[None, :, :])
        ii, jj = np.nonzero(np.triu(d <= t, 1))
        want = sorted(zip(ii.tolist(), jj.tolist(), d[ii, jj].tolist()))
        if plan[0] * (plan[1] + 1) > t or plan == (0, 0):
            got = _close_pairs(h, t, None, plan)
            assert [tuple(r) for r in got.tolist()] == want


def test_near_duplicate_pairs_semantics_and_queries():
    h = _planted()
    got = [tuple(r) for r in near_duplicate_pairs(h, threshold=12).tolist()]
    assert got == _brute(h, 12)
    assert (0, 1, 1) in got and (300, 400, 0) in got and (300, 500, 1) in got
    q = np.zeros(len(h), bool)
    q[::3] = True
    assert [tuple(r) for r in near_duplicate_pairs(h, threshold=12, queries=q).tolist()] == _brute(h, 12, q)
    assert search_plan(1_000_000, 12) == (7, 1)  # the plan the 1M benchmark measured
