"""Run limits (issue 12, "no hangs"): the flags that bound waiting take seconds > 0, and a
plan no node can run is refused once Ray is up, before any unit is submitted or any file
written. The slow cases (an unreachable address, a GPU on this machine, a held lock, SIGTERM)
are in tests/test_run_reliability.py.
"""

from __future__ import annotations

import pytest

from tests.bad_inputs.harness import VALID, refused, write_spec

# (id, argv with {tmp} for the test's folder, texts the one line must hold)
FLAGS = [
    ("connect-timeout-zero", ["--connect-timeout", "0"], ("--connect-timeout", "> 0", "0")),
    ("connect-timeout-negative", ["--connect-timeout", "-5"], ("--connect-timeout", "-5")),
    ("connect-timeout-nan", ["--connect-timeout", "nan"], ("--connect-timeout", "nan")),
    ("connect-timeout-text", ["--connect-timeout", "soon"], ("--connect-timeout", "'soon'")),
    ("resource-wait-zero", ["--resource-wait", "0"], ("--resource-wait", "> 0")),
    ("resource-wait-infinite", ["--resource-wait", "inf"], ("--resource-wait", "inf")),
    ("resource-wait-text", ["--resource-wait", "forever"], ("--resource-wait", "'forever'")),
]


@pytest.mark.parametrize(("argv", "expect"), [r[1:] for r in FLAGS], ids=[r[0] for r in FLAGS])
def test_a_bad_limit_flag_is_refused_in_one_line(tmp_path, argv, expect):
    write_spec(tmp_path, VALID)
    refused(["run", "spec.yaml", *argv], tmp_path, expect)


def test_a_custom_resource_no_node_offers_is_refused_before_any_unit_runs(tmp_path):
    write_spec(tmp_path, VALID)
    refused(["run", "spec.yaml", "--results", "R", "--set", "resources.attack.custom.tpu_pod=1",
             "--set", "resources.unlearn.custom.big_node=2"], tmp_path,
            "spec error: resources.unlearn.custom.big_node: 2 of 'big_node' per task, but no "
            "node has 'big_node' (nodes: 1 x {CPU:", in_process=False)
