"""Start-up of the commands people run to look around: ``--help``, ``datasets``, ``show`` and
``report`` (median wall seconds of fresh processes), beside the plain cost they avoid,
``python -c "import torch"``, measured in the same run.

    .venv/bin/python benchmarks/bench_startup.py [--runs 5] [--results RESULTS/<experiment>]

``show`` and ``report`` need an experiment folder; without ``--results`` the benchmark writes a
tiny one first (a quickstart-like table set is not needed: any table will do, the cost
measured is importing and reading). Targets (issue 16): ``--help`` under 0.5 s, ``show`` under
1.5 s, ``datasets`` under 1 s. Figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"--help": 0.5, "datasets": 1.0, "show": 1.5}


def _wall(argv: list[str], runs: int) -> float:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tiny_results(root: Path) -> Path:
    """One experiment with one small table, written by the package's own table writer."""
    from orchestrator.store.tables import Results

    Results(root, "bench").write("models", [{"key": f"m{i}", "role": "original",
                                             "test_acc": 0.9, "seed": 0} for i in range(8)])
    return root / "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--results", default=None, help="an experiment folder for show/report")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "orchestrator.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.results) if args.results else _tiny_results(Path(tmp))
        rows = {
            "python -c 'import torch' (avoided)": _wall([sys.executable, "-c", "import torch"],
                                                        args.runs),
            "--help": _wall([*cli, "--help"], args.runs),
            "datasets": _wall([*cli, "datasets"], args.runs),
            "show": _wall([*cli, "show", str(folder)], args.runs),
            "report": _wall([*cli, "report", str(folder), "--out",
                             str(Path(tmp) / "r.html")], args.runs),
        }
    base = rows["python -c 'import torch' (avoided)"]
    print(f"median of {args.runs} fresh processes; load {os.getloadavg()[0]:.2f}")
    for name, wall in rows.items():
        target = TARGETS.get(name)
        met = "met" if target is not None and wall < target else "MISSED"
        verdict = "" if target is None else f" (target < {target:.1f} s: {met})"
        print(f"{name:40s} {wall:6.2f} s  {wall / base:5.2f}x of importing torch{verdict}")


if __name__ == "__main__":
    main()
