"""What every ``unlearn-audit`` command shares: the bad-input exit, the data root, the task
context. Light on purpose: the parsers import it, and ``--help`` must not load torch or Ray."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

__all__ = ["EXIT_BAD_INPUT", "BriefParser", "check_outputs", "data_root_problem", "fail",
           "positive_int", "refusal", "resolved_data_root", "task_context"]

EXIT_BAD_INPUT = 2


def refusal(err: BaseException, as_is: tuple[type[BaseException], ...] = ()) -> str | None:
    """The one line a bad input ends in (``fail`` prints it), or None for anything else — a
    bug, which should surface as one. ``as_is``: further exceptions whose text is the line."""
    from orchestrator.engine.capacity import CapacityError
    from orchestrator.engine.lock import LockHeld
    from orchestrator.engine.ray_session import ClusterUnreachable
    from orchestrator.spec.schema import SpecError, SpecFileError
    from orchestrator.store.tables import DamagedPart
    from tasks.data import DataError, MissingDataError
    from tasks.params import one_line
    from tasks.registry import UnknownComponentError

    if isinstance(err, (SpecFileError, MissingDataError, LockHeld, ClusterUnreachable,
                        DamagedPart, *as_is)):
        return str(err)  # "<path>: ..." / "<folder> is in use ..." / "--address ...: ..."
    if isinstance(err, DataError):  # a present but malformed data file (also a ValueError)
        return f"data error: {err}"
    if isinstance(err, CapacityError):
        return f"spec error: {err}"
    if isinstance(err, (SpecError, UnknownComponentError, ValueError)):
        return f"spec error: {one_line(err)}"
    return None


def fail(message: str) -> int:
    print(f"unlearn-audit: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


class BriefParser(argparse.ArgumentParser):
    """argparse's refusals as one line, ``unlearn-audit: <what is wrong>``, exit 2, instead of
    the usage block (``--help`` still prints it). Sub-parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):  # "argument --num-cpus: ..." names the flag
            message = message[len("argument "):]
        else:  # unknown flags, a missing argument: point at the help
            message += f" (see: {self.prog} --help)"
        self.exit(EXIT_BAD_INPUT, f"unlearn-audit: {message}\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (CPU counts, trial counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, not {value}")
    return value


def check_outputs(args: argparse.Namespace, experiment: str, *, probe: bool = True) -> str | None:
    """The refusal line for a ``--results`` or ``--artifacts`` that cannot be written (a file,
    a path under a file, a read-only folder, an unreachable store), else None. Run before any
    work, so a bad output path costs nothing. ``probe=False`` (a dry run, which writes nothing)
    checks only that the paths can be folders."""
    from orchestrator.store.location import OutputError, check_writable

    checks = [("--results", args.results, (experiment,))]
    if args.artifacts:
        checks.append(("--artifacts", args.artifacts, ()))
    for flag, target, parts in checks:
        try:
            check_writable(target, *parts, probe=probe)
        except OutputError as err:
            return f"{flag} {target}: {err}"
    return None


def data_root_problem(args: argparse.Namespace) -> str | None:
    """The refusal line for a data root that is named (``--data-root`` or the environment
    variable) but is not a folder, else None: a typo there would otherwise show up only as
    "no data" for every dataset, or not at all for the bundled ones."""
    from tasks.data import DATA_ROOT_ENV

    for name, value in (("--data-root ", args.data_root),
                        (f"${DATA_ROOT_ENV}=", os.environ.get(DATA_ROOT_ENV))):
        if value:
            path = os.path.expanduser(value)
            if not os.path.isdir(path):
                what = "is a file" if os.path.exists(path) else "does not exist"
                return f"{name}{value}: {what}; expected the folder that holds the datasets"
            return None  # the explicit flag wins over the variable, as in resolve_data_root
    return None


def resolved_data_root(args: argparse.Namespace) -> str | None:
    from tasks.data import resolve_data_root

    root = resolve_data_root(args.data_root)
    return str(root) if root else None


def task_context(args: argparse.Namespace, results, spec, data_root: str | None):
    """Where workers read and write: absolute paths, so every worker (and node) agrees."""
    from orchestrator.context import TaskContext

    # A URI's ?query (an object store's options) stays at the end of the default's URI.
    artifacts = args.artifacts or results.location.child_uri("_artifacts")
    if "://" not in artifacts:
        artifacts = os.path.abspath(artifacts)
    return TaskContext(spec.experiment, results.location.uri, artifacts, data_root,
                       spec.runtime.device)
