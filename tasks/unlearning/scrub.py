"""SCRUB: a student distilled from theta that is pushed away from theta on U only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.params import FieldError, check
from tasks.training import LossFn, make_optimizer, train_model
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    finetune_config,
    retained_indices,
)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) of the outputs softened by ``temperature``, times T^2 so
    the gradient keeps its size whatever T is (the usual distillation scaling)."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


@UNLEARNING.register("scrub")
class Scrub(UnlearningMethod):
    """SCRUB (Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards unbounded machine
    unlearning", NeurIPS 2023).

    A student starts at theta and a frozen copy of theta teaches it: "max" passes over U raise
    KL(teacher || student), "min" passes over the retained records lower
    ``alpha * KL + gamma * CE``. The first ``max_steps`` of the ``epochs`` epochs run a max
    pass and then a min pass, the rest min passes only. ``lr``/``batch_size`` default to the
    original recipe's (optimiser, momentum and weight decay always are the recipe's).
    """

    name = "scrub"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    @dataclass(frozen=True)
    class Params:
        epochs: int = 3
        max_steps: int = 2
        lr: float | None = None
        alpha: float = 1.0
        gamma: float = 1.0
        temperature: float = 4.0
        batch_size: int | None = None

        def __post_init__(self) -> None:
            check("epochs", self.epochs, low=1, integer=True)
            # Without a max pass nothing pushes the student away from U (that is fine-tuning).
            check("max_steps", self.max_steps, low=1, integer=True)
            if self.max_steps > self.epochs:
                raise FieldError("max_steps", f"must be <= epochs ({self.epochs}), "
                                              f"got {self.max_steps}")
            check("lr", self.lr, low=0, low_open=True, optional=True)
            check("alpha", self.alpha, low=0)
            check("gamma", self.gamma, low=0)
            if self.alpha == 0 and self.gamma == 0:
                raise FieldError("gamma", "alpha and gamma cannot both be 0 (the min passes "
                                          "would learn nothing)")
            check("temperature", self.temperature, low=0, low_open=True)
            check("batch_size", self.batch_size, low=1, integer=True, optional=True)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        teacher = copy_model(state.original).to(device).eval()
        teacher.requires_grad_(False)
        student = copy_model(state.original).to(device)
        cfg = finetune_config(state.train_cfg, 1, params.lr, params.batch_size)  # one pass a call
        # One optimiser for both kinds of pass, so momentum carries across them.
        opt = make_optimizer(student, cfg)

        def loss(maximise: bool) -> LossFn:
            def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        batch: torch.Tensor) -> torch.Tensor:
                out = model(x)
                with torch.no_grad():
                    target = teacher(x)
                kl = distill_kl(out, target, params.temperature)
                if maximise:
                    return -kl
                return params.alpha * kl + params.gamma * F.cross_entropy(out, y)
            return loss_fn

        d = state.dataset
        x = torch.as_tensor(d.x_train, device=device)
        y = torch.as_tensor(d.y_train, device=device)
        forget = np.asarray(request.indices, dtype=np.int64)
        retain = retained_indices(state, request)
        seeds = state.seeds
        # Epoch e: a max pass over U (while e < max_steps), then a min pass over the rest.
        for epoch in range(params.epochs):
            if epoch < params.max_steps:
                train_model(student, x, y, forget, cfg, seeds.seed("scrub/forget"), device,
                            loss_fn=loss(True), optimizer=opt, first_epoch=epoch)
            train_model(student, x, y, retain, cfg, seeds.seed("scrub/retain"), device,
                        loss_fn=loss(False), optimizer=opt, first_epoch=epoch)
        return student
