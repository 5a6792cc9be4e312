"""Vectorised vs one-target-at-a-time feature recovery, 16 targets, equal iterations.

    .venv/bin/python benchmarks/bench_inversion.py [--model mlp|convnet] [--iterations N]

Vectorised: one ``recover`` call over all 16 targets (every restart of every target in one
vmap program). One-at-a-time: 16 ``recover`` calls of one target each (its restarts still
batched). Same seeds, same iterations; prints wall seconds and the ratio. Results in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tasks.attacks.inversion import InversionConfig, recover
from tasks.cases import build_case
from tasks.data import load_dataset
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, train_model
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState


def make_cases(model_name: str, targets: int):
    if model_name == "mlp":
        d = load_dataset("digits", None)
        cfg = ModelConfig("mlp", {"hidden": [64]})
    else:
        d = load_dataset("cifar10", None)
        cfg = ModelConfig("convnet", {"width": 16})
    model = build_torch_model(cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=0)
    idx = np.arange(min(len(d.y_train), 512))
    tc = TrainConfig(epochs=2, lr=0.05, batch_size=64)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["mlp", "convnet"], default="mlp")
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = make_cases(args.model, args.targets)
    cfg = InversionConfig(iterations=args.iterations, restarts=args.restarts)
    seeds = list(range(len(cases)))
    recover(cases[:2], InversionConfig(iterations=2, restarts=args.restarts))  # warm-up
    t0 = time.perf_counter()
    batched = recover(cases, cfg, seeds=seeds)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [recover([c], cfg, seeds=[s]) for c, s in zip(cases, seeds)]
    t_one = time.perf_counter() - t0
    diff = max(float(np.abs(a.images[0] - batched.images[i]).max())
               for i, a in enumerate(single))
    print(f"model={args.model} targets={len(cases)} iterations={args.iterations} "
          f"restarts={args.restarts} threads={args.threads}")
    print(f"vectorised   {t_vec:8.2f} s")
    print(f"one-at-a-time {t_one:8.2f} s")
    print(f"ratio (one-at-a-time / vectorised) = {t_one / t_vec:.2f}x; "
          f"max |image difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
