"""SalUn: random-label fine-tuning restricted to the weights most salient for forgetting."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.params import check
from tasks.unlearning.approximate import EpochParams
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
)
from tasks.unlearning.random_label import relabelled_finetune


def forget_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Gradient of the mean CE loss over (x, y) per trainable weight, accumulated in chunks
    so a large forget set never sits in one graph. ``model`` must be in eval mode."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = {n: torch.zeros_like(p) for n, p in named}
    for start in range(0, len(x), chunk):
        xb, yb = x[start: start + chunk], y[start: start + chunk]
        # Summed, then divided once: the same mean as one big batch.
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(x)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, _), g in zip(named, grads):
            if g is not None:
                total[n] += g
    return total


def saliency_mask(grads: dict[str, torch.Tensor], share: float) -> dict[str, torch.Tensor]:
    """1 for the ``share`` fraction of weights (over all layers together) with the largest
    |gradient|, 0 elsewhere. An exact count, ties broken by position, so zero gradients do not
    all slip in when they tie at the threshold."""
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    keep = max(1, math.ceil(share * flat.numel()))
    # A stable sort keeps the choice among ties deterministic across runs.
    top = torch.sort(flat, descending=True, stable=True).indices[:keep]
    chosen = torch.zeros_like(flat)
    chosen[top] = 1.0
    masks, offset = {}, 0
    for n, g in grads.items():
        masks[n] = chosen[offset: offset + g.numel()].view_as(g)
        offset += g.numel()
    return masks


@UNLEARNING.register("salun")
class SalUn(UnlearningMethod):
    """SalUn (Fan, Liu, Zhang, Wei, Wong and Liu, "SalUn: Empowering machine unlearning via
    gradient-based weight saliency in both image classification and generation", ICLR 2024).

    Marks the ``saliency_share`` fraction of all weights with the largest |gradient| of the
    forget-set CE loss at theta (eval mode), then fine-tunes for ``epochs`` on U under random
    wrong labels mixed with the retained records, moving only the marked weights.
    ``lr``/``batch_size`` default to the original recipe's.
    """

    name = "salun"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    @dataclass(frozen=True)
    class Params(EpochParams):
        saliency_share: float = 0.5

        def __post_init__(self) -> None:
            super().__post_init__()
            # 0 would freeze every weight and publish theta itself.
            check("saliency_share", self.saliency_share, low=0, low_open=True, high=1)

    def mask(self, state: TrainingState, request: ForgetRequest,
             params: Params) -> dict[str, torch.Tensor]:
        """The saliency mask of theta for this request (parameter name -> 0/1 tensor)."""
        device = state.device
        model = copy_model(state.original).to(device).eval()
        idx = np.asarray(request.indices, dtype=np.int64)
        x = torch.as_tensor(state.dataset.x_train[idx], device=device)
        y = torch.as_tensor(state.dataset.y_train[idx], device=device)
        return saliency_mask(forget_gradient(model, x, y), params.saliency_share)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        return relabelled_finetune(state, request, epochs=params.epochs, lr=params.lr,
                                   batch_size=params.batch_size, purpose="salun",
                                   mask=self.mask(state, request, params))
