"""The threat-model boundary: what an attacker may see of a model pair.

A :class:`Case` carries theta, theta_u (white-box) or query access (black-box), plus public
metadata; the forgotten samples live only in :class:`GroundTruth`, which analysis keeps and
attacks never receive. ``knowledge="reference"`` adds what the reference implementation of
Hu et al. assumes the attacker knows (theta_0, N, k, the unlearning step size, the labels).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

Knowledge = Literal["paper", "reference"]


class QueryAccess:
    """Black-box access: probability vectors only, every queried input counted."""

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu") -> None:
        self._model = model.eval()
        self._device = torch.device(device)
        self.queries = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, *input_shape) in input space -> probabilities (n, C)."""
        self.queries += int(x.shape[0])
        return torch.softmax(self._model(x.to(self._device)), dim=1)


@dataclass(frozen=True)
class PublicMetadata:
    dataset: str
    kind: str  # "image" or "tabular"
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    knowledge: Knowledge = "paper"
    # Reference knowledge only (None under "paper"):
    n_finetune: int | None = None  # N = |D_ft|
    k: int | None = None  # |U|
    unlearn_lr: float | None = None  # eta of gradient ascent
    exact: bool | None = None  # which kind of unlearning ran
    labels: tuple[int, ...] | None = None  # y_U, the forgotten labels


@dataclass
class Case:
    """What an attack receives. Models are private copies in eval mode."""

    metadata: PublicMetadata
    theta: nn.Module | None = None
    theta_u: nn.Module | None = None
    theta0: nn.Module | None = None  # reference knowledge, exact unlearning
    query_original: QueryAccess | None = None
    query_unlearned: QueryAccess | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass(frozen=True)
class GroundTruth:
    """The forgotten samples; analysis only."""

    request_id: str
    indices: tuple[int, ...]
    x: np.ndarray
    y: np.ndarray


def _private(model: nn.Module | None, device) -> nn.Module | None:
    if model is None:
        return None
    clone = copy.deepcopy(model).to(device).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def build_case(*, dataset, theta: nn.Module, theta_u: nn.Module, request, knowledge: Knowledge,
               white_box: bool = True, theta0: nn.Module | None = None,
               n_finetune: int | None = None, unlearn_lr: float | None = None,
               exact: bool | None = None,
               device: torch.device | str = "cpu") -> tuple[Case, GroundTruth]:
    """Split a model pair and its forget request into the attacker's view and the truth."""
    device = torch.device(device)
    idx = np.asarray(request.indices, dtype=np.int64)
    truth = GroundTruth(request.request_id, tuple(int(i) for i in idx),
                        dataset.x_train[idx].copy(), dataset.y_train[idx].copy())
    reference = knowledge == "reference"
    meta = PublicMetadata(
        dataset=dataset.name, kind=dataset.kind, input_shape=tuple(dataset.input_shape),
        num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std, knowledge=knowledge,
        n_finetune=n_finetune if reference else None, k=len(idx) if reference else None,
        unlearn_lr=unlearn_lr if reference else None, exact=exact if reference else None,
        labels=tuple(int(v) for v in truth.y) if reference else None)
    t, tu = _private(theta, device), _private(theta_u, device)
    case = Case(meta, theta=t if white_box else None, theta_u=tu if white_box else None,
                theta0=_private(theta0, device) if reference else None,
                query_original=QueryAccess(t, device), query_unlearned=QueryAccess(tu, device),
                device=device)
    return case, truth
