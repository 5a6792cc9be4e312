"""l1-sparse unlearning: fine-tune on the retained records under a decaying l1 penalty."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tasks.params import check
from tasks.training import epoch_order, has_batchnorm, make_optimizer, train_mode
from tasks.unlearning.approximate import EpochParams
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
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

    # A distinct order seed: these epochs follow the original's, they do not replay them.
    SEED_OFFSET = 7_000_003

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        model = copy_model(state.original).to(device)
        cfg = dataclasses.replace(state.train_cfg, lr=params.lr or state.train_cfg.lr)
        opt = make_optimizer(model, cfg)
        batch = params.batch_size or cfg.batch_size
        d = state.dataset
        x = torch.as_tensor(d.x_train, device=device)
        y = torch.as_tensor(d.y_train, device=device)
        retain = retained_indices(state, request)
        seed = state.seed + self.SEED_OFFSET
        weights = [p for p in model.parameters() if p.requires_grad]
        has_bn = has_batchnorm(model)
        orders = [epoch_order(retain, seed, e) for e in range(params.epochs)]
        # The schedule runs over the steps actually taken (a skipped single-sample batch
        # under BatchNorm is not one).
        skip_last = has_bn and cfg.bn_mode == "train" and len(retain) % batch == 1
        per_epoch = -(-len(retain) // batch) - int(skip_last)
        total = max(per_epoch * params.epochs, 1)
        step = 0
        for order_np in orders:
            train_mode(model, cfg.bn_mode)
            order = torch.as_tensor(order_np, device=device)
            for start in range(0, len(order), batch):
                sel = order[start: start + batch]
                if len(sel) < 2 and has_bn and cfg.bn_mode == "train":
                    continue  # BatchNorm cannot train on a single sample
                gamma = params.l1 * (1 - step / total)
                loss = F.cross_entropy(model(x[sel]), y[sel])
                if gamma > 0:
                    loss = loss + gamma * sum(w.abs().sum() for w in weights)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
        model.eval()
        return model
