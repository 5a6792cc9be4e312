"""The session ``run`` and ``tune`` share: join or start Ray with the user's code shipped to
every worker, check what the units need, take the experiment's lock, and on leaving (done,
refused, failed or interrupted) stop Ray and release the lock.

Both commands refuse a busy experiment before Ray starts (``lock.check_free()``), and take the
lock only after Ray answered and the checks passed, so a refused start leaves no lock file.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.engine.lock import ExperimentLock
from orchestrator.engine.ray_session import (
    DEFAULT_CONNECT_TIMEOUT,
    CodeNotShipped,
    start_ray,
    stop_ray,
)
from orchestrator.spec.folder import SpecCode, runtime_env

__all__ = ["audit_session"]


@contextmanager
def audit_session(args: argparse.Namespace, lock: ExperimentLock, code: SpecCode | None,
                  check: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Ray up (``args.address``, ``num_cpus``, ``no_auth``, ``connect_timeout``), ``check()``
    passed, ``lock`` held: yields ``start_ray``'s information. Errors of the start
    (``ClusterUnreachable``, ``CodeNotShipped``), of ``check`` and of the lock propagate after
    the tear-down."""
    info: dict[str, Any] | None = None
    try:
        with runtime_env(code) as env:
            info = start_ray(args.address, num_cpus=args.num_cpus, auth=not args.no_auth,
                             connect_timeout=getattr(args, "connect_timeout",
                                                     DEFAULT_CONNECT_TIMEOUT),
                             runtime_env=env)
            if env and info["mode"] == "attached":
                raise CodeNotShipped(env)
        if check is not None:
            check()
        lock.acquire()
        yield info
    finally:
        # Also after an interrupted start: no Ray process of the session is left (a Ray this
        # process ran before the session, "attached", stays).
        stop_ray(info)
        lock.release()
