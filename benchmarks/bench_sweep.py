"""Cost of the orchestration as a sweep grows: 1,000 / 10,000 / 100,000 no-op units on the
embedded loopback Ray (the real ``start_ray`` and ``execute``), each size in a fresh driver
process, reporting per-unit overhead, the driver's peak memory, and the Parquet parts per table
before and after compaction (with the time to read every key back, which a rerun pays).

    .venv/bin/python benchmarks/bench_sweep.py [--sizes 1000 10000 100000] [--num-cpus 2]

The unit is ``noop`` (orchestrator/engine/units.py): one row, no work, so what is measured is the
scheduling, the result transfer and the table writes. The plain alternative beside it, in the
same run, is the floor Ray itself sets: the same number of empty ``@ray.remote`` calls submitted
all at once and gathered with one ``ray.get``. Figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TABLE = "sweep"


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _PeakRss:
    """The driver's resident memory, sampled every 50 ms while a block runs."""

    def __enter__(self) -> _PeakRss:  # noqa: PYI034
        self.peak, self._stop = _rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _child(n: int, num_cpus: int, folder: str) -> dict:
    """One sweep of ``n`` units in this (fresh) process."""
    from orchestrator.context import TaskContext
    from orchestrator.engine.execute import execute
    from orchestrator.engine.plan import Unit
    from orchestrator.engine.ray_session import start_ray, stop_ray
    from orchestrator.spec.schema import ResourcesSpec
    from orchestrator.store.tables import Results

    start_ray(None, num_cpus=num_cpus)
    import ray

    def sweep(count: int, tag: str) -> list[Unit]:
        return [Unit(key=f"{tag}{i:07d}", kind="attack", fn="noop",
                     params={"table": TABLE, "key": f"{tag}{i:07d}", "index": i},
                     table=TABLE, row_keys=(f"{tag}{i:07d}",), label=str(i))
                for i in range(count)]

    try:
        # The workers' one-time start (importing torch and the stages) is not per-unit cost:
        # a few units in another experiment first, timed on their own.
        warm = Results(folder, "warm")
        ctx = TaskContext("warm", warm.location.uri, folder + "/_artifacts", None)
        warm_s = execute(sweep(4 * num_cpus, "w"), warm, ctx, ResourcesSpec(),
                         progress=False).wall_s
        rss_idle = _rss_mib()
        t0 = time.perf_counter()
        units = sweep(n, "u")
        plan_s = time.perf_counter() - t0
        rss_planned = _rss_mib()  # the plan itself is the spec's size, not the run's
        results = Results(folder, "sweep")
        ctx = TaskContext("sweep", results.location.uri, folder + "/_artifacts", None)
        with _PeakRss() as mem:
            report = execute(units, results, ctx, ResourcesSpec(), progress=False)
        assert report.succeeded == n, report
        parts_before = len(results.parts(TABLE))
        t0 = time.perf_counter()
        keys = results.existing_keys(TABLE)
        read_before = time.perf_counter() - t0
        assert len(keys) == n
        t0 = time.perf_counter()
        results.compact(TABLE)
        compact_s = time.perf_counter() - t0
        parts_after = len(results.parts(TABLE))
        t0 = time.perf_counter()
        assert len(results.existing_keys(TABLE)) == n
        read_after = time.perf_counter() - t0

        @ray.remote(num_cpus=1)
        def empty(i: int) -> int:
            return i

        ray.get(empty.remote(0))  # workers up, as they are for the sweep above
        with _PeakRss() as plain_mem:  # every call in flight at once, nothing windowed
            t0 = time.perf_counter()
            ray.get([empty.remote(i) for i in range(n)])
            plain_s = time.perf_counter() - t0
    finally:
        stop_ray()
    return {"units": n, "warm_s": warm_s, "plan_s": plan_s, "run_s": report.wall_s,
            "per_unit_ms": 1000 * report.wall_s / n, "plain_ms": 1000 * plain_s / n,
            "rss_idle_mib": rss_idle, "rss_planned_mib": rss_planned, "rss_peak_mib": mem.peak,
            "plain_rss_peak_mib": plain_mem.peak, "parts": parts_before,
            "read_keys_s": read_before, "compact_s": compact_s, "parts_compacted": parts_after,
            "read_keys_compacted_s": read_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.num_cpus, args.folder)))
        return
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--num-cpus", str(args.num_cpus),
                 "--folder", tmp], capture_output=True, text=True, check=False,
                cwd=Path(__file__).resolve().parents[1])
            if done.returncode:
                sys.exit(f"{n} units: {done.stderr.strip().splitlines()[-1:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["load"] = load
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| units | workers' start | run | per unit | empty Ray task (floor) "
          "| driver RSS: idle / planned / run's peak | floor's peak (all submitted at once) "
          "| parts | read keys | compact | parts after | read keys after | load |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['units']:,} | {r['warm_s']:.1f} s | {r['run_s']:.1f} s | "
              f"{r['per_unit_ms']:.2f} ms | {r['plain_ms']:.2f} ms | "
              f"{r['rss_idle_mib']:.0f} / {r['rss_planned_mib']:.0f} / "
              f"{r['rss_peak_mib']:.0f} MiB | {r['plain_rss_peak_mib']:.0f} MiB"
              f" | {r['parts']} | {r['read_keys_s']:.2f} s | {r['compact_s']:.2f} s | "
              f"{r['parts_compacted']} | {r['read_keys_compacted_s']:.3f} s | "
              f"{r['load']:.1f} |")

if __name__ == "__main__":
    main()
