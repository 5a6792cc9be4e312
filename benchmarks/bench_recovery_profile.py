"""Where one step of convolutional feature recovery spends its time, and what that bounds.

    .venv/bin/python benchmarks/bench_recovery_profile.py
    .venv/bin/python benchmarks/bench_recovery_profile.py --targets 4 --steps 2   # quick

Issue 16 asks for ConvNet recovery 10x faster than the one-trial-at-a-time loop on CPU. This
benchmark measures, side by side on one machine, why that is (or is not) reachable:

1. the rate of one convolution (64 -> 64 channels, 3x3, 32 images of 32x32) in float32 and
   bfloat16, NCHW and channels-last, and of the per-sample weight gradient the fast path forms
   (one grouped convolution), in GFLOP/s;
2. one step of the vectorised recovery (ConvNet width 16, targets x 2 restarts, the fast
   per-trial path) under ``torch.profiler`` at fp32, bf16 and fp32 with the model in
   channels-last: seconds per step, the share of CPU time spent in convolution operators,
   and the trial-iterations per second the step could reach if every convolution took no
   time at all (the rest of the step's wall time, by that share) — beside the plain loop's
   rate measured here;
3. whether ``torch.compile`` accepts the recovery objective (a gradient of a gradient): it
   refuses the autograd form; the torch.func form (vmap of grad, then grad to x) compiles,
   and its compiled step is timed against the eager fast path at fp32 and bf16, with all
   targets in one call and a few at a time (as ``recover`` runs it on a CPU; ``--chunks``
   times other sizes);
4. ``recover`` on groups of 4 targets with denormal floats flushed to zero (as it runs on a
   CPU) and without: some targets' gradients carry denormals, which x86 computes slowly.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from collections import OrderedDict
from dataclasses import replace

import torch
import torch.nn.functional as F
from bench_inversion import make_cases, mean_psnr, plain_cost, plain_trial

from tasks.attacks.compiled_objective import chunk_targets_for, compiled_batched_loss
from tasks.attacks.inversion import (
    InversionConfig,
    make_batched_loss,
    recover,
    target_gradient,
)
from tasks.attacks.precision import arithmetic, flush_denormals

# Operators that are convolutions (forward, backward, the double backward's) or their layout
# conversions inside oneDNN.
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
            "aten::convolution_backward_overrideable", "aten::thnn_conv2d")


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN builds its kernels for each new shape
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _conv_rates(dtype: torch.dtype, repeats: int) -> tuple[float, float, float]:
    """Seconds of a forward convolution in NCHW and channels-last, and of the per-sample
    weight gradients of the fast path (the samples as the groups of one image)."""
    b, c, hw = 32, 64, 32
    x = torch.randn(b, c, hw, hw, dtype=dtype)
    w = torch.randn(c, c, 3, 3, dtype=dtype)
    xl = x.contiguous(memory_format=torch.channels_last)
    wl = w.contiguous(memory_format=torch.channels_last)
    d = torch.randn(1, b * c, hw, hw, dtype=dtype)
    a = torch.randn(1, b * c, hw, hw, dtype=dtype)
    shape = torch.empty(b * c, c, 3, 3, dtype=dtype)
    return (_seconds(lambda: F.conv2d(x, w, padding=1), repeats),
            _seconds(lambda: F.conv2d(xl, wl, padding=1), repeats),
            _seconds(lambda: torch.ops.aten.convolution_backward(
                d, a, shape, None, [1, 1], [1, 1], [1, 1], False, [0, 0], b,
                [False, True, False]), repeats))


def conv_rates(repeats: int) -> None:
    flop = 2 * 32 * 64 * 64 * 9 * 32 * 32
    print("1. one convolution, 64->64 3x3 over 32 images 32x32 (GFLOP/s):")
    for dtype in (torch.float32, torch.bfloat16):
        nchw, last, grouped = _conv_rates(dtype, repeats)
        name = str(dtype).replace("torch.", "")
        print(f"   {name:<9} forward NCHW {flop / nchw / 1e9:6.0f}   forward channels-last "
              f"{flop / last / 1e9:6.0f}   per-sample weight gradient {flop / grouped / 1e9:6.0f}")


def _profile(step, steps: int) -> tuple[float, float, str]:
    """(seconds per step, share of CPU time in convolutions, the largest other operators)."""
    step()
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
    top = sorted((e for e in events if e.key not in CONV_OPS),
                 key=lambda e: -e.self_cpu_time_total)[:4]
    others = ", ".join(f"{e.key.replace('aten::', '')} {e.self_cpu_time_total / total:.0%}"
                       for e in top)
    return _seconds(step, steps), conv / total, others


def _step_inputs(cases, restarts: int):
    """g* stacked by target, |g*|, one-hot labels per trial, the model and the images' shape."""
    views = [target_gradient(c, "reference") for c in cases]
    gstars, model = [v[0] for v in views], views[0][1].eval()
    names = list(gstars[0])
    gstack = OrderedDict((n, torch.stack([g[n] for g in gstars])) for n in names)
    gnorm = torch.sqrt(sum(gstack[n].flatten(1).square().sum(1) for n in names))
    t, k = len(cases), len(cases[0].metadata.labels)
    shape = (t, restarts, k, *cases[0].metadata.input_shape)
    classes = cases[0].metadata.num_classes
    y = F.one_hot(torch.as_tensor([c.metadata.labels for c in cases]), classes).float()
    return gstack, gnorm, y[:, None].expand(t, restarts, k, classes), model, shape


def profile_step(cases, restarts: int, steps: int, plain_rate: float) -> None:
    gstack, gnorm, y, model, shape = _step_inputs(cases, restarts)
    t = shape[0]
    batched, path = make_batched_loss(model, 1e-4, "fast")
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    variants = {"fp32": batched, "bf16": batched,
                "fp32, model in channels-last": make_batched_loss(channels_last, 1e-4, "fast")[0]}
    trials = t * restarts
    print(f"2. one recovery step, {t} targets x {restarts} restarts ({path} path), "
          f"{steps} steps profiled; the plain loop measured here: {plain_rate:.0f} "
          "trial-iterations/s")
    for name, loss in variants.items():
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        _, forward = arithmetic(name.split(",")[0], torch.device("cpu"))

        def step(x=x, forward=forward, loss=loss):
            x.grad = None
            with forward(), flush_denormals(torch.device("cpu")):  # as recover() runs
                total, _ = loss(x, y, gstack, gnorm)
            total.sum().backward()

        wall, conv, others = _profile(step, steps)
        rest = wall * (1 - conv)
        print(f"   {name}: {wall:.3f} s per step ({trials / wall:.0f} trial-iterations/s, "
              f"{trials / wall / plain_rate:.2f}x the plain loop); convolutions "
              f"{conv:.0%} of CPU time; the rest ({others}, ...) alone: "
              f"{rest:.3f} s, so at most {trials / rest:.0f} trial-iterations/s = "
              f"{trials / rest / plain_rate:.1f}x the plain loop with free convolutions")


def _refusal(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:160]


def compile_check(case) -> None:
    """The textbook objective (``autograd.grad(create_graph=True)``) under torch.compile."""
    gstar, model, _ = target_gradient(case, "reference")
    model = copy.deepcopy(model).eval().requires_grad_(True)
    params = list(model.parameters())
    targets = [gstar[n] for n, _ in model.named_parameters()]
    gnorm = torch.sqrt(sum(t.square().sum() for t in targets))
    y = F.one_hot(torch.as_tensor(case.metadata.labels), case.metadata.num_classes).float()
    x = torch.rand(len(case.metadata.labels), *case.metadata.input_shape, requires_grad=True)
    try:
        torch.compile(lambda v: plain_cost(model, params, targets, gnorm, y, v))(x).backward()
        print("3. torch.compile, the objective through autograd.grad: accepted")
    except Exception as exc:  # noqa: BLE001 - the message is the result
        print(f"3. torch.compile, the objective through autograd.grad: refused ({_refusal(exc)})")


def compile_func_step(cases, restarts: int, steps: int, plain_rate: float,
                      sizes: list[int] | None = None) -> None:
    """The same objective written with torch.func (vmap over trials of grad of the trial loss,
    then grad with respect to x) has no double backward left, and torch.compile accepts it
    (``tasks.attacks.compiled_objective``, ``compile: true``): its step beside the eager fast
    path, at fp32 and bf16."""
    gstack, gnorm, y, model, shape = _step_inputs(cases, restarts)
    trials = shape[0] * shape[1]
    eager_loss, _ = make_batched_loss(model, 1e-4, "fast")
    chosen = chunk_targets_for(model, shape[2:], restarts, torch.device("cpu"))
    chunks = [None] + sorted({c for c in (sizes or [chosen]) if c < shape[0]})
    print("   the same objective through torch.func (vmap of grad, then grad to x), compiled,"
          " against the eager fast path at the same precision:")
    for name in ("fp32", "bf16"):
        _, forward = arithmetic(name, torch.device("cpu"))
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

        def step(loss, x=x, forward=forward):
            x.grad = None
            with forward():
                total, _ = loss(x, y, gstack, gnorm)
            total.sum().backward()
            return x.grad

        with flush_denormals(torch.device("cpu")):  # as recover() runs
            reference = step(eager_loss).clone()
            eager = _seconds(lambda: step(eager_loss), steps)
            for chunk in chunks:
                compiled_loss = compiled_batched_loss(model, 1e-4, forward, chunk)
                start = time.perf_counter()
                try:
                    out = step(compiled_loss)
                except Exception as exc:  # noqa: BLE001 - the message is the result
                    print(f"   {name}: refused ({_refusal(exc)})")
                    break
                first = time.perf_counter() - start
                wall = _seconds(lambda loss=compiled_loss: step(loss), steps)
                diff = float((out - reference).abs().max())
                how = ("all targets in one call" if chunk is None else
                       f"{chunk} targets a call" + (" (recover's choice for this model)"
                                                    if chunk == chosen else ""))
                print(f"   {name}, {how}: first call {first:.0f} s (compilation; Inductor's "
                      f"on-disk cache shortens it in later processes), then {wall:.3f} s per "
                      f"step ({trials / wall:.0f} trial-iterations/s, "
                      f"{trials / wall / plain_rate:.2f}x the plain loop) against eager "
                      f"{eager:.3f} s: {eager / wall:.2f}x; max |gradient difference| "
                      f"{diff:.1e}")


def denormal_groups(cases, truths, iterations: int, size: int = 4) -> None:
    """``recover`` on groups of ``size`` targets, with denormals flushed (as it runs) and with
    the flush turned off (as it ran before 2026-12-04): seconds per group, and how far apart
    the two recoveries are."""
    from tasks.attacks import inversion

    cfg = InversionConfig(iterations=iterations, restarts=2)
    print(f"4. recover() on groups of {size} targets x 2 restarts x {iterations} iterations, "
          "seconds per group:")
    flushed = inversion.flush_denormals
    runs = {}
    try:
        for label, flush in (("denormals flushed", flushed),
                             ("not flushed", lambda device: contextlib.nullcontext())):
            inversion.flush_denormals = flush  # what _run_group enters around the optimisation
            times, images = [], []
            for lo in range(0, len(cases), size):
                start = time.perf_counter()
                res = recover(cases[lo:lo + size], cfg, seeds=list(range(lo, lo + size)))
                times.append(time.perf_counter() - start)
                images += list(res.images)
            runs[label] = images
            print(f"   {label:<18} {' '.join(f'{t:5.2f}' for t in times)}   total "
                  f"{sum(times):6.2f} s   mean PSNR {mean_psnr(images, truths):.2f} dB")
    finally:
        inversion.flush_denormals = flushed
    diff = max(float(abs(a - b).max()) for a, b in zip(runs["denormals flushed"],
                                                         runs["not flushed"]))
    print(f"   max |pixel difference| between the two: {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="profiled recovery steps")
    ap.add_argument("--group-iterations", type=int, default=20,
                    help="iterations of the recoveries in groups (part 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip compiling the torch.func objective (minutes on 2 cores)")
    ap.add_argument("--chunks", type=int, nargs="+", default=None, metavar="TARGETS",
                    help="targets per compiled call to time beside all at once (part 3; "
                         "default: recover's choice for the model)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} load={os.getloadavg()[0]:.2f}", flush=True)
    conv_rates(repeats=10)
    cases, truths = make_cases("convnet", args.targets)
    cfg = InversionConfig(iterations=args.steps + 1, restarts=1)
    plain_trial(cases[0], replace(cfg, iterations=1), 0, 0)  # warm-up
    start = time.perf_counter()
    for i, case in enumerate(cases[:4]):
        plain_trial(case, cfg, i, 0)
    plain_rate = min(4, len(cases)) * cfg.iterations / (time.perf_counter() - start)
    profile_step(cases, args.restarts, args.steps, plain_rate)
    compile_check(cases[0])
    if args.compile:
        compile_func_step(cases, args.restarts, args.steps, plain_rate, args.chunks)
    denormal_groups(cases, truths, args.group_iterations)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
