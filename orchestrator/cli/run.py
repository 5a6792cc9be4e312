"""The part of ``unlearn-audit run`` that holds Ray and the results folder: join or start Ray
(with a deadline), refuse a plan no node can run, take the experiment's lock, run, and leave
nothing behind however it ends (Ctrl-C, SIGTERM, an error).

Light at import (the parser imports :func:`seconds`): Ray and torch load inside :func:`drive`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import ExitStack
from typing import Any

from orchestrator.cli.support import fail, refusal, task_context

__all__ = ["add_run_flags", "drive", "seconds"]


def seconds(text: str) -> float:
    """An argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}"
                                          ) from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text}")
    return value


def add_run_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument("--connect-timeout", type=seconds, default=30.0, metavar="SECONDS",
                     help="give up joining --address after this long (default: 30)")
    run.add_argument("--resource-wait", type=seconds, default=600.0, metavar="SECONDS",
                     help="stop when units ready to run wait this long for resources while "
                          "none of the run's units runs (default: 600)")


def _check_capacity(todo: list, resources: Any, embedded: bool, wait_s: float) -> None:
    """Refuse what the embedded Ray can never run. A cluster may still gain the node (its
    autoscaler, a ``ray start`` elsewhere): say so, and let ``--resource-wait`` bound the wait."""
    from orchestrator.engine.capacity import CapacityError, check_capacity

    try:
        check_capacity(todo, resources)
    except CapacityError as err:
        if embedded:
            raise
        print(f"unlearn-audit: warning: {err}; waiting up to {wait_s:g} s (--resource-wait) "
              f"for a node that has it to join", file=sys.stderr, flush=True)


# A unit that finds a model it loads missing or damaged (moved aside) fails, and the unit that
# makes that model is pending again (``pending_units``): another pass remakes it and reruns
# what needed it. Each pass can uncover one more layer (pretrained, original, unlearned, an
# attack's own models); passes stop as soon as one changes nothing.
ARTIFACT_PASSES = 8
ARTIFACT_ERRORS = ("DamagedArtifact", "MissingArtifact")


def _execute_until_artifacts_remade(units: list, results: Any, ctx: Any, spec: Any,
                                    args: argparse.Namespace) -> Any:
    """``execute``, then again while units failed for want of a model that the next pass can
    make again; one report for all the passes (the errors: the last pass's)."""
    from orchestrator.engine.execute import execute

    report = execute(units, results, ctx, spec.resources, progress=not args.quiet,
                     resource_wait_s=args.resource_wait)
    succeeded, seen = report.succeeded, None
    for _ in range(ARTIFACT_PASSES):
        lost = {(e.get("unit"), e.get("error")) for e in report.errors
                if e.get("error_type") in ARTIFACT_ERRORS}
        if report.interrupted or report.stalled or not lost or lost == seen:
            break
        seen = lost
        print(f"{len(lost)} unit(s) found a model missing or damaged (moved aside); making it "
              "again and rerunning them", file=sys.stderr, flush=True)
        if any(e.get("error_type") == "DamagedArtifact" for e in report.errors):
            # Where one was damaged others may be: find them all now, not one a pass.
            read, damaged = ctx.store.scan()
            print(f"checked the {read} artifacts of {ctx.store.uri}: {len(damaged)} more "
                  "damaged, moved aside", file=sys.stderr, flush=True)
        report = execute(units, results, ctx, spec.resources, progress=not args.quiet,
                         resource_wait_s=args.resource_wait)
        succeeded += report.succeeded
    report.succeeded = succeeded
    report.skipped = report.total - succeeded - report.failed - report.not_run
    return report


def _compact(results: Any) -> None:
    """Merge the small parts of tables that have piled up (each flush writes one)."""
    from orchestrator.store.tables import compact_tables

    for table, (before, after) in compact_tables(results).items():
        print(f"compacted {table}: {before} parts -> {after}", file=sys.stderr)


def drive(args: argparse.Namespace, units: list, results: Any, spec: Any,
          data_root: str | None, header: str, code: Any = None) -> int:
    """Run ``units`` (every variant's) into ``results``; the exit code of ``run``. ``code``:
    the user's Python beside the spec (``orchestrator.spec.folder.SpecCode``), shipped to every worker."""
    from orchestrator.engine.capacity import CapacityError
    from orchestrator.engine.execute import dedupe, pending_units
    from orchestrator.engine.lock import ExperimentLock, LockHeld
    from orchestrator.engine.ray_session import ClusterUnreachable, CodeNotShipped, embedded
    from orchestrator.engine.session import audit_session
    from orchestrator.reporting.show import describe

    start = time.perf_counter()
    experiment = spec.experiment
    units = dedupe(units)
    ctx = task_context(args, results, spec, data_root)  # paths only: cheap, used throughout
    todo = pending_units(units, results, ctx.store)
    if not todo:
        # Everything is already in the tables: no need to start Ray at all.
        print(header)
        print(describe(str(args.results), experiment))
        print(f"\nall {len(units)} units already done "
              f"({time.perf_counter() - start:.1f}s); nothing to run")
        return 0
    lock = ExperimentLock(args.results, experiment)
    try:
        lock.check_free()  # a busy folder is refused before Ray starts, and writes nothing
    except LockHeld as err:
        return fail(str(err))
    try:
        with ExitStack() as stack:
            try:
                info = stack.enter_context(audit_session(args, lock, code, check=lambda: (
                    _check_capacity(todo, spec.resources, embedded(), args.resource_wait))))
            except (ClusterUnreachable, CodeNotShipped, CapacityError, LockHeld) as err:
                return fail(refusal(err) or str(err))
            print(header)
            for part in results.move_renamed_tables():  # an older version's table names
                print(f"moved {part} to its current table name", file=sys.stderr)
            _compact(results)  # what an interrupted run left in small parts
            report = _execute_until_artifacts_remade(units, results, ctx, spec, args)
            _compact(results)
    except KeyboardInterrupt:  # Ctrl-C, and SIGTERM (cli.main makes it one)
        print("\ninterrupted: finished units are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    print(describe(str(args.results), experiment))
    print(f"\n{report.succeeded} units ran, {report.skipped} already done, "
          f"{report.failed} failed, {report.not_run} not run, in {wall:.1f}s "
          f"(Ray: {info.get('mode')})")
    if report.stalled:
        fail(f"{report.not_run} units not run: {report.stalled} (see the errors table: "
             f"unlearn-audit show {args.results})")
        return 1
    if report.failed:
        print(f"see the errors table: unlearn-audit show {args.results}", file=sys.stderr)
        return 1
    return 0
