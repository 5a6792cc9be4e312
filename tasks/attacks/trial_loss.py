"""One trial's feature-recovery objective, written with torch.func.

``1 - cos(grad_theta L(f(x), y), g*) + tv_weight * TV(x)`` for one trial (k samples): the
gradient is taken by ``torch.func.grad`` over the parameters, so the function composes with
``vmap`` over trials (the general per-trial path of :mod:`tasks.attacks.inversion`) and, having
no autograd double backward, with ``torch.compile`` (:mod:`tasks.attacks.compiled_objective`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = ["detached_params", "make_trial_loss", "per_trial_loss", "tv_mean"]


def detached_params(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((n, p.detach()) for n, p in model.named_parameters())


def tv_mean(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic mean total variation of (..., H, W) images (the reference TV)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def make_trial_loss(model: nn.Module, tv_weight: float):
    """(x (k,C,H,W), soft labels (k,C), g* dict, |g*|) -> (1 - cos + tv, 1 - cos)."""
    params = detached_params(model)
    buffers = OrderedDict((n, b.detach()) for n, b in model.named_buffers())
    names = list(params)

    def trial_loss(x, ysoft, gstar, gnorm):
        def ce(p):
            out = functional_call(model, (p, buffers), (x,))
            return -(ysoft * F.log_softmax(out, dim=-1)).sum(-1).mean()

        g = grad(ce)(params)
        dot = sum((g[n] * gstar[n]).sum() for n in names)
        sq = sum((g[n] * g[n]).sum() for n in names)
        cos = dot / (torch.sqrt(sq) * gnorm + 1e-12)
        cost = 1.0 - cos
        return cost + tv_weight * tv_mean(x), cost

    return trial_loss


def per_trial_loss(model: nn.Module, tv_weight: float):
    """:func:`make_trial_loss` over every trial: (x (T,R,k,C,H,W), soft labels (T,R,k,C), g*
    stacked (T, ...), |g*| (T,)) -> (1 - cos + tv, 1 - cos), each (T, R)."""
    trial = make_trial_loss(model, tv_weight)
    return vmap(vmap(trial, in_dims=(0, 0, None, None)), in_dims=(0, 0, 0, 0))
