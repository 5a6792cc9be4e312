"""The feature-recovery objective compiled by ``torch.compile`` (``compile: true``).

The eager paths differentiate a gradient with autograd (``create_graph=True``), which
``torch.compile`` refuses ("aot_autograd does not currently support double backward"). Written
with torch.func instead (vmap over trials of ``grad`` of the trial loss, then
``grad_and_value`` with respect to the images and soft labels), the whole step is one program
without a backward left to take, and Inductor compiles it. The compiled step returns the
gradients with the values; :class:`_Precomputed` hands them to autograd, so the optimiser loop
sees the same ``(total, cost)`` interface as :func:`tasks.attacks.inversion.make_batched_loss`.

Measured in ``benchmarks/bench_recovery_profile.py`` (part 3) on a 2-core CPU, with the
targets run a few at a time (:func:`chunk_targets_for`): the compiled step runs at 1.15x
the eager fast path in fp32 and 1.9x in bf16 for the CIFAR ConvNet, after a minute or two of compilation (shorter
from Inductor's on-disk cache; models of one architecture share the compiled program). It
pays for long recoveries, not short ones.
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

__all__ = ["CompileFailedError", "chunk_targets_for", "compiled_batched_loss",
           "compiler_missing"]

# Forward activations (fp32 bytes) one compiled call may cover on a CPU. The compiled program's
# per-sample convolution gradients slow down with the batch: for the CIFAR ConvNet (width 16,
# 3.4 MiB a trial) 8 trials a call ran 1.29-1.30x (bf16) and 1.24-1.37x (fp32) faster per
# step than 32; 16 were slower than 8, and 4 slower in bf16, level in fp32 (docs/BENCHMARKS.md;
# ``bench_recovery_profile.py --chunks 2 4 8``, part 3). Measured on that model only.
CPU_CHUNK_BYTES = 32 * 2**20


class CompileFailedError(RuntimeError):
    """torch.compile could not build the objective for this model (said in one line; the
    compiler's own output is the cause)."""


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


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


def _forward_bytes(model: nn.Module, sample: tuple[int, ...]) -> int:
    """Bytes of every leaf module's output for one trial (``sample``: k, C, H, W) in fp32."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(sample, device=device))
    finally:
        for h in hooks:
            h.remove()
    return 4 * total


def chunk_targets_for(model: nn.Module, sample: tuple[int, ...], restarts: int,
                      device: torch.device) -> int | None:
    """Targets per compiled call: as many as keep a call's forward activations within
    :data:`CPU_CHUNK_BYTES` on a CPU (at least one); None (all at once) on other devices,
    whose throughput grows with the batch."""
    if device.type != "cpu":
        return None
    trials = max(1, CPU_CHUNK_BYTES // max(1, _forward_bytes(model, sample)))
    return max(1, trials // restarts)


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
                          forward: Callable | None = None,
                          chunk_targets: int | None = None) -> Callable:
    """Same signature and results (within float tolerance) as ``make_batched_loss``'s function:
    (x (T,R,k,C,H,W), soft labels (T,R,k,classes), g* stacked, |g*| (T,)) -> (1 - cos + tv,
    1 - cos), each (T, R), differentiable to x and the soft labels (not to g*).

    ``forward`` is the precision's context (autocast for bf16), entered inside the compiled
    program. ``chunk_targets``: run the compiled program on that many targets at a time (the
    last chunk padded with copies of its first target, so every call has one shape and one
    compiled program); None runs all at once. Compilation happens on the first call; if it
    fails (an unsupported operator, a compiler bug), that call raises
    :class:`CompileFailedError`, one line with the compiler's error as its cause."""
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

    def run(x, ysoft, gstack, gnorm):
        t = x.shape[0]
        size = t if chunk_targets is None else min(chunk_targets, t)
        parts = []
        for start in range(0, t, size):
            n = min(size, t - start)
            # Whole chunks are views; only a short last chunk is gathered (and padded).
            take = (slice(start, start + size) if n == size else
                    torch.cat([torch.arange(start, t), torch.full((size - n,), start)]))
            out = compiled(x[take], ysoft[take], {k: v[take] for k, v in gstack.items()},
                           gnorm[take])
            parts.append([o[:n] for o in out])
        if len(parts) == 1:
            return parts[0]
        return [torch.cat(p) for p in zip(*parts)]

    built = False

    def batched(x, ysoft, gstack, gnorm):
        nonlocal built
        with warnings.catch_warnings():
            # vmap has no batching rule for eval-mode batch norm and says so while tracing;
            # the compiled program does not run that fallback.
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            try:
                dx, dy, total, cost = run(x.detach(), ysoft.detach(), gstack, gnorm)
            except Exception as err:
                if built:
                    raise
                # Compilation errors run to pages of generated C++; the unit's error row
                # keeps one line (e.g. torch 2.13's Inductor on ResNet-18 in bf16).
                raise CompileFailedError(
                    f"compile: true: torch.compile could not build the recovery objective for "
                    f"this model ({_first_line(err)}); set compile: false (the eager path "
                    "computes the same)") from err
        built = True
        return _Precomputed.apply(x, ysoft, total.float(), cost.float(), dx, dy)

    return batched
