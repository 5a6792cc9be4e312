"""Loaders for every registered dataset. Formats follow shared/data/MANIFEST.md."""

from __future__ import annotations

import functools
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
from tasks.data.formats import (
    check_labels,
    check_pixels,
    check_same_count,
    read_cifar_batch,
    read_idx,
    read_npz,
    read_rows,
)

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


def image_dataset(name, x_train, y_train, x_test, y_test, num_classes, class_names=()):
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
    return image_dataset("digits", x[tr], y[tr], x[te], y[te], 10,
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


def _read_cifar_npz(archive: Path) -> tuple[np.ndarray, ...]:
    d = read_npz(archive, ["x_train", "y_train", "x_test", "y_test"])
    out = []
    for split in ("train", "test"):
        x = check_pixels(archive, d[f"x_{split}"], 3 * 32 * 32, f"array 'x_{split}'")
        y = check_labels(archive, d[f"y_{split}"], 10, f"array 'y_{split}'")
        check_same_count(archive, len(y), archive, len(x), f"y_{split} labels",
                         f"x_{split} images")
        out += [x, y]
    return tuple(out)


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
        # Read every batch before converting any: a bad test_batch is reported at once.
        batches = [read_cifar_batch(folder / b) for b in _CIFAR_BATCHES]
        x_tr = np.concatenate([x for x, _ in batches[:5]])
        y_tr = np.concatenate([y for _, y in batches[:5]])
        x_te, y_te = batches[5]
    else:
        archive = folder / "cifar10_subset.npz"
        if not archive.exists():
            raise MissingDataError("cifar10", folder, list(info.expected))
        x_tr, y_tr, x_te, y_te = _read_cifar_npz(archive)
    return image_dataset("cifar10", _cifar_to_images(x_tr), y_tr, _cifar_to_images(x_te), y_te,
                          10, names)


_IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _load_idx_dataset(name: str, root: Path | None, class_names) -> Dataset:
    info = DATASETS.get(name)
    folder = dataset_folder(info, root)
    paths = [folder / f for f in _IDX_FILES]
    if not all(p.exists() for p in paths):
        raise MissingDataError(name, folder, list(info.expected))
    splits = []
    for images, labels in (paths[:2], paths[2:]):
        x = read_idx(images, 3, (28, 28))
        y = check_labels(labels, read_idx(labels, 1), 10)
        check_same_count(labels, len(y), images, len(x))
        splits += [(x[:, None, :, :] / 255.0).astype(np.float32), y]
    return image_dataset(name, *splits, 10, class_names)


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


_ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
                  "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
                  "hours_per_week", "native_country", "income"]
_ADULT_NUMERIC = [0, 2, 4, 10, 11, 12]
# adult.test writes its classes with a trailing dot.
_ADULT_CLASSES = {"<=50K": 0, ">50K": 1, "<=50K.": 0, ">50K.": 1}


@_register("adult", "tabular", "UCI Adult census income, 48,842 x 14, 2 classes",
           folder="adult", expected=["adult.data + adult.test"])
def load_adult(root: Path | None) -> Dataset:
    info = DATASETS.get("adult")
    folder = dataset_folder(info, root)
    train_path, test_path = folder / "adult.data", folder / "adult.test"
    if not (train_path.exists() and test_path.exists()):
        raise MissingDataError("adult", folder, list(info.expected))
    read = functools.partial(read_rows, columns=_ADULT_COLUMNS, numeric=_ADULT_NUMERIC,
                             classes=_ADULT_CLASSES)
    tr, y_tr = read(train_path)
    te, y_te = read(test_path, skip=1)  # its line 1 is "|1x3 Cross validator"
    # Encode train and test together so category codes agree; scale with train statistics.
    x = _encode_table(np.concatenate([tr, te]), numeric=_ADULT_NUMERIC)
    n = len(tr)
    x_tr, x_te = standardise(x[:n], x[n:])
    return Dataset("adult", "tabular", x_tr, y_tr, x_te, y_te, 2,
                   class_names=("<=50K", ">50K"))


_GERMAN_COLUMNS = ["status", "duration", "credit_history", "purpose", "amount", "savings",
                   "employment", "installment_rate", "personal_status", "other_debtors",
                   "residence_since", "property", "age", "other_installment_plans", "housing",
                   "existing_credits", "job", "people_liable", "telephone", "foreign_worker",
                   "class"]
_GERMAN_NUMERIC = [1, 4, 7, 10, 12, 15, 17]


@_register("german_credit", "tabular",
           "UCI Statlog German credit, 1000 x 20, 2 classes (financial)",
           folder="german-credit", expected=["german.data"])
def load_german_credit(root: Path | None) -> Dataset:
    info = DATASETS.get("german_credit")
    folder = dataset_folder(info, root)
    path = folder / "german.data"
    if not path.exists():
        raise MissingDataError("german_credit", folder, list(info.expected))
    # Space-separated; class 1 = good, 2 = bad credit risk (the positive class here).
    rows, y = read_rows(path, columns=_GERMAN_COLUMNS, numeric=_GERMAN_NUMERIC,
                        classes={"1": 0, "2": 1}, sep=None)
    x = _encode_table(rows, numeric=_GERMAN_NUMERIC)
    tr, te = seeded_split(len(y), TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te = standardise(x[tr], x[te])
    return Dataset("german_credit", "tabular", x_tr, y[tr], x_te, y[te], 2,
                   class_names=("good", "bad"))


_PIMA_COLUMNS = ["preg", "plas", "pres", "skin", "insu", "mass", "pedi", "age", "class"]


@_register("pima_diabetes", "tabular", "Pima Indians diabetes, 768 x 8, 2 classes (medical, ARFF)",
           folder="pima-diabetes", expected=["diabetes.arff"])
def load_pima(root: Path | None) -> Dataset:
    info = DATASETS.get("pima_diabetes")
    folder = dataset_folder(info, root)
    path = folder / "diabetes.arff"
    if not path.exists():
        raise MissingDataError("pima_diabetes", folder, list(info.expected))
    rows, y = read_rows(path, columns=_PIMA_COLUMNS, numeric=list(range(8)),
                        classes={"tested_negative": 0, "tested_positive": 1},
                        after="@data", comment="%")
    x = _encode_table(rows, numeric=list(range(8)))
    tr, te = seeded_split(len(y), TEST_FRACTION, SPLIT_SEED)
    x_tr, x_te = standardise(x[tr], x[te])
    return Dataset("pima_diabetes", "tabular", x_tr, y[tr], x_te, y[te], 2,
                   class_names=("negative", "positive"))
