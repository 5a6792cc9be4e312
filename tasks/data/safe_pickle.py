"""A restricted unpickler for data files: plain containers, strings, numbers and numpy arrays.

``pickle.load`` runs whatever callables a file names; a data file from the internet must never
get that power. This unpickler resolves only the handful of globals numpy needs to rebuild an
array and refuses every other one before it is imported.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

# (module, name) pairs an ndarray pickle needs, across numpy 1.x and 2.x module layouts.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        # Protocol 5 rebuilds arrays from a buffer.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Protocol-2 pickles of bytes objects go through _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)


ALLOWED_KINDS = "only containers, strings, numbers and numpy arrays are allowed"


class UnsafePickleError(pickle.UnpicklingError):
    """The file asked to load a global outside the allow-list; ``global_name`` is
    ``module.name`` as the file spells it (``os.system`` pickles as ``posix.system``)."""

    def __init__(self, module: str, name: str) -> None:
        self.global_name = f"{module}.{name}"
        super().__init__(f"refusing to load {self.global_name} from a data file: "
                         + ALLOWED_KINDS)


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(module, name)


def safe_load(file: BinaryIO, *, encoding: str = "ASCII") -> Any:
    """Load a pickle holding only data; ``encoding="bytes"`` reads Python 2 pickles (CIFAR)."""
    return RestrictedUnpickler(file, encoding=encoding).load()


def safe_loads(data: bytes, *, encoding: str = "ASCII") -> Any:
    return safe_load(io.BytesIO(data), encoding=encoding)
