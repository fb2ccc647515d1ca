import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from protloc.data import cache
from protloc.data.store import ShardedImages
from protloc.cli.main import main
from protloc.core.errors import InputError
from protloc.io.images import read_image
from protloc.data.table import load_table


def _count_shard_builds(monkeypatch):
    built = []
    real = cache._build_shard

    def spy(job):
        built.append(job[1])
        return real(job)

    monkeypatch.setattr(cache, "_build_shard", spy)
    return built


def test_build_hit_invalidate(tiny_rgb, monkeypatch):
    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    built = _count_shard_builds(monkeypatch)
    ds = cache.load_cached(t, size=16, progress=False, workers=1, shard_images=8)
    assert isinstance(ds.images, ShardedImages) and ds.images.shape == (40, 16, 16, 3)
    assert sorted(built) == [0, 1, 2, 3, 4] and ds.images.n_shards == 5
    assert np.array_equal(ds.images[7], read_image(imgs, t.ids[7], size=16))
    assert np.array_equal(ds.images[[7, 30, 7]], np.stack([read_image(imgs, t.ids[i], size=16) for i in (7, 30, 7)]))
    # the store is a plain Zarr v3 array too
    import zarr

    assert np.array_equal(zarr.open_array(ds.path / "images", mode="r")[:], ds.images[:])
    # second call: opened from disk, nothing decoded
    built.clear()
    assert cache.load_cached(t, size=16, progress=False).path == ds.path and built == []
    # editing a file: only its shard is decoded again, in place
    st = os.stat(imgs / "1019.png")
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(imgs / "1019.png")
    os.utime(imgs / "1019.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert [e["current"] for e in cache.cache_info(t, size=16)] == [False]
    assert cache.load_cached(t, size=16, progress=False, trust=True).images[19].min() < 200  # trusted: not statted
    ds2 = cache.load_cached(t, size=16, progress=False, workers=1)
    assert built == [2] and ds2.path == ds.path and ds2.images[19].min() == 200
    assert [(e["key"], e["current"]) for e in cache.cache_info(t, size=16)] == [(ds.path.stem, True)]
    sub = cache.load_cached(t.subset(range(10)), size=16, progress=False, workers=1)  # own entry
    assert sub.images.shape[0] == 10 and ds2.path.exists() and sub.path != ds2.path


def test_cache_info_reads_the_tables_facts_once(tiny_rgb, monkeypatch):
    """Listing the entries of a table decides its default reading (which reads image headers)
    once, not once per entry in the cache folder (it was once per entry, twice for its own)."""
    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    for size in (8, 12, 16):
        cache.load_cached(t, size=size, progress=False, workers=1)
    from protloc.data import reading

    calls = []
    real = reading.training_reading
    monkeypatch.setattr(reading, "training_reading", lambda *a, **k: calls.append(1) or real(*a, **k))
    info = cache.cache_info(t)
    assert sorted(e["size"] for e in info) == [8, 12, 16] and all(e["current"] for e in info)
    assert len(calls) == 1


def test_parallel_equals_serial_and_bad_images(tiny_rgb):
    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    a = cache.decode_table(t, size=20, workers=1, progress=False).images
    b = cache.decode_table(t, size=20, workers=2, progress=False).images
    assert np.array_equal(a, b)
    c = cache.load_cached(t, size=20, workers=2, progress=False, shard_images=6, compress="none").images
    assert np.array_equal(a, c[:])
    cache.clear_cache()
    (imgs / "1005.png").write_bytes(b"not a png")
    t = load_table(csv, imgs)
    with pytest.raises(InputError, match=r"train.csv line 7 \(id 1005\): .*unreadable"):
        cache.load_cached(t, size=20, progress=False, workers=2, shard_images=6)
    d = cache.cache_dir()
    assert [e["complete"] for e in cache.cache_info()] == [False] and not list(d.rglob("*.partial"))
    ds = cache.load_cached(t, size=20, progress=False, skip_bad=True, workers=1, shard_images=6)
    assert ds.bad == [5] and ds.images[5].max() == 0 and "unreadable" in ds.bad_messages[0]
    with pytest.raises(InputError, match=r"id 1005\): .*unreadable"):  # cached answer, no rebuild
        cache.load_cached(t, size=20, progress=False, workers=1)


def test_cache_cli_build_info_clear(tiny_rgb, capsys, tmp_path, monkeypatch):
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
    monkeypatch.setenv("PROTLOC_CACHE_DIR", str(cache.cache_dir()))  # restored after the test
    other = tmp_path / "cluster-cache"
    assert main(["cache", *args, "--cache-dir", str(other)]) == 0
    assert str(other) in capsys.readouterr().out and len(list(other.glob("*.zarr"))) == 1
    assert main(["cache", *args, "--cache-dir", str(other), "--compress", "zstd"]) == 0  # rebuilt, compressed
    ds = cache.load_cached(load_table(csv, imgs), size=24, progress=False)  # train reuses it as it is
    assert ds.images.compress == "zstd" and ds.images.disk_bytes() > 0 and len(list(other.glob("*.zarr"))) == 1
    (tmp_path / "afile").write_text("x")
    assert main(["cache", *args, "--cache-dir", str(tmp_path / "afile")]) == 2
    assert "--cache-dir: expected a folder" in capsys.readouterr().err


def test_concurrent_builds_share_one_entry(tiny_rgb):
    from concurrent.futures import ThreadPoolExecutor

    csv, imgs = tiny_rgb
    t = load_table(csv, imgs)
    said = []
    with ThreadPoolExecutor(3) as ex:
        res = list(ex.map(lambda _: cache.load_cached(t, size=12, progress=False, workers=1, say=said.append),
                          range(3)))
    assert len({r.path for r in res}) == 1 and len(list(cache.cache_dir().glob("*.zarr"))) == 1
    assert all(np.array_equal(r.images[:], res[0].images[:]) for r in res)
    assert all(m.startswith("waiting for ") for m in said)  # (the owner may not have written its PID yet)


_HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, json.dumps({"pid": int(sys.argv[2]), "host": sys.argv[3], "cmd": "protloc cache"}).encode(), 0)
print("locked", flush=True)
time.sleep(60)
"""


def _holder(lock: Path, owner_pid: int):
    import socket

    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), str(owner_pid), socket.gethostname()],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_build_lock_waits_names_owner_and_takes_over_stale(tmp_path):
    import threading

    from protloc.data.workers import BuildLock

    lock, said = tmp_path / ".k.lock", []
    # 1. a live owner (this process, as recorded): say whom we wait for; get the lock when it ends
    holder = _holder(lock, owner_pid=os.getpid())
    threading.Timer(0.6, holder.kill).start()
    t0 = time.time()
    with BuildLock(lock, say=said.append, poll=0.05):
        assert time.time() - t0 >= 0.5
    holder.wait()
    assert len(said) == 1 and f"waiting for PID {os.getpid()} on " in said[0] and "protloc cache" in said[0]
    # 2. a dead owner whose leftover process still holds the lock: taken over at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = _holder(lock, owner_pid=dead.pid)
    said.clear()
    t0 = time.time()
    with BuildLock(lock, say=said.append, poll=0.05) as bl:
        assert time.time() - t0 < 5 and bl.owner()["pid"] == os.getpid()
    assert "which is gone" in said[0] and "taking the lock over" in said[0]
    holder.kill()
    holder.wait()


_SLOW_BUILD = """
import sys, time
import protloc.data.cache as c
from protloc.data.table import load_table
real = c.read_image
def slow(*a, **k):
    time.sleep(0.01)
    return real(*a, **k)
c.read_image = slow
c.load_cached(load_table(sys.argv[1], sys.argv[2]), size=16, workers=2, progress=False, shard_images=10)
"""


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG")
def test_kill9_mid_build_leaves_no_workers_and_next_build_finishes(tmp_path):
    from helpers import make_tiny_dataset

    csv, imgs = make_tiny_dataset(tmp_path / "d", n=300, size=16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(csv), str(imgs)], env=env)
    d = cache.cache_dir()
    deadline = time.time() + 30
    while time.time() < deadline and len(list(d.glob("*.zarr/files/c/*/0"))) < 3:
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert len(list(d.glob("*.zarr/files/c/*/0"))) >= 3 and len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert alive == [], "decode workers survived their parent"
    assert len(list(d.glob("*.zarr/files/c/*/0"))) < 30  # killed mid-way
    said = []
    t = load_table(csv, imgs)
    t0 = time.time()
    ds = cache.load_cached(t, size=16, progress=True, workers=1, say=said.append)
    assert time.time() - t0 < 20 and ds.images.shape == (300, 16, 16, 3)
    assert any("stopped without releasing it" in m for m in said)
    assert any("decoding" in m and "of 30 shards" in m for m in said)  # resumed, not restarted
    assert not list(d.rglob("*.partial"))
    assert np.array_equal(ds.images[[0, 150, 299]], np.stack([read_image(imgs, t.ids[i], size=16)
                                                              for i in (0, 150, 299)]))
    assert json.loads((d / f"{ds.path.stem}.json").read_text())["complete"] is True
