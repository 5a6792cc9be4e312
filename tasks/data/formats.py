"""Readers for the on-disk formats the loaders use: IDX (gzipped), ``.npz`` archives, CIFAR
pickle batches and delimited text. Each reader checks what it reads, so a malformed file raises
:class:`DataError` naming the file and what is wrong, never a gzip, zipfile, pickle or numpy
traceback, and never a silently wrong dataset (a short label file, a text cell read as 0).
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from tasks.data.base import DataError, MissingDataError
from tasks.data.safe_pickle import ALLOWED_KINDS, UnsafePickleError, safe_load

__all__ = ["check_labels", "check_same_count", "read_cifar_batch", "read_idx", "read_npz",
           "read_rows", "reading"]


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Report whatever goes wrong while reading ``path`` as a DataError naming it.

    The readers below turn the failures they expect into precise messages; this is the net for
    the rest. Parsing bytes from outside can fail in more ways than can be listed (struct,
    numpy and codec errors), and every one of them means the file is malformed."""
    try:
        yield
    except (DataError, MissingDataError):
        raise
    except UnsafePickleError as err:
        raise DataError(path, f"refused pickle global {err.global_name} ({ALLOWED_KINDS})") \
            from err
    except OSError as err:  # permission denied, a folder where a file should be, I/O errors
        raise DataError(path, f"cannot be read: {err.strerror or err}") from err
    except Exception as err:
        raise DataError(path, f"cannot be read ({type(err).__name__}: {err})") from err


def _require_nonempty(path: Path) -> None:
    if os.path.getsize(path) == 0:
        raise DataError(path, "empty file (0 bytes)")


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------

_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}


def read_idx(path: Path, ndim: int, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An unsigned-byte IDX array (gzipped when the name ends in .gz) with ``ndim`` dimensions,
    and, when given, each item of ``item_shape`` (e.g. 28x28 images)."""
    with reading(path):
        _require_nonempty(path)
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as fh:
                raw = fh.read()
        except gzip.BadGzipFile as err:
            if "Not a gzipped file" in str(err):
                raise DataError(path, "not a gzip file (no gzip header), though named .gz") \
                    from err
            raise DataError(path, f"corrupt gzip data ({err})") from err
        except EOFError as err:
            raise DataError(path, "truncated: the gzip stream ends early") from err
        except zlib.error as err:
            raise DataError(path, f"corrupt gzip data ({err})") from err
        array = _parse_idx(path, raw, ndim)
        if item_shape is not None and array.shape[1:] != item_shape:
            raise DataError(path, f"items are {_shape(array.shape[1:])}; expected "
                                  f"{_shape(item_shape)}")
        if len(array) == 0:
            raise DataError(path, "holds no items (its first dimension is 0)")
        return array


def _shape(dims: Sequence[int]) -> str:
    return " x ".join(str(d) for d in dims)


def _parse_idx(path: Path, raw: bytes, ndim: int) -> np.ndarray:
    expected_magic = f"0x000008{ndim:02X}"
    if len(raw) < 4:
        raise DataError(path, f"too short for an IDX header: {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] or raw[1] or raw[2] not in _IDX_TYPES:
        raise DataError(path, f"wrong magic number 0x{magic:08X}: not an IDX file "
                              f"(expected {expected_magic})")
    if raw[2] != 0x08:
        raise DataError(path, f"IDX data type is {_IDX_TYPES[raw[2]]} (magic 0x{magic:08X}); "
                              f"expected unsigned bytes ({expected_magic})")
    if raw[3] != ndim:
        raise DataError(path, f"holds a {raw[3]}-dimensional IDX array (magic 0x{magic:08X}); "
                              f"expected {ndim} dimensions ({expected_magic})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(path, f"truncated: {len(raw)} bytes, shorter than the {header}-byte "
                              "IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    size, have = math.prod(dims), len(raw) - header
    if have < size:
        raise DataError(path, f"truncated: the header declares {_shape(dims)} = {size} bytes "
                              f"of data, the file holds {have}")
    if have > size:
        raise DataError(path, f"{have - size} bytes beyond the {_shape(dims)} array its "
                              "header declares")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# --- checks shared by the image formats ---------------------------------------------------------

def check_labels(path: Path, labels: object, num_classes: int, what: str = "labels"
                 ) -> np.ndarray:
    """``labels`` as int64 class ids in [0, num_classes), or a DataError naming ``path``."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(path, f"{what}: shape {_shape(y.shape)}, expected one label per item "
                              "(1-dimensional)")
    if y.dtype.kind not in "iu":
        raise DataError(path, f"{what}: dtype {y.dtype}, expected integer class ids")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise DataError(path, f"{what}: label {y[bad[0]]} at index {bad[0]} is outside "
                              f"0..{num_classes - 1}")
    return y.astype(np.int64)


def check_same_count(labels_path: Path, n_labels: int, images_path: Path, n_images: int,
                     labels_what: str = "labels", images_what: str = "images") -> None:
    if n_labels != n_images:
        where = "" if labels_path == images_path else f" {images_path.name} holds"
        raise DataError(labels_path, f"holds {n_labels} {labels_what} but{where} {n_images} "
                                     f"{images_what}")


def check_pixels(path: Path, x: object, row_size: int, what: str = "images") -> np.ndarray:
    """Flat uint8 rows of ``row_size`` values (CIFAR: 3072 = 3 x 32 x 32), as an (n, row_size)
    array."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataError(path, f"{what}: dtype {x.dtype}, expected uint8 pixel values")
    if x.ndim < 2 or math.prod(x.shape[1:]) != row_size:
        raise DataError(path, f"{what}: shape {_shape(x.shape)}, expected (n, {row_size}) "
                              "rows")
    if len(x) == 0:
        raise DataError(path, f"{what}: none (0 rows)")
    return x.reshape(len(x), row_size)


# --- .npz archives -------------------------------------------------------------------------------

def read_npz(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` archive (no pickled objects allowed)."""
    with reading(path):
        _require_nonempty(path)
        try:
            archive = np.load(path, allow_pickle=False)
        except zipfile.BadZipFile as err:
            raise DataError(path, f"not a readable .npz archive, truncated or not a zip file "
                                  f"({err})") from err
        except ValueError as err:  # numpy tried it as a pickle: neither zip nor .npy magic
            raise DataError(path, "not an .npz (zip) archive") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(path, "a single .npy array, not an .npz archive of named arrays")
        with archive:
            missing = [n for n in names if n not in archive.files]
            if missing:
                held = ", ".join(sorted(archive.files)) or "none"
                raise DataError(path, f"missing array(s) {', '.join(missing)} "
                                      f"(it holds: {held})")
            out = {}
            for name in names:
                try:
                    out[name] = archive[name]
                except ValueError as err:
                    raise DataError(path, f"array {name!r} holds pickled Python objects, "
                                          "not plain numbers") from err
                except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                    raise DataError(path, f"array {name!r} is corrupt ({err})") from err
            return out


# --- CIFAR pickle batches -----------------------------------------------------------------------

def read_cifar_batch(path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 pixel rows (n, 3072), int64 labels) of an official CIFAR python batch, read with
    the restricted unpickler."""
    with reading(path):
        _require_nonempty(path)
        with open(path, "rb") as fh:
            try:
                batch = safe_load(fh, encoding="bytes")
            except UnsafePickleError:
                raise  # reading() words it
            except Exception as err:  # truncation shows as EOF, UnpicklingError, ValueError...
                raise DataError(path, f"not a readable pickle, truncated or corrupt "
                                      f"({type(err).__name__}: {err})") from err
        if not isinstance(batch, dict):
            raise DataError(path, f"holds a {type(batch).__name__}; expected a CIFAR batch "
                                  "dict with 'data' and 'labels'")
        # Official batches are Python 2 pickles (bytes keys); a Python 3 copy has str keys.
        found = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
        missing = [k for k in ("data", "labels") if k not in found]
        if missing:
            raise DataError(path, f"CIFAR batch has no {' or '.join(missing)} entry")
        x = check_pixels(path, found["data"], 3 * 32 * 32, "data")
        y = check_labels(path, found["labels"], num_classes)
        check_same_count(path, len(y), path, len(x), images_what="data rows")
        return x, y


# --- delimited text (CSV, space-separated, ARFF data section) -----------------------------------

def read_rows(path: Path, *, columns: Sequence[str], numeric: Sequence[int],
              classes: Mapping[str, int], sep: str | None = ",", skip: int = 0,
              after: str | None = None, comment: str | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(feature cells as a str array (n, len(columns) - 1), int64 class ids) of a table whose
    last column is the class.

    ``sep=None`` splits on whitespace; ``skip`` drops leading lines; ``after`` starts after the
    first line equal to it (ARFF's ``@data``); ``comment`` lines and blank lines are ignored.
    Numeric columns must parse as finite numbers ('?' marks a missing value)."""
    with reading(path):
        _require_nonempty(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataError(path, f"not a text file (byte {err.start} is not UTF-8)") from err
        start = skip
        if after is not None:
            marks = [i for i, ln in enumerate(lines) if ln.strip().lower() == after]
            if not marks:
                raise DataError(path, f"no {after} line: not an ARFF file")
            start = marks[0] + 1
        rows, numbers = [], []
        for i in range(start, len(lines)):
            line = lines[i]
            if not line.strip() or (comment and line.startswith(comment)):
                continue
            cells = [c.strip() for c in (line.split(sep) if sep else line.split())]
            if len(cells) != len(columns):
                raise DataError(path, f"line {i + 1} has {len(cells)} columns; expected "
                                      f"{len(columns)} ({', '.join(columns)})")
            rows.append(cells)
            numbers.append(i + 1)
        if not rows:
            raise DataError(path, "holds no data rows")
        table = np.array(rows, dtype=str)
        for j in numeric:
            _check_numeric(path, table[:, j], columns[j], numbers)
        for j in range(len(columns) - 1):
            if (table[:, j] == "?").all():
                raise DataError(path, f"column {columns[j]!r} has no values (all '?')")
        label = table[:, -1]
        known = np.isin(label, list(classes))
        if not known.all():
            k = int(np.argmin(known))
            raise DataError(path, f"line {numbers[k]}: {columns[-1]} {str(label[k])!r} is "
                                  f"not one of {', '.join(classes)}")
        y = np.array([classes[c] for c in label], dtype=np.int64)
        return table[:, :-1], y


def _check_numeric(path: Path, col: np.ndarray, name: str, numbers: list[int]) -> None:
    present = col != "?"
    try:
        values = col[present].astype(np.float64)
        bad = None if np.isfinite(values).all() else int(np.argmin(np.isfinite(values)))
    except ValueError:
        bad = next((k for k, cell in enumerate(col[present]) if not _is_number(cell)), None)
        if bad is None:  # numpy refused a cell Python's float() accepts: still not a number here
            raise DataError(path, f"column {name!r} holds values that are not numbers") from None
    if bad is not None:
        k = int(np.flatnonzero(present)[bad])
        raise DataError(path, f"line {numbers[k]}, column {name!r}: {str(col[k])!r} is not a "
                              "finite number")


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False
