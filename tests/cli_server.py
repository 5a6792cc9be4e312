"""The CLI in a process of its own that serves several commands on one embedded Ray.

For tests whose user code must stay out of the test process (plug-ins registered from a
user's folder, modules found on PYTHONPATH): the server process gets the environment the test
gives it, which its Ray's workers inherit, starts Ray once and runs each command as
``unlearn-audit ARGV`` would (``main(argv)``), attached to that Ray. One Ray start and one
import of torch a module instead of one a command.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SERVER = r"""
import contextlib, io, json, os, sys

from orchestrator.cli.main import main
from orchestrator.engine.ray_session import start_ray, stop_ray

reply = sys.stdout
start_ray(num_cpus=int(sys.argv[1]))
try:
    for line in sys.stdin:
        ask = json.loads(line)
        os.chdir(ask["cwd"])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(ask["argv"])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception as exc:  # a crash is the test's to report, with its type
                code, _ = 99, print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        reply.write("@reply " + json.dumps({"code": code, "out": out.getvalue(),
                                "err": err.getvalue()}) + "\n")
        reply.flush()
finally:
    stop_ray()
"""


class CliServer:
    """``run(argv, cwd)`` -> (exit code, stdout, stderr) of ``unlearn-audit ARGV`` in ``cwd``."""

    def __init__(self, env: dict[str, str] | None = None, num_cpus: int = 2) -> None:
        env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(num_cpus)], cwd=REPO,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        # Its output, line by line ("" at its end), read by a thread so that a wait can end.
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def run(self, argv: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str, str]:
        """One command; a server that gives no answer within ``timeout`` seconds is killed
        and the test fails (a hung command must not hang the suite)."""
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:  # skip whatever else reached the server's stdout (a library's notice)
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"the CLI server gave no answer to {argv} in {timeout:g} s"
                                   ) from None
            if not line:
                raise RuntimeError(f"the CLI server exited ({self.proc.wait()}) during {argv}")
            if line.startswith("@reply "):
                break
        answer = json.loads(line.removeprefix("@reply "))
        return answer["code"], answer["out"], answer["err"]

    def close(self) -> None:
        self.proc.stdin.close()  # end of input: the server stops its Ray and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
