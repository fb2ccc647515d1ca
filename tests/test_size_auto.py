"""``--size 0`` (auto, the default): 128 px, or 160 px when the training images' nuclei are small."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from protloc.core.config import TrainConfig
from protloc.core.errors import InputError
from protloc.data.table import load_table
from protloc.synth.dataset import sample_label_sets, synth_image
from protloc.training.train import AUTO_SIZE, UPSAMPLED_SIZE, resolve_size


def _styled_set(root, style, *, n=8, size=128):
    img_dir = root / "train"
    img_dir.mkdir(parents=True)
    rows = []
    for i, labels in enumerate(sample_label_sets(n, np.random.default_rng(1))):
        img = synth_image(labels, size=size, rng=np.random.default_rng(100 + i), style=style)
        Image.fromarray(img[..., :3]).save(img_dir / f"{i}.png")
        rows.append((str(i), " ".join(map(str, labels))))
    pd.DataFrame(rows, columns=["Image", "Label"]).to_csv(root / "train.csv", index=False)
    return load_table(root / "train.csv", img_dir)


@pytest.mark.parametrize("style, expected", [
    ("hcs-confocal-20x", UPSAMPLED_SIZE), ("widefield-20x", UPSAMPLED_SIZE), ("default", AUTO_SIZE),
    ("confocal-63x", AUTO_SIZE), ("spinning-disk", AUTO_SIZE), ("epi-saturated", AUTO_SIZE), ("suspension", AUTO_SIZE)])
def test_size_auto_upsamples_only_small_cells(tmp_path, style, expected):
    table = _styled_set(tmp_path, style)
    size, why = resolve_size(TrainConfig(), table)
    assert size == expected and "median nucleus" in why
    assert resolve_size(TrainConfig(size=96), table) == (96, "96 px (--size)")


def test_size_auto_on_images_read_at_another_size(tmp_path):
    """Nuclei are measured in the 128-px frame: the same low-magnification field rendered at
    256 px (four times the pixels per nucleus) is still upsampled."""
    table = _styled_set(tmp_path, "hcs-confocal-20x", n=6, size=256)
    assert resolve_size(TrainConfig(), table)[0] == UPSAMPLED_SIZE


def test_size_auto_without_nuclei_keeps_128(tmp_path):
    img_dir = tmp_path / "train"
    img_dir.mkdir()
    for i in range(4):
        Image.fromarray(np.full((64, 64, 3), 40, np.uint8)).save(img_dir / f"{i}.png")
    pd.DataFrame({"Image": [str(i) for i in range(4)], "Label": ["1"] * 4}).to_csv(tmp_path / "t.csv", index=False)
    size, why = resolve_size(TrainConfig(), load_table(tmp_path / "t.csv", img_dir))
    assert size == AUTO_SIZE and "no nuclei" in why


@pytest.mark.parametrize("size", [1, 7])
def test_sizes_below_8_other_than_auto_are_refused(size):
    with pytest.raises(InputError, match="--size: expected 0 \\(auto\\) or 8 to 4096"):
        TrainConfig(size=size).validate()


def test_a_run_trained_with_size_auto_records_the_size_it_chose(tmp_path):
    from protloc.cli.main import main
    from protloc.core.runfolder import RunFolder

    _styled_set(tmp_path / "data", "hcs-confocal-20x", n=12)
    out = tmp_path / "run"
    rc = main(["train", "--csv", str(tmp_path / "data" / "train.csv"), "--images", str(tmp_path / "data" / "train"),
               "--out", str(out), "--model", "test_resnet", "--pretrained", "none", "--epochs", "1",
               "--batch-size", "8", "--oof-tta", "none", "--quiet"])
    assert rc == 0
    rf = RunFolder(out)
    assert rf.preprocessing().size == UPSAMPLED_SIZE == rf.config().size  # what predict and --resume read
    assert "image size: 160 px (--size auto: median nucleus" in (out / "train.log").read_text()
