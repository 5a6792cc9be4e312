"""Bad data files (issue 12): each row builds a data root in tmp_path — real files from
../shared/data copied and corrupted, or minimal synthetic files in the real layout — breaks one
file, and runs ``unlearn-audit run`` on a spec naming that dataset. The run must be refused with
one line ``unlearn-audit: data error: <file>: <what is wrong>`` (missing files: the
MissingDataError line), exit 2, before any work and without writing anything.

``test_the_fake_roots_are_valid`` checks that every unbroken root plans, so each row fails for
the one thing it breaks.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.bad_inputs.harness import refused, run_cli, spec_with, write_spec
from tests.conftest import require_shared

IDX = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
       "t10k-labels-idx1-ubyte.gz"]
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
SHARED = {"mnist": ("mnist", IDX), "fashion_mnist": ("fashion-mnist", IDX),
          "cifar10": ("cifar10", ["cifar10_subset.npz"]),
          "adult": ("adult", ["adult.data", "adult.test"]),
          "german_credit": ("german-credit", ["german.data"]),
          "pima_diabetes": ("pima-diabetes", ["diabetes.arff"])}
RNG = np.random.default_rng(0)


# --- building data roots --------------------------------------------------------------------

def copy_shared(root: Path, dataset: str) -> Path:
    """The dataset's real files copied under root (skips, with the reason, when absent)."""
    folder, files = SHARED[dataset]
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(require_shared(folder, name), root / folder / name)
    return root / folder


def idx_bytes(array: np.ndarray, magic: bytes | None = None) -> bytes:
    header = magic or bytes([0, 0, 8, array.ndim])
    return (header + b"".join(d.to_bytes(4, "big") for d in array.shape)
            + array.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n_train: int = 120, n_test: int = 30) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True)
    arrays = [RNG.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              RNG.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10]
    for name, array in zip(IDX, arrays):
        (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
    return folder


def cifar_batch(n: int = 30) -> bytes:
    # The official layout: a Python 2 pickle (bytes keys) of uint8 rows and a list of labels.
    return pickle.dumps({b"batch_label": b"fake", b"labels": [i % 10 for i in range(n)],
                         b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8)}, protocol=2)


def fake_cifar_batches(root: Path) -> Path:
    folder = root / "cifar10"
    folder.mkdir(parents=True)
    for name in BATCHES:
        (folder / name).write_bytes(cifar_batch())
    return folder


def fake_cifar_npz(root: Path, drop: str = "", **changes: np.ndarray) -> Path:
    folder = root / "cifar10"
    folder.mkdir(parents=True)
    arrays = {"x_train": RNG.integers(0, 256, (150, 3072), dtype=np.uint8),
              "y_train": np.arange(150) % 10,
              "x_test": RNG.integers(0, 256, (30, 3072), dtype=np.uint8),
              "y_test": np.arange(30) % 10, **changes}
    arrays.pop(drop, None)
    np.savez(folder / "cifar10_subset.npz", **arrays)
    return folder / "cifar10_subset.npz"


def gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


# --- the rows: (id, dataset, break(root) -> the bad file, expected texts) ---------------------

def truncated_gz(root):
    path = copy_shared(root, "mnist") / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, "truncated"


def not_gzip(root):
    path = copy_shared(root, "fashion_mnist") / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gunzip(path))  # the raw IDX bytes under a .gz name
    return path, "not a gzip file"


def empty_gz(root):
    path = copy_shared(root, "mnist") / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"")
    return path, "empty file"


def wrong_idx_magic(root):
    path = copy_shared(root, "mnist") / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + gunzip(path)[4:]))
    return path, "wrong magic number 0x12345678"


def count_mismatch(root):
    path = copy_shared(root, "mnist") / "t10k-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gunzip(path), np.uint8, offset=8)[:-1]
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    return path, ("holds 9999 labels", "t10k-images-idx3-ubyte.gz holds 10000 images")


def idx_truncated_inside_gzip(root):
    path = fake_mnist(root) / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gunzip(path)[:-784]))  # a valid gzip of a short IDX
    return path, "truncated: the header declares 120 x 28 x 28"


def idx_wrong_image_size(root):
    path = fake_mnist(root) / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(RNG.integers(0, 256, (120, 32, 32)))))
    return path, "items are 32 x 32; expected 28 x 28"


def idx_float_data(root):
    path = fake_mnist(root) / "t10k-images-idx3-ubyte.gz"
    data = gunzip(path)
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + data[4:]))
    return path, "IDX data type is float32"


def idx_label_out_of_range(root):
    path = fake_mnist(root) / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.full(120, 11))))
    return path, "label 11 at index 0 is outside 0..9"


def truncated_npz(root):
    path = copy_shared(root, "cifar10") / "cifar10_subset.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, "not a readable .npz archive"


def npz_missing_array(root):
    return fake_cifar_npz(root, drop="y_test"), "missing array(s) y_test"


def npz_wrong_dtype(root):
    x = RNG.random((150, 3072))
    return fake_cifar_npz(root, x_train=x), "array 'x_train': dtype float64, expected uint8"


def npz_object_array(root):
    labels = np.array([str(i % 10) for i in range(30)], dtype=object)
    return fake_cifar_npz(root, y_test=labels), "array 'y_test' holds pickled Python objects"


def pickle_calls_os_system(root):
    path = fake_cifar_batches(root) / "data_batch_1"
    # A protocol-0 pickle that calls os.system("touch pwned") when loaded unrestricted: the
    # harness then also proves it never ran (nothing may appear in the working folder).
    path.write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    return path, ("refused pickle global os.system",
                  "only containers, strings, numbers and numpy arrays are allowed")


def pickle_truncated(root):
    path = fake_cifar_batches(root) / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    return path, "not a readable pickle, truncated or corrupt"


def pickle_count_mismatch(root):
    path = fake_cifar_batches(root) / "data_batch_3"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"] = batch[b"labels"][:-2]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path, "holds 28 labels but 30 data rows"


def csv_missing_column(root):
    path = copy_shared(root, "adult") / "adult.data"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(ln.split(",")[:2] + ln.split(",")[3:]) if ln else ln
                              for ln in lines) + "\n")  # fnlwgt gone from every row
    return path, "line 1 has 14 columns; expected 15 (age, workclass, fnlwgt"


def csv_text_in_number(root):
    path = copy_shared(root, "german_credit") / "german.data"
    lines = path.read_text().splitlines()
    cells = lines[4].split()
    cells[1] = "twelve"  # duration, a numeric attribute
    lines[4] = " ".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path, "line 5, column 'duration': 'twelve' is not a finite number"


def csv_unknown_class(root):
    path = copy_shared(root, "adult") / "adult.test"
    text = path.read_text()
    path.write_text(text.replace(">50K.", "rich", 1))
    return path, "income 'rich' is not one of"


def csv_empty(root):
    path = copy_shared(root, "pima_diabetes") / "diabetes.arff"
    path.write_bytes(b"")
    return path, "empty file (0 bytes)"


def arff_without_rows(root):
    path = copy_shared(root, "pima_diabetes") / "diabetes.arff"
    lines = path.read_text().splitlines()
    start = [ln.strip().lower() for ln in lines].index("@data")
    path.write_text("\n".join(lines[: start + 1]) + "\n")
    return path, "holds no data rows"


def data_file_is_a_folder(root):
    path = copy_shared(root, "german_credit") / "german.data"
    path.unlink()
    path.mkdir()
    return path, "cannot be read: Is a directory"


ROWS: list[tuple[str, str, Callable]] = [
    ("truncated-gz", "mnist", truncated_gz),
    ("not-gzip-named-gz", "fashion_mnist", not_gzip),
    ("empty-gz", "mnist", empty_gz),
    ("wrong-idx-magic", "mnist", wrong_idx_magic),
    ("labels-images-count-mismatch", "mnist", count_mismatch),
    ("idx-truncated-inside-gzip", "mnist", idx_truncated_inside_gzip),
    ("idx-wrong-image-size", "mnist", idx_wrong_image_size),
    ("idx-float-dtype", "mnist", idx_float_data),
    ("idx-label-out-of-range", "mnist", idx_label_out_of_range),
    ("truncated-npz", "cifar10", truncated_npz),
    ("npz-missing-array", "cifar10", npz_missing_array),
    ("npz-wrong-dtype", "cifar10", npz_wrong_dtype),
    ("npz-object-array", "cifar10", npz_object_array),
    ("pickle-calls-os-system", "cifar10", pickle_calls_os_system),
    ("pickle-truncated", "cifar10", pickle_truncated),
    ("pickle-count-mismatch", "cifar10", pickle_count_mismatch),
    ("csv-missing-column", "adult", csv_missing_column),
    ("csv-text-in-numeric-column", "german_credit", csv_text_in_number),
    ("csv-unknown-class", "adult", csv_unknown_class),
    ("csv-empty", "pima_diabetes", csv_empty),
    ("arff-no-data-rows", "pima_diabetes", arff_without_rows),
    ("data-file-is-a-folder", "german_credit", data_file_is_a_folder),
]


def run_argv(tmp_path: Path, dataset: str, root: Path, *extra: str) -> list[str]:
    spec = write_spec(tmp_path, spec_with({"dataset.name": dataset}))
    return ["run", str(spec), "--results", "R", "--data-root", str(root), *extra]


@pytest.mark.parametrize("dataset,corrupt", [(d, c) for _, d, c in ROWS],
                         ids=[row_id for row_id, _, _ in ROWS])
def test_bad_data_file_is_refused_in_one_line(tmp_path, dataset, corrupt):
    root = (tmp_path / "data").resolve()
    bad, expect = corrupt(root)
    expect = (expect,) if isinstance(expect, str) else expect
    line = refused(run_argv(tmp_path, dataset, root), tmp_path,
                   (f"unlearn-audit: data error: {bad}: ", *expect))
    assert line.startswith("unlearn-audit: data error: ")


def test_missing_files_are_one_line_too(tmp_path):
    root = (tmp_path / "data").resolve()
    (root / "mnist").mkdir(parents=True)
    refused(run_argv(tmp_path, "mnist", root), tmp_path,
            ("unlearn-audit: dataset 'mnist': no data at", str(root / "mnist")))


@pytest.mark.parametrize("dataset,build", [
    ("mnist", fake_mnist), ("cifar10", fake_cifar_batches), ("cifar10", fake_cifar_npz),
    *[(name, lambda root, name=name: copy_shared(root, name)) for name in SHARED],
], ids=["fake-mnist", "fake-cifar-batches", "fake-cifar-npz", *[f"real-{n}" for n in SHARED]])
def test_the_fake_roots_are_valid(tmp_path, dataset, build):
    root = (tmp_path / "data").resolve()
    build(root)
    code, out, err = run_cli(run_argv(tmp_path, dataset, root, "--dry-run"), tmp_path)
    assert code == 0, out + err
