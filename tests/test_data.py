"""Datasets: real MNIST and Fashion-MNIST from the shared folder, CIFAR-10 / SVHN on tiny files written in
torchvision's own formats, the halves for transfer, the in-memory path and the missing-data error."""
import os

import numpy as np
import pytest
import torch

from lottery_nb.data import (DATA_ENV, DATASETS, BatchLoader, DatasetNotFoundError, data_root, get_dataset, get_spec,
                             half_split, load_in_memory)
from lottery_nb.models import get_model

# label counts of the canonical MNIST release
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist(real_data):
    train, test = load_in_memory("mnist", True, real_data), load_in_memory("mnist", False, real_data)
    assert train.x.shape == (60_000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert len(test) == 10_000
    assert torch.bincount(train.y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.y).tolist() == MNIST_TEST_COUNTS
    x = train.x.float() / 255  # the normalisation constants are MNIST's own
    assert x.mean().item() == pytest.approx(get_spec("mnist").mean[0], abs=1e-4)
    assert x.std().item() == pytest.approx(get_spec("mnist").std[0], abs=1e-4)
    xb, yb = next(iter(BatchLoader(train, 60, shuffle=True)))
    assert xb.shape == (60, 1, 28, 28) and yb.shape == (60,)
    out = get_model("lenet_300_100")(xb)
    assert out.shape == (60, 10) and torch.isfinite(out).all()


def test_real_fashion_mnist(real_data):
    train = load_in_memory("fashion_mnist", True, real_data)
    assert len(train) == 60_000 and len(load_in_memory("fashion_mnist", False, real_data)) == 10_000
    assert torch.bincount(train.y).tolist() == [6000] * 10
    x = train.x.float() / 255
    assert x.mean().item() == pytest.approx(0.2860, abs=1e-4) and x.std().item() == pytest.approx(0.3530, abs=1e-4)


def test_in_memory_batches_equal_torchvision_samples(real_data):
    mem = load_in_memory("mnist", False, real_data)
    ds = get_dataset("mnist", False, real_data)
    xb, yb = mem.batch(torch.arange(100, 164))
    ref = torch.stack([ds[i][0] for i in range(100, 164)])
    assert torch.allclose(xb, ref, atol=1e-6)
    assert yb.tolist() == [ds[i][1] for i in range(100, 164)]


def test_mnist_halves(real_data):
    a, b = load_in_memory("mnist_a", True, real_data), load_in_memory("mnist_b", True, real_data)
    assert len(a) + len(b) == 60_000
    counts = torch.bincount(a.y) + torch.bincount(b.y)
    assert counts.tolist() == MNIST_TRAIN_COUNTS
    assert (torch.bincount(b.y) - torch.bincount(a.y)).tolist() == [c % 2 for c in MNIST_TRAIN_COUNTS]
    assert len(load_in_memory("mnist_a", False, real_data)) == 10_000  # the test set is MNIST's


def test_cifar10_tiny_files(tiny_cifar10):
    train = get_dataset("cifar10", True, tiny_cifar10)
    test = get_dataset("cifar10", False, tiny_cifar10)
    assert len(train) == 100 and len(test) == 30
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    mem = load_in_memory("cifar10", False, tiny_cifar10)
    assert mem.x.shape == (30, 3, 32, 32) and not mem.augment
    # in memory (HWC array turned to CHW) equals torchvision's per-sample path
    ref = torch.stack([test[i][0] for i in range(30)])
    assert torch.allclose(mem.batch(torch.arange(30))[0], ref, atol=1e-6)
    assert mem.y.tolist() == [test[i][1] for i in range(30)]


def test_cifar10_augmentation_is_on_for_training_and_switchable(tiny_cifar10):
    train = load_in_memory("cifar10", True, tiny_cifar10)
    assert train.augment and not load_in_memory("cifar10", True, tiny_cifar10, augment=False).augment
    idx = torch.arange(100)
    plain, _ = load_in_memory("cifar10", True, tiny_cifar10, augment=False).batch(idx)
    aug, _ = train.batch(idx, torch.Generator().manual_seed(0))
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    # torchvision path: two reads of one augmented sample differ, the unaugmented ones do not
    ds = get_dataset("cifar10", True, tiny_cifar10)
    assert any(not torch.equal(ds[0][0], ds[0][0]) for _ in range(10))
    ds = get_dataset("cifar10", True, tiny_cifar10, augment=False)
    assert torch.equal(ds[0][0], ds[0][0])


def test_cifar10_halves(tiny_cifar10):
    full = load_in_memory("cifar10", True, tiny_cifar10, augment=False)
    a = get_dataset("cifar10a", True, tiny_cifar10)
    b = get_dataset("cifar10b", True, tiny_cifar10)
    ia, ib = set(a.indices), set(b.indices)
    assert not ia & ib and ia | ib == set(range(100))
    # 5,000 per class halve to 2,500; 10 per class here halve to exactly 5
    assert torch.bincount(full.y[sorted(ia)]).tolist() == [5] * 10
    assert torch.bincount(full.y[sorted(ib)]).tolist() == [5] * 10
    # stable across calls, and the in-memory halves hold exactly those images
    assert get_dataset("cifar10a", True, tiny_cifar10).indices == a.indices
    ma = load_in_memory("cifar10a", True, tiny_cifar10)
    assert torch.equal(ma.x, full.x[sorted(ia)]) and torch.equal(ma.y, full.y[sorted(ia)])
    # their test set is CIFAR-10's
    assert len(get_dataset("cifar10b", False, tiny_cifar10)) == 30


def test_svhn_tiny_files(tiny_svhn):
    train, test = get_dataset("svhn", True, tiny_svhn), get_dataset("svhn", False, tiny_svhn)
    assert len(train) == 40 and len(test) == 20  # split 'train' is train, 'test' is test
    mem = load_in_memory("svhn", False, tiny_svhn)
    assert mem.x.shape == (20, 3, 32, 32)
    assert torch.bincount(mem.y).tolist() == [2] * 10  # label 10 on disk is the digit 0
    ref = torch.stack([test[i][0] for i in range(20)])
    assert torch.allclose(mem.batch(torch.arange(20))[0], ref, atol=1e-6)
    assert load_in_memory("svhn", True, tiny_svhn).augment and get_spec("svhn").augment == "crop"  # no flips of digits


def test_half_split_is_balanced_disjoint_and_stable():
    y = np.repeat(np.arange(10), 5000)
    a, b = half_split(y)
    assert len(a) == len(b) == 25_000 and not np.intersect1d(a, b).size
    assert (np.bincount(y[a]) == 2500).all() and (np.bincount(y[b]) == 2500).all()
    yp = np.random.default_rng(0).permutation(y)
    a2, b2 = half_split(yp)
    assert (np.bincount(yp[a2]) == 2500).all() and (np.bincount(yp[b2]) == 2500).all()
    assert np.array_equal(half_split(y)[0], a)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar10a", "svhn"])
def test_missing_data_gives_one_clear_error(name, tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_in_memory(name, True, tmp_path / "empty")
    msg = str(e.value)
    assert name in msg and str(tmp_path / "empty") in msg and "download=True" in msg and DATA_ENV in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no torchvision traceback attached


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError) as e: get_dataset("imagenet")
    assert all(n in str(e.value) for n in DATASETS)


def test_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert data_root() == tmp_path and data_root("/x") == data_root("/x")
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root() == tmp_path / "cache" / "lottery_nb" / "data"


def test_digits_needs_no_files_and_has_a_fixed_split(tmp_path):
    a, b = load_in_memory("digits", True, tmp_path), load_in_memory("digits", True, tmp_path)
    assert len(a) == 1347 and len(load_in_memory("digits", False, tmp_path)) == 450
    assert torch.equal(a.x, b.x) and a.x.shape == (1347, 1, 8, 8) and int(a.x.max()) == 16


def test_batch_loader_covers_every_sample_once_per_epoch():
    mem = load_in_memory("digits")
    loader = BatchLoader(mem, 100, shuffle=True, seed=0)
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == len(mem) and torch.equal(torch.sort(seen).values, torch.sort(mem.y).values)
    e1 = torch.cat([x.sum((1, 2, 3)) for x, _ in loader])
    e2 = torch.cat([x.sum((1, 2, 3)) for x, _ in loader])
    assert not torch.equal(e1, e2)  # a new order each epoch
    with pytest.raises(ValueError, match="batch_size"): BatchLoader(mem, 0)
