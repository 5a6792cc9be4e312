"""Whether flushing denormal floats to zero would speed up training and label probing too.

    .venv/bin/python benchmarks/bench_denormals.py
    .venv/bin/python benchmarks/bench_denormals.py --quick

Feature recovery flushes denormals on a CPU (``tasks.attacks.precision.flush_denormals``):
some targets' gradients carry them, and one group of ConvNet targets ran 2.9x slower for it
(``bench_recovery_profile.py``, part 4). This measures the other torch work with the flush
off and on, alternately, on the same inputs: training the digits MLP and the CIFAR ConvNet,
and crafting white- and black-box label probes against the ConvNet. It prints the best time
of each and whether the results are identical. Where the flush gains nothing it is not
applied (it is a per-thread CPU setting, so it stays scoped to recovery).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from tasks.attacks.probing import ProbeConfig, craft_probes, original_case
from tasks.cases import PublicMetadata, QueryAccess
from tasks.data import load_dataset
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, train_model


def _alternate(label: str, work, repeats: int) -> None:
    """``work()`` (returning an array) with the flush off and on, alternately."""
    times: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, np.ndarray] = {}
    for _ in range(repeats):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            start = time.perf_counter()
            results[flush] = work()
            times[flush].append(time.perf_counter() - start)
    torch.set_flush_denormal(False)
    off, on = min(times[False]), min(times[True])
    same = np.array_equal(results[False], results[True])
    print(f"{label:<34} not flushed {off:7.2f} s   flushed {on:7.2f} s   ratio {off / on:.2f}x"
          f"   identical results: {same}", flush=True)


def _trained(name: str, model_cfg: ModelConfig, n: int, epochs: int):
    d = load_dataset(name, None)
    model = build_torch_model(model_cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=0)
    cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=64)

    def train() -> np.ndarray:
        fresh = build_torch_model(model_cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=0)
        train_model(fresh, d.x_train, d.y_train, np.arange(min(n, len(d.y_train))), cfg, 0)
        model.load_state_dict(fresh.state_dict())
        return torch.cat([p.detach().flatten() for p in fresh.parameters()]).numpy()

    return d, model, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat, fewer probes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 2
    print(f"threads={args.threads} load={os.getloadavg()[0]:.2f}", flush=True)
    _, _, train_mlp = _trained("digits", ModelConfig("mlp", {"hidden": [64]}), 10**9, 30)
    _alternate("training, digits MLP, 30 epochs", train_mlp, repeats)
    try:
        d, theta, train_conv = _trained("cifar10", ModelConfig("convnet", {"width": 16}),
                                        512, 2)
    except (OSError, ValueError, KeyError) as err:
        print(f"cifar10 unavailable ({err}): ConvNet rows skipped")
        return
    _alternate("training, CIFAR ConvNet, 2 epochs", train_conv, repeats)
    meta = PublicMetadata("cifar10", "image", d.input_shape, d.num_classes, d.mean, d.std)
    for box, cfg in (("white", ProbeConfig(box="white", probes_per_class=2, max_calls=3)),
                     ("black", ProbeConfig(box="black", probes_per_class=1, max_calls=1,
                                           iterations_per_call=2 if args.quick else 3,
                                           coordinates=256))):
        _alternate(f"{box}-box probes, CIFAR ConvNet",
                   lambda cfg=cfg: craft_probes(original_case(meta, theta, QueryAccess(theta)),
                                                cfg, seed=0).x, repeats)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
