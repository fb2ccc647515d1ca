import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode-cache folder (never ~/.cache)."""
    monkeypatch.setenv("PROTLOC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_rgb(tmp_path):
    from helpers import make_tiny_dataset

    return make_tiny_dataset(tmp_path / "data", n=40, size=32)


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    from helpers import make_fake_run

    return make_fake_run(tmp_path_factory.mktemp("fake_run"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A real run folder from `protloc train` (test_resnet, 32 px, 40 images, 2 epochs, holdout).

    Read-only for tests: copy it (shutil.copytree) before writing into it.
    """
    from helpers import make_tiny_dataset

    from protloc.cli.main import main

    root = tmp_path_factory.mktemp("trained_run")
    old = os.environ.get("PROTLOC_CACHE_DIR")
    os.environ["PROTLOC_CACHE_DIR"] = str(root / "cache")
    try:
        csv, images = make_tiny_dataset(root / "data", n=40, size=32)
        out = root / "run"
        rc = main(["train", "--csv", str(csv), "--images", str(images), "--out", str(out), "--model", "test_resnet",
                   "--pretrained", "none", "--size", "32", "--epochs", "2", "--batch-size", "8", "--quiet"])
    finally:
        if old is None:
            os.environ.pop("PROTLOC_CACHE_DIR", None)
        else:
            os.environ["PROTLOC_CACHE_DIR"] = old
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: one torch thread avoids OpenMP oversubscription."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
