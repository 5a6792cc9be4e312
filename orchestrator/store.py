"""Content-addressed artifacts: trained models and arrays, keyed by what determines them.

A key is the hash of every input that fixes the artifact (dataset, split, indices, model,
hyperparameters, seed, ``tasks.CODE_VERSION``), so a rerun finds and reuses it. Torch
checkpoints load with ``weights_only=True``; arrays are ``.npz`` files read without pickle.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch

from orchestrator.spec import stable_hash
from orchestrator.storage import Location
from tasks import CODE_VERSION


def artifact_key(kind: str, **determinants: Any) -> str:
    return f"{kind}-" + stable_hash({"kind": kind, "code": CODE_VERSION, **determinants}, 24)


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

    # -- torch -------------------------------------------------------------------------------
    def save_torch(self, key: str, payload: dict[str, Any]) -> str:
        """payload: tensors, state dicts, and plain ints/floats/strings/lists/dicts."""
        buf = io.BytesIO()
        torch.save(payload, buf)
        return self.location.write_bytes(buf.getvalue(), *self._name(key, ".pt"))

    def load_torch(self, key: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        data = self.location.read_bytes(*self._name(key, ".pt"))
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)

    # -- numpy -------------------------------------------------------------------------------
    def save_arrays(self, key: str, **arrays: np.ndarray) -> str:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return self.location.write_bytes(buf.getvalue(), *self._name(key, ".npz"))

    def load_arrays(self, key: str) -> dict[str, np.ndarray]:
        data = self.location.read_bytes(*self._name(key, ".npz"))
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
