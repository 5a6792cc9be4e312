"""The ``files`` dataset: a pair's training and test data from the user's own files (issue 13).

``dataset: {name: files, path: ..., test: ..., label: ...}`` reads

* an ``.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test``: x of rank 4 is images
  (N x C x H x W, or N x H x W x C when the last dimension is 1, 3 or 4 and the second is
  not), rank 3 is grey images (N x H x W), rank 2 is tabular rows (N x d);
* a ``.csv`` or ``.parquet``/``.pq`` table with its test table (``test:``, same columns) and
  its label column (``label:``); every other column is a numeric feature.

The user's models were trained on exactly these inputs, so nothing is standardised or encoded:
images become float32 in [0, 1] (0..255 values are divided by 255), rows stay as given. Labels
are class ids 0..C-1 (C = max + 1 over train and test), or class names mapped to ids in sorted
order. ``path`` and ``test`` are local paths or pyarrow filesystem URIs (``file:///x.npz``,
``s3://bucket/x.parquet``). Every problem is a one-line :class:`DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tasks.data.base import DATASETS, DataError, Dataset, DatasetInfo
from tasks.data.formats import check_same_count, read_npz, reading
from tasks.data.loaders import image_dataset

__all__ = ["NPZ_ARRAYS", "load_files_dataset"]

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_NEEDS_PATH = ("dataset 'files' needs dataset.path: an .npz of x_train, y_train, x_test, "
               "y_test, or a .csv/.parquet table (with dataset.test and dataset.label)")


def load_files_dataset(path: str | os.PathLike | None, test: str | os.PathLike | None = None,
                       label: str | None = None) -> Dataset:
    """The user's files as a :class:`Dataset` named ``files`` (cached per process; a local file
    that changes on disk, by size or mtime, is read again)."""
    if not path:
        raise ValueError(_NEEDS_PATH)
    path, test = str(path), None if test is None else str(test)
    return _load_cached(path, test, label, _stamp(path), _stamp(test))


def _load_registered(_root: Path | None) -> Dataset:
    raise ValueError(_NEEDS_PATH)


DATASETS.register("files")(DatasetInfo(
    "files", "tabular",
    "your own data: an .npz of images or rows, or CSV/Parquet tables (dataset.path)",
    None, (), _load_registered, file_loader=load_files_dataset))


def _is_uri(path: str) -> bool:
    return "://" in path


def _stamp(path: str | None) -> tuple[int, int] | None:
    # Part of the cache key, so an edited local file is not served stale. A URI's remote
    # metadata would cost a round trip per call; URIs are cached by name.
    if path is None or _is_uri(path):
        return None
    try:
        st = Path(path).expanduser().stat()
    except OSError:
        return None  # reported by the read itself
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, test: str | None, label: str | None,
                 _path_stamp: tuple[int, int] | None,
                 _test_stamp: tuple[int, int] | None) -> Dataset:
    fmt = _format(path)
    if fmt == "npz":
        if test is not None:
            raise DataError(path, "an .npz holds both splits (x_test, y_test): leave out "
                                  "dataset.test")
        if label is not None:
            raise DataError(path, "an .npz's labels are its y_train and y_test arrays: leave "
                                  "out dataset.label")
        return _npz_dataset(path, _read(path, lambda p: read_npz(p, NPZ_ARRAYS)))
    if test is None:
        raise DataError(path, "a CSV/Parquet table needs dataset.test: the test split's "
                              "table, with the same columns")
    if not label:
        raise DataError(path, "a CSV/Parquet table needs dataset.label: the name of its "
                              "label column")
    _format(test)
    return _table_dataset(path, _read_table(path, label), test, _read_table(test, label), label)


def _format(path: str) -> str:
    suffix = Path(path.split("?", 1)[0]).suffix.lower()
    if suffix not in _FORMATS:
        raise DataError(path, f"unknown format {suffix or '(no suffix)'!r}: expected .npz, "
                              ".csv, .parquet or .pq")
    return _FORMATS[suffix]


# --- reading a local file or a URI ---------------------------------------------------------

def _read(shown: str, read: Callable[[Path], object]):
    """``read(local path)`` of the file ``shown`` (copied from its filesystem when a URI); any
    failure is one DataError line naming ``shown``."""
    with _local_copy(shown) as local:
        try:
            with reading(local):
                if local.stat().st_size == 0:
                    raise DataError(local, "empty file (0 bytes)")
                return read(local)
        except DataError as err:
            message = " ".join(err.message.replace(str(local), shown).split())
            raise DataError(shown, message) from err


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of a URI."""
    from pyarrow.fs import FileSystem

    return FileSystem.from_uri(uri)


@contextlib.contextmanager
def _local_copy(shown: str) -> Iterator[Path]:
    if not _is_uri(shown):
        local = Path(shown).expanduser()
        if not local.exists():
            raise DataError(shown, "no such file")
        if local.is_dir():
            raise DataError(shown, "is a folder, expected a file")
        yield local
        return
    try:
        fs, inner = _filesystem(shown)
    except Exception as err:  # ArrowInvalid (bad URI, unknown scheme), missing credentials
        raise DataError(shown, f"cannot open the URI ({_one_line(err)})") from err
    # The readers take local files; the copy lives only while it is read (one per process).
    with tempfile.TemporaryDirectory(prefix="unlearn-audit-files-") as tmp:
        local = Path(tmp) / ("data" + Path(inner).suffix)
        try:
            with fs.open_input_stream(inner) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        except FileNotFoundError as err:
            raise DataError(shown, "no such file") from err
        except Exception as err:
            raise DataError(shown, f"cannot be read ({_one_line(err)})") from err
        yield local


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# --- .npz ----------------------------------------------------------------------------------

def _npz_dataset(path: str, arrays: dict[str, np.ndarray]) -> Dataset:
    x_tr, x_te = arrays["x_train"], arrays["x_test"]
    for name, x in (("x_train", x_tr), ("x_test", x_te)):
        if x.dtype.kind not in "biuf":
            raise DataError(path, f"array {name!r}: dtype {x.dtype}, expected numbers")
        if x.ndim not in (2, 3, 4):
            raise DataError(path, f"array {name!r}: shape {_shape(x.shape)}; expected N x d "
                                  "rows, N x H x W or N x C x H x W / N x H x W x C images")
        if len(x) == 0:
            raise DataError(path, f"array {name!r} holds no items (its first dimension is 0)")
        _check_finite(path, x, f"array {name!r}")
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise DataError(path, f"x_test items are {_shape(x_te.shape[1:])} but x_train items "
                              f"are {_shape(x_tr.shape[1:])}: train and test must agree")
    y_tr = _integer_labels(path, arrays["y_train"], "y_train")
    y_te = _integer_labels(path, arrays["y_test"], "y_test")
    check_same_count(Path(path), len(y_tr), Path(path), len(x_tr), "y_train labels",
                     "x_train items")
    check_same_count(Path(path), len(y_te), Path(path), len(x_te), "y_test labels",
                     "x_test items")
    num_classes = _class_count(path, y_tr, y_te)
    names = tuple(str(c) for c in range(num_classes))
    if x_tr.ndim == 2:
        return Dataset("files", "tabular", x_tr.astype(np.float32), y_tr,
                       x_te.astype(np.float32), y_te, num_classes, class_names=names)
    x_tr, x_te = _as_images(path, x_tr, x_te)
    return image_dataset("files", x_tr, y_tr, x_te, y_te, num_classes, names)


def _as_images(path: str, x_tr: np.ndarray, x_te: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """float32 N x C x H x W in [0, 1]: 0..1 values as they are, 0..255 values / 255."""
    lo = float(min(x_tr.min(), x_te.min()))
    hi = float(max(x_tr.max(), x_te.max()))
    if lo < 0 or hi > 255:
        bad = lo if lo < 0 else hi
        raise DataError(path, f"pixel value {bad:g} is out of range: images must be numbers "
                              "in [0, 1] or 0..255")
    scale = 255.0 if hi > 1 else 1.0  # the same rule for both splits, decided on both
    out = []
    for x in (x_tr, x_te):
        if x.ndim == 3:
            x = x[:, None, :, :]
        elif x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            x = x.transpose(0, 3, 1, 2)  # channels-last (Keras, PIL) to N x C x H x W
        x = np.ascontiguousarray(x, dtype=np.float32)
        if scale != 1.0:
            x /= scale
        out.append(x)
    return out[0], out[1]


def _integer_labels(path: str, labels: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # Keras' (N, 1) label arrays
    if y.ndim != 1:
        raise DataError(path, f"array {what!r}: shape {_shape(y.shape)}, expected one label "
                              "per item (1-dimensional)")
    if y.dtype.kind not in "biu":
        raise DataError(path, f"array {what!r}: dtype {y.dtype}, expected integer class ids "
                              "0..C-1")
    if len(y) == 0:
        raise DataError(path, f"array {what!r} holds no labels")
    return y.astype(np.int64)


def _class_count(path: str, y_tr: np.ndarray, y_te: np.ndarray,
                 test_path: str | None = None, column: str | None = None) -> int:
    """C = max + 1 over both splits; every id in 0..C-1 must occur (a gap is usually 1-based
    labels or ids from a bigger dataset, and would give the models' outputs a wrong count).
    ``column``: the tables' label column (the labels are then in two files)."""
    for y, where, split in ((y_tr, path, "train"), (y_te, test_path or path, "test")):
        if y.min() < 0:
            i = int(np.argmin(y))
            what = f"label column {column!r}" if column else f"array 'y_{split}'"
            raise DataError(where, f"{what}: label {y[i]} at item {i} (counting from 0) is "
                                   "negative: class ids must be 0..C-1")
    classes = np.unique(np.concatenate([y_tr, y_te]))
    num_classes = int(classes[-1]) + 1
    if len(classes) < 2:
        raise DataError(path, f"every label is {classes[0]}: a classifier needs two or more "
                              "classes")
    if len(classes) != num_classes:
        absent = sorted(set(range(num_classes)) - set(classes.tolist()))
        listed = ", ".join(str(c) for c in absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise DataError(path, f"labels must be 0..C-1 with every class present: labels run "
                              f"{classes[0]}..{classes[-1]} and class {listed} has no example "
                              "in train or test (renumber them 0..C-1)")
    return num_classes


def _check_finite(path: str, x: np.ndarray, what: str) -> None:
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        item = int(np.argmin(np.isfinite(x.reshape(len(x), -1)).all(axis=1)))
        raise DataError(path, f"{what}: item {item} holds a NaN or infinite value")


def _shape(dims: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in dims)


# --- CSV and Parquet -----------------------------------------------------------------------

def _read_table(path: str, label: str):
    """The table as a pandas DataFrame, checked: the label column present, every other column
    numeric, no missing values."""
    import pandas as pd

    csv = _format(path) == "csv"

    def read(local: Path) -> pd.DataFrame:
        if not csv:
            return pd.read_parquet(local)
        try:
            return pd.read_csv(local)
        except pd.errors.EmptyDataError as err:
            raise DataError(local, "holds no columns (an empty CSV)") from err
        except pd.errors.ParserError as err:
            raise DataError(local, f"not a well-formed CSV table ({_one_line(err)})") from err
        except UnicodeDecodeError as err:
            raise DataError(local, f"not a text file (byte {err.start} is not UTF-8)") from err

    df = _read(path, read)

    def row(i: int) -> str:  # where a user finds the value: a CSV line, a Parquet row
        return f"line {i + 2}" if csv else f"row {i + 1}"

    columns = [str(c) for c in df.columns]
    df.columns = columns
    if label not in columns:
        raise DataError(path, f"no label column {label!r} (its columns: {', '.join(columns)})")
    if len(columns) < 2:
        raise DataError(path, f"no feature columns besides the label column {label!r}")
    if len(df) == 0:
        raise DataError(path, "holds no data rows")
    for col in columns:
        values = df[col]
        numeric = pd.api.types.is_numeric_dtype(values) and values.dtype.kind != "c"
        if col == label or numeric:
            continue
        # Missing cells pass here: the check below names them as missing, not as text.
        number = values.map(lambda v: _is_number(v) or pd.isna(v)).to_numpy(dtype=bool)
        if number.all():
            df[col] = values.astype(np.float64)  # Parquet decimals arrive as Python objects
        else:
            i = int(np.argmin(number))
            raise DataError(path, f"column {col!r} is not numeric ({_cell(values.iloc[i])} at "
                                  f"{row(i)}): encode it before auditing, your models must "
                                  "take the same columns")
    for col in columns:
        missing = df[col].isna().to_numpy()
        if missing.any():
            raise DataError(path, f"column {col!r} has missing values (first at "
                                  f"{row(int(np.argmax(missing)))})")
        if col != label and df[col].dtype.kind == "f":
            finite = np.isfinite(df[col].to_numpy(dtype=np.float64))
            if not finite.all():
                i = int(np.argmin(finite))
                raise DataError(path, f"column {col!r}: {df[col].iloc[i]} at {row(i)} is not a "
                                      "finite number")
    return df


def _is_number(value: object) -> bool:
    return isinstance(value, (numbers.Real, decimal.Decimal)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    """A table cell as a user wrote it: text quoted, numbers plain (not ``np.float64(0.5)``)."""
    return repr(value) if isinstance(value, str) else str(value)


def _table_dataset(path: str, train, test_path: str, test, label: str) -> Dataset:
    import pandas as pd

    if set(test.columns) != set(train.columns):
        lacks = [c for c in train.columns if c not in test.columns]
        extra = [c for c in test.columns if c not in train.columns]
        parts = ([f"lacks {', '.join(lacks)}"] if lacks else []) + \
                ([f"has extra {', '.join(extra)}"] if extra else [])
        raise DataError(test_path, f"its columns differ from {path}'s: {'; '.join(parts)}")
    test = test[list(train.columns)]  # the training order: the models take columns by position
    features = [c for c in train.columns if c != label]
    x_tr = train[features].to_numpy(dtype=np.float32)
    x_te = test[features].to_numpy(dtype=np.float32)
    for x, where in ((x_tr, path), (x_te, test_path)):
        if not np.isfinite(x).all():  # a float64 value beyond float32's range
            col = features[int(np.argmin(np.isfinite(x).all(axis=0)))]
            raise DataError(where, f"column {col!r} holds a value beyond float32's range")

    def kind(values: pd.Series) -> str:
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
            return "integer"
        if pd.api.types.is_float_dtype(values):
            return "float"
        return "text"

    k_tr, k_te = kind(train[label]), kind(test[label])
    for k, where, values in ((k_tr, path, train[label]), (k_te, test_path, test[label])):
        if k == "float":
            raise DataError(where, f"label column {label!r} holds floats ({_cell(values.iloc[0])} "
                                   "first): expected integer class ids 0..C-1 or class names")
    if k_tr != k_te:
        raise DataError(test_path, f"label column {label!r} holds {k_te} values but {path}'s "
                                   f"holds {k_tr} values")
    if k_tr == "integer":
        y_tr = train[label].to_numpy(dtype=np.int64)
        y_te = test[label].to_numpy(dtype=np.int64)
        num_classes = _class_count(path, y_tr, y_te, test_path, label)
        names = tuple(str(c) for c in range(num_classes))
    else:
        tr_names = train[label].astype(str).to_numpy()
        te_names = test[label].astype(str).to_numpy()
        classes = np.unique(np.concatenate([tr_names, te_names]))  # sorted: ids are stable
        if len(classes) < 2:
            raise DataError(path, f"every label is {classes[0]!r}: a classifier needs two or "
                                  "more classes")
        y_tr = np.searchsorted(classes, tr_names).astype(np.int64)
        y_te = np.searchsorted(classes, te_names).astype(np.int64)
        num_classes, names = len(classes), tuple(str(c) for c in classes)
    return Dataset("files", "tabular", x_tr, y_tr, x_te, y_te, num_classes, class_names=names)
