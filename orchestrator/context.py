"""Where a unit reads and writes: the one value that travels with every task to its worker."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from orchestrator.store.artifacts import ArtifactStore
from tasks.training import pick_device


@dataclass(frozen=True)
class TaskContext:
    """Where a task reads and writes; travels to every worker."""

    experiment: str
    results_uri: str
    artifacts_uri: str
    data_root: str | None
    device: str = "auto"
    node_id: str = "local"

    @property
    def store(self) -> ArtifactStore:
        return _store(self.artifacts_uri)

    def torch_device(self) -> torch.device:
        return pick_device(self.device)


@functools.lru_cache(maxsize=4)
def _store(uri: str) -> ArtifactStore:
    # One store object per folder and process: workers open it once, not per unit.
    return ArtifactStore(uri)
