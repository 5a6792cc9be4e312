"""Ensemble vs one-at-a-time training of M digits MLPs, same epochs, same data, same seeds.

    .venv/bin/python benchmarks/bench_ensemble.py [--members 128] [--epochs 20] [--threads 2]

Member i trains on its own random half of the digits training set (719 of 1438 samples, as a
shadow model would) from ``build_torch_model(seed=i)`` with data-order seed i, SGD lr 0.05,
momentum 0.9, batch 64. Model building is timed everywhere.

- one-at-a-time: one ``train_model`` call per member in this process (``--threads`` torch
  threads; ``--single K`` times only the first K members and scales linearly to M, which the
  output says);
- one-at-a-time, parallel: the same calls spread over ``--workers`` processes of one thread
  each (what Ray workers on the same cores would do; pool start-up is not timed);
- ensemble, parallel: the members split into ``--workers`` ensembles, one per one-thread
  process (the layout Ray would run), allocator tuned;
- ensemble: one ``train_ensemble`` call (all members stacked, one vmap program per step),
  first with the default allocator, then after ``tune_cpu_allocator()``.

Prints wall seconds, models trained per second, the ratios, the largest parameter difference
between the ensemble's members and the one-at-a-time models, and how often their test
predictions agree. ``--device cuda`` runs one-at-a-time and the ensemble on the GPU instead
(the process-pool layouts are CPU ones and are left out). Results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from bench_inversion import sync_device

from tasks.data import load_dataset
from tasks.ensemble import ensemble_logits, train_ensemble, tune_cpu_allocator
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, predict_logits, train_model

MLP = ModelConfig("mlp", {"hidden": [64]})


def _setup(members: int, epochs: int):
    d = load_dataset("digits")
    rng = np.random.default_rng(0)
    sets = [rng.choice(len(d.y_train), len(d.y_train) // 2, replace=False)
            for _ in range(members)]
    return d, sets, TrainConfig(epochs=epochs, lr=0.05, batch_size=64)


def _make(d):
    return lambda s: build_torch_model(MLP, d.input_shape, d.num_classes, d.mean, d.std, seed=s)


def _train_some(members: int, epochs: int, seeds: list[int]) -> int:
    """One worker's share of the parallel one-at-a-time baseline (one torch thread)."""
    torch.set_num_threads(1)
    d, sets, tc = _setup(members, epochs)
    for s in seeds:
        train_model(_make(d)(s), d.x_train, d.y_train, sets[s], tc, s)
    return len(seeds)


def _ensemble_some(members: int, epochs: int, seeds: list[int]) -> int:
    """One worker's share as one ensemble (one torch thread, tuned allocator)."""
    torch.set_num_threads(1)
    tune_cpu_allocator()
    d, sets, tc = _setup(members, epochs)
    train_ensemble(_make(d), d.x_train, d.y_train, [sets[s] for s in seeds], tc, seeds)
    return len(seeds)


def _param_diff(single, ensemble) -> float:
    """The largest parameter difference between each model and its ensemble member."""
    with torch.no_grad():
        return max(float((p - q).abs().max()) for a, b in zip(single, ensemble)
                   for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _agreement(d, single, ensemble, device: str) -> tuple[float, float, float, float]:
    """(max parameter difference, test agreement, mean accuracy one-at-a-time, ensemble)."""
    diff = _param_diff(single, ensemble)
    logits = ensemble_logits(ensemble, d.x_test, device)
    ref = [predict_logits(s, d.x_test, device) for s in single]
    agree = np.mean([(logits[i].argmax(1) == r.argmax(1)).mean() for i, r in enumerate(ref)])
    acc_one = np.mean([(r.argmax(1) == d.y_test).mean() for r in ref])
    return diff, agree, acc_one, float((logits.argmax(2) == d.y_test).mean())


def on_device(args) -> None:
    """One-at-a-time vs one ensemble, both on ``args.device`` (a GPU)."""
    m, dev = args.members, args.device
    d, sets, tc = _setup(m, args.epochs)
    make, seeds = _make(d), list(range(m))
    warm = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    train_ensemble(make, d.x_train, d.y_train, sets[:4], warm, seeds[:4], device=dev)
    train_model(make(0), d.x_train, d.y_train, sets[0], warm, 0, device=dev)
    k = m if args.single is None else min(args.single, m)
    sync_device(dev)
    t0 = time.perf_counter()
    single = [train_model(make(s), d.x_train, d.y_train, sets[s], tc, s, device=dev)
              for s in seeds[:k]]
    sync_device(dev)
    t_one = (time.perf_counter() - t0) * m / k
    t0 = time.perf_counter()
    ensemble = train_ensemble(make, d.x_train, d.y_train, sets, tc, seeds, device=dev)
    sync_device(dev)
    t_vec = time.perf_counter() - t0
    diff, agree, acc_one, acc_ens = _agreement(d, single, ensemble[:k], dev)
    note = "" if k == m else f"  ({k} timed, scaled x{m / k:.1f})"
    name = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else "CPU"
    print(f"members={m} epochs={args.epochs} device={dev} ({name})")
    print(f"one-at-a-time  {t_one:8.2f} s   {m / t_one:8.1f} models/s{note}")
    print(f"ensemble       {t_vec:8.2f} s   {m / t_vec:8.1f} models/s   ratio "
          f"{t_one / t_vec:6.2f}x")
    print(f"max |parameter difference| = {diff:.2e}; test predictions agree on "
          f"{100 * agree:.2f}%; mean test accuracy one-at-a-time {acc_one:.4f}, "
          f"ensemble {acc_ens:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--single", type=int, default=None,
                    help="time only this many one-at-a-time models and extrapolate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:i] (a GPU instead)")
    args = ap.parse_args()
    if args.device != "cpu":
        if not (args.device.startswith("cuda") and torch.cuda.is_available()):
            ap.error(f"--device {args.device}: no such CUDA device on this machine")
        return on_device(args)
    torch.set_num_threads(args.threads)
    m = args.members
    d, sets, tc = _setup(m, args.epochs)
    make, seeds = _make(d), list(range(m))
    warm = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    train_ensemble(make, d.x_train, d.y_train, sets[:4], warm, seeds[:4])  # warm-up
    train_model(make(0), d.x_train, d.y_train, sets[0], warm, 0)

    k = m if args.single is None else min(args.single, m)
    t0 = time.perf_counter()
    single = [train_model(make(s), d.x_train, d.y_train, sets[s], tc, s) for s in seeds[:k]]
    t_one = (time.perf_counter() - t0) * m / k

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        list(ex.map(_train_some, [m] * args.workers, [0] * args.workers,
                    [[0]] * args.workers))  # start and warm every worker
        t0 = time.perf_counter()
        shares = [seeds[w::args.workers] for w in range(args.workers)]
        done = sum(ex.map(_train_some, [m] * args.workers, [args.epochs] * args.workers,
                          shares))
        t_par = time.perf_counter() - t0
        list(ex.map(_ensemble_some, [m] * args.workers, [0] * args.workers,
                    [[0]] * args.workers))
        t0 = time.perf_counter()
        done += sum(ex.map(_ensemble_some, [m] * args.workers, [args.epochs] * args.workers,
                           shares))
        t_ens_par = time.perf_counter() - t0
    assert done == 2 * m

    t0 = time.perf_counter()
    ensemble = train_ensemble(make, d.x_train, d.y_train, sets, tc, seeds)
    t_vec = time.perf_counter() - t0
    tuned = tune_cpu_allocator()
    t0 = time.perf_counter()
    ensemble_tuned = train_ensemble(make, d.x_train, d.y_train, sets, tc, seeds)
    t_tuned = time.perf_counter() - t0

    diff, agree, acc_one, acc_ens = _agreement(d, single, ensemble, "cpu")
    diff = max(diff, _param_diff(single, ensemble_tuned))

    steps = args.epochs * -(-len(sets[0]) // tc.batch_size)
    print(f"members={m} epochs={args.epochs} steps/member={steps} "
          f"train size={len(sets[0])} threads={args.threads}")
    note = "" if k == m else f"  ({k} timed, scaled x{m / k:.1f})"
    print(f"one-at-a-time                 {t_one:8.2f} s   {m / t_one:6.1f} models/s{note}")
    print(f"one-at-a-time, {args.workers} procs x 1 thr {t_par:8.2f} s   "
          f"{m / t_par:6.1f} models/s")
    for label, t in (("ensemble", t_vec),
                     ("ensemble, tuned allocator" if tuned else "ensemble (no mallopt)",
                      t_tuned)):
        print(f"{label:29s} {t:8.2f} s   {m / t:6.1f} models/s   ratio {t_one / t:6.2f}x vs "
              f"one-at-a-time, {t_par / t:6.2f}x vs {args.workers} procs")
    print(f"ensemble, {args.workers} procs x 1 thr       {t_ens_par:8.2f} s   "
          f"{m / t_ens_par:6.1f} models/s   ratio "
          f"{t_par / t_ens_par:6.2f}x vs {args.workers} procs one-at-a-time")
    print(f"max |parameter difference| = {diff:.2e}; test predictions agree on "
          f"{100 * agree:.2f}%; mean test accuracy one-at-a-time {acc_one:.4f}, "
          f"ensemble {acc_ens:.4f}")


if __name__ == "__main__":
    main()
