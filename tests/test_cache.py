import os

import numpy as np
import pytest

from protloc.data import cache
from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.io.images import read_image
from protloc.data.table import load_table


def test_build_hit_invalidate(tiny_rgb, monkeypatch):
    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    ds = cache.load_cached(t, size=16, progress=False, workers=1)
    assert isinstance(ds.images, np.memmap) and ds.images.shape == (40, 16, 16, 3)
    assert np.array_equal(ds.images[7], read_image(imgs, t.ids[7], size=16))
    # second call: memory-mapped from disk, nothing decoded
    with monkeypatch.context() as m:
        m.setattr(cache, "decode_table", lambda *a, **k: pytest.fail("decoded again"))
        assert cache.load_cached(t, size=16, progress=False).path == ds.path
    # editing a file changes the key; the stale entry is removed after the rebuild
    st = os.stat(imgs / "1003.png")
    os.utime(imgs / "1003.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2 = cache.load_cached(t, size=16, progress=False, workers=1)
    assert ds2.path != ds.path and not ds.path.exists()
    assert [e["key"] for e in cache.cache_info(t, size=16)] == [ds2.path.stem]
    sub = cache.load_cached(t.subset(range(10)), size=16, progress=False, workers=1)  # own entry
    assert sub.images.shape[0] == 10 and ds2.path.exists() and sub.path != ds2.path


def test_parallel_equals_serial_and_bad_images(tiny_rgb):
    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    a = cache.decode_table(t, size=20, workers=1, progress=False).images
    b = cache.decode_table(t, size=20, workers=2, progress=False).images
    assert np.array_equal(a, b)
    (imgs / "1005.png").write_bytes(b"not a png")
    t = load_table(csv, imgs)
    with pytest.raises(InputError, match=r"train.csv line 7 \(id 1005\): .*unreadable"):
        cache.load_cached(t, size=20, progress=False, workers=2)
    assert not list(cache.cache_dir().glob("*.npy")) and not list(cache.cache_dir().glob(".*.npy"))
    ds = cache.load_cached(t, size=20, progress=False, skip_bad=True, workers=1)
    assert ds.bad == [5] and ds.images[5].max() == 0 and "unreadable" in ds.bad_messages[0]


def test_cache_cli_build_info_clear(tiny_rgb, capsys):
    csv, imgs = tiny_rgb
    args = ["--csv", str(csv), "--images", str(imgs), "--size", "24"]
    assert main(["cache", *args]) == 0
    assert "cached 40 images as (40, 24, 24, 3)" in capsys.readouterr().out
    assert main(["cache", *args, "--info"]) == 0
    out = capsys.readouterr().out
    assert "yes" in out and "40" in out
    assert main(["cache", "--clear"]) == 0
    assert "removed 1 cache entries" in capsys.readouterr().out
    assert main(["cache", "--info"]) == 0 and "no cache entries" in capsys.readouterr().out
    assert main(["cache", *args[:4], "--size", "3"]) == 2
    assert "--size: expected 8 to 4096 pixels, got 3" in capsys.readouterr().err


def test_concurrent_builds_share_one_entry(tiny_rgb):
    from concurrent.futures import ThreadPoolExecutor

    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    with ThreadPoolExecutor(3) as ex:
        res = list(ex.map(lambda _: cache.load_cached(t, size=12, progress=False, workers=1), range(3)))
    assert len({r.path for r in res}) == 1 and len(list(cache.cache_dir().glob("*.npy"))) == 1
    assert all(np.array_equal(r.images, res[0].images) for r in res)
