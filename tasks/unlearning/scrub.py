"""SCRUB: a student distilled from theta that is pushed away from theta on U only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.params import FieldError, check
from tasks.training import epoch_order, has_batchnorm, make_optimizer, train_mode
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
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

    # Distinct order seeds: these passes follow the original's epochs, they do not replay them.
    SEED_OFFSET = 2_000_003

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        teacher = copy_model(state.original).to(device).eval()
        teacher.requires_grad_(False)
        student = copy_model(state.original).to(device)
        cfg = dataclasses.replace(state.train_cfg, lr=params.lr or state.train_cfg.lr)
        # One optimiser for both kinds of pass, so momentum carries across them.
        opt = make_optimizer(student, cfg)
        d = state.dataset
        x = torch.as_tensor(d.x_train, device=device)
        y = torch.as_tensor(d.y_train, device=device)
        forget = np.asarray(request.indices, dtype=np.int64)
        retain = retained_indices(state, request)
        run = (student, teacher, opt, x, y, params.batch_size or cfg.batch_size, cfg.bn_mode)
        seed = state.seed + self.SEED_OFFSET
        for epoch in range(params.epochs):
            if epoch < params.max_steps:
                order = epoch_order(forget, seed + 1, epoch)
                self._pass(*run, order, params, maximise=True)
            self._pass(*run, epoch_order(retain, seed, epoch), params, maximise=False)
        student.eval()
        return student

    @staticmethod
    def _pass(student: nn.Module, teacher: nn.Module, opt: torch.optim.Optimizer,
              x: torch.Tensor, y: torch.Tensor, batch: int, bn_mode: str, order: np.ndarray,
              params: Scrub.Params, maximise: bool) -> None:
        """One epoch over ``order``: a max pass (ascend the KL) or a min pass."""
        train_mode(student, bn_mode)
        has_bn = has_batchnorm(student)
        order_t = torch.as_tensor(order, device=x.device)
        for start in range(0, len(order_t), batch):
            sel = order_t[start: start + batch]
            if len(sel) < 2 and has_bn and bn_mode == "train":
                continue  # BatchNorm cannot train on a single sample
            out = student(x[sel])
            with torch.no_grad():
                target = teacher(x[sel])
            kl = distill_kl(out, target, params.temperature)
            if maximise:
                loss = -kl
            else:
                loss = params.alpha * kl + params.gamma * F.cross_entropy(out, y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
