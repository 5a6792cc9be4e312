"""Start, join and stop Ray for one run: a loopback-only embedded Ray, or an existing cluster.

Three promises the CLI makes rest here:

- joining a cluster gives up after ``connect_timeout`` seconds (a TCP check of the address, then
  a deadline on ``ray.init``) instead of retrying for ever;
- SIGTERM keeps the handler the caller installed (``ray.init`` replaces it with one that exits
  mid-write);
- after :func:`stop_ray`, no process of the embedded Ray is left: the driver is made a child
  subreaper, so the raylet's workers and agents stay its descendants even when the raylet dies
  first, and whatever ``ray.shutdown`` leaves behind is stopped. A driver that cannot clean up
  (SIGKILL, the OOM killer) has a watchdog: a small process that notes the Ray processes below
  the driver every second and stops them once the driver is gone (without it, Ray's agents
  outlive a killed driver by a minute or two).
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["LOCAL_ENV", "ClusterUnreachable", "CodeNotShipped", "embedded", "ray_leftovers",
           "start_ray", "stop_ray"]

LOCAL_ENV = {
    # Ray 2.60 on Linux binds to every interface unless this is 0; then a local Ray listens on
    # 127.0.0.1 only (and refuses other nodes, which is right for the embedded mode).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}
DEFAULT_CONNECT_TIMEOUT = 30.0
_PR_SET_CHILD_SUBREAPER = 36


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answered at the address in time; the message is the CLI's one line."""

    def __init__(self, address: str, timeout: float, detail: str = "") -> None:
        self.address, self.timeout = address, timeout
        text = detail or f"no Ray cluster answers there within {timeout:g} s"
        super().__init__(f"--address {address}: {text}")


class CodeNotShipped(RuntimeError):
    """Ray was already running in this process, so the job's code cannot be shipped with it."""

    def __init__(self, runtime_env: dict[str, Any]) -> None:
        modules = [os.path.basename(m).removesuffix(".py")
                   for m in runtime_env.get("py_modules", [])]
        super().__init__(
            f"Ray was started in this process before the run, so the spec's own code "
            f"({', '.join(modules)}) cannot reach its workers; call ray.init with "
            f"runtime_env={{'py_modules': [...]}} naming it, or run unlearn-audit in a process "
            f"of its own")


# The embedded Ray this process started: what stop_ray must leave nothing of.
_local: dict[str, Any] = {}


def start_ray(address: str | None = None, num_cpus: int | None = None, auth: bool = True,
              quiet: bool = True, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
              runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Join ``address`` (or $RAY_ADDRESS), else start an embedded loopback-only Ray; a Ray this
    process already runs is used as it is (mode "attached": ``runtime_env`` is not applied, and
    :func:`stop_ray` given this information leaves that Ray running).

    The environment is set before ``import ray``: Ray reads its auth mode once, when loaded.
    ``runtime_env``: the job's, for every task and actor (the user's code beside the spec:
    ``orchestrator.spec.folder.runtime_env``); ``ray.init`` uploads what it names.
    Raises :class:`ClusterUnreachable` when no cluster answers at ``address`` in time.
    """
    attached = _attach()
    if attached is not None:
        return attached
    address = address or os.environ.get("RAY_ADDRESS")
    init_kwargs = {"log_to_driver": not quiet, "logging_level": "ERROR" if quiet else "INFO"}
    if runtime_env:
        init_kwargs["runtime_env"] = runtime_env
    if address:
        return _join(address, connect_timeout, init_kwargs, quiet)
    os.environ.update(LOCAL_ENV)
    if auth:
        os.environ["RAY_AUTH_MODE"] = "token"
        if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            # A fresh secret for this embedded Ray only; workers inherit it.
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    _local.update(pid=os.getpid(), since=_boot_ticks(), subreaper=_set_subreaper(True),
                  watchdog=_start_watchdog(os.path.dirname(ray.__file__)))
    with _keep_sigterm():
        ray.init(include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                 **init_kwargs)
    return {"mode": "local", "auth": auth}


def _attach() -> dict[str, Any] | None:
    """A Ray that this process already runs (``ray.init`` before the run: a notebook, a test
    session) is used as it is, and left running by :func:`stop_ray`; None when there is none.
    Its job's ``runtime_env`` was fixed when it started: the caller refuses code to ship."""
    if "ray" not in sys.modules:
        return None
    import ray

    return {"mode": "attached"} if ray.is_initialized() else None


def embedded() -> bool:
    """Whether this process runs the embedded Ray (its nodes never change), not a cluster's."""
    return _local.get("pid") == os.getpid()


def stop_ray(info: dict[str, Any] | None = None) -> None:
    """Disconnect; for the embedded Ray, also stop every process of it that is left.
    ``info``: what :func:`start_ray` returned; a Ray it found running ("attached") is left
    as it was."""
    if info is not None and info.get("mode") == "attached":
        return
    import ray

    # Cleanup must not be cut short by a second Ctrl-C or SIGTERM: that is what leaves
    # agents and workers running. It takes a few seconds at most.
    held = _hold_signals()
    try:
        if ray.is_initialized():
            ray.shutdown()
        if _local.get("pid") == os.getpid():
            watchdog = _local.get("watchdog")
            _kill([p for p in ray_leftovers(os.getpid(), _local["since"])
                   if watchdog is None or p != watchdog.pid])
            if _local.get("subreaper"):
                _set_subreaper(False)
            _stop_watchdog(watchdog)
            _local.clear()
    finally:
        _restore_signals(held)


# Run with the driver's pid and Ray's package folder; stdin is a pipe from the driver, which
# reaches end-of-file when the driver closes it (stop_ray) or dies, however it dies.
WATCHDOG = r"""
import os, select, signal, sys, time
driver, ray_dir = int(sys.argv[1]), sys.argv[2]

def table():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    f = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            out[int(name)] = (int(f[1]), f[19], f[0])
    return out

def is_ray(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().decode(errors="replace")
    except OSError:
        return False
    return cmd.startswith("ray::") or ray_dir in cmd

seen = {}
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 1.0)
    if ready and not os.read(sys.stdin.fileno(), 1024):
        break
    procs, kids = table(), {}
    for pid, (parent, _, _) in procs.items():
        kids.setdefault(parent, []).append(pid)
    frontier = [driver]
    while frontier:
        for pid in kids.get(frontier.pop(), []):
            frontier.append(pid)
            if pid not in seen and pid != os.getpid() and is_ray(pid):
                seen[pid] = procs[pid][1]

def alive():
    procs = table()
    return [p for p, start in seen.items()
            if p in procs and procs[p][1] == start and procs[p][2] != "Z"]

for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in alive():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 3
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def _start_watchdog(ray_dir: str) -> subprocess.Popen | None:
    if not os.path.isdir("/proc"):
        return None
    try:
        # Its own session: a Ctrl-C in the terminal must not stop it before the driver.
        return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), ray_dir],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        return None


def _stop_watchdog(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    try:
        proc.stdin.close()  # end-of-file: it sweeps (nothing is left by now) and exits
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()


def _join(address: str, timeout: float, init_kwargs: dict, quiet: bool) -> dict[str, Any]:
    import ray

    deadline = time.monotonic() + timeout
    target = _host_port(address)
    if target is not None:
        try:
            with socket.create_connection(target, timeout=timeout):
                pass
        except OSError:  # refused, unreachable, or silent until the timeout
            raise ClusterUnreachable(address, timeout) from None
    if quiet:
        # The core worker logs every failed attempt to reach the GCS on stderr (several lines
        # a minute); the deadline below reports the outcome in one.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")

    def give_up() -> None:
        # ray.init blocks in native code with no timeout of its own: nothing is written yet, so
        # the process ends here with the CLI's one line.
        print(f"unlearn-audit: {ClusterUnreachable(address, timeout)}", file=sys.stderr,
              flush=True)
        os._exit(2)

    timer = threading.Timer(max(0.1, deadline - time.monotonic()), give_up)
    timer.daemon = True
    timer.start()
    try:
        with _keep_sigterm():
            # Joining a cluster: its token comes from $RAY_AUTH_TOKEN or ~/.ray/auth_token.
            ray.init(address=address, **init_kwargs)
    except ConnectionError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ClusterUnreachable(address, timeout, f"Ray did not connect: {first}") from None
    finally:
        timer.cancel()
    return {"mode": "cluster", "address": address}


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port``, ``ray://host:port`` or ``[v6]:port``; None for the
    addresses Ray resolves itself (``auto``, ``local``)."""
    text = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = text.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


class _keep_sigterm:
    """``ray.init`` installs a SIGTERM handler that exits at once (mid-write, with a crash
    dump): keep the caller's, which turns SIGTERM into Ctrl-C."""

    def __enter__(self) -> None:
        self.main = threading.current_thread() is threading.main_thread()
        self.handler = signal.getsignal(signal.SIGTERM) if self.main else None

    def __exit__(self, *exc: object) -> None:
        if self.main and self.handler is not None:
            signal.signal(signal.SIGTERM, self.handler)


def _hold_signals() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(held: dict[int, Any]) -> None:
    for sig, handler in held.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _set_subreaper(on: bool) -> bool:
    """Linux: orphaned descendants are re-parented to this process instead of init, so they can
    be found (and stopped) after the raylet that started them is gone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat gives start times in."""
    try:
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except OSError:
        return 0
    return int(uptime * os.sysconf("SC_CLK_TCK")) - 1


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in ticks since boot), from /proc."""
    table = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_leftovers(root: int, since: int = 0) -> list[int]:
    """Ray processes descended from ``root`` and started at or after ``since`` (ticks since
    boot): the workers, agents, raylet and GCS of the Ray that ``root`` started."""
    import ray

    ray_dir = os.path.dirname(ray.__file__)
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        for pid in children.get(frontier.pop(), []):
            frontier.append(pid)
            cmd = _cmdline(pid)
            if table[pid][1] >= since and (cmd.startswith("ray::") or ray_dir in cmd):
                found.append(pid)
    return found


def _kill(pids: list[int], grace: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            _reap(pids)
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.05)
        if not pids:
            return
    _reap(pids)


def _reap(pids: list[int]) -> None:
    """Collect the exit status of those that are (now) our children, so none stays a zombie."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
