"""The arithmetic of feature recovery's optimisation (issue 16, item 4).

``fp32`` is exact float32 everywhere (TF32 off on CUDA as well: cuDNN allows it by default);
``tf32`` lets CUDA devices that have it run matmuls and convolutions in TF32 (elsewhere it is
the same as fp32); ``bf16`` autocasts each forward pass to bfloat16 on any device, the
backward pass following the forward's dtypes. Scoring stays fp32 whatever the setting.
On a CPU, recovery also flushes denormal floats to zero (``flush_denormals``): it is faster.
"""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

# The one list of settings: InversionConfig's field is typed by it, arithmetic() checks it.
Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@contextlib.contextmanager
def cuda_tf32(allowed: bool):
    """TF32 for CUDA matmuls and convolutions on or off, restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def arithmetic(precision: str, device: torch.device):
    """(context for the whole optimisation, factory of a context for each forward pass)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    whole = cuda_tf32(precision == "tf32") if device.type == "cuda" \
        else contextlib.nullcontext()
    if precision == "bf16":
        return whole, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return whole, contextlib.nullcontext


def fp32_scoring(device: torch.device):
    """The context in which final iterates are scored: plain float32."""
    return cuda_tf32(False) if device.type == "cuda" else contextlib.nullcontext()


def _flushing() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has no getter: a probe)."""
    return (torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """On a CPU, denormal floats (below 1.2e-38) read and written as zero while recovery runs,
    the caller's setting restored afterwards. Some targets' gradients carry them, and x86
    arithmetic on denormals is many times slower: one such group of ConvNet targets took 4.7 s
    instead of 1.6 s, its recovered images the same (``bench_recovery_profile.py``, part 4).
    Training and probing gain nothing from it (``bench_denormals.py``). GPUs run denormals at
    full speed: nothing to do there."""
    if device.type != "cpu":
        yield
        return
    before = _flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
