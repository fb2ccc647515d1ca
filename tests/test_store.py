"""The sharded store's reader/writer and the shard-block sampler (pure functions, no training)."""

import pickle

import numpy as np
import pytest

from protloc.data import store as st
from protloc.training.datamodule import ArrayDataset, EpochSampler, ShardBlockSampler, shard_block_order


def _store(tmp_path, n=23, k=5, compress="zstd"):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 6, 6, 4), dtype=np.uint8)
    imgs[3] = 0  # a black image is stored like any other
    root = st.create_store(tmp_path / "s.zarr", n=n, size=6, channels=4, shard_images=k, compress=compress)
    for s in range(-(-n // k)):
        blk = imgs[s * k:(s + 1) * k]
        st.write_shard(root, s, blk, np.ones((len(blk), 2)), shard_images=k, compress=compress)
    return root, imgs


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_store_reads_by_index_like_numpy_and_zarr(tmp_path, compress):
    import zarr

    root, imgs = _store(tmp_path, compress=compress)
    x = st.ShardedImages(root)
    assert x.shape == imgs.shape and len(x) == 23 and x.n_shards == 5
    idx = np.array([22, 0, 3, 3, 17, -1])
    assert np.array_equal(x[idx], imgs[idx]) and np.array_equal(x[4:19:3], imgs[4:19:3])
    assert np.array_equal(x[5], imgs[5]) and np.array_equal(x[5, :, :, 1], imgs[5, :, :, 1])
    assert np.array_equal(np.asarray(x), imgs)
    assert np.array_equal(zarr.open_array(root / "images", mode="r")[:], imgs)
    y = pickle.loads(pickle.dumps(x))  # DataLoader workers get a copy that reopens its files
    assert np.array_equal(y[[1, 2]], imgs[[1, 2]])
    with pytest.raises(IndexError):
        x[[23]]
    ds = ArrayDataset(x, np.zeros((23, 2)), np.arange(23))
    ii, batch, _ = ds.__getitems__([9, 2, 9])
    assert ii.tolist() == [9, 2, 9] and np.array_equal(batch.numpy(), imgs[[9, 2, 9]])


def test_damaged_or_missing_shard_is_a_clear_error(tmp_path):
    from protloc.core.errors import InputError

    root, _ = _store(tmp_path)
    p = st.shard_path(root, 1)
    p.write_bytes(p.read_bytes()[:-3] + b"xyz")
    with pytest.raises(InputError, match="damaged shard index"):
        st.ShardedImages(root)[7]
    p.unlink()
    with pytest.raises(InputError, match="shard 1 of the image store is missing"):
        st.ShardedImages(root)[7]
    assert st.read_shard_stats(root, 2, shard_images=5)[:, 1].tolist() == [1] * 5
    (root / "images" / "c" / "x.abc.partial").write_bytes(b"")
    assert st.clean_partials(root) == 1


def test_shard_block_order_is_a_pure_shuffle_with_locality():
    rows = np.sort(np.random.default_rng(1).choice(10_000, 8_000, replace=False))  # a fold's train rows
    a = shard_block_order(rows, seed=3, epoch=2, shard_images=100)
    assert np.array_equal(a, shard_block_order(rows, seed=3, epoch=2, shard_images=100))
    assert not np.array_equal(a, shard_block_order(rows, seed=3, epoch=3, shard_images=100))
    assert not np.array_equal(a, shard_block_order(rows, seed=4, epoch=2, shard_images=100))
    assert np.array_equal(np.sort(a), np.arange(8_000))  # a permutation of the positions
    shards_per_batch = [len(np.unique(rows[a[s:s + 32]] // 100)) for s in range(0, 8_000, 32)]
    assert 2 < np.mean(shards_per_batch) < 6 and max(shards_per_batch) <= 12  # few files, still mixed
    assert max(len(np.unique(rows[a[s:s + 400]] // 100)) for s in range(0, 8_000, 400)) <= 6  # per window
    full = [len(np.unique(rows[b] // 100)) for b in np.split(np.random.default_rng(0).permutation(8_000), 250)]
    assert np.mean(full) > 25  # what a plain random order reads per batch
    first = rows[a[:400]] // 100  # a window spans a few shards, not the data set's first ones
    assert len(np.unique(first)) <= 6 and first.min() > 0


def test_shard_block_sampler_ddp_split_padding_and_resume():
    rows = np.arange(0, 1030, 1)
    ref = ShardBlockSampler(rows, shard_images=64, seed=7)
    ref.set_epoch(5)
    whole = list(ref)
    assert sorted(whole) == list(range(1030))
    parts = []
    for r in range(4):
        s = ShardBlockSampler(rows, shard_images=64, seed=7, rank=r, world=4)
        s.set_epoch(5)
        parts.append(list(s))
    assert {len(p) for p in parts} == {len(parts[0])} == {258}  # ceil(1030 / 4), every rank the same
    flat = [i for p in parts for i in p]
    assert set(flat) == set(range(1030)) and len(flat) - len(set(flat)) == 2  # 2 padded duplicates
    interleaved = [parts[r][j] for j in range(258) for r in range(4)][:1030]
    assert interleaved == whole  # the same strided split as EpochSampler
    fresh = ShardBlockSampler(rows, shard_images=64, seed=7)  # --resume: epoch 5 from scratch
    for e in range(3):
        fresh.set_epoch(e)
        list(fresh)
    fresh.set_epoch(5)
    assert list(fresh) == whole
    w = np.ones(1030)
    w[:10] = 500.0
    bal = ShardBlockSampler(rows, shard_images=64, seed=7, weights=w)
    drawn = np.array(list(bal))
    assert len(drawn) == 1030 and (drawn < 10).mean() > 0.5


def test_default_sampler_order_unchanged():
    s = EpochSampler(10, seed=3, shuffle=True)
    s.set_epoch(1)
    import torch

    from protloc.training.datamodule import epoch_seed

    g = torch.Generator().manual_seed(epoch_seed(3, 1, 17))
    assert list(s) == torch.randperm(10, generator=g).tolist()
