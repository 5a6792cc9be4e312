"""The README's "Audit your own models" example, run as a reader would: its Python block makes
the pair, its YAML block is the spec, its shell block's commands run (with this checkout's
interpreter for ``.venv/bin/unlearn-audit``)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Audit your own models")
    end = text.index("\n## ", start + 3)
    return text[start:end]


def _blocks(section: str) -> dict[str, str]:
    return {lang: body for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)}


def _run(argv: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"


@pytest.mark.slow
def test_the_readme_audit_example_runs(tmp_path):
    blocks = _blocks(_section())
    assert {"python", "yaml", "bash"} <= set(blocks), sorted(blocks)
    (tmp_path / "make_pair.py").write_text(blocks["python"])
    (tmp_path / "audit.yaml").write_text(blocks["yaml"])
    commands = [line.split("#")[0].strip() for line in blocks["bash"].splitlines()]
    commands = [c for c in commands if c]
    assert commands[0] == "python make_pair.py"
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == ".venv/bin/unlearn-audit":
            argv = [sys.executable, "-m", "orchestrator.cli.main", *argv[1:]]
        _run(argv, tmp_path)
    folder = tmp_path / "RESULTS" / "my-audit"
    recoveries = pd.read_parquet(folder / "recoveries")
    assert float((recoveries["psnr"] - recoveries["psnr_mean_image"]).iloc[0]) >= 6.0
    assert len(pd.read_parquet(folder / "label_inference")) == 1
    assert (folder / "report.html").stat().st_size > 10_000
