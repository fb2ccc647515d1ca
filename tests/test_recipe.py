"""Recipe pieces of issue 10: multi-label mixing, pseudo-labelling (`train --unlabeled`), the GPU
recipe and the default's resolution."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from protloc.cli.main import main
from protloc.core.runfolder import RunFolder
from protloc.training.augment import mix_batch
from protloc.training.datamodule import ConcatImages
from protloc.training.semi import pseudo_targets

TINY = ["--model", "test_resnet", "--pretrained", "none", "--size", "32", "--batch-size", "8", "--quiet",
        "--threads", "1", "--no-near-dup"]


def test_mixup_mixes_images_and_labels_alike_and_cutmix_joins_labels():
    g = torch.Generator().manual_seed(3)
    x = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    xm, ym = mix_batch(x, y, g, mode="mixup", alpha=1.0)
    # each mixed image's mean intensity equals its label weight on the second image's class
    assert torch.allclose(xm.mean((1, 2, 3)), ym[:, 1], atol=1e-6) and torch.allclose(ym.sum(1), torch.ones(2))
    for seed in range(5):
        xc, yc = mix_batch(x, y, torch.Generator().manual_seed(seed), mode="cutmix", alpha=1.0)
        pasted = (xc != x).any(0).any(0)
        assert bool((yc >= y).all())          # a union: no label is ever lost
        if pasted.any():                      # a pasted box brings its image's labels
            assert bool((yc == 1).all())
    same = mix_batch(x, y, torch.Generator().manual_seed(0), mode="mixup", prob=0.0)
    assert same[0] is x and same[1] is y


def test_concat_images_reads_across_parts():
    a = np.arange(2 * 2 * 2 * 1, dtype=np.uint8).reshape(2, 2, 2, 1)
    b = 100 + np.arange(3 * 2 * 2 * 1, dtype=np.uint8).reshape(3, 2, 2, 1)
    c = ConcatImages(a, b)
    assert len(c) == 5 and c.shape == (5, 2, 2, 1)
    np.testing.assert_array_equal(c[np.array([4, 0, 2])], np.stack([b[2], a[0], b[0]]))
    np.testing.assert_array_equal(c[3], b[1])


def test_pseudo_targets_modes():
    p = np.array([[0.9, 0.3, 0.1]], np.float32)
    assert pseudo_targets(p, mode="soft").tolist() == p.tolist()
    np.testing.assert_allclose(pseudo_targets(p), [[1.0, 0.3, 0.0]], rtol=1e-6)


def test_train_unlabeled_teacher_student(tiny_rgb, tmp_path):
    from helpers import make_tiny_dataset

    csv, images = tiny_rgb
    _, unl = make_tiny_dataset(tmp_path / "unl", n=24, size=32, seed=5)
    rc = main(["train", "--csv", str(csv), "--images", str(images), "--out", str(tmp_path / "r"), *TINY,
               "--epochs", "4", "--unlabeled", str(unl), "--mix", "cutmix"])
    assert rc == 0
    run = RunFolder(tmp_path / "r")
    fold = json.loads(run.summary_json.read_text())["fold_summaries"][0]
    semi = fold["semi_supervised"]
    assert semi["unlabeled_images"] == 24 and semi["teacher_epochs"] == 2 and semi["student_epochs"] == 2
    assert semi["kept"] in ("teacher", "student")
    m = pd.read_csv(run.metrics_csv)
    assert m["epoch"].tolist() == [0, 1, 2, 3] and m["phase"].fillna("teacher").tolist()[2:] == ["student"] * 2
    assert run.model_path(0).is_file() and "pseudo-labelled 24 unlabeled images" in run.log.read_text()
    assert main(["train", "--csv", str(csv), "--images", str(images), "--out", str(tmp_path / "bad"), *TINY,
                 "--unlabeled", str(tmp_path / "missing")]) == 2


def test_default_recipe_and_gpu_recipe(monkeypatch, tmp_path):
    import argparse

    from helpers import make_tiny_dataset

    from protloc.cli.commands import train as train_cmd
    from protloc.core.config import TrainConfig

    d = TrainConfig.preset("default")
    assert (d.size, d.freeze_blocks, d.epochs, d.model) == (0, 0, 0, "tf_efficientnet_lite0")  # size 0: auto (128 or 160 px)
    args = argparse.Namespace(accelerator="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_cmd.default_preset(args) == "default"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_cmd.default_preset(args) == "gpu"
    assert train_cmd.default_preset(argparse.Namespace(accelerator="cpu")) == "default"
    g = TrainConfig.resolve(default_preset="gpu", lr=1e-3)
    assert (g.preset, g.size, g.freeze_blocks, g.folds, g.lr) == ("gpu", 256, 0, 5, 1e-3)
    assert TrainConfig.resolve(preset="seed", default_preset="gpu").preset == "seed"  # an explicit preset wins
    csv, images = make_tiny_dataset(tmp_path / "d", n=8, size=16, fmt="hpa-channels",
                                    channels=("red", "green", "blue", "yellow"))
    ns = argparse.Namespace(csv=str(csv), images=str(images), data=None, format="auto", channels=None, id_col=None,
                            label_col=None, schema="ghent10", from_schema=None)
    train_cmd.gpu_channels(ns, g)
    assert ns.channels == "all"
    ns.channels = None
    train_cmd.gpu_channels(ns, d)  # the CPU default keeps 3 channels
    assert ns.channels is None
