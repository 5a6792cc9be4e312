"""l1-sparse unlearning: fine-tune on the retained records under a decaying l1 penalty."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tasks.params import check
from tasks.training import steps_per_epoch, train_model
from tasks.unlearning.approximate import EpochParams
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    finetune_config,
    retained_indices,
)


@UNLEARNING.register("l1_sparse")
class L1Sparse(UnlearningMethod):
    """l1-sparse unlearning (Jia, Liu, Ram, Yao, Liu, Liu, Sharma and Liu, "Model sparsity
    can simplify machine unlearning", NeurIPS 2023).

    Fine-tunes theta for ``epochs`` on the retained records with the loss
    ``CE + gamma_t * sum |theta|``, where gamma_t falls linearly from ``l1`` at the first step
    to 0 at the last (the paper's decaying schedule: sparsify early, recover accuracy late).
    ``lr``/``batch_size`` default to the original recipe's (optimiser, momentum and weight
    decay always are the recipe's).
    """

    name = "l1_sparse"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    @dataclass(frozen=True)
    class Params(EpochParams):
        l1: float = 5e-4

        def __post_init__(self) -> None:
            super().__post_init__()
            # 0 is allowed: plain fine-tuning, the method's own ablation.
            check("l1", self.l1, low=0)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        model = copy_model(state.original).to(state.device)
        cfg = finetune_config(state.train_cfg, params.epochs, params.lr, params.batch_size)
        retain = retained_indices(state, request)
        weights = [p for p in model.parameters() if p.requires_grad]
        # The schedule runs over the steps actually taken (a skipped single-sample batch
        # under BatchNorm is not one).
        per_epoch = steps_per_epoch(len(retain), cfg.batch_size, model, cfg.bn_mode)
        total = max(per_epoch * params.epochs, 1)
        steps = itertools.count()

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch: torch.Tensor) -> torch.Tensor:
            gamma = params.l1 * (1 - next(steps) / total)
            loss = F.cross_entropy(model(x), y)
            if gamma > 0:
                loss = loss + gamma * sum(w.abs().sum() for w in weights)
            return loss

        d = state.dataset
        return train_model(model, d.x_train, d.y_train, retain, cfg,
                           state.seeds.seed("l1_sparse"), state.device, loss_fn=loss_fn)
