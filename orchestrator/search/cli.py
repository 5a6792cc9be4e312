"""``unlearn-audit tune``: its sub-parser and command.

Adding the sub-parser imports nothing heavy (no torch, Ray or Optuna), so ``unlearn-audit
--help`` stays fast; :func:`cmd_tune` imports the search itself.
"""

from __future__ import annotations

import argparse
import sys

from orchestrator.cli.support import (
    check_outputs,
    data_root_problem,
    fail,
    positive_int,
    refusal,
    resolved_data_root,
    task_context,
)

__all__ = ["add_tune_parser", "cmd_tune"]


def cmd_tune(args: argparse.Namespace) -> int:
    import orchestrator.stages  # noqa: F401  (fills STAGES before the spec is parsed)
    from orchestrator.engine.capacity import CapacityError
    from orchestrator.engine.lock import ExperimentLock, LockHeld
    from orchestrator.engine.ray_session import ClusterUnreachable, CodeNotShipped
    from orchestrator.engine.session import audit_session
    from orchestrator.search.spec import load_search_file
    from orchestrator.search.study import SearchStateError, open_study, search_dir
    from orchestrator.search.tune import run_search
    from orchestrator.spec.folder import collect_code
    from orchestrator.store.tables import Results

    study_errors = (SearchStateError,)  # "--resume: nothing to resume ..." and the like

    # A named data root that is no folder is refused below, after the spec's own errors.
    root = None if data_root_problem(args) else resolved_data_root(args)
    try:
        plan = load_search_file(args.spec, args.set, root)
        code = collect_code(args.spec)  # the user's Python beside the spec, for the workers
    except Exception as err:
        if (line := refusal(err, as_is=study_errors)) is None:
            raise
        return fail(line)
    # Before any other work: an output that cannot be written must cost nothing.
    problem = check_outputs(args, plan.base.experiment) or data_root_problem(args)
    if problem:
        return fail(problem)
    data_root = resolved_data_root(args)
    results = Results(args.results, plan.base.experiment)
    try:
        results.check_parts()  # a damaged part is named before any work, not part-way
        search_dir(results)
        from orchestrator.engine.plan import plan_core

        plan_core(plan.base, data_root)  # fails early on missing data
        ctx = task_context(args, results, plan.base, data_root)
        # Refuse an existing study without --resume before starting anything.
        open_study(plan, results, args.resume)
        lock = ExperimentLock(args.results, plan.base.experiment)  # one writer per experiment
        lock.check_free()  # a busy experiment is refused before Ray starts
    except Exception as err:
        if (line := refusal(err, as_is=study_errors)) is None:
            raise
        return fail(line)
    try:
        with audit_session(args, lock, code):
            outcome = run_search(plan, results, ctx, resume=args.resume,
                                 num_samples=args.num_samples, progress=not args.quiet)
    except (SearchStateError, ClusterUnreachable, CodeNotShipped, CapacityError,
            LockHeld) as err:
        return fail(refusal(err, as_is=study_errors) or str(err))
    except KeyboardInterrupt:
        print("\ninterrupted: the study is saved; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    print(f"\n{outcome.finished}/{outcome.requested} trials finished ({outcome.ran} this run) "
          f"in {outcome.wall_s:.1f}s")
    for row in outcome.best:
        scores = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                           if k.startswith(("heldout.", "search.")) and isinstance(v, float))
        print(f"  {row['role']:<8} trial {row['trial']}: {row['params']}\n    {scores}")
    print(f"tables: {results.location.uri}/{plan.base.experiment}/(trials, "
          f"{'pareto' if plan.search.multi else 'best'})")
    if outcome.interrupted:
        print("the search stopped before its budget; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    return 0


def add_tune_parser(sub) -> None:
    tune = sub.add_parser(
        "tune", help="search attack or defence settings (Ray Tune + Optuna)",
        description="Search the space of a spec's search: section. The Optuna study is kept "
                    "in RESULTS/<experiment>/_search/study.journal; --resume continues it.")
    tune.add_argument("spec", help="YAML spec with a search: section, e.g. "
                                   "search_spaces/inversion_search.yaml")
    tune.add_argument("--results", default="RESULTS",
                      help="results directory or file:// URI (default: RESULTS)")
    tune.add_argument("--artifacts", default=None,
                      help="artifact store (default: <results>/_artifacts)")
    tune.add_argument("--num-samples", type=positive_int, default=None,
                      help="finished trials wanted (default: search.budget.trials)")
    tune.add_argument("--resume", action="store_true",
                      help="continue the study in the results directory")
    tune.add_argument("--address", default=None,
                      help="join this Ray cluster (default: $RAY_ADDRESS, else a local "
                           "loopback-only Ray)")
    tune.add_argument("--data-root", default=None, help="folder holding the datasets")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a spec value, e.g. --set search.budget.trials=10")
    tune.add_argument("--num-cpus", type=positive_int, default=None,
                      help="CPUs for the local Ray (default: all)")
    tune.add_argument("--no-auth", action="store_true",
                      help="start the local Ray without token authentication (not advised)")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(func=cmd_tune)
