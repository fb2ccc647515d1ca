"""Batch augmentation: D4 group properties, determinism, shapes and dtypes."""

from __future__ import annotations

import itertools

import pytest
import torch

from protloc.core.tta import d4_inverse
from protloc.training.augment import BatchAugment, d4, random_affine, random_jitter
from protloc.core.errors import InputError


def _x(seed=0, n=3, c=3, s=8):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_d4_is_the_dihedral_group():
    x = _x()
    views = [d4(x, k) for k in range(8)]
    assert torch.equal(views[0], x)
    for a, b in itertools.combinations(range(8), 2):  # 8 distinct elements
        assert not torch.equal(views[a], views[b])
    for k in range(8):
        assert torch.equal(d4(d4(x, k), d4_inverse(k)), x)
        # closure: composing two elements gives one of the eight
        for j in range(8):
            y = d4(d4(x, k), j)
            assert any(torch.equal(y, v) for v in views)
    assert torch.equal(d4(d4(x, 1), 1), d4(x, 2)) and torch.equal(d4(d4(x, 4), 4), x)
    with pytest.raises(ValueError):
        d4(x, 8)


def test_deterministic_given_generator_and_shape_dtype_preserved():
    aug = BatchAugment("d4,rotate,crop,jitter")
    x = _x(n=6)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1
    assert torch.equal(BatchAugment("none")(x, torch.Generator()), x)


def test_d4_augment_only_permutes_pixels():
    x = _x(n=5)
    y = BatchAugment("d4")(x, torch.Generator().manual_seed(1))
    for i in range(5):
        assert any(torch.equal(y[i], d4(x[i], k)) for k in range(8))


def test_affine_identity_and_jitter_range():
    x = _x()
    same = random_affine(x, torch.Generator().manual_seed(0), degrees=0.0, scale=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    j = random_jitter(x, torch.Generator().manual_seed(0), brightness=0.0, contrast=0.0, gamma=0.0)
    torch.testing.assert_close(j, x, atol=1e-5, rtol=0)
    j = random_jitter(x * 3 - 1, torch.Generator().manual_seed(0))
    assert j.min() >= 0 and j.max() <= 1


def test_bad_spec_message():
    with pytest.raises(InputError, match=r"--augment: expected a comma list of d4, flips, rotate, crop, jitter"):
        BatchAugment("d4,mixup")
