"""Two "hosts" on one machine: network namespaces joined by a veth pair, each running one Ray node.

A multi-node Ray cannot use loopback (every node must reach every other node's address), and the
tests must never send traffic to this machine's own network address. So each host is a network
namespace with its own loopback and one end of a veth pair; the addresses 10.213.0.1/24 and
10.213.0.2/24 exist only inside those namespaces, and the namespaces have no route anywhere else.

Processes are ended by id only: ``ip netns pids NAME`` lists exactly the processes living in a
namespace this module created (the Ray daemons, their workers, the driver), so nothing belonging
to anyone else on the machine is touched. ``ray stop`` is never used: it ends every Ray process
on the machine, whatever its namespace.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
UNLEARN_AUDIT = str(BIN / "unlearn-audit")
SUBNET = "10.213.0"
GCS_PORT = 6379
PR_SET_CHILD_SUBREAPER = 36


class NetnsUnavailable(RuntimeError):
    """This machine cannot build namespace hosts (not root, no iproute2, or no netns support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def netns_pids(name: str) -> list[int]:
    out = _ip("netns", "pids", name, check=False)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _set_subreaper(on: bool) -> None:
    """Orphaned Ray daemons (``ray start`` exits at once) become our children, so that we can
    reap them after killing them instead of leaving zombies to an init that may not reap."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def reap(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    pending.discard(pid)
            except ChildProcessError:  # not our child: its own parent reaps it
                if not Path(f"/proc/{pid}").exists():
                    pending.discard(pid)
                else:
                    state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] \
                        if Path(f"/proc/{pid}/stat").exists() else "Z"
                    if state == "Z":
                        pending.discard(pid)
        if pending:
            time.sleep(0.1)


def _zombie_children() -> set[int]:
    me, out = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[-1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            out.add(int(stat.parent.name))
    return out


@dataclass
class Host:
    netns: str
    address: str
    temp_dir: str
    log: str

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def pids(self) -> list[int]:
        return netns_pids(self.netns)

    def busy_workers(self, prefix: str = "ray::") -> list[tuple[int, str]]:
        """Ray workers in this host executing a task whose name starts with ``prefix``.

        A worker's process title is ``ray::<task name>`` while it runs a task and ``ray::IDLE``
        otherwise; the executor names tasks ``<unit fn>:<label>``, e.g. ``unlearn_batch:...``.
        """
        out = []
        for pid in self.pids():
            title = cmdline(pid)
            if title.startswith(prefix) and ":" in title[len("ray::"):]:
                out.append((pid, title))
        return out

    def kill_all(self) -> list[int]:
        """SIGKILL every process in this host (a whole node dying at once)."""
        pids = self.pids()
        kill_pids(pids)
        return pids


@dataclass
class TwoHosts:
    """Namespaces ``<tag>a`` (head, 10.213.0.1) and ``<tag>b`` (worker, 10.213.0.2)."""

    tag: str
    root: str
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    hosts: list[Host] = field(default_factory=list)
    formed_s: float | None = None
    _all_pids: set[int] = field(default_factory=set)
    _zombies_before: set[int] = field(default_factory=set)

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def worker(self) -> Host:
        return self.hosts[1]

    @property
    def address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    def env(self, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update({
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token or self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            # The default 'ray start' binds to every interface of its namespace, which is what
            # a cluster node needs; the only interfaces there are lo and the veth end.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        })
        return env

    # --- network ------------------------------------------------------------------------

    def create(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("needs root to create network namespaces")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("needs iproute2 ('ip' is not on PATH)")
        names = [f"{self.tag}a", f"{self.tag}b"]
        veths = [f"{self.tag}va", f"{self.tag}vb"]
        try:
            for name in names:
                _ip("netns", "add", name)
            _ip("link", "add", veths[0], "type", "veth", "peer", "name", veths[1])
            for i, (name, veth) in enumerate(zip(names, veths), start=1):
                _ip("link", "set", veth, "netns", name)
                _ip("-n", name, "addr", "add", f"{SUBNET}.{i}/24", "dev", veth)
                _ip("-n", name, "link", "set", "lo", "up")
                _ip("-n", name, "link", "set", veth, "up")
        except subprocess.CalledProcessError as err:
            self.destroy()
            raise NetnsUnavailable(f"cannot build namespace hosts: {' '.join(err.cmd)}: "
                                   f"{(err.stderr or '').strip()}") from None
        for i, name in enumerate(names, start=1):
            temp = os.path.join(self.root, f"n{i}")  # short: unix socket paths are limited
            os.makedirs(temp, exist_ok=True)
            self.hosts.append(Host(name, f"{SUBNET}.{i}", temp, os.path.join(temp, "start.log")))
        self._zombies_before = _zombie_children()
        _set_subreaper(True)

    def destroy(self) -> None:
        """Kill every process in both namespaces, reap them, delete the namespaces and files."""
        for _ in range(3):
            pids = [p for h in self.hosts for p in h.pids()]
            if not pids:
                break
            self._all_pids.update(pids)
            kill_pids(pids)
            time.sleep(0.3)
        reap(sorted(self._all_pids))
        # Processes of our namespaces that died earlier (a cancelled or killed worker) and were
        # handed to us as orphans: reap them too, so no zombie outlives the test.
        reap(sorted(_zombie_children() - self._zombies_before), timeout=1.0)
        for suffix in ("a", "b"):
            _ip("netns", "del", f"{self.tag}{suffix}", check=False)
        _ip("link", "del", f"{self.tag}va", check=False)  # only if a namespace never got it
        _set_subreaper(False)
        shutil.rmtree(self.root, ignore_errors=True)

    # --- Ray ----------------------------------------------------------------------------

    def _ray_start(self, host: Host, *args: str) -> None:
        with open(host.log, "a") as log:
            proc = subprocess.run(
                host.cmd(RAY, "start", f"--node-ip-address={host.address}", "--num-cpus=1",
                         "--object-store-memory=100000000", "--disable-usage-stats",
                         f"--temp-dir={host.temp_dir}", *args),
                env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=120,
                check=False)
        self._all_pids.update(host.pids())
        if proc.returncode != 0:
            raise RuntimeError(f"ray start in {host.netns} failed:\n{Path(host.log).read_text()}")

    def start_head(self, resources: dict[str, float]) -> None:
        self._ray_start(self.head, "--head", f"--port={GCS_PORT}", "--include-dashboard=false",
                        f"--resources={json.dumps(resources)}")

    def start_worker(self, resources: dict[str, float], host: Host | None = None) -> None:
        self._ray_start(host or self.worker, f"--address={self.address}",
                        f"--resources={json.dumps(resources)}")

    def replacement(self) -> Host:
        """A fresh node for the worker's namespace (a new temp dir, so a new node id): what an
        autoscaler does when a spot node is reclaimed."""
        n = len(self.hosts) + 1
        temp = os.path.join(self.root, f"n{n}")
        os.makedirs(temp, exist_ok=True)
        host = Host(self.worker.netns, self.worker.address, temp, os.path.join(temp, "start.log"))
        self.hosts.append(host)
        return host

    def status(self, token: str | None = None, host: Host | None = None
               ) -> subprocess.CompletedProcess:
        host = host or self.head
        return subprocess.run(host.cmd(RAY, "status", f"--address={self.address}"),
                              env=self.env(token), capture_output=True, text=True, timeout=60,
                              cwd=REPO, check=False)

    def alive_nodes(self) -> list[str]:
        out = self.status().stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
        return re.findall(r"node_([0-9a-f]{56})", active)

    def wait_nodes(self, count: int, timeout: float = 60.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.alive_nodes()
            if len(nodes) == count or time.monotonic() > deadline:
                return nodes
            time.sleep(0.5)

    def node_id(self, host: Host) -> str:
        """The Ray node id of ``host``, from its raylet's own log."""
        logs = sorted(Path(host.temp_dir).glob("session_*/logs/raylet.out"))
        for log in logs:
            m = re.search(r"[Nn]ode[ _]?[Ii][Dd][:=]?\s*([0-9a-f]{56})", log.read_text())
            if m:
                return m.group(1)
        raise AssertionError(f"no node id in the raylet log of {host.netns}")

    def form(self, head_resources: dict[str, float], worker_resources: dict[str, float]
             ) -> float:
        """Start head and worker; return seconds until both are alive in the cluster."""
        start = time.perf_counter()
        self.start_head(head_resources)
        self.start_worker(worker_resources)
        nodes = self.wait_nodes(2)
        if len(nodes) != 2:
            raise RuntimeError(f"cluster did not form: {nodes}\n{self.status().stdout}")
        self.formed_s = time.perf_counter() - start
        return self.formed_s

    # --- the tool -----------------------------------------------------------------------

    def run_cmd(self, spec: str, results: str, *sets: str) -> list[str]:
        args = [UNLEARN_AUDIT, "run", spec, "--results", results, "--address", self.address,
                "--quiet"]
        for s in sets:
            args += ["--set", s]
        return self.head.cmd(*args)

    def launch(self, spec: str, results: str, *sets: str, log: str) -> subprocess.Popen:
        """The driver, on the head host (``ip netns exec`` execs it: the Popen pid is the
        driver itself, so a signal to it reaches the driver)."""
        with open(log, "w") as fh:
            return subprocess.Popen(self.run_cmd(spec, results, *sets), env=self.env(),
                                    cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)


_COUNT = [0]


def new_two_hosts() -> TwoHosts:
    _COUNT[0] += 1
    # Unique per process and fixture; interface names are limited to 15 characters.
    tag = f"ua{os.getpid() % 100000:05d}{_COUNT[0] % 10}"
    root = tempfile.mkdtemp(prefix="ua-", dir="/tmp")
    return TwoHosts(tag=tag, root=root)
