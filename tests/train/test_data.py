import numpy as np
import pytest
import torch

from bnn_transfer.host.datasets import open_dataset
from bnn_transfer.host.preprocess import Preprocess, eval_transform
from bnn_transfer.train.data import EpochSampler, ImageTorchDataset, collate_skip, make_loader
from bnn_transfer.train.imagecache import ImageCache

PP = Preprocess.for_input_size(32)


@pytest.fixture
def folder_with_bad_images(tmp_path, image_tools):
    """10 readable training images of 2 classes plus one corrupt and one truncated JPEG."""
    root = tmp_path / "data"
    for k, c in enumerate(["a", "b"]):
        for j in range(5):
            image_tools.write_image(root / "train" / c / ("%d.jpg" % j), seed=k, size=(30 + 7 * j, 50))
        image_tools.write_image(root / "test" / c / "0.jpg", seed=k)
    image_tools.write_corrupt(root / "train" / "a" / "bad.jpg")
    image_tools.write_truncated(root / "train" / "b" / "cut.jpg")
    return root


def drain(loader):
    xs, ys, dropped = [], [], 0
    for x, y, d in loader:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        if x.shape[0]:
            assert x.shape[1:] == (3, 32, 32)
            xs.append(x)
            ys.append(y)
        dropped += int(d)
    return torch.cat(xs), torch.cat(ys), dropped


def test_eval_loader_yields_nchw_uint8_matching_host_preprocessing():
    ds = open_dataset("synthetic-transfer", "test", n_test_per_class=3)
    loader = make_loader(ds, PP, False, 8, 0, 0)
    x, y, dropped = drain(loader)
    assert x.shape == (30, 3, 32, 32) and dropped == 0
    np.testing.assert_array_equal(y.numpy(), ds.labels)  # evaluation keeps the dataset order
    for i in (0, 17, 29):
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), eval_transform(ds.load(i), PP))


def test_train_loader_is_reproducible_per_epoch():
    ds = open_dataset("synthetic", "train", num_classes=4, n_train_per_class=5)

    def epoch_batches(epoch, workers):
        loader = make_loader(ds, PP, True, 6, workers, seed=3)
        loader.set_epoch(epoch)
        return drain(loader)

    x0, y0, _ = epoch_batches(0, 0)
    assert x0.shape[0] == 18  # 20 images, the last partial batch of 2 is dropped in training
    x0b, y0b, _ = epoch_batches(0, 2)  # worker processes change nothing
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)
    x1, y1, _ = epoch_batches(1, 0)
    assert not torch.equal(y0, y1)  # reshuffled
    # The same image gets another crop/flip in another epoch, the same one in the same epoch.
    tds = ImageTorchDataset(ds, PP, True, seed=3)
    assert torch.equal(tds[(0, 5)][0], tds[(0, 5)][0])
    assert any(not torch.equal(tds[(0, i)][0], tds[(1, i)][0]) for i in range(len(ds)))


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_skipped_and_counted_on_the_fly(folder_with_bad_images, workers, capsys):
    ds = open_dataset("folder", "train", str(folder_with_bad_images))
    assert len(ds) == 12
    for train in (False, True):
        loader = make_loader(ds, PP, train, 4, workers, 0)
        for epoch in range(2):
            loader.set_epoch(epoch)
            x, y, dropped = drain(loader)
            assert dropped == 2 and x.shape[0] == 10  # 12 % 4 == 0: no partial batch to drop
            assert sorted(y.tolist()) == [0] * 5 + [1] * 5
    if workers == 0:
        assert "warning: skipping unreadable image %s" % folder_with_bad_images in capsys.readouterr().err


def test_cache_path_skips_the_same_images_and_gives_the_same_pixels(folder_with_bad_images, tmp_path):
    ds = open_dataset("folder", "train", str(folder_with_bad_images))
    plain = drain(make_loader(ds, PP, False, 5, 0, 0))
    cached = make_loader(ds, PP, False, 5, 0, 0, cache_dir=str(tmp_path / "cache"))
    assert isinstance(cached.dataset.cache, ImageCache) and len(cached.dataset.cache.bad) == 2
    x, y, dropped = drain(cached)
    assert dropped == 2
    assert torch.equal(x, plain[0]) and torch.equal(y, plain[1])
    # Batches of 4 cover all 12 images in training too (no partial batch to drop).
    tr_plain = make_loader(ds, PP, True, 4, 0, 7)
    tr_cached = make_loader(ds, PP, True, 4, 0, 7, cache_dir=str(tmp_path / "cache"))
    assert not tr_cached.dataset.cache.rebuilt
    a, b = drain(tr_plain), drain(tr_cached)
    assert torch.equal(a[0], b[0]) and a[2] == b[2] == 2


def test_collate_skip():
    img = torch.zeros((3, 4, 4), dtype=torch.uint8)
    x, y, d = collate_skip([(img, 1), None, (img + 1, 2)])
    assert x.shape == (2, 3, 4, 4) and y.tolist() == [1, 2] and d == 1
    x, y, d = collate_skip([None, None])
    assert x.shape[0] == 0 and y.shape == (0,) and d == 2


def test_distributed_sampler_shards_and_reshuffles(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="file://%s" % (tmp_path / "pg"), rank=0, world_size=1)
    try:
        s = EpochSampler(10, shuffle=True, seed=1, distributed=True)
        first = [i for _, i in s]
        s.set_epoch(1)
        second = list(s)
        assert sorted(first) == list(range(10)) and len(s) == 10
        assert all(e == 1 for e, _ in second) and [i for _, i in second] != first
        ds = open_dataset("synthetic-transfer", "test", n_test_per_class=1)
        loader = make_loader(ds, PP, False, 4, 0, 0, cache_dir=str(tmp_path / "c"), distributed=True)
        assert drain(loader)[0].shape[0] == 10
    finally:
        dist.destroy_process_group()


def test_training_without_flip_never_mirrors():
    from bnn_transfer.host.preprocess import random_crop_flip

    img = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    mirrored = [not np.array_equal(random_crop_flip(img, 10, np.random.default_rng(s)), img) for s in range(20)]
    assert any(mirrored)
    for s in range(20):
        np.testing.assert_array_equal(random_crop_flip(img, 10, np.random.default_rng(s), flip=False), img)
