"""Defences on the unlearning update (Hu et al., S&P 2024; ATTACKS.md 8.1).

The provider publishes a defended theta_u in place of theta_u; the original theta stays as it
was published before. All three return a fresh copy and never touch their inputs.

* ``obfuscation``  theta_u' = theta + (theta_u - theta + n), n ~ N(0, sigma^2 I) on every
  parameter (buffers such as BatchNorm statistics are not parameters and are left alone).
  sigma is absolute, in parameter units: sweep it on a log range around the update's scale.
* ``pruning``      global unstructured magnitude pruning of theta_u: of the *prunable* weights
  (``scope: weights``: every parameter with two or more dimensions, i.e. Linear and Conv
  weights; biases and BatchNorm affine parameters are kept, as in
  ``torch.nn.utils.prune.global_unstructured`` over weights) exactly round(p * n) entries with
  the smallest |w| are set to 0, ties broken by parameter order then position (stable sort).
  ``scope: all`` prunes over every parameter.
* ``fine_tuning``  theta_u trained ``epochs`` more epochs on held-out data that theta never saw
  (the public split by default, see :class:`tasks.defences.base.UpdateContext`), with the
  provider's recipe (lr, batch size, optimiser) unless overridden; BatchNorm statistics stay
  frozen by default so only the fine-tuning gradient changes the model.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from tasks.defences.base import DEFENCES, DefenceError, UpdateContext, UpdateDefence
from tasks.params import check
from tasks.training import train_model


def _copy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    clone.eval()
    return clone


def _check_pair(theta: nn.Module, theta_u: nn.Module) -> None:
    a = dict(theta.named_parameters())
    b = dict(theta_u.named_parameters())
    if a.keys() != b.keys() or any(a[n].shape != b[n].shape for n in a):
        raise DefenceError("theta and theta_u must be the same architecture (parameter names "
                           "and shapes differ)")


@DEFENCES.register("obfuscation")
class ParameterObfuscation(UpdateDefence):
    """Gaussian noise of scale sigma added to the unlearning update theta_u - theta."""

    name = "obfuscation"
    strength_field = "sigma"
    identity_strength = 0.0
    example_strength = 1e-2

    @dataclass(frozen=True)
    class Params:
        sigma: float = 0.0

        def __post_init__(self) -> None:
            check("sigma", self.sigma, low=0)

    def apply(self, theta, theta_u, params: Params, *, seed: int = 0, context=None):
        _check_pair(theta, theta_u)
        out = _copy(theta_u)
        if params.sigma == 0:
            return out  # exactly theta_u: no arithmetic, not even theta + (theta_u - theta)
        # The noise is drawn on the CPU and moved to each parameter's device, so CPU and GPU
        # runs of one seed publish the same model.
        gen = torch.Generator().manual_seed(int(seed))
        ref = dict(theta.named_parameters())
        with torch.no_grad():
            for name, p in out.named_parameters():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device)
                base = ref[name].detach().to(p.device).double()
                update = p.double() - base
                p.copy_((base + update + params.sigma * noise).to(p))
        return out


def prunable(model: nn.Module, scope: str = "weights") -> list[tuple[str, nn.Parameter]]:
    """The parameters global pruning ranks, in ``named_parameters`` order."""
    return [(n, p) for n, p in model.named_parameters() if scope == "all" or p.dim() >= 2]


def prune_count(n: int, ratio: float) -> int:
    """How many of ``n`` prunable weights ratio p removes: round(p * n), half away from zero."""
    return int(np.floor(ratio * n + 0.5))


@DEFENCES.register("pruning")
class MagnitudePruning(UpdateDefence):
    """Global unstructured magnitude pruning of theta_u at ratio p."""

    name = "pruning"
    strength_field = "ratio"
    identity_strength = 0.0
    example_strength = 0.5

    @dataclass(frozen=True)
    class Params:
        ratio: float = 0.0
        scope: Literal["weights", "all"] = "weights"

        def __post_init__(self) -> None:
            check("ratio", self.ratio, low=0, high=1)

    def apply(self, theta, theta_u, params: Params, *, seed: int = 0, context=None):
        out = _copy(theta_u)
        targets = prunable(out, params.scope)
        if not targets:
            raise DefenceError(f"pruning scope {params.scope!r}: the model has no prunable "
                               "parameters")
        flat = torch.cat([p.detach().abs().flatten().double() for _, p in targets])
        k = prune_count(flat.numel(), params.ratio)
        if k == 0:
            return out
        # Ranked on the CPU (numpy's stable argsort); the mask then goes to each weight's device.
        order = torch.as_tensor(np.argsort(flat.cpu().numpy(), kind="stable")[:k])
        mask = torch.ones(flat.numel(), dtype=torch.bool)
        mask[order] = False
        with torch.no_grad():
            start = 0
            for _, p in targets:
                n = p.numel()
                p.mul_(mask[start:start + n].view_as(p).to(p))
                start += n
        return out


@DEFENCES.register("fine_tuning")
class FineTuning(UpdateDefence):
    """theta_u trained ``epochs`` more epochs on held-out data after unlearning."""

    name = "fine_tuning"
    strength_field = "epochs"
    identity_strength = 0
    example_strength = 1

    @dataclass(frozen=True)
    class Params:
        epochs: int = 0
        lr: float | None = None  # None: the provider's training lr
        batch_size: int | None = None  # None: the provider's batch size
        max_samples: int | None = None  # use only the first n held-out samples
        bn_mode: Literal["train", "eval"] = "eval"

        def __post_init__(self) -> None:
            check("epochs", self.epochs, low=0, integer=True)  # 0: the undefended strength
            check("lr", self.lr, low=0, low_open=True, optional=True)
            check("batch_size", self.batch_size, low=1, integer=True, optional=True)
            check("max_samples", self.max_samples, low=1, integer=True, optional=True)

    def apply(self, theta, theta_u, params: Params, *, seed: int = 0,
              context: UpdateContext | None = None):
        out = _copy(theta_u)
        if params.epochs == 0:
            return out
        if context is None or len(context.heldout) == 0:
            raise DefenceError("fine_tuning needs held-out data: a public split "
                               "(set dataset.pool_size below the training-set size) or "
                               "source: test")
        heldout = np.asarray(context.heldout, dtype=np.int64)
        if params.max_samples is not None:
            heldout = heldout[:params.max_samples]
        base = context.train_cfg
        cfg = dataclasses.replace(
            base, epochs=params.epochs, lr_milestones=(), bn_mode=params.bn_mode,
            lr=params.lr if params.lr is not None else base.lr,
            batch_size=params.batch_size or base.batch_size)
        # A seed distinct from the original's order seed: these epochs follow, not replay.
        return train_model(out, context.x, context.y, heldout, cfg, seed=int(seed) + 7_919,
                           device=context.device)
