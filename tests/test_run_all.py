"""benchmarks/run_all.py: a benchmark stopped at ``--timeout`` is recorded as failed with what it
printed, the others still run, and the section is on disk after each benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import run_all

    return run_all


def test_a_stopped_benchmark_is_recorded_and_the_section_kept(run_all, tmp_path, monkeypatch):
    out = tmp_path / "section.md"
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "fast.py").write_text("print('fast result 42')\n")
    # The slow one looks at the section while it runs: the fast one's result is already there.
    (bench / "slow.py").write_text(
        "import pathlib, time\n"
        f"print('fast already written:', 'fast result 42' in pathlib.Path({str(out)!r})"
        ".read_text(), flush=True)\n"
        "time.sleep(60)\n")
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(run_all, "ALL", {"fast": ("a fast one", "fast.py", "fast.py"),
                                         "slow": ("a slow one", "slow.py", "slow.py")})
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "fast", "slow", "--timeout", "3",
                                      "--out", str(out)])
    assert run_all.main() == 1
    text = out.read_text()
    assert "### fast: a fast one" in text and "fast result 42" in text
    assert "### slow: a slow one" in text
    assert "FAILED (stopped at its 3 s limit)" in text
    assert "fast already written: True" in text


@pytest.mark.parametrize("value", ["0", "-5"])
def test_timeout_must_be_positive(run_all, monkeypatch, capsys, value):
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "startup", "--timeout", value])
    with pytest.raises(SystemExit) as stop:
        run_all.main()
    assert stop.value.code == 2
    assert f"--timeout {value}: expected a number of seconds above 0" in capsys.readouterr().err
