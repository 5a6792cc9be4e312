"""One writer per experiment: ``<results>/<experiment>/.lock``.

Two runs of one spec into one folder would each find the same units pending and each write
their rows. ``run`` and ``tune`` therefore hold this lock while they decide what is pending and
write; a second one is refused with who holds it.

Local paths and shared mounts: an OS lock (``flock``, through ``filelock``) on ``.lock``. The
OS drops it when the holder dies, however it dies, so a stale lock is taken over by design;
the holder's pid, host and start time sit beside it in ``.lock.owner`` for the message.

Object stores (``s3://``, ``gs://``, ...) have no lock and pyarrow offers no conditional
create, so there ``.lock`` is an object holding the owner: written when absent, read back to
check that this run's write is the one that stayed. That narrows the race of two runs starting
within the same instant but cannot close it. A lock left by a process that died is taken over
when it was on this host (its pid is gone); one from another host must be deleted by hand,
as the message says.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from orchestrator.store.location import Location

__all__ = ["ExperimentLock", "LockHeld"]

LOCK_NAME = ".lock"
OWNER_NAME = ".lock.owner"


class LockHeld(RuntimeError):
    """Another live process writes this experiment; the message is the CLI's one line."""


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class ExperimentLock:
    """``with ExperimentLock(root, experiment):`` — or :meth:`acquire` / :meth:`release`."""

    def __init__(self, root: str | os.PathLike, experiment: str) -> None:
        self.location = Location(root)
        self.experiment = experiment
        self.where = self.location.child_uri(experiment)
        self._file_lock: Any = None
        self._held = False

    # -- the message --------------------------------------------------------------------
    def _held_message(self, owner: dict[str, Any] | None) -> str:
        if not owner:
            return f"{self.where} is in use by another run; wait for it or stop it"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
        text = (f"{self.where} is in use by pid {owner.get('pid')} on {owner.get('host')} "
                f"since {since}; wait for it or stop it")
        if not self.location.local:
            text += f" (if it is gone, delete {self.where}/{LOCK_NAME})"
        return text

    def owner(self) -> dict[str, Any] | None:
        name = OWNER_NAME if self.location.local else LOCK_NAME
        try:
            return json.loads(self.location.read_bytes(self.experiment, name))
        except (OSError, ValueError):
            return None

    def _live_owner(self, wait_s: float = 3.0) -> dict[str, Any] | None:
        """The holder's note. A run that just took the lock writes its note a moment later
        (until then the note is absent, or a dead holder's): wait for it briefly."""
        deadline = time.monotonic() + wait_s
        while True:
            owner = self.owner()
            if (owner and not self._stale(owner)) or time.monotonic() >= deadline:
                return owner
            time.sleep(0.1)

    # -- local: flock ---------------------------------------------------------------------
    def _local_lock(self) -> Any:
        from filelock import FileLock

        return FileLock(self.location.path(self.experiment, LOCK_NAME), timeout=0)

    def check_free(self) -> None:
        """Raise :class:`LockHeld` if a live run holds the lock; creates nothing (a refused run
        must leave no trace), so it can run before any work."""
        if not self.location.exists(self.experiment, LOCK_NAME):
            return
        if not self.location.local:
            self._check_store_owner()
            return
        from filelock import Timeout

        probe = self._local_lock()
        try:
            probe.acquire()
        except Timeout:
            raise LockHeld(self._held_message(self._live_owner())) from None
        probe.release()

    def acquire(self) -> None:
        if self._held:
            return
        if not self.location.local:
            self._acquire_store()
            self._held = True
            return
        from filelock import Timeout

        self.location.makedirs(self.experiment)
        lock = self._local_lock()
        try:
            lock.acquire()
        except Timeout:
            raise LockHeld(self._held_message(self._live_owner())) from None
        self._file_lock, self._held = lock, True
        self.location.write_bytes(json.dumps(_me()).encode(), self.experiment, OWNER_NAME)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file_lock is not None:
            # The .lock file stays: deleting it would let a waiter lock a removed file while a
            # newcomer locks a new one. The owner note goes, so no stale name is shown.
            try:
                self.location.fs.delete_file(self.location.path(self.experiment, OWNER_NAME))
            except OSError:
                pass
            self._file_lock.release()
            self._file_lock = None
            return
        owner = self.owner()
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == _me()["host"]:
            self.location.fs.delete_file(self.location.path(self.experiment, LOCK_NAME))

    def __enter__(self) -> ExperimentLock:  # noqa: PYI034
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- object stores: an owner object ---------------------------------------------------
    def _stale(self, owner: dict[str, Any] | None) -> bool:
        if owner is None:
            return True  # unreadable or vanished: nobody can prove they hold it
        same_host = owner.get("host") == socket.gethostname()
        return same_host and not _pid_alive(int(owner.get("pid", -1)))

    def _check_store_owner(self) -> None:
        owner = self.owner()
        if not self._stale(owner):
            raise LockHeld(self._held_message(owner))

    def _acquire_store(self, settle_s: float = 1.0) -> None:
        if self.location.exists(self.experiment, LOCK_NAME):
            self._check_store_owner()
        mine = _me()
        self.location.write_bytes(json.dumps(mine).encode(), self.experiment, LOCK_NAME)
        # Two runs that both saw no lock both wrote; the store keeps the last write. Reading it
        # back after a pause lets the earlier writer see that it lost.
        time.sleep(settle_s)
        owner = self.owner()
        if owner != json.loads(json.dumps(mine)):
            raise LockHeld(self._held_message(owner))
