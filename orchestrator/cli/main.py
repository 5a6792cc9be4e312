"""``unlearn-audit``: run | show | report | datasets | compact | tune.

Nothing heavy is imported at module level or while building the parsers: ``--help`` answers
without loading torch, Ray or Optuna. Each command imports what it needs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from orchestrator.cli.run import add_run_flags, drive
from orchestrator.cli.support import (
    BriefParser,
    check_outputs,
    data_root_problem,
    fail,
    positive_int,
    refusal,
    resolved_data_root,
    task_context,
)
from orchestrator.search.cli import add_tune_parser


def cmd_run(args: argparse.Namespace) -> int:
    import orchestrator.stages  # noqa: F401  (fills STAGES: the spec's attack sections)
    from orchestrator.engine.plan import plan_run
    from orchestrator.spec.folder import collect_code
    from orchestrator.spec.schema import load_spec
    from orchestrator.store.tables import DamagedPart, Results

    try:
        variants = load_spec(args.spec, args.set)
        code = collect_code(args.spec)  # the user's Python beside the spec, for the workers
    except Exception as err:
        if (line := refusal(err)) is None:
            raise
        return fail(line)
    # Before any other work: an output that cannot be written must cost nothing.
    problem = (check_outputs(args, variants[0].experiment, probe=not args.dry_run)
               or data_root_problem(args))
    if problem:
        return fail(problem)
    data_root = resolved_data_root(args)
    try:
        plans = [plan_run(v, data_root) for v in variants]
    except Exception as err:  # sizes the data cannot hold, data files, plug-ins
        if (line := refusal(err)) is None:
            raise
        return fail(line)
    experiment = variants[0].experiment
    units = [u for _, us in plans for u in us]
    results = Results(args.results, experiment)
    try:
        results.check_parts()  # a damaged part is named before any work, not part-way
    except DamagedPart as err:
        return fail(str(err))
    header = (f"{experiment}: {len(variants)} variant(s), {len(units)} units -> "
              f"{results.location.uri}/{experiment}")
    if args.dry_run:
        from collections import Counter

        from orchestrator.engine.execute import dedupe, pending_units

        print(header)
        units = dedupe(units)
        store = task_context(args, results, variants[0], data_root).store
        todo = pending_units(units, results, store)
        for fn, n in sorted(Counter(u.fn for u in units).items()):
            left = sum(1 for u in todo if u.fn == fn)
            print(f"  {fn:<20} {n:>5} units, {left:>5} to run")
        return 0
    # Ray, the capacity check, the experiment's lock, signals: orchestrator/cli/run.py.
    return drive(args, units, results, variants[0], data_root, header, code)


def cmd_show(args: argparse.Namespace) -> int:
    import orchestrator.reporting.summaries  # noqa: F401  (the built-in tables' summaries; no torch)
    from orchestrator.reporting.show import NotResults, describe, locate

    # A path or a URI (file://, s3://, ...), handled as a string: Path() would mangle "//".
    try:
        root, experiment, table = locate(args.results)
    except NotResults as err:
        return fail(f"{args.results}: {err}")
    print(describe(root, experiment, table))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import orchestrator.reporting.summaries  # noqa: F401  (the built-in tables' summaries; no torch)
    from orchestrator.reporting.html_report import write_report
    from orchestrator.reporting.show import NotResults, locate
    from orchestrator.store.tables import Results, list_experiments

    try:
        root, experiment, table = locate(args.results)
    except NotResults as err:
        return fail(f"{args.results}: {err}")
    if table is not None:
        return fail(f"{args.results}: is one table's folder; give RESULTS/<experiment>")
    if experiment is None:
        found = [e for e in list_experiments(root) if Results(root, e).tables()]
        if len(found) != 1:
            what = "no result tables in it" if not found else (
                f"holds {len(found)} experiments ({', '.join(found)}); give RESULTS/<experiment>")
            return fail(f"{args.results}: {what}")
        experiment = found[0]
    out = args.out
    if out is not None:  # checked before the page is rendered
        if os.path.isdir(out):
            out = os.path.join(out, f"{experiment}.html")
        from orchestrator.store.location import OutputError, check_writable

        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            return fail(f"--out {args.out}: no folder {folder} to write it in")
        try:
            check_writable(folder)  # a probe file, as for --results
        except OutputError as err:
            return fail(f"--out {args.out}: {err}")
    try:
        where = write_report(root, experiment, out)
    except OSError as err:
        return fail(f"{args.out or args.results}: cannot write the report ({err})")
    print(f"report: {where}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from tasks.data import DATA_ROOT_ENV, dataset_status, resolve_data_root

    if problem := data_root_problem(args):
        return fail(problem)
    root = resolve_data_root(args.data_root)
    print(f"data root: {root or '(none: set --data-root or ' + DATA_ROOT_ENV + ')'}")
    for row in dataset_status(args.data_root):
        mark = "yes" if row["available"] else "NO "
        print(f"  {row['name']:<14} {row['kind']:<8} {mark}  {row['where']}\n"
              f"  {'':<14} {row['description']}")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from orchestrator.engine.lock import ExperimentLock, LockHeld
    from orchestrator.reporting.show import NotResults, locate
    from orchestrator.store.tables import DamagedPart, Results

    try:
        root, experiment, table = locate(args.results)
    except NotResults as err:
        return fail(f"{args.results}: {err}")
    if experiment is None:
        return fail(f"{args.results}: give RESULTS/<experiment> (or one table's folder)")
    results = Results(root, experiment)
    try:
        results.check_parts()  # refused before any table is rewritten (or the lock taken)
    except DamagedPart as err:
        return fail(str(err))
    lock = ExperimentLock(root, experiment)
    try:
        lock.acquire()  # one writer: a run adding parts meanwhile would race the deletes
    except LockHeld as err:
        return fail(str(err))
    try:
        for name in [table] if table else results.tables():
            before, after = results.compact(name, max_rows=args.max_rows)
            print(f"  {name:<28} {before:>6} parts -> {after}")
    except DamagedPart as err:  # damaged since the check, by another hand
        return fail(str(err))
    finally:
        lock.release()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = BriefParser(
        prog="unlearn-audit",
        description="Measure how much machine unlearning leaks about forgotten data.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment spec",
                         description="Plan a spec into Ray tasks, run what is not done yet, "
                                     "and write Parquet tables under RESULTS/<experiment>/.")
    run.add_argument("spec", help="YAML spec, e.g. search_spaces/quickstart.yaml")
    run.add_argument("--results", default="RESULTS",
                     help="results directory or URI (default: RESULTS)")
    run.add_argument("--artifacts", default=None,
                     help="artifact store (default: <results>/_artifacts)")
    run.add_argument("--data-root", default=None,
                     help="folder holding the datasets (default: $UNLEARN_AUDIT_DATA, "
                          "then ../shared/data)")
    run.add_argument("--address", default=None,
                     help="join this Ray cluster (default: $RAY_ADDRESS, else a local "
                          "loopback-only Ray)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec value, e.g. --set training.epochs=5 (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    run.add_argument("--num-cpus", type=positive_int, default=None,
                     help="CPUs for the local Ray (default: all)")
    run.add_argument("--no-auth", action="store_true",
                     help="start the local Ray without token authentication (not advised)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_flags(run)
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="summarise result tables",
                          description="Print a readable summary of every table.")
    show.add_argument("results", help="RESULTS, RESULTS/<experiment> or one table's folder; "
                                      "a path or a URI (file://, s3://, ...)")
    show.set_defaults(func=cmd_show)

    report = sub.add_parser("report", help="write a self-contained HTML audit report",
                            description="Write one HTML file (figures embedded, nothing "
                                        "fetched from a network): verdicts with bootstrap "
                                        "intervals, figures, tables, spec, seeds, versions.")
    report.add_argument("results", help="RESULTS/<experiment> (or RESULTS holding one "
                                        "experiment); a path or a URI")
    report.add_argument("--out", default=None, metavar="FILE",
                        help="where to write it (default: RESULTS/<experiment>/report.html; "
                             "a folder: <folder>/<experiment>.html)")
    report.set_defaults(func=cmd_report)

    datasets = sub.add_parser("datasets", help="list datasets and where they are read from",
                              description="List every registered dataset, whether its files "
                                          "are present, and where.")
    datasets.add_argument("--data-root", default=None, help="folder holding the datasets")
    datasets.set_defaults(func=cmd_datasets)

    compact = sub.add_parser("compact", help="merge a results folder's small Parquet parts",
                             description="Rewrite each table of an experiment as a few parts "
                                         "(one row per key), so reading stays fast as runs "
                                         "add parts. Runs do this themselves once a table "
                                         "holds 32 parts.")
    compact.add_argument("results", help="RESULTS/<experiment> or one table's folder")
    compact.add_argument("--max-rows", type=positive_int, default=200_000, metavar="N",
                         help="rows per part at most (default: 200000)")
    compact.set_defaults(func=cmd_compact)

    add_tune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A polite stop (SIGTERM) behaves like Ctrl-C: finished units are flushed first. SIGINT is
    # set explicitly too: a process started in the background inherits it ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
