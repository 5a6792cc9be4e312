"""Run units on Ray: a loopback-only local Ray or an existing cluster, progress, retries.

A unit's rows are buffered on the driver and written in whole Parquet parts every few seconds,
so an interrupted run keeps what finished and a rerun resumes from there. A unit that fails
after its retries becomes a row in the ``errors`` table; it never stops the run. Starting and
stopping Ray lives in :mod:`orchestrator.engine.ray_session`; what the cluster can run, in
:mod:`orchestrator.engine.capacity`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.context import TaskContext
from orchestrator.engine.capacity import StallWatch, check_capacity
from orchestrator.engine.plan import Unit
from orchestrator.engine.ray_session import embedded
from orchestrator.engine.units import run_unit_inline
from orchestrator.spec.schema import ResourcesSpec
from orchestrator.spec.stage_registry import artifact_tables
from orchestrator.store.handoff import handed_on
from orchestrator.store.tables import Results

# Starting and stopping Ray: orchestrator.engine.ray_session (and engine.session for commands).
__all__ = ["RunReport", "TransientError", "dedupe", "execute", "execute_inline", "pending_units"]

DEFAULT_RESOURCE_WAIT_S = 600.0
DEFAULT_WINDOW = 2000  # units in flight at once: bounds driver memory and each wait's cost
WAIT_BATCH = 256  # finished units collected per wait at most


class TransientError(RuntimeError):
    """Raise from a unit for failures worth retrying (a flaky filesystem, a lost peer)."""


RETRY_EXCEPTIONS = [TransientError, ConnectionError, TimeoutError]


def _remote_runner():
    import ray

    @ray.remote
    def run_unit(fn: str, params: dict, ctx: TaskContext, num_cpus: float, key: str,
                 starts: Any, dep_keys: tuple[str, ...], hands_on: bool, *deps: Any):
        # ``deps``: the refs of dependencies in flight, so that Ray starts this task after
        # them; what they hand on is read from the store (``dep_keys``), wherever they ran.
        # First thing (imports take seconds): the driver tells queueing behind this run's own
        # units from a stall by these marks.
        starts.mark.remote(key)
        import torch

        import orchestrator.stages  # noqa: F401  (in the worker: registers the unit functions)

        torch.set_num_threads(max(1, int(num_cpus)))
        node = ray.get_runtime_context().get_node_id()
        ctx = TaskContext(**{**ctx.__dict__, "node_id": node})
        return run_unit_inline(fn, params, ctx, key, dep_keys, hands_on)

    @ray.remote(num_cpus=0)
    class Starts:
        """The keys of units that began running since the driver last asked."""

        def __init__(self) -> None:
            self.keys: list[str] = []

        def mark(self, key: str) -> None:
            self.keys.append(key)

        def take(self) -> list[str]:
            keys, self.keys = self.keys, []
            return keys

    return run_unit, Starts


@dataclass
class RunReport:
    total: int = 0
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0
    wall_s: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    not_run: int = 0  # units left unsubmitted or waiting when the run stopped on a stall
    stalled: str = ""  # why: which units waited for what


def dedupe(units: Iterable[Unit]) -> list[Unit]:
    seen: dict[str, Unit] = {}
    for u in units:
        seen.setdefault(u.key, u)
    return list(seen.values())


ARTIFACT_SUFFIXES = (".pt", ".npz", ".parquet.d")


def pending_units(units: list[Unit], results: Results, store=None,
                  needed: Iterable[str] = ()) -> list[Unit]:
    """The units whose rows are not all in their tables. Also a unit whose output is gone
    where a pending unit depends on it, directly or through other such units, or where its key
    is in ``needed`` (models a search loads outside any unit): what is loaded is made again,
    and nothing is retrained only to be stored. Outputs: a ``hands_on`` unit's handoff
    (:mod:`orchestrator.store.handoff`) and, with the artifact ``store``, the artifacts of a
    unit of an artifact table (``stage_registry.artifact_tables``), deleted or moved aside as
    damaged."""
    done: dict[str, set[str]] = {}
    pending: set[str] = set()
    for u in units:
        if u.table not in done:
            done[u.table] = results.existing_keys(u.table)
        if not all(k in done[u.table] for k in u.row_keys):
            pending.add(u.key)
    needed = set(needed)
    if pending or needed:
        import orchestrator.stages  # noqa: F401  (the stages declare their artifact tables)

        saved = artifact_tables() if store is not None else set()
        present: set[str] | None = None
        handing = [u.key for u in units if u.hands_on and u.key not in pending]
        kept = handed_on(results.location, results.experiment, handing) if handing else set()
        lost: dict[str, Unit] = {u.key: u for u in units if u.key in handing and
                                 u.key not in kept}
        for u in units:
            if u.key not in pending and u.table in saved:
                present = store.names() if present is None else present
                if not all(any(k + x in present for x in ARTIFACT_SUFFIXES)
                           for k in u.row_keys):
                    lost[u.key] = u
        needed |= {d for u in units if u.key in pending for d in u.deps}
        while again := [k for k in lost if k in needed]:
            for k in again:
                pending.add(k)
                needed.update(lost.pop(k).deps)
    return [u for u in units if u.key in pending]


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


def _not_run_row(unit: Unit, why: str) -> dict[str, Any]:
    return {"key": unit.key, "unit": unit.label or unit.fn, "fn": unit.fn, "kind": unit.kind,
            "error_type": "NotRun", "error": f"not run: {why}"[:2000], "detail": why,
            "time": time.time()}


class _SoftStop:
    """While units run, SIGINT and SIGTERM only ask the loop to stop; the loop then stops at a
    safe point (not inside a Ray call, which is what made Ray's own checks fail and dump). A
    second signal stops at once."""

    def __init__(self) -> None:
        self.signum = 0
        self.saved: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _SoftStop:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle)
                          for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _on_driver_node() -> Any:
    """Prefer the driver's own node for the bookkeeping actor: a worker node may die mid-run
    (and take the actor with it); the driver's node lives as long as the run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    except Exception:  # noqa: BLE001  (a Ray Client driver has no node of its own)
        return "DEFAULT"


class _StartPoll:
    """Asks the ``Starts`` actor for newly started units, every ``every`` seconds, without
    ever blocking the loop on it."""

    def __init__(self, starts: Any, every: float = 2.0) -> None:
        self.starts, self.every = starts, every
        self.ref: Any = starts.take.remote()
        self.asked = time.monotonic()
        self.lost = False

    def poll(self, watch: StallWatch) -> None:
        """Pass any answer to ``watch``, with the time it was asked for."""
        import ray

        if self.lost:
            return
        if self.ref is None:
            if time.monotonic() - self.asked >= self.every:
                self.ref, self.asked = self.starts.take.remote(), time.monotonic()
            return
        done, _ = ray.wait([self.ref], timeout=0)
        if done:
            try:
                keys, self.ref = ray.get(self.ref), None
            except ray.exceptions.RayActorError:
                # Its node died. Without start reports ``watch`` never calls a stall (it needs
                # fresh reports), so the run goes on, only without stall detection.
                self.lost, self.ref = True, None
                return
            watch.started(keys, self.asked)


def execute(units: list[Unit], results: Results, ctx: TaskContext, resources: ResourcesSpec,
            progress: bool = True, resource_wait_s: float = DEFAULT_RESOURCE_WAIT_S,
            window: int = DEFAULT_WINDOW, remake_lost: bool = False) -> RunReport:
    """Submit every unfinished unit to Ray, wait, and write rows as units finish.

    At most ``window`` units are in flight at once (units are planned with their dependencies
    first), so the driver's memory and the cost of each wait stay bounded however large the
    sweep; a unit's result is released once it is collected and no later unit needs it.

    Raises :class:`CapacityError` (before anything is written) when no node of the embedded
    Ray can run some unit (a cluster may still gain such a node: the autoscaler, ``ray start``);
    stops, recording the rest as not run, when units wait ``resource_wait_s`` for resources
    while none of this run's units runs.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    units = dedupe(units)
    todo = pending_units(units, results, ctx.store,
                         needed=[u.key for u in units] if remake_lost else ())
    report = RunReport(total=len(units), skipped=len(units) - len(todo))
    if todo and embedded():
        check_capacity(todo, resources)
    results.clear("errors")  # the errors table describes the latest run only
    if not todo:
        return report
    runner, starts_cls = _remote_runner()
    starts = starts_cls.options(scheduling_strategy=_on_driver_node()).remote()
    flight = _Flight(todo, runner, starts, ctx, resources, max(1, window))
    buffer = _RowBuffer(results)
    watch = StallWatch([], resource_wait_s)
    poll = _StartPoll(starts)
    bar = tqdm(total=len(todo), desc=ctx.experiment, unit="task", disable=not progress,
               file=sys.stderr, mininterval=0.5, dynamic_ncols=True)

    def done(unit: Unit) -> None:
        watch.finished(unit.key)
        bar.update(1)
        bar.set_postfix(failed=report.failed, refresh=False)

    checked = time.monotonic()
    try:
        with _SoftStop() as stop:
            while flight.busy():
                if stop.signum:
                    raise KeyboardInterrupt
                for unit, err in flight.submit(watch):
                    _record_failure(unit, err, buffer, report)
                    done(unit)
                ready = flight.wait(timeout=0.2)
                for ref in ready:
                    unit = flight.take(ref)
                    if not _collect(ref, unit, buffer, report):
                        flight.failed.add(unit.key)
                    done(unit)
                buffer.add({})  # flushes when due
                if time.monotonic() - checked >= 1.0:  # a stall is measured in minutes
                    checked = time.monotonic()
                    poll.poll(watch)
                    stuck = watch.stalled()
                    if stuck:
                        _stop_stalled(stuck, flight.left(), watch, resources, buffer, report)
                        break
    except KeyboardInterrupt:
        # Nothing is cancelled here: cancelling while results arrive tripped Ray's own checks
        # (a crash dump); stop_ray ends the remaining tasks with the embedded Ray.
        report.interrupted = True
        raise
    finally:
        buffer.flush()
        bar.close()
        report.wall_s = time.perf_counter() - start
    return report


class _Flight:
    """The units in flight on Ray: a bounded window over the plan, in plan order."""

    def __init__(self, todo: list[Unit], runner: Any, starts: Any, ctx: TaskContext,
                 resources: ResourcesSpec, window: int) -> None:
        self.queue = deque(todo)
        self.runner, self.starts, self.ctx, self.resources = runner, starts, ctx, resources
        self.window = window
        self.unit_of: dict[Any, Unit] = {}  # ref -> unit, for the units in flight
        self.refs: dict[str, Any] = {}  # key -> ref, while in flight or a later unit needs it
        self.needed = Counter(d for u in todo for d in u.deps)  # dependants not yet submitted
        self.failed: set[str] = set()

    def busy(self) -> bool:
        return bool(self.queue or self.unit_of)

    def submit(self, watch: StallWatch) -> list[tuple[Unit, BaseException]]:
        """Fill the window; units whose dependency failed are returned, not submitted."""
        skipped = []
        while self.queue and len(self.unit_of) < self.window:
            u = self.queue.popleft()
            for d in u.deps:
                self.needed[d] -= 1
            deps = [self.refs[d] for d in u.deps if d in self.refs]
            for d in u.deps:
                self._release(d)
            if any(d in self.failed for d in u.deps):
                self.failed.add(u.key)
                skipped.append((u, RuntimeError("a unit it depends on failed")))
                continue
            res = getattr(self.resources, u.kind)
            ref = self.runner.options(
                num_cpus=res.cpus, num_gpus=res.gpus, resources=dict(res.custom) or None,
                max_retries=self.resources.max_retries, retry_exceptions=RETRY_EXCEPTIONS,
                name=f"{u.fn}:{u.label}"[:100],
            ).remote(u.fn, u.params, self.ctx, res.cpus, u.key, self.starts, u.deps, u.hands_on,
                      *deps)
            self.refs[u.key] = ref
            self.unit_of[ref] = u
            watch.track(u)
        return skipped

    def wait(self, timeout: float) -> list[Any]:
        """Finished refs: returns when ``WAIT_BATCH`` have finished or after ``timeout``.
        (One ``ray.wait`` costs the window's size: collecting one unit per call made the
        driver loop, not the cluster, the limit for short units.)"""
        import ray

        pending = list(self.unit_of)
        if not pending:
            return []
        ready, _ = ray.wait(pending, num_returns=min(len(pending), WAIT_BATCH), timeout=timeout)
        return ready

    def take(self, ref: Any) -> Unit:
        unit = self.unit_of.pop(ref)
        self._release(unit.key)
        return unit

    def _release(self, key: str) -> None:
        # Drop the driver's ref (and so the result in Ray's object store) once the unit has
        # been collected and no unit still to be submitted depends on it.
        if self.needed[key] <= 0 and key in self.refs and self.refs[key] not in self.unit_of:
            del self.refs[key]
            self.needed.pop(key, None)

    def left(self) -> list[Unit]:
        return list(self.unit_of.values()) + list(self.queue)


def _record_failure(unit: Unit, err: BaseException, buffer: _RowBuffer,
                    report: RunReport) -> None:
    row = _error_row(unit, err)
    report.errors.append(row)
    report.failed += 1
    buffer.add({"errors": [row]})


def _collect(ref: Any, unit: Unit, buffer: _RowBuffer, report: RunReport) -> bool:
    """Buffer a finished unit's rows, or its error row; whether it succeeded."""
    import ray

    try:
        buffer.add(ray.get(ref))
        report.succeeded += 1
        return True
    # Whatever a unit raised (a RayTaskError wrapping it, or a lost worker's RayError)
    # becomes its error row; the run goes on, as inline.
    except Exception as err:  # noqa: BLE001
        _record_failure(unit, err, buffer, report)
        return False


def _stop_stalled(stuck: list[Unit], left: list[Unit], watch: StallWatch,
                  resources: ResourcesSpec, buffer: _RowBuffer, report: RunReport) -> None:
    """Record every unit not finished as not run, and say which waited for what."""
    import ray

    try:
        free: dict[str, Any] | None = ray.available_resources()
    except Exception:  # noqa: BLE001  only for the message
        free = None
    reason = watch.reason(stuck, resources, free)
    print(f"unlearn-audit: warning: {reason}; stopping", file=sys.stderr, flush=True)
    waiting = {u.key for u in stuck}
    rows = [_not_run_row(u, reason if u.key in waiting else
                         "the run stopped while the units it needs waited for resources")
            for u in left]
    buffer.add({"errors": rows})
    report.not_run, report.stalled = len(rows), reason


def execute_inline(units: list[Unit], results: Results, ctx: TaskContext,
                   remake_lost: bool = False) -> RunReport:
    """The same contract without Ray: in order, in this process (tests, and the models a
    search trial needs). ``remake_lost``: also every given unit whose artifact is gone."""
    import orchestrator.stages  # noqa: F401  (stages register their unit functions)

    start = time.perf_counter()
    units = dedupe(units)
    todo = pending_units(units, results, ctx.store,
                         needed=[u.key for u in units] if remake_lost else ())
    report = RunReport(total=len(units), skipped=len(units) - len(todo))
    failed: set[str] = set()
    for u in todo:
        try:
            if failed & set(u.deps):
                raise RuntimeError("a unit it depends on failed")
            results_rows = run_unit_inline(u.fn, u.params, ctx, u.key, u.deps, u.hands_on)
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
