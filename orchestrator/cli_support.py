"""What every ``unlearn-audit`` command shares: the bad-input exit, the data root, the task
context. Light on purpose: the parsers import it, and ``--help`` must not load torch or Ray."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["EXIT_BAD_INPUT", "fail", "resolved_data_root", "task_context"]

EXIT_BAD_INPUT = 2


def fail(message: str) -> int:
    print(f"unlearn-audit: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def resolved_data_root(args: argparse.Namespace) -> str | None:
    from tasks.data import resolve_data_root

    root = resolve_data_root(args.data_root)
    return str(root) if root else None


def task_context(args: argparse.Namespace, results, spec, data_root: str | None):
    """Where workers read and write: absolute paths, so every worker (and node) agrees."""
    from orchestrator.units import TaskContext

    artifacts = args.artifacts or os.path.join(results.location.uri, "_artifacts")
    if "://" not in artifacts:
        artifacts = os.path.abspath(artifacts)
    return TaskContext(spec.experiment, results.location.uri, artifacts, data_root,
                       spec.runtime.device)
