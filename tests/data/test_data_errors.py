"""DataError: every malformed data file is reported as ``<file>: <what is wrong>`` (issue 12).

The command-line rows live in tests/bad_inputs/test_data_files.py; these check the readers'
messages directly, on small synthetic files.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tasks.data import DataError, load_dataset
from tasks.data.formats import (
    check_labels,
    check_pixels,
    read_cifar_batch,
    read_idx,
    read_npz,
    read_rows,
)
from tasks.data.safe_pickle import UnsafePickleError, safe_loads


def idx_gz(path: Path, array: np.ndarray, head: bytes | None = None, cut: int = 0) -> Path:
    raw = ((head or bytes([0, 0, 8, array.ndim]))
           + b"".join(d.to_bytes(4, "big") for d in array.shape)
           + array.astype(np.uint8).tobytes())
    path.write_bytes(gzip.compress(raw[: len(raw) - cut]))
    return path


def message(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)  # callers that catch ValueError keep working
    assert str(err) == f"{err.path}: {err.message}" and "\n" not in str(err)
    return str(err)


def test_data_error_carries_the_path_and_the_message(tmp_path):
    err = DataError(tmp_path / "f.gz", "truncated")
    assert err.path == tmp_path / "f.gz" and err.message == "truncated"
    assert str(err) == f"{tmp_path / 'f.gz'}: truncated"


# --- IDX ---------------------------------------------------------------------------------------

def test_idx_reads_a_valid_file(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    out = read_idx(idx_gz(tmp_path / "x.gz", images), 3, (28, 28))
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("build,expect", [
    (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (lambda p: p.write_bytes(b"\x00\x00\x08\x01" + bytes(8)), "not a gzip file (no gzip header)"),
    (lambda p: p.write_bytes(gzip.compress(os.urandom(5000))[:100]), "truncated: the gzip stream"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00")), "too short for an IDX header: 2"),
    (lambda p: idx_gz(p, np.zeros(3), head=b"PK\x03\x04"), "wrong magic number 0x504B0304"),
    (lambda p: idx_gz(p, np.zeros(3), head=b"\x00\x00\x0c\x01"), "IDX data type is int32"),
    (lambda p: idx_gz(p, np.zeros((3, 2))), "holds a 2-dimensional IDX array"),
    (lambda p: idx_gz(p, np.zeros(10), cut=3),
     "truncated: the header declares 10 = 10 bytes of data, the file holds 7"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big")
                                           + bytes(5))), "3 bytes beyond the 2 array"),
    (lambda p: idx_gz(p, np.zeros(0)), "holds no items"),
])
def test_idx_problems_name_the_file(tmp_path, build, expect):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    build(path)
    text = message(read_idx, path, 1)
    assert text.startswith(f"{path}: ") and expect in text


def test_idx_items_of_the_wrong_size(tmp_path):
    path = idx_gz(tmp_path / "x.gz", np.zeros((2, 32, 32)))
    assert "items are 32 x 32; expected 28 x 28" in message(read_idx, path, 3, (28, 28))


def test_a_folder_named_like_the_file_is_a_data_error(tmp_path):
    path = tmp_path / "x.gz"
    path.mkdir()
    assert "cannot be read: Is a directory" in message(read_idx, path, 1)


# --- labels, pixels, counts through a loader --------------------------------------------------

def test_labels_and_pixels_are_checked():
    where = Path("/d/f")
    assert "label 10 at index 2 is outside 0..9" in message(check_labels, where, [0, 1, 10], 10)
    assert "dtype float64, expected integer class ids" in message(check_labels, where,
                                                                  [0.0, 1.0], 10)
    assert "expected one label per item" in message(check_labels, where, [[0, 1]], 10)
    assert "dtype int64, expected uint8" in message(check_pixels, where, np.zeros((2, 12),
                                                                                 np.int64), 12)
    assert "shape 2 x 11, expected (n, 12) rows" in message(check_pixels, where,
                                                            np.zeros((2, 11), np.uint8), 12)


def test_mnist_label_count_mismatch_names_both_files(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    idx_gz(folder / "train-images-idx3-ubyte.gz", np.zeros((4, 28, 28)))
    idx_gz(folder / "train-labels-idx1-ubyte.gz", np.arange(4))
    idx_gz(folder / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    idx_gz(folder / "t10k-labels-idx1-ubyte.gz", np.arange(2))
    text = message(load_dataset, "mnist", tmp_path)
    assert text == (f"{folder / 't10k-labels-idx1-ubyte.gz'}: holds 2 labels but "
                    "t10k-images-idx3-ubyte.gz holds 3 images")


# --- npz ---------------------------------------------------------------------------------------

def test_npz_problems(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.zeros(2), y=np.array(["a", None], dtype=object))
    assert "missing array(s) z (it holds: x, y)" in message(read_npz, path, ["x", "z"])
    assert "array 'y' holds pickled Python objects" in message(read_npz, path, ["y"])
    np.save(tmp_path / "b.npy", np.zeros(2))
    (tmp_path / "b.npy").rename(path)
    assert "a single .npy array, not an .npz archive" in message(read_npz, path, ["x"])
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a readable .npz archive" in message(read_npz, path, ["x"])
    path.write_text("hello")
    assert "not an .npz (zip) archive" in message(read_npz, path, ["x"])


# --- CIFAR pickle batches ----------------------------------------------------------------------

class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_naming_file_and_global(tmp_path):
    path, marker = tmp_path / "data_batch_1", tmp_path / "pwned"
    path.write_bytes(pickle.dumps({b"data": _RunsCode(marker)}, protocol=2))
    text = message(read_cifar_batch, path)
    assert text == (f"{path}: refused pickle global posix.system (only containers, strings, "
                    "numbers and numpy arrays are allowed)")
    assert not marker.exists()


def test_unsafe_pickle_error_names_the_global_as_the_file_spells_it():
    with pytest.raises(UnsafePickleError) as info:
        safe_loads(b"cos\nsystem\n(S'true'\ntR.")
    assert info.value.global_name == "os.system"


@pytest.mark.parametrize("payload,expect", [
    (pickle.dumps({b"labels": [0]}, protocol=2)[:-3], "not a readable pickle, truncated"),
    (pickle.dumps([1, 2], protocol=2), "holds a list; expected a CIFAR batch dict"),
    (pickle.dumps({b"labels": [0]}, protocol=2), "CIFAR batch has no data entry"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2),
     "holds 1 labels but 2 data rows"),
    (pickle.dumps({"data": np.zeros((1, 3072), np.float32), "labels": [0]}),
     "data: dtype float32, expected uint8"),
])
def test_cifar_batch_problems(tmp_path, payload, expect):
    path = tmp_path / "test_batch"
    path.write_bytes(payload)
    assert expect in message(read_cifar_batch, path)


# --- delimited text ----------------------------------------------------------------------------

COLUMNS = ["a", "b", "name", "class"]


def read(path: Path, **kwargs):
    return read_rows(path, columns=COLUMNS, numeric=[0, 1], classes={"yes": 1, "no": 0},
                     **kwargs)


def test_rows_read_with_missing_values_and_classes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1, 2, x, yes\n\n3, ?, y, no\n")
    cells, y = read(path)
    assert cells.tolist() == [["1", "2", "x"], ["3", "?", "y"]] and y.tolist() == [1, 0]


@pytest.mark.parametrize("text,expect", [
    ("1,2,x,yes\n1,2,no\n", "line 2 has 3 columns; expected 4 (a, b, name, class)"),
    ("1,2,x,yes\n1,two,y,no\n", "line 2, column 'b': 'two' is not a finite number"),
    ("1,inf,x,yes\n", "line 1, column 'b': 'inf' is not a finite number"),
    ("1,2,x,maybe\n", "line 1: class 'maybe' is not one of yes, no"),
    ("?,2,x,yes\n", "column 'a' has no values (all '?')"),
    ("\n\n", "holds no data rows"),
])
def test_row_problems_name_the_line(tmp_path, text, expect):
    path = tmp_path / "t.csv"
    path.write_text(text)
    assert expect in message(read, path)


def test_arff_without_data_and_binary_files(tmp_path):
    path = tmp_path / "t.arff"
    path.write_text("@relation x\n@attribute a numeric\n")
    assert "no @data line: not an ARFF file" in message(read, path, after="@data")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert "not a text file (byte 0 is not UTF-8)" in message(read, path)
