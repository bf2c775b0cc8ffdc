"""Shared fixtures.

Real data: the tests use `LOTTERY_NB_TEST_DATA`, else `../shared/data` beside the checkout, when it exists.
Without it, the tests on real data are skipped, except where `LOTTERY_NB_REQUIRE_REAL_DATA=1` (as `.ci/run`
sets): then a missing folder fails them, so CI can never pass by skipping the real path."""
import hashlib
import os
import pickle
from pathlib import Path

# One OpenMP thread in the test process and in every command it starts, as the runs have by default: on a busy
# machine (a test suite beside other work) several spinning threads per process slow small networks down many times.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = Path(os.environ.get("LOTTERY_NB_TEST_DATA") or REPO.parent / "shared" / "data")
    if not (root / "MNIST" / "raw").is_dir():
        msg = f"real MNIST/Fashion-MNIST not found under {root}; set LOTTERY_NB_TEST_DATA"
        if os.environ.get("LOTTERY_NB_REQUIRE_REAL_DATA") == "1": pytest.fail(msg)
        pytest.skip(msg)
    return root


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def tiny_labels(per_class: int, num_classes: int = 10) -> np.ndarray:
    "A shuffled label vector with exactly `per_class` samples of each class."
    y = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(per_class).permutation(y)


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch) -> Path:
    """A CIFAR-10 folder in torchvision's on-disk format (pickled batches, `batches.meta`): 5 training batches
    of 20 images (10 per class in all) and a test batch of 30 (3 per class). torchvision checks the md5 of
    every file against the real release; the class's expected md5s are set to these files' own."""
    import torchvision
    folder = tmp_path / "cifar-10-batches-py"; folder.mkdir()
    rng = np.random.default_rng(0)
    y_train, y_test = tiny_labels(10), tiny_labels(3)
    train_list, test_list = [], []
    for i in range(5):
        name = f"data_batch_{i + 1}"
        ys = y_train[i * 20:(i + 1) * 20]
        entry = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": ys.tolist(), "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(entry)); train_list.append([name, md5(folder / name)])
    entry = {"data": rng.integers(0, 256, (30, 3072), dtype=np.uint8), "labels": y_test.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(entry)); test_list.append(["test_batch", md5(folder / "test_batch")])
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")})
    return tmp_path


@pytest.fixture
def tiny_svhn(tmp_path, monkeypatch) -> Path:
    """SVHN's cropped-digits format: `train_32x32.mat` / `test_32x32.mat` with X of shape (32, 32, 3, N) and
    labels 1..10, where 10 stands for the digit 0. 4 training images per class, 2 test images per class."""
    import scipy.io
    import torchvision
    rng = np.random.default_rng(1)
    split_list = {}
    for split, per_class in (("train", 4), ("test", 2)):
        y = tiny_labels(per_class)
        X = rng.integers(0, 256, (32, 32, 3, len(y)), dtype=np.uint8)
        name = f"{split}_32x32.mat"
        scipy.io.savemat(tmp_path / name, {"X": X, "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
        split_list[split] = ["http://example.invalid/" + name, name, md5(tmp_path / name)]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", split_list)
    return tmp_path


@pytest.fixture(autouse=True)
def no_global_state_left_changed():
    """Every test leaves PyTorch's thread count and the project's environment variables as it found them: a leak would
    change later tests' numbers. (Libraries set variables of their own when first imported or when they start workers,
    such as KMP_DUPLICATE_LIB_OK or Dask's MKL_NUM_THREADS; those are not the tests' doing.)"""
    import torch
    ours = lambda: {k: v for k, v in os.environ.items() if k.startswith("LOTTERY_NB_")}
    threads, env = torch.get_num_threads(), ours()
    yield
    assert torch.get_num_threads() == threads, f"the test changed torch's thread count from {threads} to {torch.get_num_threads()}"
    now = ours()
    changed = sorted(k for k in set(env) | set(now) if env.get(k) != now.get(k))
    assert not changed, f"the test changed environment variables: {changed}"
