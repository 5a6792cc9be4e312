"""NegGrad+: descend the retained loss while ascending the forget loss, in one mixed step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.params import check
from tasks.training import epoch_order, has_batchnorm, train_model
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

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        model = copy_model(state.original).to(device)
        cfg = finetune_config(state.train_cfg, params.epochs, params.lr, params.batch_size)
        d = state.dataset
        xs = torch.as_tensor(d.x_train, device=device)
        ys = torch.as_tensor(d.y_train, device=device)
        forget = np.asarray(request.indices, dtype=np.int64)
        k = len(forget)
        # One shuffle of U, read cyclically, so every forget record is ascended equally often.
        cycle = torch.as_tensor(epoch_order(forget, state.seeds.seed("neggrad_plus/forget"), 0),
                                device=device)
        f_batch = min(cfg.batch_size, k)
        # A lone forget record cannot pass training-mode BatchNorm alone: one joint forward.
        joint = f_batch < 2 and cfg.bn_mode == "train" and has_batchnorm(model)
        cursor = 0

        def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    batch: torch.Tensor) -> torch.Tensor:
            nonlocal cursor
            f_sel = cycle[(cursor + torch.arange(f_batch, device=device)) % k]
            cursor = (cursor + f_batch) % k
            if joint:
                out = model(torch.cat([x, xs[f_sel]]))
                out_r, out_f = out[: len(x)], out[len(x):]
            else:
                out_r, out_f = model(x), model(xs[f_sel])
            return (params.alpha * F.cross_entropy(out_r, y)
                    - (1 - params.alpha) * F.cross_entropy(out_f, ys[f_sel]))

        return train_model(model, xs, ys, retained_indices(state, request), cfg,
                           state.seeds.seed("neggrad_plus/retain"), device, loss_fn=loss_fn)
