"""Loaders for every registered dataset. Formats follow shared/data/MANIFEST.md."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tasks.data.base import (
    DATASETS,
    Dataset,
    DatasetInfo,
    MissingDataError,
    dataset_folder,
    seeded_split,
    standardise,
)
from tasks.data.safe_pickle import safe_load

# Datasets without an official test split get a fixed, documented one.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _register(name, kind, description, folder=None, expected=()):
    def decorate(loader):
        DATASETS.register(name)(
            DatasetInfo(name, kind, description, folder, tuple(expected), loader)
        )
        return loader

    return decorate


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)


def _image_dataset(name, x_train, y_train, x_test, y_test, num_classes, class_names=()):
    mean, std = _channel_stats(x_train)
    return Dataset(name, "image", x_train, y_train.astype(np.int64), x_test,
                   y_test.astype(np.int64), num_classes, mean, std, tuple(class_names))


# --- bundled with scikit-learn ------------------------------------------------------------

@_register("digits", "image", "8x8 handwritten digits, 1797 images, 10 classes (scikit-learn)")
def load_digits(_root: Path | None) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    tr, te = seeded_split(len(y), TEST_FRACTION, SPLIT_SEED)
    return _image_dataset("digits", x[tr], y[tr], x[te], y[te], 10,
                          [str(i) for i in range(10)])


@_register("breast_cancer", "tabular",
           "Wisconsin diagnostic breast cancer, 569 x 30, 2 classes (medical; scikit-learn)")
def load_breast_cancer(_root: Path | None) -> Dataset:
    from sklearn.datasets import load_breast_cancer as sk_bc

    bunch = sk_bc()
    tr, te = seeded_split(len(bunch.target), TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te = standardise(bunch.data[tr].astype(np.float64), bunch.data[te].astype(np.float64))
    return Dataset("breast_cancer", "tabular", x_tr, bunch.target[tr].astype(np.int64), x_te,
                   bunch.target[te].astype(np.int64), 2,
                   class_names=tuple(str(c) for c in bunch.target_names))


# --- images under the data root -------------------------------------------------------------

_CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_to_images(flat: np.ndarray) -> np.ndarray:
    # Official layout: 1024 R, 1024 G, 1024 B values per row, each plane row-major 32x32.
    return (np.asarray(flat, dtype=np.uint8).reshape(-1, 3, 32, 32) / 255.0).astype(np.float32)


@_register(
    "cifar10", "image", "CIFAR-10, 32x32 RGB, 10 classes (official batches or the subset archive)",
    folder="cifar10",
    expected=["cifar10_subset.npz", " + ".join(_CIFAR_BATCHES)],
)
def load_cifar10(root: Path | None) -> Dataset:
    info = DATASETS.get("cifar10")
    folder = dataset_folder(info, root)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    if all((folder / b).exists() for b in _CIFAR_BATCHES):
        xs, ys = [], []
        for batch in _CIFAR_BATCHES[:5]:
            with open(folder / batch, "rb") as fh:
                d = safe_load(fh, encoding="bytes")
            xs.append(_cifar_to_images(d[b"data"]))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        with open(folder / "test_batch", "rb") as fh:
            d = safe_load(fh, encoding="bytes")
        return _image_dataset("cifar10", np.concatenate(xs), np.concatenate(ys),
                              _cifar_to_images(d[b"data"]),
                              np.asarray(d[b"labels"], dtype=np.int64), 10, names)
    archive = folder / "cifar10_subset.npz"
    if not archive.exists():
        raise MissingDataError("cifar10", folder, list(info.expected))
    with np.load(archive, allow_pickle=False) as d:
        return _image_dataset("cifar10", _cifar_to_images(d["x_train"]), d["y_train"],
                              _cifar_to_images(d["x_test"]), d["y_test"], 10, names)


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic 0x000008NN, then NN big-endian dimension sizes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _load_idx_dataset(name: str, root: Path | None, class_names) -> Dataset:
    info = DATASETS.get(name)
    folder = dataset_folder(info, root)
    paths = [folder / f for f in _IDX_FILES]
    if not all(p.exists() for p in paths):
        raise MissingDataError(name, folder, list(info.expected))
    x_tr, y_tr, x_te, y_te = (read_idx(p) for p in paths)
    to_float = lambda x: (x[:, None, :, :] / 255.0).astype(np.float32)
    return _image_dataset(name, to_float(x_tr), y_tr, to_float(x_te), y_te, 10, class_names)


@_register("mnist", "image", "MNIST, 28x28 grey, 60k + 10k, 10 classes (IDX)",
           folder="mnist", expected=[" + ".join(_IDX_FILES)])
def load_mnist(root: Path | None) -> Dataset:
    return _load_idx_dataset("mnist", root, [str(i) for i in range(10)])


@_register("fashion_mnist", "image", "Fashion-MNIST, 28x28 grey, 60k + 10k, 10 classes (IDX)",
           folder="fashion-mnist", expected=[" + ".join(_IDX_FILES)])
def load_fashion_mnist(root: Path | None) -> Dataset:
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle-boot"]
    return _load_idx_dataset("fashion_mnist", root, names)


# --- tabular under the data root ------------------------------------------------------------

def _encode_table(rows: np.ndarray, numeric: list[int]) -> np.ndarray:
    """Numeric columns as floats; categoricals label-encoded (sorted categories, '?' -> mode)."""
    cols = []
    for j in range(rows.shape[1]):
        col = rows[:, j]
        missing = col == "?"
        if missing.any():
            values, counts = np.unique(col[~missing], return_counts=True)
            col = np.where(missing, values[np.argmax(counts)], col)
        if j in numeric:
            cols.append(col.astype(np.float64))
        else:
            _, codes = np.unique(col, return_inverse=True)
            cols.append(codes.astype(np.float64))
    return np.stack(cols, axis=1)


@_register("adult", "tabular", "UCI Adult census income, 48,842 x 14, 2 classes",
           folder="adult", expected=["adult.data + adult.test"])
def load_adult(root: Path | None) -> Dataset:
    info = DATASETS.get("adult")
    folder = dataset_folder(info, root)
    train_path, test_path = folder / "adult.data", folder / "adult.test"
    if not (train_path.exists() and test_path.exists()):
        raise MissingDataError("adult", folder, list(info.expected))

    def read(path: Path, skip: int) -> np.ndarray:
        lines = path.read_text().splitlines()[skip:]
        rows = [[c.strip() for c in ln.split(",")] for ln in lines if ln.strip()]
        return np.array(rows, dtype=str)

    tr, te = read(train_path, 0), read(test_path, 1)
    both = np.concatenate([tr, te])
    y = (np.char.rstrip(both[:, -1], ".") == ">50K").astype(np.int64)
    # Encode train and test together so category codes agree; scale with train statistics.
    x = _encode_table(both[:, :-1], numeric=[0, 2, 4, 10, 11, 12])
    n = len(tr)
    x_tr, x_te = standardise(x[:n], x[n:])
    return Dataset("adult", "tabular", x_tr, y[:n], x_te, y[n:], 2,
                   class_names=("<=50K", ">50K"))


@_register("german_credit", "tabular",
           "UCI Statlog German credit, 1000 x 20, 2 classes (financial)",
           folder="german-credit", expected=["german.data"])
def load_german_credit(root: Path | None) -> Dataset:
    info = DATASETS.get("german_credit")
    folder = dataset_folder(info, root)
    path = folder / "german.data"
    if not path.exists():
        raise MissingDataError("german_credit", folder, list(info.expected))
    rows = np.array([ln.split() for ln in path.read_text().splitlines() if ln.strip()], dtype=str)
    y = (rows[:, -1] == "2").astype(np.int64)  # 1 = bad credit risk
    x = _encode_table(rows[:, :-1], numeric=[1, 4, 7, 10, 12, 15, 17])
    tr, te = seeded_split(len(y), TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te = standardise(x[tr], x[te])
    return Dataset("german_credit", "tabular", x_tr, y[tr], x_te, y[te], 2,
                   class_names=("good", "bad"))


@_register("pima_diabetes", "tabular", "Pima Indians diabetes, 768 x 8, 2 classes (medical, ARFF)",
           folder="pima-diabetes", expected=["diabetes.arff"])
def load_pima(root: Path | None) -> Dataset:
    info = DATASETS.get("pima_diabetes")
    folder = dataset_folder(info, root)
    path = folder / "diabetes.arff"
    if not path.exists():
        raise MissingDataError("pima_diabetes", folder, list(info.expected))
    lines = path.read_text().splitlines()
    start = [ln.strip().lower() for ln in lines].index("@data") + 1
    rows = [ln.split(",") for ln in lines[start:] if ln.strip() and not ln.startswith("%")]
    x = np.array([r[:8] for r in rows], dtype=np.float64)
    y = np.array([r[8].strip() == "tested_positive" for r in rows], dtype=np.int64)
    tr, te = seeded_split(len(y), TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te = standardise(x[tr], x[te])
    return Dataset("pima_diabetes", "tabular", x_tr, y[tr], x_te, y[te], 2,
                   class_names=("negative", "positive"))
