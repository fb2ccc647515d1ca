"""Data for training: decoded uint8 images (the sharded cache store, or any array) -> batches.

Batches are ``(index, images uint8 (B, H, W, C), targets float (B, C))``; the uint8 tensor goes
to the device as is and is augmented/normalised there (``lit_module``), so no worker ever
decodes a PNG during training.

Shuffling is a pure function of (seed, epoch): :class:`EpochSampler` also does the distributed
split itself (pads like ``DistributedSampler``; the padded duplicates are removed by index when
validation metrics are computed), so Lightning's sampler replacement is switched off.
:class:`ShardBlockSampler` (``--sampler shard-block``) visits the store's shards in blocks, in a
random order per epoch, and shuffles within a window of a few shards: every batch reads from a few
shard files, for data sets far larger than RAM or on network file systems.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import lightning.pytorch as pl


def epoch_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from ``seed`` and any integers (epoch, batch, rank...).

    Examples
    --------
    >>> epoch_seed(42, 1) == epoch_seed(42, 1) != epoch_seed(42, 2)
    True
    """
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(p) & 0xFFFFFFFF for p in parts]])
               .generate_state(2, dtype=np.uint32).astype(np.uint64).dot([1 << 31, 1]))


class ArrayDataset(Dataset):
    """Rows ``indices`` of ``images`` (N, H, W, C) uint8 and ``y`` (N, C)."""

    def __init__(self, images: np.ndarray, y: np.ndarray, indices):
        self.images, self.y = images, np.asarray(y, dtype=np.float32)
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j):
        i = int(self.indices[j])
        return i, torch.from_numpy(np.array(self.images[i], dtype=np.uint8)), torch.from_numpy(self.y[i])

    def __getitems__(self, js):
        """A whole batch with one (sorted, memmap-friendly) fancy index instead of B lookups."""
        ii = self.indices[np.asarray(js, dtype=np.int64)]
        order = np.argsort(ii, kind="stable")
        imgs = np.empty((len(ii), *self.images.shape[1:]), np.uint8)
        imgs[order] = self.images[ii[order]]
        return torch.from_numpy(ii), torch.from_numpy(imgs), torch.from_numpy(self.y[ii])


class ConcatImages:
    """Several (N_i, H, W, C) image arrays read as one (sum N_i, H, W, C): the labeled images
    followed by the unlabeled ones of semi-supervised training (no copy).

    Examples
    --------
    >>> c = ConcatImages(np.zeros((2, 4, 4, 3), np.uint8), np.ones((3, 4, 4, 3), np.uint8))
    >>> c.shape, int(c[np.array([1, 2, 4])].sum(axis=(1, 2, 3))[1]), int(c[4].max())
    ((5, 4, 4, 3), 48, 1)
    """

    def __init__(self, *parts):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *parts[0].shape[1:])
        self.dtype = np.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx):
        if np.isscalar(idx):
            j = int(np.searchsorted(self.starts, int(idx), side="right")) - 1
            return self.parts[j][int(idx) - int(self.starts[j])]
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for j in np.unique(part):
            sel = np.flatnonzero(part == j)
            out[sel] = self.parts[j][idx[sel] - int(self.starts[j])]
        return out


def _batch_collate(batch):
    """``__getitems__`` already returns a collated batch."""
    return batch


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-image sampling weight: the largest ``1 / class frequency`` among its labels.

    Examples
    --------
    >>> balanced_weights(np.array([[1, 0], [1, 0], [1, 0], [0, 1]])).round(3).tolist()
    [0.333, 0.333, 0.333, 1.0]
    """
    y = np.asarray(y, dtype=np.float64)
    inv = 1.0 / np.maximum(y.sum(0), 1)
    w = (y * inv).max(1)
    return np.where(w > 0, w, inv.min())


class EpochSampler(Sampler):
    """Positions 0..n-1 in an order that depends only on (seed, epoch), split over ranks.

    ``weights`` (n,) switches to sampling n positions with replacement (class-balanced).

    Examples
    --------
    >>> s = EpochSampler(5, seed=0, shuffle=True, rank=0, world=2); s.set_epoch(3)
    >>> len(list(s)), len(s)
    (3, 3)
    """

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1,
                 weights: np.ndarray | None = None):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 17))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = len(self) * self.world
        order += order[: total - len(order)]  # pad (duplicates are de-duplicated by index later)
        return iter(order[self.rank:total:self.world])


def shard_block_order(rows, *, seed: int, epoch: int, shard_images: int, block_shards: int = 1,
                      window: int | None = None) -> np.ndarray:
    """Positions ``0..len(rows)-1`` in shard-block order: a pure function of (seed, epoch).

    The rows' shards are grouped into blocks of ``block_shards`` consecutive shards; the blocks
    are visited in a random order, and positions are shuffled within consecutive windows of
    ``window`` positions (default: 4 blocks' worth), so a window reads about 4-5 blocks.

    Examples
    --------
    >>> o = shard_block_order(np.arange(40), seed=0, epoch=1, shard_images=10, window=10)
    >>> sorted(o.tolist()) == list(range(40)), len(set((o[:10] // 10).tolist()))  # one shard per window
    (True, 1)
    >>> bool((o == shard_block_order(np.arange(40), seed=0, epoch=1, shard_images=10, window=10)).all())
    True
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    g = np.random.default_rng(epoch_seed(seed, epoch, 29))
    _, block = np.unique(rows // (int(shard_images) * int(block_shards)), return_inverse=True)
    rank = g.permutation(int(block.max()) + 1 if n else 0)
    order = np.argsort(rank[block.ravel()], kind="stable")  # blocks in random order, file order inside
    w = int(window or 4 * shard_images * block_shards)
    return order[np.lexsort((g.random(n), np.arange(n) // max(1, w)))]


class ShardBlockSampler(EpochSampler):
    """:class:`EpochSampler` whose order is :func:`shard_block_order` of the positions' rows.

    Same distributed semantics (every rank gets ``ceil(n / world)`` positions, strided, padded
    with duplicates); with ``weights`` the ``n`` class-balanced draws are put in shard-block order.

    Examples
    --------
    >>> s = ShardBlockSampler(np.arange(7), shard_images=3, seed=0, rank=1, world=2); s.set_epoch(2)
    >>> len(list(s)), len(s)
    (4, 4)
    """

    def __init__(self, rows, *, shard_images: int, seed: int = 0, rank: int = 0, world: int = 1,
                 weights: np.ndarray | None = None, block_shards: int = 1, window: int | None = None):
        self.rows = np.asarray(rows, dtype=np.int64)
        super().__init__(len(self.rows), seed=seed, shuffle=True, rank=rank, world=world, weights=weights)
        self.shard_images, self.block_shards, self.window = int(shard_images), int(block_shards), window

    def order(self) -> np.ndarray:
        """This epoch's positions for all ranks (before padding and the split)."""
        kw = dict(seed=self.seed, epoch=self.epoch, shard_images=self.shard_images,
                  block_shards=self.block_shards, window=self.window)
        if self.weights is None:
            return shard_block_order(self.rows, **kw)
        g = np.random.default_rng(epoch_seed(self.seed, self.epoch, 31))
        p = self.weights.numpy()
        draws = g.choice(self.n, self.n, replace=True, p=p / p.sum())
        return draws[shard_block_order(self.rows[draws], **kw)]

    def __iter__(self):
        total = len(self) * self.world
        mine = np.resize(self.order(), total)[self.rank:total:self.world]  # pad by repeating the start
        return (int(i) for i in mine)


class ProtlocDataModule(pl.LightningDataModule):
    """Train/validation loaders over one fold."""

    def __init__(self, images, y, train_idx, val_idx, *, batch_size: int = 32, seed: int = 0,
                 workers: int = 0, sampler: str = "random"):
        super().__init__()
        self.images, self.y = images, y
        self.train_idx, self.val_idx = np.asarray(train_idx), np.asarray(val_idx)
        self.batch_size, self.seed, self.workers, self.sampler = batch_size, seed, workers, sampler

    def _rank_world(self):
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, idx, *, train: bool):
        rank, world = self._rank_world()
        w = balanced_weights(self.y[idx]) if (train and self.sampler == "balanced") else None
        if train and self.sampler == "shard-block":
            sampler = ShardBlockSampler(idx, shard_images=getattr(self.images, "shard_images", 1024), seed=self.seed,
                                        rank=rank, world=world)
        else:
            sampler = EpochSampler(len(idx), seed=self.seed, shuffle=train, rank=rank, world=world, weights=w)
        return DataLoader(ArrayDataset(self.images, self.y, idx), batch_size=self.batch_size, sampler=sampler,
                          collate_fn=_batch_collate, num_workers=self.workers, persistent_workers=self.workers > 0,
                          pin_memory=torch.cuda.is_available(),
                          drop_last=train and len(idx) > 2 * self.batch_size * world)

    def train_dataloader(self):
        return self._loader(self.train_idx, train=True)

    def val_dataloader(self):
        return self._loader(self.val_idx, train=False)
