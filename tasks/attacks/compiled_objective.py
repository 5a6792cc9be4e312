"""The feature-recovery objective compiled by ``torch.compile`` (``compile: true``).

The eager paths differentiate a gradient with autograd (``create_graph=True``), which
``torch.compile`` refuses ("aot_autograd does not currently support double backward"). Written
with torch.func instead (vmap over trials of ``grad`` of the trial loss, then
``grad_and_value`` with respect to the images and soft labels), the whole step is one program
without a backward left to take, and Inductor compiles it. The compiled step returns the
gradients with the values; :class:`_Precomputed` hands them to autograd, so the optimiser loop
sees the same ``(total, cost)`` interface as :func:`tasks.attacks.inversion.make_batched_loss`.

Measured in ``benchmarks/bench_recovery_profile.py`` (part 3) on a 2-core CPU: the compiled
step runs at 0.87-1.17x the eager fast path in fp32 and 1.4-1.9x in bf16, after a minute or
two of compilation (shorter from Inductor's on-disk cache; models of one architecture share
the compiled program). It pays for long recoveries, not short ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sysconfig
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import grad_and_value

from tasks.attacks.trial_loss import per_trial_loss

__all__ = ["compiled_batched_loss", "compiler_missing"]


def compiler_missing() -> str | None:
    """Why ``compile: true`` cannot work on this machine, or None: Inductor builds its kernels
    as C++ extensions (a compiler and Python's headers), even for a GPU's host code."""
    names = [n for n in (os.environ.get("CXX"), "g++", "c++", "clang++") if n]
    if not any(shutil.which(n) for n in names):
        return ("true needs a C++ compiler for torch.compile (g++, c++ or clang++ on PATH, or "
                "$CXX); none found: install one or set compile: false")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        return (f"true needs Python's C headers for torch.compile ({header} is missing): "
                "install the python3-dev package of this Python or set compile: false")
    return None


class _Precomputed(torch.autograd.Function):
    """(total, cost) whose backward multiplies gradients the compiled step already made."""

    @staticmethod
    def forward(ctx, x, ysoft, total, cost, dx, dy):
        ctx.save_for_backward(dx, dy)
        ctx.mark_non_differentiable(cost)
        return total.clone(), cost.clone()

    @staticmethod
    def backward(ctx, g_total, g_cost):
        dx, dy = ctx.saved_tensors
        # Trial (t, r)'s total depends on x[t, r] and ysoft[t, r] alone.
        gx = dx * g_total.reshape(*g_total.shape, *(1,) * (dx.dim() - 2)).to(dx.dtype)
        gy = dy * g_total.reshape(*g_total.shape, *(1,) * (dy.dim() - 2)).to(dy.dtype)
        return gx, gy, None, None, None, None


def compiled_batched_loss(model: nn.Module, tv_weight: float,
                          forward: Callable | None = None) -> Callable:
    """Same signature and results (within float tolerance) as ``make_batched_loss``'s function:
    (x (T,R,k,C,H,W), soft labels (T,R,k,classes), g* stacked, |g*| (T,)) -> (1 - cos + tv,
    1 - cos), each (T, R), differentiable to x and the soft labels (not to g*).

    ``forward`` is the precision's context (autocast for bf16), entered inside the compiled
    program. Compilation happens on the first call; if it fails (no C++ compiler, an
    unsupported operator), that call raises."""
    per_trial = per_trial_loss(model, tv_weight)

    def objective(x, ysoft, gstack, gnorm):
        total, cost = per_trial(x, ysoft, gstack, gnorm)
        return total.sum(), (total, cost)

    def step(x, ysoft, gstack, gnorm):
        ctx = forward() if forward is not None else contextlib.nullcontext()
        with ctx:
            (dx, dy), (_, (total, cost)) = grad_and_value(
                objective, argnums=(0, 1), has_aux=True)(x, ysoft, gstack, gnorm)
        return dx, dy, total, cost

    compiled = torch.compile(step, dynamic=False, fullgraph=True)  # one graph, or an error

    def batched(x, ysoft, gstack, gnorm):
        with warnings.catch_warnings():
            # vmap has no batching rule for eval-mode batch norm and says so while tracing;
            # the compiled program does not run that fallback.
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            dx, dy, total, cost = compiled(x.detach(), ysoft.detach(), gstack, gnorm)
        return _Precomputed.apply(x, ysoft, total.float(), cost.float(), dx, dy)

    return batched
