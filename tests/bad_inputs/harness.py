"""Shared by the bad-input tables: run the CLI on one bad input and check that it is refused
the way the README promises — exit 2, one line naming the key, flag or file, no traceback,
and nothing written.

Each area keeps its own table (``test_*.py`` here) of rows ``(id, argv or spec change,
expected text)``; :func:`refused` runs one row.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]

# A small valid spec; tables change one thing in it.
VALID: dict[str, Any] = yaml.safe_load("""
experiment: bad
seed: 0
dataset: {name: digits, train_size: 100}
model: {name: mlp, hidden: [8]}
training: {epochs: 1, lr: 0.05, batch_size: 32}
forget: {kind: single, count: 2}
unlearning:
  - method: retrain
  - method: gradient_ascent
    lr: 1.0
""")


def spec_with(changes: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> dict:
    """VALID with dotted keys set (``{"training.epochs": 0}``) or dropped."""
    data = copy.deepcopy(VALID)
    for dotted, value in (changes or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    for dotted in drop:
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return data


def write_spec(folder: Path, data: Any, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in folder.rglob("*") if p.is_file()}


def run_cli(argv: list[str], cwd: Path, *, in_process: bool = True,
            timeout: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``unlearn-audit ARGV`` run in ``cwd``.

    In process by default (fast: torch is imported once); ``in_process=False`` for inputs that
    could hang or must not touch this process (Ray start-up, signals)."""
    if not in_process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *argv], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        return done.returncode, done.stdout, done.stderr
    from orchestrator.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse's own refusals
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def refused(argv: list[str], cwd: Path, expect: str | tuple[str, ...], *,
            in_process: bool = True, watch: Path | None = None) -> str:
    """Run ``argv`` and assert the refusal: exit 2, exactly one line of output naming
    ``expect`` (each given text must appear), no traceback, and no file created or changed
    under ``watch`` (default: ``cwd``). Returns the line."""
    watch = watch or cwd
    before = _snapshot(watch)
    code, out, err = run_cli(argv, cwd, in_process=in_process)
    text = (out + err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert code == 2, f"exit {code}: {text}"
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text}"
    for part in (expect,) if isinstance(expect, str) else expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert _snapshot(watch) == before, "the refused run wrote files"
    return lines[0]
