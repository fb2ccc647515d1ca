"""Loss values on hand-made inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protloc.core.errors import InputError
from protloc.training.losses import (auto_pos_weight, bce_loss, focal_loss, make_loss, parse_loss_spec,
                            soft_f1_loss)


def test_bce_value():
    assert float(bce_loss(torch.zeros(3, 4), torch.ones(3, 4))) == pytest.approx(math.log(2), abs=1e-6)
    pw = torch.tensor([3.0, 1.0])
    v = bce_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), pos_weight=pw)
    assert float(v) == pytest.approx((3 * math.log(2) + math.log(2)) / 2, abs=1e-6)


def test_focal_reduces_to_bce_at_gamma_zero_and_downweights_easy():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 10, generator=g), (torch.rand(16, 10, generator=g) > 0.7).float()
    assert float(focal_loss(x, y, gamma=0.0)) == pytest.approx(float(bce_loss(x, y)), rel=1e-6)
    assert float(focal_loss(x, y, gamma=2.0)) < float(bce_loss(x, y))
    easy = focal_loss(torch.tensor([[6.0]]), torch.tensor([[1.0]]), gamma=2.0)
    assert float(easy) < 1e-5


def test_soft_f1_values_and_finite_gradient():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(soft_f1_loss(torch.tensor([[30.0, -30.0], [-30.0, 30.0]]), y)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_f1_loss(torch.zeros(2, 2), y)) == pytest.approx(0.5)  # p=.5: tp=.5, fp=.5, fn=.5 -> f1=.5
    # a class without positives in the batch and confident negatives: no NaN, finite gradients
    x = torch.full((4, 3), -20.0, requires_grad=True)
    loss = soft_f1_loss(x, torch.zeros(4, 3))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_asl_and_sums():
    x, y = torch.randn(8, 10), (torch.rand(8, 10) > 0.8).float()
    asl = make_loss("asl")(x, y)
    assert torch.isfinite(asl) and float(asl) > 0
    combo = make_loss("bce+0.5*softf1")(x, y)
    assert float(combo) == pytest.approx(float(bce_loss(x, y) + 0.5 * soft_f1_loss(x, y)), rel=1e-5)
    assert parse_loss_spec("2*focal+asl") == [(2.0, "focal"), (1.0, "asl")]
    assert str(make_loss("bce+0.5*softf1").spec) == "bce+0.5*softf1"


def test_pos_weight_auto():
    y = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 0]])
    assert auto_pos_weight(y).tolist() == [3.0, 1.0, 10.0]
    loss = make_loss("bce", y_train=y, pos_weight="auto")
    assert loss.terms[0].pos_weight.tolist() == [3.0, 1.0, 10.0]


@pytest.mark.parametrize("spec", ["mse", "bce+", "x*bce", ""])
def test_bad_loss_spec_message(spec):
    with pytest.raises(InputError, match=r"--loss: expected terms from bce, focal, asl, softf1.*Fix: e\.g\."):
        make_loss(spec)
