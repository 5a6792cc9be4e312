import pickle

import numpy as np
import pytest

from tasks.data import DATASETS, DataError, MissingDataError, dataset_status, load_dataset
from tasks.data.loaders import load_cifar10
from tests.conftest import require_shared


def test_registry_has_every_dataset_of_the_issue():
    assert set(DATASETS.names()) >= {"digits", "breast_cancer", "cifar10", "mnist",
                                     "fashion_mnist", "adult", "german_credit", "pima_diabetes"}


def test_digits_is_images_in_unit_range_with_fixed_split():
    d = load_dataset("digits")
    assert d.kind == "image" and d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1 and d.x_train.dtype == np.float32
    assert len(d.y_train) + len(d.y_test) == 1797
    again = load_dataset.__wrapped__ if hasattr(load_dataset, "__wrapped__") else None
    assert again is None  # the split does not depend on call order: it is seeded
    from tasks.data.loaders import load_digits

    np.testing.assert_array_equal(load_digits(None).y_test, d.y_test)


def test_breast_cancer_is_standardised_on_train_only():
    d = load_dataset("breast_cancer")
    assert d.kind == "tabular" and d.x_train.shape[1] == 30
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    assert not np.allclose(d.x_test.mean(axis=0), 0, atol=1e-3)


def test_missing_files_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(MissingDataError) as info:
        load_dataset("adult", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "adult") in message and "adult.data" in message


def test_status_reports_availability(tmp_path):
    rows = {r["name"]: r for r in dataset_status(tmp_path)}
    assert rows["digits"]["available"] and not rows["mnist"]["available"]


def test_cifar_official_python_batches_are_read_with_the_restricted_unpickler(tmp_path):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 b"labels": [0, 1, 2, 3], b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    d = load_cifar10(tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    # R plane first: pixel (0,0) of channel 0 is byte 0 of the row.
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"]
    assert d.x_train[0, 0, 0, 0] == pytest.approx(raw[0, 0] / 255)
    assert d.x_train[0, 1, 0, 0] == pytest.approx(raw[0, 1024] / 255)


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    folder = tmp_path / "cifar10"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path)
    # The refusal names the file and the global; the command never ran.
    assert info.value.path == folder / "data_batch_1"
    assert "refused pickle global posix.system" in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


@pytest.mark.parametrize("name,folder,file,n_train,shape", [
    ("cifar10", "cifar10", "cifar10_subset.npz", 8068, (3, 32, 32)),
    ("mnist", "mnist", "train-images-idx3-ubyte.gz", 60000, (1, 28, 28)),
    ("fashion_mnist", "fashion-mnist", "train-images-idx3-ubyte.gz", 60000, (1, 28, 28)),
    ("adult", "adult", "adult.data", 32561, (14,)),
    ("german_credit", "german-credit", "german.data", 800, (20,)),
    ("pima_diabetes", "pima-diabetes", "diabetes.arff", 614, (8,)),
])
def test_shared_datasets_load(name, folder, file, n_train, shape):
    require_shared(folder, file)
    d = load_dataset(name)
    assert len(d.y_train) == n_train and d.input_shape == shape
    assert set(np.unique(d.y_train)) == set(range(d.num_classes))
