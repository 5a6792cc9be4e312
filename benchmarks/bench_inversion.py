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
and the same restart run plainly. CIFAR-10 models use ../shared/data when present, else random
CIFAR-shaped data. Results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

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
    except (OSError, ValueError, KeyError) as err:  # no CIFAR-10 subset on this machine: random CIFAR-shaped data
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


def make_cases(model_name: str, targets: int):
    d = _dataset(model_name)
    cfg = MODELS[model_name]
    model = build_torch_model(cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=0)
    idx = np.arange(min(len(d.y_train), 512 if model_name != "resnet18" else 128))
    tc = TrainConfig(epochs=2 if model_name != "resnet18" else 1, lr=0.05, batch_size=64)
    train_model(model, d.x_train, d.y_train, idx, tc, 0)
    state = TrainingState(d, cfg, tc, idx, 0, original=model)
    ga = UNLEARNING.get("gradient_ascent")()
    cases = []
    for i in range(targets):
        req = ForgetRequest(f"r{i}", "single", (i,))
        theta_u = ga.unlearn(state, req, ga.Params(lr=1e-3))
        case, _ = build_case(dataset=d, theta=model, theta_u=theta_u, request=req,
                             knowledge="reference", unlearn_lr=1e-3, exact=False)
        cases.append(case)
    return cases


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
    x.requires_grad_(True)
    y = F.one_hot(torch.as_tensor(meta.labels), meta.num_classes).float()
    opt = torch.optim.AdamW([x], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones(), gamma=cfg.lr_decay)
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss = -(y * F.log_softmax(model(x), -1)).sum(-1).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, g_list))
        sq = sum((g * g).sum() for g in grads)
        cost = 1.0 - dot / (torch.sqrt(sq) * gnorm + 1e-12)
        (cost + cfg.tv_weight * tv_mean(x)).backward()
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return x.detach().numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="convnet")
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vmap", action="store_true", help="also time the old vmap path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = make_cases(args.model, args.targets)
    cfg = InversionConfig(iterations=args.iterations, restarts=args.restarts)
    seeds = list(range(len(cases)))
    recover(cases[:2], InversionConfig(iterations=1, restarts=args.restarts))  # warm-up
    print(f"model={args.model} targets={len(cases)} restarts={args.restarts} "
          f"iterations={args.iterations} threads={args.threads} "
          f"load={os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.perf_counter()
    fast = recover(cases, cfg, seeds=seeds)
    t_vec = time.perf_counter() - t0
    print(f"(a) vectorised  {t_vec:8.2f} s", flush=True)
    t0 = time.perf_counter()
    plain = [[plain_trial(c, cfg, s, r) for r in range(args.restarts)]
             for c, s in zip(cases, seeds)]
    t_plain = time.perf_counter() - t0
    diff = max(float(np.abs(plain[i][int(fast.best_restart[i])] - fast.images[i]).max())
               for i in range(len(cases)))
    print(f"(b) plain       {t_plain:8.2f} s   ratio (b)/(a) = {t_plain / t_vec:.2f}x   "
          f"max |pixel diff| = {diff:.2e}", flush=True)
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
