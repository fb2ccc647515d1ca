"""Knowledge where it belongs: one TTA (core.tta), the LightningModule hands out its weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protloc.core import tta
from protloc.core.config import TrainConfig
from protloc.core.errors import InputError


def test_one_d4_for_numpy_and_torch():
    from protloc.training import augment

    assert augment.d4 is tta.d4  # training augments with the TTA group itself
    x = np.random.default_rng(0).random((2, 3, 5, 5)).astype(np.float32)
    t = torch.from_numpy(x.copy())
    for k in range(8):
        np.testing.assert_array_equal(tta.d4(x, k), tta.d4(t, k).numpy())
        np.testing.assert_array_equal(tta.d4(tta.d4(x, k), tta.d4_inverse(k)), x)
    for mode in tta.TTA_MODES:
        assert [v.shape for v in tta.tta_views(t, mode)] == [t.shape] * {"none": 1, "flip": 2, "d4": 8}[mode]
    with pytest.raises(ValueError):
        tta.d4(x, 8)


@pytest.fixture(scope="module")
def tiny_net(one_torch_thread):
    from protloc.models.network import ModelSpec, build_model

    torch.manual_seed(0)
    return build_model(ModelSpec("test_resnet", in_chans=3, num_classes=4), pretrained="none").eval()


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_infer_probs_averages_the_core_tta_views(tiny_net, mode):
    from protloc.training.module import infer_probs

    imgs = np.random.default_rng(1).integers(0, 255, (5, 16, 16, 3)).astype(np.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.2, 0.2, 0.2)
    got = infer_probs(tiny_net, imgs, mean=mean, std=std, batch_size=2, tta=mode)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = np.mean([torch.sigmoid(tiny_net(v)).numpy() for v in tta.tta_views(x, mode)], axis=0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(InputError, match="tta: expected one of none, flip, d4, got 'd8'"):
        infer_probs(tiny_net, imgs, mean=mean, std=std, tta="d8")


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_module_hands_out_its_trained_or_ema_weights(tiny_net, tmp_path, ema):
    """train.py no longer strips 'ema.module.'/'net.' prefixes: the module loads and hands out."""
    import copy

    from protloc.training.losses import make_loss
    from protloc.training.module import LitProtloc

    cfg = TrainConfig(ema=ema, augment="none")
    lit = LitProtloc(copy.deepcopy(tiny_net), cfg, mean=(0.1,) * 3, std=(0.2,) * 3, loss=make_loss("bce"))
    with torch.no_grad():
        for p in lit.net.parameters():
            p.add_(1.0)                                   # "trained" weights differ from the EMA copy
    torch.save({"state_dict": lit.state_dict()}, tmp_path / "best.ckpt")
    fresh = LitProtloc(copy.deepcopy(tiny_net), cfg, mean=(0.1,) * 3, std=(0.2,) * 3, loss=make_loss("bce"))
    net = fresh.load_trained(tmp_path / "best.ckpt").inference_net()
    src = lit.ema.module if ema else lit.net
    assert (net is fresh.ema.module) if ema else (net is fresh.net)
    for a, b in zip(net.state_dict().values(), src.state_dict().values()):
        assert torch.equal(a, b)
    assert ema == 0 or not torch.equal(next(net.parameters()), next(lit.net.parameters()))


def test_every_listed_command_exists(monkeypatch):
    """No silent 'command not built yet' skip: a missing command module is an error."""
    import importlib

    cli_main = importlib.import_module("protloc.cli.main")
    monkeypatch.setattr(cli_main, "COMMANDS", (*cli_main.COMMANDS, "nonexistent"))
    with pytest.raises(ModuleNotFoundError, match="protloc.cli.commands.nonexistent"):
        cli_main.build_parser()




@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_adam_optimizers_use_the_fused_kernel(tiny_net, optimizer):
    """AdamW / Adam take torch's fused kernel on CPU (24 -> 5 ms per Lite0 step, issue 13); SGD
    is as before; a fused step moves the weights like the reference implementation does."""
    import copy
    from types import SimpleNamespace

    from protloc.training.losses import make_loss
    from protloc.training.module import LitProtloc

    cfg = TrainConfig(optimizer=optimizer, augment="none", schedule="constant")
    lit = LitProtloc(copy.deepcopy(tiny_net), cfg, mean=(0.1,) * 3, std=(0.2,) * 3, loss=make_loss("bce"))
    lit.__dict__["_trainer"] = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    opt = lit.configure_optimizers()
    assert bool(opt.defaults.get("fused")) == (optimizer != "sgd")
    if optimizer == "sgd":
        return
    ref = copy.deepcopy(lit.net)
    twin = dict(zip(map(id, lit.net.parameters()), ref.parameters()))
    groups = [{"params": [twin[id(p)] for p in g["params"]], "lr": g["lr"], "weight_decay": g["weight_decay"]}
              for g in opt.param_groups]
    ref_opt = (torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam)(groups, foreach=False)
    x = torch.randn(2, 3, 16, 16)
    for net, o in ((lit.net, opt), (ref, ref_opt)):
        net(x).sum().backward()
        o.step()
    for a, b in zip(lit.net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
