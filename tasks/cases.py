"""The threat-model boundary: what an attacker may see of a model pair.

A :class:`Case` carries theta, theta_u (white-box) or query access (black-box), plus public
metadata; the forgotten samples live only in :class:`GroundTruth`, which analysis keeps and
attacks never receive. ``knowledge="reference"`` adds what the reference implementation of
Hu et al. assumes the attacker knows (theta_0, N, k, the unlearning step size, the labels).
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

Knowledge = Literal["paper", "reference"]


class QueryAccess:
    """Black-box access: probability vectors only, every queried input counted.

    The attacker holds only an opaque ticket: the model, and the output defence in front of
    it, sit in a module-private table (:data:`_ENDPOINTS`) that the access looks its answers
    up in. No attribute, ``__closure__``, ``__dict__``, ``__self__`` or ``__wrapped__`` of the
    access leads to the model, so an attack cannot take the undefended logits by introspection
    of what it was given (a Python process has no real wall: an attack that reads this
    module's globals or the garbage collector's referents can; attacks must not).
    ``transform`` (logits (n, C) -> posteriors (n, C), numpy) is an output defence applied to
    every answer, so a defended case answers only with the defended outputs.
    """

    __slots__ = ("__weakref__", "_ticket", "queries")

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu",
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self._open(_answerer(model.eval(), torch.device(device), transform))
        self.queries = 0

    def _open(self, answer: Callable[[torch.Tensor], torch.Tensor]) -> None:
        ticket = next(_TICKETS)
        _ENDPOINTS[ticket] = answer
        weakref.finalize(self, _ENDPOINTS.pop, ticket, None)  # the table holds no dead model
        self._ticket = ticket

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, *input_shape) in input space -> probabilities (n, C)."""
        self.queries += int(x.shape[0])
        return _ENDPOINTS[self._ticket](x)

    def __copy__(self) -> QueryAccess:
        """A second access to the same answers (its own ticket, the count so far)."""
        other = object.__new__(QueryAccess)
        other._open(_ENDPOINTS[self._ticket])
        other.queries = self.queries
        return other

    def __deepcopy__(self, memo: dict) -> QueryAccess:
        return self.__copy__()

    def __reduce_ex__(self, protocol: object):
        raise TypeError("QueryAccess cannot be pickled: the model it answers with stays in "
                        "this process")


_TICKETS = itertools.count()
_ENDPOINTS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}


def _answerer(model: nn.Module, dev: torch.device,
              transform: Callable[[np.ndarray], np.ndarray] | None
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    @torch.no_grad()
    def answer(x: torch.Tensor) -> torch.Tensor:
        logits = model(x.to(dev))
        if transform is None:
            return torch.softmax(logits, dim=1)
        defended = transform(logits.double().cpu().numpy())
        return torch.as_tensor(defended, dtype=logits.dtype, device=logits.device)

    return answer


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
    train_steps: int | None = None  # optimisation steps of theta's training (None: unknown)


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
    forgotten_class: int | None = None  # class-share requests
    share: float | None = None


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
               exact: bool | None = None, train_steps: int | None = None,
               output_transform: Callable[[np.ndarray], np.ndarray] | None = None,
               device: torch.device | str = "cpu") -> tuple[Case, GroundTruth]:
    """Split a model pair and its forget request into the attacker's view and the truth.

    ``output_transform``: an output defence every query answer goes through (both models).
    """
    device = torch.device(device)
    idx = np.asarray(request.indices, dtype=np.int64)
    truth = GroundTruth(request.request_id, tuple(int(i) for i in idx),
                        dataset.x_train[idx].copy(), dataset.y_train[idx].copy(),
                        getattr(request, "forgotten_class", None),
                        getattr(request, "share", None))
    reference = knowledge == "reference"
    meta = PublicMetadata(
        dataset=dataset.name, kind=dataset.kind, input_shape=tuple(dataset.input_shape),
        num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std, knowledge=knowledge,
        n_finetune=n_finetune if reference else None, k=len(idx) if reference else None,
        unlearn_lr=unlearn_lr if reference else None, exact=exact if reference else None,
        labels=tuple(int(v) for v in truth.y) if reference else None,
        train_steps=train_steps)
    t, tu = _private(theta, device), _private(theta_u, device)
    case = Case(meta, theta=t if white_box else None, theta_u=tu if white_box else None,
                theta0=_private(theta0, device) if reference else None,
                query_original=QueryAccess(t, device, output_transform),
                query_unlearned=QueryAccess(tu, device, output_transform),
                device=device)
    return case, truth
