"""Grad-CAM (protloc.reports.explain) and `protloc explain`."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from protloc.reports import explain
from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.reports.explain import explain_image, gradcam, overlay, render_explanation, resolve_classes
from protloc.core.preprocessing import Preprocessing
from protloc.core.schema import LabelSchema

PRE = Preprocessing(fmt="rgb", channels=("red", "green", "blue"), size=32, mean=(0.0,) * 3, std=(1.0,) * 3,
                    schema=LabelSchema("quadrants", ("top-left", "bottom-right")))


class QuadrantNet(nn.Module):
    """Class 0's logit sees only the top-left quadrant of the green channel, class 1 only the
    bottom-right one (features downsampled 4x, like a real backbone)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        m = torch.zeros(2, 8, 8)
        m[0, :4, :4] = 1
        m[1, 4:, 4:] = 1
        self.register_buffer("masks", m)

    def forward_features(self, x):
        f = nn.functional.avg_pool2d(x[:, 1:2], 4) * self.scale
        return f * self.masks[None]

    def forward_head(self, feats):
        return feats.sum(dim=(2, 3)) * 2 - 1

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def two_blobs(bright_br: int = 250) -> np.ndarray:
    img = np.zeros((32, 32, 3), np.uint8)
    yy, xx = np.mgrid[:32, :32]
    img[..., 1][(yy - 6) ** 2 + (xx - 7) ** 2 < 16] = 150        # top-left blob
    img[..., 1][(yy - 25) ** 2 + (xx - 24) ** 2 < 16] = bright_br  # bottom-right blob (brighter)
    return img


def test_gradcam_peak_lies_in_the_region_the_class_depends_on():
    net = QuadrantNet().eval()
    x = torch.from_numpy(PRE.normalize(two_blobs()[None]))
    h0, h1 = gradcam(net, x, 0), gradcam(net, x, 1)
    for h in (h0, h1):
        assert h.shape == (32, 32) and h.dtype == np.float32
        assert h.min() >= 0 and h.max() == pytest.approx(1.0)
    y0, x0 = np.unravel_index(h0.argmax(), h0.shape)
    y1, x1 = np.unravel_index(h1.argmax(), h1.shape)
    assert y0 < 16 and x0 < 16, "class 0 must point at the top-left blob (even though it is dimmer)"
    assert y1 >= 16 and x1 >= 16
    assert h0[20:, 20:].max() < 0.2 and h1[:12, :12].max() < 0.2
    # an ensemble of identical models gives the same map; inference mode (web app) does not matter
    np.testing.assert_allclose(gradcam([net, net], x, 0), h0, atol=1e-6)
    with torch.inference_mode():
        np.testing.assert_allclose(gradcam(net, x.clone(), 0), h0, atol=1e-6)


def test_gradcam_with_no_positive_evidence_is_all_zero_and_rejects_batches():
    net = QuadrantNet().eval()
    x = torch.zeros(1, 3, 32, 32)
    assert not gradcam(net, x, 0).any()
    with pytest.raises(InputError, match=r"gradcam input: expected a \(1, C, H, W\) tensor"):
        gradcam(net, torch.zeros(2, 3, 32, 32), 0)


def test_explain_image_defaults_to_predicted_classes_and_top1():
    net = QuadrantNet().eval()
    ex = explain_image([net], PRE, two_blobs())
    assert [e["name"] for e in ex] == ["bottom-right", "top-left"]  # most probable first
    assert all(e["prob"] >= e["threshold"] == 0.5 for e in ex)
    assert set(ex[0]) == {"class_idx", "name", "prob", "threshold", "heatmap"}
    # nothing passes a high threshold -> the single most probable class
    ex = explain_image(net, PRE, two_blobs(bright_br=250), thresholds=[0.999, 0.999])
    assert [e["name"] for e in ex] == ["bottom-right"]
    # explicit class by name or number; a 64 px image is resized to the run's 32
    ex = explain_image(net, PRE, np.zeros((64, 64, 3), np.uint8), classes=["TOP-LEFT", 1])
    assert [e["class_idx"] for e in ex] == [0, 1] and ex[0]["heatmap"].shape == (32, 32)


def test_resolve_classes_message():
    with pytest.raises(InputError, match=r"--class: expected one of top-left, bottom-right \(or 0-1\), "
                                         r"got 'Nucleus'\. Fix: pass a class name"):
        resolve_classes(["Nucleus"], PRE.classes)


def test_overlay_and_render_sizes():
    img = two_blobs()
    assert np.array_equal(overlay(img, np.zeros((8, 8), np.float32)), img)
    hot = overlay(img, np.ones((8, 8), np.float32))
    assert hot.shape == (32, 32, 3) and hot.dtype == np.uint8 and not np.array_equal(hot, img)
    ex = explain_image(QuadrantNet().eval(), PRE, img)
    arr = render_explanation(img, ex, preprocessing=PRE)
    assert arr.shape == (300 * len(ex) + 60, 900, 3) and arr.dtype == np.uint8
    png = render_explanation(img, ex[:1], preprocessing=PRE, as_png=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_four_channel_image_uses_the_green_channel():
    pre4 = Preprocessing(fmt="hpa-channels", channels=("red", "green", "blue", "yellow"), size=32,
                         mean=(0.0,) * 4, std=(1.0,) * 4, schema=PRE.schema)
    img = np.concatenate([two_blobs(), np.full((32, 32, 1), 40, np.uint8)], axis=-1)
    assert explain.protein_channel(pre4) == 1
    ex = explain_image(QuadrantNet().eval(), pre4, img, classes=[0])
    assert ex[0]["heatmap"][:16, :16].max() == pytest.approx(1.0)
    assert render_explanation(img, ex, preprocessing=pre4).shape == (360, 900, 3)


def test_doctests():
    assert doctest.testmod(explain).failed == 0


# --------------------------------------------------------------------------------------------
# CLI (untrained test_resnet fake run)
# --------------------------------------------------------------------------------------------
def test_explain_cli_writes_png(fake_run, tiny_rgb, tmp_path, capsys):
    _, images = tiny_rgb
    out = tmp_path / "ex.png"
    rc = main(["explain", str(fake_run), str(images / "1000.png"), "--class", "Nucleoli", "--out", str(out)])
    assert rc == 0
    assert Image.open(out).size == (900, 360)
    assert "Nucleoli: p=" in capsys.readouterr().out
    out2 = tmp_path / "ex2.png"
    rc = main(["explain", str(fake_run), "--images", str(images), "--id", "1001", "--class", "0",
               "--class", "Cytosol", "--out", str(out2)])
    assert rc == 0 and Image.open(out2).size == (900, 660)


def test_explain_cli_errors(fake_run, tiny_rgb, tmp_path, capsys):
    _, images = tiny_rgb
    assert main(["explain", str(fake_run), str(images / "1000.png"), "--class", "Nucleus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --class: expected one of Mitochondria, Nuclear bodies, Nucleoli")
    assert "got 'Nucleus'" in err
    assert main(["explain", str(fake_run), str(tmp_path / "nope.png")]) == 2
    assert f"error: IMAGE: expected an existing image file, got '{tmp_path / 'nope.png'}' (not found). " \
           "Fix: check the path, or use --images DIR --id ID." in capsys.readouterr().err
    assert main(["explain", str(fake_run)]) == 2
    assert "expected IMAGE or --images DIR --id ID, got neither" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "norun"), str(images / "1000.png")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
