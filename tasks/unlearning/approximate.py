"""Approximate unlearning: cheap parameter updates that only move theta away from U."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.params import check
from tasks.training import train_model
from tasks.unlearning import stacked
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
)


@dataclass(frozen=True)
class EpochParams:
    """Settings of a method that trains theta further for ``epochs``; ``lr`` and
    ``batch_size`` default (None) to the original recipe's. Methods with more settings
    subclass it (and call ``super().__post_init__()``)."""

    epochs: int = 1
    lr: float | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check("epochs", self.epochs, low=1, integer=True)
        check("lr", self.lr, low=0, low_open=True, optional=True)
        check("batch_size", self.batch_size, low=1, integer=True, optional=True)


@UNLEARNING.register("gradient_ascent")
class GradientAscent(UnlearningMethod):
    """theta_u = theta + lr * grad mean CE(U), for ``steps`` mini-batches of U (eval mode).

    Defaults follow the reference: lr 1e-3, batch min(128, k), steps = k // min(128, k).
    """

    name = "gradient_ascent"
    exact = False
    families = ("torch",)
    step_size_param = "lr"

    @dataclass(frozen=True)
    class Params:
        lr: float = 1e-3
        steps: int | None = None
        batch_size: int = 128

        def __post_init__(self) -> None:
            # lr <= 0 would descend (or stand still), steps 0 would publish theta itself.
            check("lr", self.lr, low=0, low_open=True)
            check("steps", self.steps, low=1, integer=True, optional=True)
            check("batch_size", self.batch_size, low=1, integer=True)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        model = copy_model(state.original).to(state.device)
        model.eval()  # BatchNorm uses running statistics, as in the reference
        idx = np.asarray(request.indices)
        k = len(idx)
        batch = min(params.batch_size, k)
        steps = params.steps if params.steps is not None else max(1, k // batch)
        x = torch.as_tensor(state.dataset.x_train[idx], device=state.device)
        y = torch.as_tensor(state.dataset.y_train[idx], device=state.device)
        weights = [p for p in model.parameters() if p.requires_grad]
        for s in range(steps):
            sel = torch.arange(s * batch, (s + 1) * batch, device=state.device) % k
            loss = nn.functional.cross_entropy(model(x[sel]), y[sel])
            grads = torch.autograd.grad(loss, weights)
            with torch.no_grad():
                for w, g in zip(weights, grads):
                    w.add_(g, alpha=params.lr)
        return model

    def unlearn_members(self, states, requests, params: Params) -> list[nn.Module]:
        return stacked.ascent_members(self, states, requests, params)


@UNLEARNING.register("finetune")
class Finetune(UnlearningMethod):
    """theta_u = theta trained ``epochs`` more epochs on the retained set (catastrophic
    forgetting). ``lr``/``batch_size`` default to the original recipe's."""

    name = "finetune"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    Params = EpochParams

    def _config(self, state: TrainingState, params: Params):
        return dataclasses.replace(
            state.train_cfg, epochs=params.epochs, lr_milestones=(),
            lr=params.lr if params.lr is not None else state.train_cfg.lr,
            batch_size=params.batch_size or state.train_cfg.batch_size)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        model = copy_model(state.original).to(state.device)
        d = state.dataset
        return train_model(model, d.x_train, d.y_train, state.train_indices,
                           self._config(state, params), seed=state.seeds.seed("finetune"),
                           device=state.device, exclude=tuple(state.removed) + request.indices)

    def unlearn_members(self, states, requests, params: Params) -> list[nn.Module]:
        for state in states:
            self.check_family(state)
        return stacked.finetune_members(self, states, requests, params,
                                        self._config(states[0], params), "finetune")
