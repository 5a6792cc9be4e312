"""Run units on Ray: a loopback-only local Ray or an existing cluster, progress, retries.

A unit's rows are buffered on the driver and written in whole Parquet parts every few seconds,
so an interrupted run keeps what finished and a rerun resumes from there. A unit that fails
after its retries becomes a row in the ``errors`` table; it never stops the run.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.plan import Unit
from orchestrator.spec import ResourcesSpec
from orchestrator.tables import Results
from orchestrator.units import TaskContext, run_unit_inline


class TransientError(RuntimeError):
    """Raise from a unit for failures worth retrying (a flaky filesystem, a lost peer)."""


RETRY_EXCEPTIONS = [TransientError, ConnectionError, TimeoutError]
LOCAL_ENV = {
    # Ray 2.60 on Linux binds to every interface unless this is 0; then a local Ray listens on
    # 127.0.0.1 only (and refuses other nodes, which is right for the embedded mode).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def start_ray(address: str | None = None, num_cpus: int | None = None, auth: bool = True,
              quiet: bool = True) -> dict[str, Any]:
    """Join ``address`` (or $RAY_ADDRESS), else start an embedded loopback-only Ray.

    The environment is set before ``import ray``: Ray reads its auth mode once, when loaded.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    logging_kwargs = {"log_to_driver": not quiet, "logging_level": "ERROR" if quiet else "INFO"}
    if address:
        import ray

        if ray.is_initialized():
            return {"mode": "attached"}
        # Joining a cluster: its token comes from $RAY_AUTH_TOKEN or ~/.ray/auth_token.
        ray.init(address=address, **logging_kwargs)
        return {"mode": "cluster", "address": address}
    os.environ.update(LOCAL_ENV)
    if auth:
        os.environ["RAY_AUTH_MODE"] = "token"
        if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            # A fresh secret for this embedded Ray only; workers inherit it.
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    if ray.is_initialized():
        return {"mode": "attached"}
    ray.init(include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1",
             **logging_kwargs)
    return {"mode": "local", "auth": auth}


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _remote_runner():
    import ray

    @ray.remote
    def run_unit(fn: str, params: dict, ctx: TaskContext, num_cpus: float, *deps: Any):
        import torch

        import orchestrator.stages  # noqa: F401  (in the worker: registers the unit functions)

        torch.set_num_threads(max(1, int(num_cpus)))
        node = ray.get_runtime_context().get_node_id()
        ctx = TaskContext(**{**ctx.__dict__, "node_id": node})
        return run_unit_inline(fn, params, ctx)

    return run_unit


@dataclass
class RunReport:
    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0
    wall_s: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False


def dedupe(units: Iterable[Unit]) -> list[Unit]:
    seen: dict[str, Unit] = {}
    for u in units:
        seen.setdefault(u.key, u)
    return list(seen.values())


def pending_units(units: list[Unit], results: Results) -> list[Unit]:
    done: dict[str, set[str]] = {}
    out = []
    for u in units:
        if u.table not in done:
            done[u.table] = results.existing_keys(u.table)
        if not all(k in done[u.table] for k in u.row_keys):
            out.append(u)
    return out


class _RowBuffer:
    """Rows of finished units, written as one part per table every ``every`` seconds."""

    def __init__(self, results: Results, every: float = 3.0) -> None:
        self.results, self.every = results, every
        self.rows: dict[str, list[dict]] = {}
        self.last = time.monotonic()

    def add(self, rows: dict[str, list[dict]]) -> None:
        for table, items in rows.items():
            self.rows.setdefault(table, []).extend(items)
        if time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        for table, items in self.rows.items():
            by_key = {r["key"]: r for r in items}
            self.results.write(table, list(by_key.values()))
        self.rows = {}
        self.last = time.monotonic()


def _error_row(unit: Unit, err: BaseException) -> dict[str, Any]:
    cause = getattr(err, "cause", None) or err
    text = "".join(traceback.format_exception_only(type(cause), cause)).strip()
    return {"key": unit.key, "unit": unit.label or unit.fn, "fn": unit.fn, "kind": unit.kind,
            "error_type": type(cause).__name__, "error": text.splitlines()[-1][:2000],
            "detail": text[:20000], "time": time.time()}


def execute(units: list[Unit], results: Results, ctx: TaskContext, resources: ResourcesSpec,
            progress: bool = True) -> RunReport:
    """Submit every unfinished unit to Ray, wait, and write rows as units finish."""
    import ray
    from tqdm import tqdm

    start = time.perf_counter()
    units = dedupe(units)
    todo = pending_units(units, results)
    report = RunReport(total=len(units), skipped=len(units) - len(todo))
    results.clear("errors")  # the errors table describes the latest run only
    runner = _remote_runner()
    refs: dict[str, Any] = {}
    unit_of: dict[Any, Unit] = {}
    for u in todo:
        res = getattr(resources, u.kind)
        dep_refs = [refs[d] for d in u.deps if d in refs]
        ref = runner.options(
            num_cpus=res.cpus, num_gpus=res.gpus, resources=dict(res.custom) or None,
            max_retries=resources.max_retries, retry_exceptions=RETRY_EXCEPTIONS,
            name=f"{u.fn}:{u.label}"[:100],
        ).remote(u.fn, u.params, ctx, res.cpus, *dep_refs)
        refs[u.key] = ref
        unit_of[ref] = u
    buffer = _RowBuffer(results)
    remaining = list(unit_of)
    bar = tqdm(total=len(todo), desc=ctx.experiment, unit="task", disable=not progress,
               file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    try:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=1.0)
            for ref in ready:
                unit = unit_of[ref]
                try:
                    buffer.add(ray.get(ref))
                    report.succeeded += 1
                # Whatever a unit raised (a RayTaskError wrapping it, or a lost worker's
                # RayError) becomes its error row; the run goes on, as inline.
                except Exception as err:  # noqa: BLE001
                    row = _error_row(unit, err)
                    report.errors.append(row)
                    report.failed += 1
                    buffer.add({"errors": [row]})
                bar.update(1)
                bar.set_postfix(failed=report.failed, refresh=False)
            if not ready:
                buffer.add({})
    except KeyboardInterrupt:
        report.interrupted = True
        for ref in remaining:
            ray.cancel(ref, force=True)
        raise
    finally:
        buffer.flush()
        bar.close()
        report.wall_s = time.perf_counter() - start
    return report


def execute_inline(units: list[Unit], results: Results, ctx: TaskContext) -> RunReport:
    """The same contract without Ray: in order, in this process (tests and debugging)."""
    import orchestrator.stages  # noqa: F401  (stages register their unit functions)

    start = time.perf_counter()
    units = dedupe(units)
    todo = pending_units(units, results)
    report = RunReport(total=len(units), skipped=len(units) - len(todo))
    failed: set[str] = set()
    for u in todo:
        try:
            if failed & set(u.deps):
                raise RuntimeError("a unit it depends on failed")
            results_rows = run_unit_inline(u.fn, u.params, ctx)
            for table, rows in results_rows.items():
                results.write(table, rows)
            report.succeeded += 1
        except Exception as err:  # noqa: BLE001  recorded as an error row, like on Ray
            failed.add(u.key)
            report.failed += 1
            row = _error_row(u, err)
            report.errors.append(row)
            results.write("errors", [row])
    report.wall_s = time.perf_counter() - start
    return report
