"""Fractional-GPU packing: every task on a GPU of its own vs 2 or 4 tasks sharing one.

    .venv/bin/python benchmarks/bench_gpu_packing.py                       # quickstart.yaml
    .venv/bin/python benchmarks/bench_gpu_packing.py --shares 1 0.25 \
        --spec search_spaces/hu2024_digits.yaml

Runs the spec on the embedded local Ray with ``runtime.device: cuda`` once per share, each
into a fresh results folder, every task kind (train, unlearn, attack) asking for one CPU and
that share of a GPU: at 1 one task holds the device at a time, at 0.25 four run on it
together. Prints each run's wall time (the command's, start-up included), its ratio to the
first share, and the mean PSNR of the recoveries, which must not change with the packing.
Needs a CUDA device (issue 16, item 4); results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_once(spec: Path, share: float, results: Path, extra: list[str]) -> float:
    """Wall seconds of one run of ``spec`` with every task asking for ``share`` of a GPU."""
    sets = ["runtime.device=cuda"] + [f"resources.{kind}={{cpus: 1, gpus: {share}}}"
                                      for kind in ("train", "unlearn", "attack")] + extra
    command = [sys.executable, "-m", "orchestrator.cli.main", "run", str(spec), "--results",
               str(results), "--quiet"] + [a for s in sets for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the embedded Ray
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"share {share}: the run failed (exit {done.returncode}):\n"
                         + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))
    return wall


def mean_psnr(results: Path, experiment: str) -> float:
    import pandas as pd

    table = results / experiment / "recoveries"
    return float(pd.read_parquet(table)["psnr"].mean()) if table.exists() else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=REPO / "search_spaces" / "quickstart.yaml")
    ap.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="more spec overrides, as for unlearn-audit run")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        ap.error("needs a CUDA device (torch.cuda.is_available() is False)")
    bad = [s for s in args.shares if not 0 < s <= 1]
    if bad:
        ap.error(f"--shares: each must be in (0, 1], got {bad}")
    experiment = yaml.safe_load(args.spec.read_text())["experiment"]
    print(f"spec={args.spec.name} device={torch.cuda.get_device_name(0)} "
          f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}", flush=True)
    first = None
    for share in args.shares:
        with tempfile.TemporaryDirectory() as tmp:
            wall = run_once(args.spec, share, Path(tmp), args.extra)
            psnr = mean_psnr(Path(tmp), experiment)
        first = first or wall
        print(f"gpus per task {share:<5}  {wall:8.1f} s   {first / wall:5.2f}x the first   "
              f"{round(1 / share)} task(s) per GPU   mean recovery PSNR {psnr:.3f} dB",
              flush=True)


if __name__ == "__main__":
    main()
