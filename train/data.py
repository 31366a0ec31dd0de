"""torch wrappers around the host-side datasets and preprocessing.

Batches are ``(uint8 NCHW images, int64 labels, number of images dropped)``: unreadable images
are skipped without stopping the epoch, and the count travels with each batch so it adds up per
epoch even when DataLoader workers did the decoding. Conversion to float is the training loop's.

Training augmentation is reproducible: the crop and flip of image ``i`` in epoch ``e`` come from
a generator seeded with (seed, e, i), independent of worker count and order. The sampler passes
``(epoch, index)`` pairs to the dataset so this also holds with persistent workers.
"""

import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bnn_transfer.host.errors import ImageError
from bnn_transfer.host.preprocess import (
    eval_transform,
    eval_transform_resized,
    train_transform,
    train_transform_resized,
)

from .imagecache import ImageCache


class ImageTorchDataset(Dataset):
    """``dataset[i]`` -> (uint8 CHW tensor, label), or None when the image is unreadable."""

    def __init__(self, dataset, pp, train, cache=None, seed=0, flip=True):
        if cache is not None and (len(cache) != len(dataset) or cache.resize_longest != pp.resize_longest):
            raise ValueError("cache does not match the dataset or the preprocessing")
        self.dataset = dataset
        self.pp = pp
        self.train = bool(train)
        self.cache = cache
        self.seed = int(seed)
        self.flip = bool(flip)
        self._warned = set()

    def __len__(self):
        return len(self.dataset)

    def _image(self, i, rng):
        if self.cache is not None:
            img = self.cache.get(i)
            if self.train:
                return train_transform_resized(img, self.pp, rng, self.flip)
            return eval_transform_resized(img, self.pp)
        img = self.dataset.load(i)
        if self.train:
            return train_transform(img, self.pp, rng, self.flip)
        return eval_transform(img, self.pp)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        i = int(i)
        rng = np.random.default_rng([self.seed, int(epoch), i]) if self.train else None
        try:
            img = self._image(i, rng)
        except ImageError as e:
            # Once per image and process; the cache path already printed its summary when it was built.
            if self.cache is None and i not in self._warned:
                self._warned.add(i)
                print("warning: skipping unreadable image %s" % e, file=sys.stderr)
            return None
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return x, int(self.dataset.labels[i])


def collate_skip(batch):
    """Stack the readable samples; return (images NCHW uint8, labels int64, number dropped)."""
    keep = [b for b in batch if b is not None]
    dropped = len(batch) - len(keep)
    if not keep:
        return torch.zeros((0, 3, 0, 0), dtype=torch.uint8), torch.zeros((0,), dtype=torch.int64), dropped
    x = torch.stack([b[0] for b in keep])
    y = torch.tensor([b[1] for b in keep], dtype=torch.int64)
    return x, y, dropped


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``; shuffles with (seed, epoch) when ``shuffle``; shards when distributed.

    ``subset``: the dataset indices to draw from (default: all ``n``).
    """

    def __init__(self, n, shuffle, seed=0, distributed=False, subset=None):
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        self.n = int(n) if subset is None else len(self.subset)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.dist = None
        if distributed:
            from torch.utils.data.distributed import DistributedSampler

            # Shuffling and sharding are DistributedSampler's, so every rank agrees on the partition.
            self.dist = DistributedSampler(range(self.n), shuffle=self.shuffle, seed=self.seed, drop_last=False)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        if self.dist is not None:
            self.dist.set_epoch(self.epoch)

    def indices(self):
        if self.dist is not None:
            order = list(self.dist)
        elif self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()
        else:
            order = list(range(self.n))
        return order if self.subset is None else self.subset[order].tolist()

    def __iter__(self):
        e = self.epoch
        return iter([(e, i) for i in self.indices()])

    def __len__(self):
        return len(self.dist) if self.dist is not None else self.n


class EpochLoader(DataLoader):
    """A DataLoader with ``set_epoch`` (forwarded to its EpochSampler)."""

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)


def _open_cache(dataset, pp, cache_dir, distributed):
    """Build the cache once: on rank 0 while the other ranks wait, then everyone opens it."""
    dist = distributed and torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    cache = None
    if rank == 0:
        cache = ImageCache(dataset, pp.resize_longest, cache_dir)
    if dist:
        torch.distributed.barrier()
    if cache is None:
        cache = ImageCache(dataset, pp.resize_longest, cache_dir, progress=False, quiet=True)
    return cache


def make_loader(dataset, pp, train, batch_size, workers, seed, cache_dir=None, distributed=False, flip=True,
                subset=None):
    """A DataLoader of (uint8 NCHW, int64 labels, dropped count) over ``dataset`` preprocessed by ``pp``.

    ``cache_dir``: decode each image once into a memory-mapped cache there (see train/imagecache.py).
    ``flip``: mirror training images left-right at random (off for writing, where a mirrored glyph is
    another glyph). ``subset``: only these indices of ``dataset`` (a validation split's either side). Training
    shuffles per epoch (call ``loader.set_epoch(e)``) and drops the last partial batch (a batch of one breaks
    BatchNorm) unless that would leave no batch at all.
    """
    cache = _open_cache(dataset, pp, cache_dir, distributed) if cache_dir else None
    tds = ImageTorchDataset(dataset, pp, train, cache, seed, flip)
    sampler = EpochSampler(len(tds), shuffle=train, seed=seed, distributed=distributed, subset=subset)
    workers = int(workers)
    return EpochLoader(
        tds,
        batch_size=int(batch_size),
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip,
        pin_memory=torch.cuda.is_available(),
        drop_last=bool(train) and len(sampler) > batch_size,
        persistent_workers=workers > 0,
    )
