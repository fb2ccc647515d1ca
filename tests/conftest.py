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
