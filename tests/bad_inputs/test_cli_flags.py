"""Bad command lines and output paths (issue 12): one line, exit 2, before any work.

``--results`` and ``--artifacts`` are probed for writing before Ray starts (a file, a path
under a file, a read-only folder, an unknown URI scheme); ``--num-cpus`` and ``--num-samples``
take integers >= 1; a ``--data-root`` (or ``$UNLEARN_AUDIT_DATA``) that is not a folder
is refused; argparse's own refusals are one line; ``tune --resume`` with no study and
``show`` on something that is not a results folder are refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.bad_inputs.harness import VALID, refused, run_cli, write_spec

# VALID plus the smallest search: tune gets as far as opening the study.
TUNE = {
    **VALID,
    "unlearning": [{"method": "gradient_ascent", "lr": 1.0e-3, "steps": 1}],
    "search": {
        "objective": "inversion",
        "attack": {"iterations": 10, "restarts": 1, "callback_every": 5},
        "targets": 1, "heldout": 1,
        "space": {"attack.lr": {"loguniform": [1.0e-3, 0.3]}},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"trials": 2},
        "concurrency": 1,
    },
}

# (id, argv with {tmp} for the test's folder, texts the one line must hold)
ROWS = [
    ("results-is-a-file", ["run", "{tmp}/spec.yaml", "--results", "{tmp}/afile"],
     ("--results", "afile", "is a file")),
    ("results-under-a-file", ["run", "{tmp}/spec.yaml", "--results", "{tmp}/afile/R"],
     ("--results", "afile/R", "is a file")),
    ("results-file-uri-is-a-file",
     ["run", "{tmp}/spec.yaml", "--results", "file://{tmp}/afile"],
     ("--results", "file://", "is a file")),
    ("results-unknown-scheme", ["run", "{tmp}/spec.yaml", "--results", "nosuch://bucket/R"],
     ("--results", "nosuch://bucket/R", "not a usable location")),
    ("results-under-a-file-dry-run",
     ["run", "{tmp}/spec.yaml", "--results", "{tmp}/afile/R", "--dry-run"],
     ("--results", "is a file")),
    ("tune-results-is-a-file", ["tune", "{tmp}/tune.yaml", "--results", "{tmp}/afile"],
     ("--results", "is a file")),
    ("artifacts-is-a-file", ["run", "{tmp}/spec.yaml", "--artifacts", "{tmp}/afile"],
     ("--artifacts", "is a file")),
    ("artifacts-under-a-file", ["run", "{tmp}/spec.yaml", "--artifacts", "{tmp}/afile/A"],
     ("--artifacts", "is a file")),
    ("tune-artifacts-under-a-file",
     ["tune", "{tmp}/tune.yaml", "--artifacts", "{tmp}/afile/A"], ("--artifacts", "is a file")),
    ("num-cpus-zero", ["run", "{tmp}/spec.yaml", "--num-cpus", "0"], ("--num-cpus", ">= 1")),
    ("num-cpus-negative", ["run", "{tmp}/spec.yaml", "--num-cpus", "-2"],
     ("--num-cpus", ">= 1", "-2")),
    ("num-cpus-not-a-number", ["run", "{tmp}/spec.yaml", "--num-cpus", "abc"],
     ("--num-cpus", ">= 1", "abc")),
    ("tune-num-cpus-zero", ["tune", "{tmp}/tune.yaml", "--num-cpus", "0"],
     ("--num-cpus", ">= 1")),
    ("tune-num-samples-zero", ["tune", "{tmp}/tune.yaml", "--num-samples", "0"],
     ("--num-samples", ">= 1")),
    ("unknown-flag", ["run", "{tmp}/spec.yaml", "--bogus"],
     ("unrecognized arguments", "--bogus")),
    ("missing-spec", ["run"], ("required", "spec")),
    ("tune-missing-spec", ["tune", "--resume"], ("required", "spec")),
    ("no-command", [], ("required", "command")),
    ("unknown-command", ["frobnicate"], ("invalid choice", "frobnicate")),
    ("datasets-unknown-flag", ["datasets", "--bogus"], ("unrecognized arguments", "--bogus")),
    ("show-without-path", ["show"], ("required", "results")),
    ("tune-resume-empty-folder",
     ["tune", "{tmp}/tune.yaml", "--resume", "--results", "{tmp}/empty"],
     ("--resume", "nothing to resume")),
    ("tune-resume-missing-folder",
     ["tune", "{tmp}/tune.yaml", "--resume", "--results", "file://{tmp}/nothing-here"],
     ("--resume", "nothing to resume")),
    ("show-missing-path", ["show", "{tmp}/nothing-here"], ("nothing-here", "does not exist")),
    ("show-missing-file-uri", ["show", "file://{tmp}/nothing-here"],
     ("file://", "does not exist")),
    ("show-a-file", ["show", "{tmp}/afile"], ("afile", "is a file")),
    ("show-not-a-results-folder", ["show", "{tmp}/notes"], ("notes", "not a results folder")),
    ("data-root-missing", ["run", "{tmp}/spec.yaml", "--data-root", "{tmp}/nothing-here"],
     ("--data-root", "nothing-here", "does not exist")),
    ("data-root-is-a-file", ["run", "{tmp}/spec.yaml", "--data-root", "{tmp}/afile"],
     ("--data-root", "afile", "is a file")),
    ("tune-data-root-missing", ["tune", "{tmp}/tune.yaml", "--data-root", "{tmp}/nothing-here"],
     ("--data-root", "does not exist")),
    ("datasets-data-root-is-a-file", ["datasets", "--data-root", "{tmp}/afile"],
     ("--data-root", "is a file")),
]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    write_spec(tmp_path, VALID)
    write_spec(tmp_path, TUNE, "tune.yaml")
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no tables here\n")
    return tmp_path


@pytest.mark.parametrize("argv, expect", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_refused(tmp: Path, argv: list[str], expect: tuple[str, ...]) -> None:
    refused([a.format(tmp=tmp) for a in argv], tmp, expect)


def _make_read_only(folder: Path) -> None:
    """Read-only even for root: ``chattr +i`` (root ignores mode bits); else mode 555."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no way to make a folder read-only")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i refused here ({done.stderr.strip()}): cannot make a folder "
                    "read-only for root")


def _undo_read_only(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


@pytest.mark.parametrize("command, flag", [("run", "--results"), ("tune", "--results"),
                                           ("run", "--artifacts")])
def test_read_only_output_is_refused(tmp: Path, command: str, flag: str) -> None:
    locked = tmp / "locked"
    locked.mkdir()
    spec = "spec.yaml" if command == "run" else "tune.yaml"
    _make_read_only(locked)
    try:
        line = refused([command, str(tmp / spec), flag, str(locked)], tmp,
                       (flag, str(locked), "not writable"))
    finally:
        _undo_read_only(locked)
    assert list(locked.iterdir()) == []  # the probe was not left behind
    assert line.startswith("unlearn-audit: ")


def test_the_probe_leaves_nothing_in_a_writable_folder(tmp: Path) -> None:
    """A good --results passes the check without a trace (the dry run stops before Ray)."""
    out_dir = tmp / "R"
    out_dir.mkdir()
    code, out, err = run_cli(["run", str(tmp / "spec.yaml"), "--results", str(out_dir),
                              "--dry-run"], tmp)
    assert code == 0, out + err
    assert list(out_dir.iterdir()) == []


def test_object_store_probe_writes_and_deletes_one_object() -> None:
    """The non-local branch: pyarrow's in-memory mock filesystem stands in for S3."""
    import pyarrow.fs as pafs

    from orchestrator.store.location import Location, OutputError, _probe_store, check_writable

    check_writable("mock:///bucket/R", "exp")  # a fresh mock store each time: no error
    loc = Location("mock:///bucket/R")
    _probe_store(loc, ("exp",))
    left = loc.fs.get_file_info(pafs.FileSelector("", recursive=True, allow_not_found=True))
    assert left == []  # neither the probe nor the folders made for it remain
    with pytest.raises(OutputError, match="not a usable location"):
        check_writable("nosuch://bucket/R", "exp")


def test_data_root_variable_naming_no_folder_is_refused(tmp: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variable is checked like the flag (and named in the line); the flag,
    when given, wins over it, as it does where the data is read."""
    monkeypatch.setenv("UNLEARN_AUDIT_DATA", str(tmp / "nothing-here"))
    refused(["run", str(tmp / "spec.yaml")], tmp, ("$UNLEARN_AUDIT_DATA=", "does not exist"))
    code, _, err = run_cli(["run", str(tmp / "spec.yaml"), "--data-root", str(tmp),
                            "--dry-run"], tmp)
    assert code == 0, err


def _damaged_results(tmp: Path) -> tuple[Path, Path]:
    """A results folder of experiment 'bad' (VALID's) whose one part is cut short, beside a
    good table: (the results folder, the damaged part)."""
    from orchestrator.store.tables import Results

    results = Results(tmp / "R", "bad")
    results.write("models", [{"key": "a", "value": 1.0}])
    good = Path(results.write("recoveries", [{"key": f"k{i}", "psnr": float(i)}
                                             for i in range(50)]))
    damaged = good.with_name("part-damaged.parquet")
    damaged.write_bytes(good.read_bytes()[:100])
    return tmp / "R", damaged


@pytest.mark.parametrize("command", ["run", "run --dry-run", "tune", "compact"])
def test_a_damaged_table_part_is_named_before_any_work(tmp: Path, command: str) -> None:
    """A part Parquet cannot read (a failed copy, say) is named with what to do, before any
    table is read for work or rewritten, instead of a pyarrow traceback part-way."""
    results, damaged = _damaged_results(tmp)
    argv = {"run": ["run", str(tmp / "spec.yaml"), "--results", str(results)],
            "run --dry-run": ["run", str(tmp / "spec.yaml"), "--results", str(results),
                              "--dry-run"],
            "tune": ["tune", str(tmp / "tune.yaml"), "--results", str(results)],
            "compact": ["compact", str(results / "bad")]}[command]
    refused(argv, tmp, (str(damaged), "not a readable Parquet part",
                        "move it out of", "rerun the experiment"))

