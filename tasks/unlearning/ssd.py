"""Selective Synaptic Dampening: shrink the weights that matter to U far more than to the rest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from tasks.params import check
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
)

# Per-sample gradients of a chunk hold chunk x (number of weights) floats: bound that product
# so large networks run in small chunks instead of running out of memory.
_CHUNK_FLOATS = 2**26
_MAX_CHUNK = 256


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the mean CE loss: per weight, the mean over the records of
    the squared per-record gradient. ``model`` must be in eval mode (no batch statistics)."""
    weights = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def record_loss(w: dict[str, torch.Tensor], xi: torch.Tensor,
                    yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (w, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_record = vmap(grad(record_loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    n_weights = sum(w.numel() for w in weights.values())
    chunk = max(1, min(_MAX_CHUNK, _CHUNK_FLOATS // max(n_weights, 1)))
    for start in range(0, len(x), chunk):
        grads = per_record(weights, x[start: start + chunk], y[start: start + chunk])
        for n, g in grads.items():
            total[n] += g.pow(2).sum(dim=0)
    count = max(len(x), 1)
    return {n: t / count for n, t in total.items()}


@UNLEARNING.register("ssd")
class SelectiveSynapticDampening(UnlearningMethod):
    """Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast machine unlearning
    without retraining through selective synaptic dampening", AAAI 2024).

    Without any training, compares the diagonal Fisher importance of every weight on the
    forget set D_f = U ([]_{D_f}) with its importance on the training data D ([]_D), and
    multiplies each weight with []_{D_f} > alpha []_D by beta = min(lambda []_D / []_{D_f}, 1).
    The paper defines []_D on the whole training set D, of which D_f is a subset, and the
    authors' code computes it on a loader over retain + forget records
    (``calc_importance(full_train_dl)``); so here []_D is computed on every record theta
    still stands for before this request (the training set minus the records earlier
    requests removed), U included -- not on the retained records alone. Importances
    are mean squared per-record CE-loss gradients (diagonal empirical Fisher), theta in eval
    mode.
    """

    name = "ssd"
    exact = False
    families = ("torch",)
    step_size_param = None  # no learning rate: a one-shot multiplicative edit

    @dataclass(frozen=True)
    class Params:
        alpha: float = 10.0  # selection threshold on I_f / I_d
        dampening: float = 1.0  # lambda: how hard a selected weight is shrunk

        def __post_init__(self) -> None:
            check("alpha", self.alpha, low=0, low_open=True)
            check("dampening", self.dampening, low=0, low_open=True)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        model = copy_model(state.original).to(device).eval()
        forget = np.asarray(request.indices, dtype=np.int64)
        # D: the whole training set theta now stands for, the forget set included (the paper's
        # []_D), only the records removed by earlier requests left out.
        keep = np.asarray(state.train_indices, dtype=np.int64)
        whole = keep[~np.isin(keep, np.asarray(state.removed, dtype=np.int64))]
        d = state.dataset

        def importance(idx: np.ndarray) -> dict[str, torch.Tensor]:
            return fisher_diagonal(model, torch.as_tensor(d.x_train[idx], device=device),
                                   torch.as_tensor(d.y_train[idx], device=device))

        i_forget, i_whole = importance(forget), importance(whole)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n not in i_forget:
                    continue  # frozen weights take no part
                i_f, i_d = i_forget[n], i_whole[n]
                selected = i_f > params.alpha * i_d
                # Selected weights have i_f > 0; the others divide by 1 and are left alone.
                ratio = params.dampening * i_d / torch.where(selected, i_f, torch.ones_like(i_f))
                p.mul_(torch.where(selected, ratio.clamp(max=1.0), torch.ones_like(ratio)))
        return model
