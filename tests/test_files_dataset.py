"""The ``files`` dataset (issue 13): the user's own NPZ, CSV and Parquet files, read as they are.

Every case writes real files under tmp_path; malformed ones must give one DataError line that
names the file at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.data import DATASETS, DataError, load_dataset
from tasks.data import files as files_module
from tasks.data.files import load_files_dataset

RNG = np.random.default_rng(0)


def npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def labels(n: int, classes: int = 3) -> np.ndarray:
    return np.arange(n) % classes  # every class present


def tables(tmp_path: Path, train: pd.DataFrame, test: pd.DataFrame, fmt: str
           ) -> tuple[Path, Path]:
    paths = tmp_path / f"train.{fmt}", tmp_path / f"test.{fmt}"
    for df, p in zip((train, test), paths):
        df.to_csv(p, index=False) if fmt == "csv" else df.to_parquet(p, index=False)
    return paths


def frame(n: int, label_values: list) -> pd.DataFrame:
    return pd.DataFrame({"age": RNG.integers(18, 90, n), "income": RNG.normal(5e4, 1e4, n),
                         "y": [label_values[i % len(label_values)] for i in range(n)]})


# --- NPZ -----------------------------------------------------------------------------------

def test_channels_first_floats_in_unit_range_are_used_as_they_are(tmp_path):
    x_tr = RNG.random((12, 3, 5, 6)).astype(np.float32)
    x_te = RNG.random((6, 3, 5, 6)).astype(np.float32)
    d = load_files_dataset(npz(tmp_path / "d.npz", x_train=x_tr, y_train=labels(12),
                               x_test=x_te, y_test=labels(6)))
    assert (d.name, d.kind, d.num_classes, d.input_shape) == ("files", "image", 3, (3, 5, 6))
    np.testing.assert_array_equal(d.x_train, x_tr)
    np.testing.assert_array_equal(d.x_test, x_te)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    np.testing.assert_allclose(d.mean, x_tr.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert d.class_names == ("0", "1", "2")


def test_channels_last_uint8_becomes_channels_first_over_255(tmp_path):
    x_tr = RNG.integers(0, 256, (10, 7, 5, 3), dtype=np.uint8)
    x_te = RNG.integers(0, 256, (4, 7, 5, 3), dtype=np.uint8)
    d = load_files_dataset(npz(tmp_path / "d.npz", x_train=x_tr, y_train=labels(10, 2),
                               x_test=x_te, y_test=labels(4, 2)[:, None]))  # Keras' (N, 1)
    assert d.input_shape == (3, 7, 5) and d.x_train.dtype == np.float32
    np.testing.assert_allclose(d.x_train, x_tr.transpose(0, 3, 1, 2) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(d.x_test[1, 2, 6, 4], x_te[1, 6, 4, 2] / 255.0, rtol=1e-6)
    assert d.y_test.shape == (4,) and d.num_classes == 2


def test_grey_images_without_a_channel_axis_get_one(tmp_path):
    x_tr = RNG.integers(0, 256, (9, 8, 8)).astype(np.float64)  # floats 0..255 are / 255 too
    d = load_files_dataset(npz(tmp_path / "d.npz", x_train=x_tr, y_train=labels(9),
                               x_test=x_tr[:3], y_test=labels(3)))
    assert d.input_shape == (1, 8, 8)
    np.testing.assert_allclose(d.x_train[:, 0], x_tr / 255.0, rtol=1e-6)


def test_tabular_rows_are_not_standardised(tmp_path):
    x_tr = RNG.normal(100.0, 20.0, (20, 4))
    d = load_files_dataset(npz(tmp_path / "d.npz", x_train=x_tr, y_train=labels(20, 2),
                               x_test=x_tr[:5] * 3, y_test=labels(5, 2)))
    assert d.kind == "tabular" and d.input_shape == (4,) and d.mean is None and d.std is None
    np.testing.assert_allclose(d.x_train, x_tr.astype(np.float32))
    np.testing.assert_allclose(d.x_test, (x_tr[:5] * 3).astype(np.float32))


def test_digits_written_from_sklearn_round_trip(tmp_path):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target
    path = npz(tmp_path / "digits.npz", x_train=x[:1500], y_train=y[:1500],
               x_test=x[1500:], y_test=y[1500:])
    d = load_dataset("files", path=str(path))
    np.testing.assert_array_equal(d.x_train[:, 0], x[:1500])
    np.testing.assert_array_equal(d.x_test[:, 0], x[1500:])
    np.testing.assert_array_equal(d.y_train, y[:1500])
    np.testing.assert_array_equal(d.y_test, y[1500:])
    assert d.num_classes == 10 and d.input_shape == (1, 8, 8)


def test_a_changed_file_is_read_again_and_an_unchanged_one_is_cached(tmp_path):
    path = tmp_path / "d.npz"
    npz(path, x_train=np.zeros((4, 2)), y_train=labels(4, 2), x_test=np.zeros((2, 2)),
        y_test=labels(2, 2))
    first = load_files_dataset(path)
    assert load_files_dataset(str(path)) is first
    npz(path, x_train=np.ones((6, 2)), y_train=labels(6, 2), x_test=np.zeros((2, 2)),
        y_test=labels(2, 2))
    assert load_files_dataset(path).x_train.shape == (6, 2)


# --- CSV and Parquet -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_string_labels_become_sorted_class_ids(tmp_path, fmt):
    train, test = frame(9, ["no", "yes", "maybe"]), frame(4, ["yes", "no"])
    path, test_path = tables(tmp_path, train, test[["y", "income", "age"]], fmt)  # reordered
    d = load_dataset("files", path=str(path), test=str(test_path), label="y")
    assert d.kind == "tabular" and d.class_names == ("maybe", "no", "yes") and d.num_classes == 3
    np.testing.assert_array_equal(d.y_train, [1, 2, 0] * 3)
    np.testing.assert_array_equal(d.y_test, [2, 1, 2, 1])
    # Features as given, in the training file's column order, not standardised.
    np.testing.assert_allclose(d.x_train, train[["age", "income"]].to_numpy(np.float32))
    np.testing.assert_allclose(d.x_test, test[["age", "income"]].to_numpy(np.float32))
    assert d.mean is None


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_integer_labels_are_class_ids(tmp_path, fmt):
    path, test_path = tables(tmp_path, frame(8, [0, 1, 2, 3]), frame(4, [3, 2]), fmt)
    d = load_files_dataset(path, test_path, "y")
    assert d.num_classes == 4 and d.class_names == ("0", "1", "2", "3")
    np.testing.assert_array_equal(d.y_train, [0, 1, 2, 3] * 2)
    np.testing.assert_array_equal(d.y_test, [3, 2, 3, 2])


def test_parquet_decimal_features_are_numbers(tmp_path):
    from decimal import Decimal

    train = frame(4, ["a", "b"]).assign(price=[Decimal("1.25"), Decimal(2), Decimal(0),
                                              Decimal("3.5")])
    path, test = tables(tmp_path, train, train, "parquet")
    d = load_files_dataset(path, test, "y")
    np.testing.assert_allclose(d.x_train[:, 2], [1.25, 2, 0, 3.5])


def test_csv_train_with_parquet_test(tmp_path):
    path, _ = tables(tmp_path, frame(6, ["a", "b"]), frame(2, ["a"]), "csv")
    _, test_path = tables(tmp_path, frame(6, ["a"]), frame(3, ["b", "a"]), "parquet")
    d = load_files_dataset(path, test_path, "y")
    assert d.class_names == ("a", "b") and len(d.y_test) == 3


# --- URIs ----------------------------------------------------------------------------------

def test_file_uris_are_read_through_pyarrow(tmp_path):
    x = RNG.random((6, 1, 4, 4)).astype(np.float32)
    path = npz(tmp_path / "d.npz", x_train=x, y_train=labels(6, 2), x_test=x[:2],
               y_test=labels(2, 2))
    d = load_dataset("files", path=path.as_uri())
    np.testing.assert_array_equal(d.x_train, x)
    train, test = tables(tmp_path, frame(6, ["a", "b"]), frame(2, ["b", "a"]), "parquet")
    d = load_files_dataset(train.as_uri(), test.as_uri(), "y")
    assert d.class_names == ("a", "b") and d.x_test.shape == (2, 2)


def test_a_non_local_filesystem_is_copied_and_read(tmp_path, monkeypatch):
    from pyarrow.fs import _MockFileSystem

    fs = _MockFileSystem()
    fs.create_dir("bucket")
    for name, df in (("train.csv", frame(6, ["a", "b"])), ("test.csv", frame(2, ["a", "b"]))):
        with fs.open_output_stream(f"bucket/{name}") as out:
            out.write(df.to_csv(index=False).encode())
    monkeypatch.setattr(files_module, "_filesystem", lambda uri: (fs, uri.split("://")[1]))
    d = load_files_dataset("mock://bucket/train.csv", "mock://bucket/test.csv", "y")
    assert len(d.y_train) == 6 and d.class_names == ("a", "b")
    with pytest.raises(DataError) as info:
        load_files_dataset("mock://bucket/gone.csv", "mock://bucket/test.csv", "y")
    assert str(info.value) == "mock://bucket/gone.csv: no such file"


def test_a_missing_uri_is_named_as_given(tmp_path):
    uri = (tmp_path / "gone.npz").as_uri()
    with pytest.raises(DataError) as info:
        load_files_dataset(uri)
    assert str(info.value) == f"{uri}: no such file" and uri.startswith("file:///")
    with pytest.raises(DataError) as info:
        load_files_dataset("mock:///nothing/here.npz")  # a fresh, empty mock filesystem
    assert str(info.value) == "mock:///nothing/here.npz: no such file"


# --- registration ---------------------------------------------------------------------------

def test_files_is_registered_and_needs_a_path(tmp_path):
    with pytest.raises(ValueError, match="dataset.path"):
        DATASETS.get("files").loader(None)
    with pytest.raises(ValueError, match="dataset.path"):
        load_dataset("files")
    with pytest.raises(ValueError, match="takes no path, label"):
        load_dataset("digits", path=str(tmp_path / "x.npz"), label="y")
    assert load_dataset("digits").name == "digits"  # the old calls still work


# --- malformed inputs: one DataError line naming the file -----------------------------------

def _missing_array(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((2, 2)), y_train=[0, 1],
                        x_test=np.zeros((2, 2)))}, "d.npz", "missing array(s) y_test"


def _missing_file(tmp):
    return {"path": tmp / "nope.npz"}, "nope.npz", "no such file"


def _mismatched_items(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((2, 3, 4, 4)), y_train=[0, 1],
                        x_test=np.zeros((2, 3, 4, 5)), y_test=[0, 1])}, "d.npz", "must agree"


def _mismatched_counts(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((3, 2)), y_train=[0, 1],
                        x_test=np.zeros((2, 2)), y_test=[0, 1])}, "d.npz", "2 y_train labels"


def _pixels_over_255(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.full((2, 4, 4), 1000, np.uint16),
                        y_train=[0, 1], x_test=np.zeros((2, 4, 4)), y_test=[0, 1])}, \
        "d.npz", "pixel value 1000 is out of range"


def _negative_pixels(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.full((2, 4, 4), -0.5), y_train=[0, 1],
                        x_test=np.zeros((2, 4, 4)), y_test=[0, 1])}, "d.npz", "out of range"


def _nan_pixels(tmp):
    x = np.zeros((2, 4, 4))
    x[1, 2, 2] = np.nan
    return {"path": npz(tmp / "d.npz", x_train=x, y_train=[0, 1], x_test=np.zeros((2, 4, 4)),
                        y_test=[0, 1])}, "d.npz", "item 1 holds a NaN"


def _one_based_labels(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((3, 2)), y_train=[1, 2, 3],
                        x_test=np.zeros((1, 2)), y_test=[2])}, "d.npz", "class 0 has no example"


def _negative_label(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((2, 2)), y_train=[0, 1],
                        x_test=np.zeros((2, 2)), y_test=[-1, 1])}, "d.npz", "must be 0..C-1"


def _float_labels(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((2, 2)), y_train=[0.0, 1.5],
                        x_test=np.zeros((2, 2)), y_test=[0, 1])}, "d.npz", "dtype float64"


def _pickled_objects(tmp):
    x = np.empty(2, dtype=object)
    x[:] = [np.zeros(2), np.ones(3)]
    return {"path": npz(tmp / "d.npz", x_train=x, y_train=[0, 1], x_test=np.zeros((2, 2)),
                        y_test=[0, 1])}, "d.npz", "pickled Python objects"


def _not_an_npz(tmp):
    (tmp / "d.npz").write_text("x_train,y_train\n1,2\n")
    return {"path": tmp / "d.npz"}, "d.npz", "not an .npz"


def _rank_five(tmp):
    return {"path": npz(tmp / "d.npz", x_train=np.zeros((2, 1, 2, 2, 2)), y_train=[0, 1],
                        x_test=np.zeros((2, 1, 2, 2, 2)), y_test=[0, 1])}, "d.npz", "expected N x d"


def _text_feature(tmp):
    train = frame(4, ["a", "b"]).assign(colour=["red", "blue", "red", "red"])
    path, test = tables(tmp, train, train, "csv")
    return {"path": path, "test": test, "label": "y"}, "train.csv", \
        "column 'colour' is not numeric ('red' at line 2): encode it before auditing"


def _missing_value_csv(tmp):
    train = frame(4, ["a", "b"])
    train.loc[2, "income"] = None
    path, test = tables(tmp, frame(4, ["a", "b"]), train, "csv")
    return {"path": path, "test": test, "label": "y"}, "test.csv", \
        "column 'income' has missing values (first at line 4)"


def _missing_value_parquet(tmp):
    train = frame(4, ["a", "b"])
    train.loc[0, "y"] = None
    path, test = tables(tmp, train, frame(4, ["a", "b"]), "parquet")
    return {"path": path, "test": test, "label": "y"}, "train.parquet", "column 'y' has missing"


def _no_label_column(tmp):
    path, test = tables(tmp, frame(4, ["a", "b"]), frame(4, ["a", "b"]), "csv")
    return {"path": path, "test": test, "label": "class"}, "train.csv", "no label column 'class'"


def _no_test(tmp):
    path, _ = tables(tmp, frame(4, ["a", "b"]), frame(4, ["a", "b"]), "csv")
    return {"path": path, "label": "y"}, "train.csv", "needs dataset.test"


def _no_label(tmp):
    path, test = tables(tmp, frame(4, ["a", "b"]), frame(4, ["a", "b"]), "parquet")
    return {"path": path, "test": test}, "train.parquet", "needs dataset.label"


def _test_columns_differ(tmp):
    path, test = tables(tmp, frame(4, ["a", "b"]),
                        frame(4, ["a", "b"]).rename(columns={"age": "years"}), "csv")
    return {"path": path, "test": test, "label": "y"}, "test.csv", "lacks age; has extra years"


def _integer_labels_with_gap(tmp):
    path, test = tables(tmp, frame(4, [0, 2]), frame(2, [2, 0]), "csv")
    return {"path": path, "test": test, "label": "y"}, "train.csv", "class 1 has no example"


def _negative_label_in_test_table(tmp):
    path, test = tables(tmp, frame(4, [0, 1]), frame(2, [1, -3]), "csv")
    return {"path": path, "test": test, "label": "y"}, "test.csv", \
        "label column 'y': label -3 at item 1"


def _float_label_column(tmp):
    path, test = tables(tmp, frame(4, [0.5, 1.0]), frame(2, [0.5]), "parquet")
    return {"path": path, "test": test, "label": "y"}, "train.parquet", "holds floats (0.5 first)"


def _ragged_csv(tmp):
    path, test = tables(tmp, frame(4, ["a", "b"]), frame(2, ["a", "b"]), "csv")
    path.write_text(path.read_text() + "1,2,a,extra\n")
    return {"path": path, "test": test, "label": "y"}, "train.csv", "not a well-formed CSV"


def _not_parquet(tmp):
    path, test = tables(tmp, frame(4, ["a", "b"]), frame(2, ["a", "b"]), "parquet")
    test.write_bytes(b"PAR1 but not really")
    return {"path": path, "test": test, "label": "y"}, "test.parquet", "cannot be read"


def _empty_csv(tmp):
    path, test = tables(tmp, frame(4, ["a", "b"]), frame(2, ["a", "b"]), "csv")
    test.write_text("")
    return {"path": path, "test": test, "label": "y"}, "test.csv", "empty file"


def _unknown_suffix(tmp):
    (tmp / "data.json").write_text("{}")
    return {"path": tmp / "data.json"}, "data.json", "unknown format '.json'"


def _test_for_npz(tmp):
    path = npz(tmp / "d.npz", x_train=np.zeros((2, 2)), y_train=[0, 1], x_test=np.zeros((2, 2)),
               y_test=[0, 1])
    return {"path": path, "test": path}, "d.npz", "leave out dataset.test"


def _a_folder(tmp):
    (tmp / "d.npz").mkdir()
    return {"path": tmp / "d.npz"}, "d.npz", "is a folder"


MALFORMED: list[Callable] = [
    _missing_array, _missing_file, _mismatched_items, _mismatched_counts, _pixels_over_255,
    _negative_pixels, _nan_pixels, _one_based_labels, _negative_label, _float_labels,
    _pickled_objects, _not_an_npz, _rank_five, _text_feature, _missing_value_csv,
    _missing_value_parquet, _no_label_column, _no_test, _no_label, _test_columns_differ,
    _integer_labels_with_gap, _negative_label_in_test_table, _float_label_column, _ragged_csv, _not_parquet, _empty_csv,
    _unknown_suffix, _test_for_npz, _a_folder,
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c.__name__.strip("_") for c in MALFORMED])
def test_malformed_input_is_one_data_error_line_naming_the_file(tmp_path, case):
    kwargs, file, fragment = case(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset("files", **{k: str(v) for k, v in kwargs.items()})
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{tmp_path / file}: "), line
    assert fragment in line, line
