"""Vectorised feature recovery vs the plain one-trial-at-a-time loop, equal iterations.

    .venv/bin/python benchmarks/bench_inversion.py --model convnet --iterations 20
    .venv/bin/python benchmarks/bench_inversion.py --model resnet18 --iterations 3
    .venv/bin/python benchmarks/bench_inversion.py --model mlp --iterations 200

Side by side, same targets, seeds, initialisations and iterations:

(a) vectorised: one ``recover`` call, every restart of every target in one program (the fast
    per-trial-gradient path of ``tasks.attacks.per_trial_grads`` where the model allows it);
(b) plain: one target and one restart at a time, the textbook loop (forward one trial,
    ``autograd.grad(create_graph=True)`` over all parameters, cosine + TV, backward, signed
    AdamW), with the same initial images as (a);
(c) optionally (``--vmap``) the previous vectorised path, ``vmap(vmap(grad(...)))``.

Prints wall seconds, ratios and the largest per-pixel difference between (a)'s best restart
and the same restart run plainly, the throughput in trial-iterations per second and the
achieved FLOP rate of (a) (useful FLOPs of one trial-iteration, counted by
``torch.utils.flop_counter`` on the plain loop), with the share of the device's peak at each
arithmetic where it is known (H200, H100 SXM, A100 data sheets; ``--peak-tflops`` else).
``--plain-flushed`` adds (e): the plain loop with denormal floats flushed to zero, as
``recover`` runs on a CPU. ``--precision tf32|bf16`` adds (d): (a) at that
arithmetic, timed beside fp32, with both runs' PSNR against the forgotten images.
``--compile`` adds (f): ``recover(compile=True)`` at fp32 and at ``--precision``, its
compilation timed apart. ``--device cuda`` runs everything on the GPU. CIFAR-10 models use
../shared/data when present, else random CIFAR-shaped data. Results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from tasks.attacks.inversion import (
    InversionConfig,
    _init_images,
    recover,
    target_gradient,
    tv_mean,
)
from tasks.cases import build_case
from tasks.metrics import psnr
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, train_model
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState

MODELS = {"mlp": ModelConfig("mlp", {"hidden": [64]}),
          "convnet": ModelConfig("convnet", {"width": 16}),
          "resnet18": ModelConfig("resnet18", {})}


def _dataset(model_name: str):
    from tasks.data import load_dataset

    if model_name == "mlp":
        return load_dataset("digits", None)
    try:
        return load_dataset("cifar10", None)
    except (OSError, ValueError, KeyError) as err:  # no CIFAR-10 subset: CIFAR-shaped data
        print(f"cifar10 unavailable ({err}); random 3x32x32 inputs")
        from types import SimpleNamespace

        rng = np.random.default_rng(0)
        return SimpleNamespace(
            name="random-cifar", kind="image", input_shape=(3, 32, 32), num_classes=10,
            mean=[0.5] * 3, std=[0.25] * 3,
            x_train=rng.random((512, 3, 32, 32), dtype=np.float32),
            y_train=rng.integers(0, 10, 512), x_test=rng.random((64, 3, 32, 32),
                                                                 dtype=np.float32),
            y_test=rng.integers(0, 10, 64))


def make_cases(model_name: str, targets: int, device: str = "cpu"):
    d = _dataset(model_name)
    cfg = MODELS[model_name]
    model = build_torch_model(cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=0)
    idx = np.arange(min(len(d.y_train), 512 if model_name != "resnet18" else 128))
    tc = TrainConfig(epochs=2 if model_name != "resnet18" else 1, lr=0.05, batch_size=64)
    train_model(model, d.x_train, d.y_train, idx, tc, 0)
    state = TrainingState(d, cfg, tc, idx, 0, original=model)
    ga = UNLEARNING.get("gradient_ascent")()
    cases, truths = [], []
    for i in range(targets):
        req = ForgetRequest(f"r{i}", "single", (i,))
        theta_u = ga.unlearn(state, req, ga.Params(lr=1e-3))
        case, truth = build_case(dataset=d, theta=model, theta_u=theta_u, request=req,
                                 knowledge="reference", unlearn_lr=1e-3, exact=False,
                                 device=device)
        cases.append(case)
        truths.append(truth.x)
    return cases, truths


def mean_psnr(images, truths) -> float:
    """PSNR of each recovered image against the forgotten one (pixels in [0, 1]), averaged."""
    return float(np.mean(np.concatenate([psnr(a, t) for a, t in zip(images, truths)])))


def flops_per_trial_iteration(case, cfg: InversionConfig) -> float:
    """The useful FLOPs of one iteration of one trial, counted by ``torch.utils.flop_counter``
    on the plain loop (two iterations minus one: the set-up cancels). Counted there because
    the counter takes the vectorised path's grouped convolutions at their ungrouped cost."""
    from dataclasses import replace

    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for iterations in (1, 2):
        with FlopCounterMode(display=False) as counter:
            plain_trial(case, replace(cfg, iterations=iterations, restarts=1), 0, 0)
        counts.append(counter.get_total_flops())
    return float(counts[1] - counts[0])


# Dense peak TFLOP/s from NVIDIA's data sheets: fp32 on the CUDA cores, TF32 and bf16 on the
# tensor cores (without sparsity). Matched by device name; the H100 only as its SXM part
# ("H100 80GB HBM3": the PCIe card is slower), the A100's two forms share these figures.
KNOWN_PEAKS = {"H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
               "H100 80GB HBM3": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
               "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}}


def device_peaks(device: str, given: float | None) -> dict[str, float]:
    """Peak TFLOP/s by arithmetic: ``--peak-tflops`` for all of them when given, else the
    data-sheet figures of a known GPU, else none (no share is printed)."""
    if given:
        return {"fp32": given, "tf32": given, "bf16": given}
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        for key, peaks in KNOWN_PEAKS.items():
            if key in name:
                return peaks
    return {}


def rate(flops: float, seconds: float, peaks: dict[str, float], precision: str) -> str:
    """Achieved GFLOP/s and, where the peak is known, the share of it at that arithmetic."""
    achieved = flops / seconds
    share = (f", {achieved / (peaks[precision] * 1e12):.2%} of the {precision} peak "
             f"({peaks[precision]:g} TFLOP/s)" if precision in peaks else "")
    return f"{achieved / 1e9:,.1f} GFLOP/s{share}"


def sync_device(device: str) -> None:
    """Wait for the device's queued work (GPU timings), nothing on a CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_cost(model, params: list, targets: list, gnorm, y, x) -> torch.Tensor:
    """The textbook one-trial objective: 1 - cos(grad of the loss at x, g*), through
    ``autograd.grad(create_graph=True)`` so that it differentiates to x."""
    loss = -(y * F.log_softmax(model(x), -1)).sum(-1).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(grads, targets))
    sq = sum((g * g).sum() for g in grads)
    return 1.0 - dot / (torch.sqrt(sq) * gnorm + 1e-12)


def plain_trial(case, cfg: InversionConfig, seed: int, restart: int) -> np.ndarray:
    """One restart of one target, the textbook way (same initial image as ``recover``)."""
    meta = case.metadata
    gstar, model, _ = target_gradient(case, cfg.knowledge)
    model = copy.deepcopy(model).eval().requires_grad_(True)  # the case's copy is frozen
    params = list(model.parameters())
    g_list = [gstar[n] for n, _ in model.named_parameters()]
    gnorm = torch.sqrt(sum((g * g).sum() for g in g_list))
    k = len(meta.labels)
    gen = torch.Generator().manual_seed(int(seed))
    x = _init_images(gen, cfg, (cfg.restarts, k, *meta.input_shape))[restart].clone()
    x = x.to(case.device).requires_grad_(True)
    y = F.one_hot(torch.as_tensor(meta.labels), meta.num_classes).float().to(case.device)
    opt = torch.optim.AdamW([x], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones(), gamma=cfg.lr_decay)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        cost = plain_cost(model, params, g_list, gnorm, y, x)
        (cost + cfg.tv_weight * tv_mean(x)).backward()
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return x.detach().cpu().numpy()


def plain_all(cases, cfg: InversionConfig, seeds: list[int]) -> list[list[np.ndarray]]:
    """Every restart of every target through :func:`plain_trial`, one after another."""
    return [[plain_trial(c, cfg, s, r) for r in range(cfg.restarts)]
            for c, s in zip(cases, seeds)]


def timed_compiled(cases, truths, cfg: InversionConfig, seeds, precision: str, device: str,
                   fast, t_plain: float, flops: float, peaks: dict[str, float]) -> None:
    """(f) ``recover(compile=True)``: the first call's compilation timed on its own (a
    one-iteration run of the same group shape), then the recovery beside (a) and (b)."""
    trial_its = len(cases) * cfg.restarts * cfg.iterations
    compiled = replace(cfg, precision=precision, compile=True)
    t0 = time.perf_counter()
    recover(cases, replace(compiled, iterations=1), seeds=seeds)
    sync_device(device)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = recover(cases, compiled, seeds=seeds)
    sync_device(device)
    t_run = time.perf_counter() - t0
    diff = max(float(np.abs(a - b).max()) for a, b in zip(res.images, fast.images))
    print(f"(f) compiled {precision:<5} {t_run:8.2f} s   ratio (b)/(f) = {t_plain / t_run:.2f}x   "
          f"{trial_its / t_run:,.0f} trial-iterations/s, {rate(flops, t_run, peaks, precision)}"
          f"   compilation {t_compile:.0f} s   "
          f"PSNR {mean_psnr(res.images, truths):.2f} dB   max |pixel diff| vs (a) = "
          f"{diff:.2e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="convnet")
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vmap", action="store_true", help="also time the old vmap path")
    ap.add_argument("--precision", choices=("tf32", "bf16"), default=None,
                    help="also run (a) at this arithmetic and compare PSNR with fp32")
    ap.add_argument("--plain-flushed", action="store_true",
                    help="also time the plain loop with denormal floats flushed to zero")
    ap.add_argument("--compile", action="store_true",
                    help="also time recover(compile=True) at fp32 (and at --precision)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak at every arithmetic (for the share of it "
                         "achieved); known GPUs (H200, H100 SXM, A100) need none")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: no CUDA device on this machine")
    torch.set_num_threads(args.threads)
    cases, truths = make_cases(args.model, args.targets, args.device)
    cfg = InversionConfig(iterations=args.iterations, restarts=args.restarts)
    seeds = list(range(len(cases)))
    recover(cases[:2], InversionConfig(iterations=1, restarts=args.restarts))  # warm-up
    trial_its = len(cases) * args.restarts * args.iterations
    print(f"model={args.model} targets={len(cases)} restarts={args.restarts} "
          f"iterations={args.iterations} threads={args.threads} device={args.device} "
          f"load={os.getloadavg()[0]:.2f}", flush=True)
    sync_device(args.device)
    t0 = time.perf_counter()
    fast = recover(cases, cfg, seeds=seeds)
    sync_device(args.device)
    t_vec = time.perf_counter() - t0
    flops = flops_per_trial_iteration(cases[0], cfg) * trial_its
    peaks = device_peaks(args.device, args.peak_tflops)
    print(f"(a) vectorised  {t_vec:8.2f} s   {trial_its / t_vec:,.0f} trial-iterations/s, "
          f"{rate(flops, t_vec, peaks, 'fp32')}", flush=True)
    if args.precision:
        recover(cases[:2], replace(cfg, iterations=1, precision=args.precision))
        sync_device(args.device)
        t0 = time.perf_counter()
        low = recover(cases, replace(cfg, precision=args.precision), seeds=seeds)
        sync_device(args.device)
        t_low = time.perf_counter() - t0
        print(f"(d) {args.precision:<11} {t_low:8.2f} s   ratio (a)/(d) = {t_vec / t_low:.2f}x   "
              f"{trial_its / t_low:,.0f} trial-iterations/s, "
              f"{rate(flops, t_low, peaks, args.precision)}   PSNR vs forgotten: "
              f"fp32 {mean_psnr(fast.images, truths):.2f} dB, "
              f"{args.precision} {mean_psnr(low.images, truths):.2f} dB", flush=True)
    t0 = time.perf_counter()
    plain = plain_all(cases, cfg, seeds)
    sync_device(args.device)
    t_plain = time.perf_counter() - t0
    diff = max(float(np.abs(plain[i][int(fast.best_restart[i])] - fast.images[i]).max())
               for i in range(len(cases)))
    same_restart = [plain[i][int(fast.best_restart[i])] for i in range(len(cases))]
    print(f"(b) plain       {t_plain:8.2f} s   ratio (b)/(a) = {t_plain / t_vec:.2f}x   "
          f"max |pixel diff| = {diff:.2e}   {trial_its / t_plain:,.0f} trial-iterations/s, "
          f"{rate(flops, t_plain, peaks, 'fp32')}   "
          f"PSNR vs forgotten: (a) {mean_psnr(fast.images, truths):.2f} dB, "
          f"(b) {mean_psnr(same_restart, truths):.2f} dB", flush=True)
    if args.compile:
        for precision in ("fp32",) + ((args.precision,) if args.precision else ()):
            timed_compiled(cases, truths, cfg, seeds, precision, args.device, fast, t_plain,
                           flops, peaks)
    if args.plain_flushed:
        # recover() flushes denormal floats to zero on a CPU; the textbook loop does not. The
        # same loop with them flushed shows how much of (b)/(a) that alone accounts for.
        from tasks.attacks.precision import flush_denormals

        t0 = time.perf_counter()
        with flush_denormals(torch.device(args.device)):
            plain_all(cases, cfg, seeds)
        sync_device(args.device)
        t_ftz = time.perf_counter() - t0
        print(f"(e) plain, denormals flushed {t_ftz:8.2f} s   ratio (e)/(a) = "
              f"{t_ftz / t_vec:.2f}x   {trial_its / t_ftz:,.0f} trial-iterations/s", flush=True)
    if args.vmap:
        t0 = time.perf_counter()
        old = recover(cases, cfg, seeds=seeds, path="vmap")
        t_old = time.perf_counter() - t0
        d_old = max(float(np.abs(a - b).max()) for a, b in zip(old.images, fast.images))
        print(f"(c) old vmap    {t_old:8.2f} s   ratio (b)/(c) = {t_plain / t_old:.2f}x   "
              f"(c)/(a) = {t_old / t_vec:.2f}x   max |pixel diff| = {d_old:.2e}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
