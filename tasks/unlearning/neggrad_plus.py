"""NegGrad+: descend the retained loss while ascending the forget loss, in one mixed step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
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


@UNLEARNING.register("neggrad_plus")
class NegGradPlus(UnlearningMethod):
    """NegGrad+ (as named by Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards
    unbounded machine unlearning", NeurIPS 2023).

    Runs ``epochs`` passes over the retained records in mini-batches; every step descends
    ``alpha * CE(retained batch) - (1 - alpha) * CE(forget batch)``, the forget batches
    cycling through a seeded shuffle of U. ``lr``/``batch_size`` default to the original
    recipe's (optimiser, momentum and weight decay always are the recipe's).
    """

    name = "neggrad_plus"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    @dataclass(frozen=True)
    class Params(EpochParams):
        alpha: float = 0.9

        def __post_init__(self) -> None:
            super().__post_init__()
            # alpha 1 is plain fine-tuning, alpha 0 plain (unbounded) gradient ascent.
            check("alpha", self.alpha, low=0, high=1, low_open=True, high_open=True)

    # Batch orders are drawn apart from the original's epochs (and the retain order's).
    SEED_OFFSET = 6_000_011

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
        forget = np.asarray(request.indices, dtype=np.int64)
        k = len(forget)
        seed = state.seed + self.SEED_OFFSET
        # One shuffle of U, read cyclically, so every forget record is ascended equally often.
        cycle = torch.as_tensor(epoch_order(forget, seed + 1, 0), device=device)
        f_batch = min(batch, k)
        has_bn = has_batchnorm(model)
        cursor = 0
        for epoch in range(params.epochs):
            train_mode(model, cfg.bn_mode)
            order = torch.as_tensor(epoch_order(retain, seed, epoch), device=device)
            for start in range(0, len(order), batch):
                sel = order[start: start + batch]
                if len(sel) < 2 and has_bn and cfg.bn_mode == "train":
                    continue  # BatchNorm cannot train on a single sample
                f_sel = cycle[(cursor + torch.arange(f_batch, device=device)) % k]
                cursor = (cursor + f_batch) % k
                if f_batch < 2 and has_bn and cfg.bn_mode == "train":
                    # A lone forget record cannot pass BatchNorm alone: one joint forward.
                    out = model(torch.cat([x[sel], x[f_sel]]))
                    out_r, out_f = out[: len(sel)], out[len(sel):]
                else:
                    out_r, out_f = model(x[sel]), model(x[f_sel])
                loss = (params.alpha * F.cross_entropy(out_r, y[sel])
                        - (1 - params.alpha) * F.cross_entropy(out_f, y[f_sel]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        return model
