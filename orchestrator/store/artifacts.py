"""Content-addressed artifacts: trained models and arrays, keyed by what determines them.

A key is the hash of every input that fixes the artifact (dataset, split, indices, model,
hyperparameters, seed, ``tasks.CODE_VERSION``), so a rerun finds and reuses it. Torch
checkpoints load with ``weights_only=True``; arrays are ``.npz`` files read without pickle.

The store is a cache of what seeded units compute again bit for bit: a model whose artifact is
missing is trained again on the next run (``execute.pending_units``), and one that cannot be
read is moved aside as ``<name>.damaged`` with an error naming it, so a rerun replaces it.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow.fs as pafs
import torch

from orchestrator.spec.schema import stable_hash
from orchestrator.store.location import Location
from tasks import CODE_VERSION

T = TypeVar("T")


def artifact_key(kind: str, **determinants: Any) -> str:
    return f"{kind}-" + stable_hash({"kind": kind, "code": CODE_VERSION, **determinants}, 24)


class DamagedArtifact(RuntimeError):
    """An artifact that exists but cannot be read; it has been moved aside."""


class MissingArtifact(FileNotFoundError):
    """An artifact that a unit needs and the store no longer holds."""


AGAIN = "rerun and the unit that made it runs again"


def missing(path: str) -> MissingArtifact:
    return MissingArtifact(f"{path}: missing from the artifact store (deleted, or moved aside "
                           f"as damaged); {AGAIN}")


def reuse(load: Callable[[], T]) -> T | None:
    """What a unit made on an earlier run, so as not to make it again; None where it turns out
    damaged (now moved aside), so that the unit makes it afresh instead of failing."""
    try:
        return load()
    except DamagedArtifact:
        return None


def _to_device(value: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return type(value)((k, _to_device(v, device)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


class ArtifactStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.location = Location(root)

    @property
    def uri(self) -> str:
        return self.location.uri

    def _name(self, key: str, suffix: str) -> tuple[str, str]:
        # Two-level fan-out keeps directories small when there are thousands of models.
        return key.split("-", 1)[-1][:2], f"{key}{suffix}"

    def path(self, key: str, suffix: str = ".pt") -> str:
        return self.location.path(*self._name(key, suffix))

    def has(self, key: str, suffix: str = ".pt") -> bool:
        return self.location.exists(*self._name(key, suffix))

    def _listing(self) -> list[pafs.FileInfo]:
        return self.location.fs.get_file_info(pafs.FileSelector(
            self.location.root, recursive=True, allow_not_found=True))

    def names(self) -> set[str]:
        """The names of every artifact present (files, and folders such as a Parquet dataset's
        ``<key>.parquet.d``), in one listing rather than one query each."""
        return {i.base_name for i in self._listing() if i.type == pafs.FileType.File
                or "." in i.base_name}  # not the two-letter fan-out folders

    def move_aside(self, path: str, err: BaseException) -> DamagedArtifact:
        """Move ``path`` aside as ``<path>.damaged``; the error to raise, naming it."""
        try:
            self.location.fs.move(path, path + ".damaged")
        except OSError:
            pass  # another task reading it moved it first
        first = (str(err).strip().splitlines() or [""])[0][:160]
        name = path.rsplit("/", 1)[-1]
        return DamagedArtifact(f"{path}: damaged artifact ({type(err).__name__}: {first}); "
                               f"moved aside as {name}.damaged; {AGAIN}")

    def scan(self) -> tuple[int, list[str]]:
        """Read every artifact once and move aside those that do not parse: (how many were
        read, the names moved aside). Run after a unit met a damaged one, so that one pass
        makes all of them again rather than one layer of models per pass."""
        names = [i.base_name for i in self._listing() if i.type == pafs.FileType.File]
        damaged, read = [], 0
        for name in names:
            key, dot, ext = name.rpartition(".")
            if not dot or f".{ext}" not in (".pt", ".npz") or name.startswith("."):
                continue
            read += 1
            try:
                if ext == "pt":
                    self.load_torch(key)
                else:
                    self.load_arrays(key)
            except DamagedArtifact:
                damaged.append(name)
            except MissingArtifact:
                pass  # moved aside meanwhile by a task reading it
        return read, damaged

    def _read(self, key: str, suffix: str, parse):
        """``parse`` of the artifact's bytes; a file that does not parse is moved aside."""
        parts = self._name(key, suffix)
        path = self.location.path(*parts)
        try:
            data = self.location.read_bytes(*parts)
        except FileNotFoundError:
            raise missing(path) from None
        try:
            return parse(data)
        except (RuntimeError, ValueError, EOFError, OSError, zipfile.BadZipFile) as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise  # the system's error, not the file's
            raise self.move_aside(path, err) from err

    # -- torch -------------------------------------------------------------------------------
    def save_torch(self, key: str, payload: dict[str, Any]) -> str:
        """payload: tensors, state dicts, and plain ints/floats/strings/lists/dicts."""
        buf = io.BytesIO()
        torch.save(payload, buf)
        return self.location.write_bytes(buf.getvalue(), *self._name(key, ".pt"))

    def load_torch(self, key: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        # Read on the CPU, then moved: a device error (no CUDA here) must not pass for damage.
        payload = self._read(key, ".pt", lambda data: torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=True))
        return _to_device(payload, torch.device(map_location))

    # -- numpy -------------------------------------------------------------------------------
    def save_arrays(self, key: str, **arrays: np.ndarray) -> str:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return self.location.write_bytes(buf.getvalue(), *self._name(key, ".npz"))

    def load_arrays(self, key: str) -> dict[str, np.ndarray]:
        def parse(data: bytes) -> dict[str, np.ndarray]:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}

        return self._read(key, ".npz", parse)
