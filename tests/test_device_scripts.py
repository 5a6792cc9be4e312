"""The GPU check kit (benchmarks/device/): its scripts parse, and the check runs every GPU
benchmark run_all knows, so the two cannot drift apart unnoticed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "benchmarks" / "device"


@pytest.mark.parametrize("script", ["pack.sh", "check.sh"])
def test_the_scripts_are_valid_bash(script):
    done = subprocess.run(["bash", "-n", str(KIT / script)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_the_check_runs_every_gpu_benchmark():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from run_all import GPU_BENCHMARKS
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    text = (KIT / "check.sh").read_text()
    only = re.search(r"--only \$\{ONLY:-([a-z0-9 -]+)\}", text)
    assert only, "check.sh no longer names the benchmarks it runs"
    named = set(re.findall(r"[a-z][a-z0-9-]*", only.group(1)))
    assert named == set(GPU_BENCHMARKS)
