"""``unlearn-audit show`` never crashes (issue 12): a results folder, an experiment, one table,
a ``file://`` URI, a partial experiment left by failed units, an empty folder, a file.

One real tiny run (through Ray, into a ``file://`` URI) feeds the tests; the ``show`` calls run
in this process.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from orchestrator.reporting.show import TABLE_SUMMARIES
from orchestrator.store.tables import Results
from tests.bad_inputs.harness import REPO, run_cli

TINY = """
experiment: tiny
seed: 0
dataset: {name: digits, train_size: 200}
model: {name: mlp, hidden: [8]}
training: {epochs: 1, lr: 0.05, batch_size: 32}
forget: {kind: single, count: 2}
unlearning:
  - method: gradient_ascent
    lr: 0.5
"""


@pytest.fixture(scope="module")
def run_root(tmp_path_factory, local_ray) -> Path:
    """RESULTS of a real run whose --results was given as a file:// URI."""
    base = tmp_path_factory.mktemp("show")
    spec = base / "tiny.yaml"
    spec.write_text(TINY)
    root = base / "R"
    code, out, err = run_cli(["run", str(spec), "--results", f"file://{root}", "--num-cpus", "2",
                              "--quiet"], REPO)
    assert code == 0, out + err
    assert "== tiny/models" in out  # the run's own summary read the URI too
    return root


def _show(target: str | Path, cwd: Path) -> tuple[int, str]:
    code, out, err = run_cli(["show", str(target)], cwd)
    text = out + err
    assert "Traceback" not in text, text
    return code, text


def test_show_reads_a_file_uri_like_run_wrote_it(run_root: Path, tmp_path: Path) -> None:
    code, text = _show(f"file://{run_root}", tmp_path)
    assert code == 0, text
    assert "== tiny/models" in text and "no result tables" not in text
    # the experiment's folder as a URI, and as a plain path, give the same listing
    code, by_uri = _show(f"file://{run_root}/tiny", tmp_path)
    assert code == 0 and "== tiny/models" in by_uri
    assert _show(run_root / "tiny", tmp_path)[1] == by_uri


def test_show_one_table_folder(run_root: Path, tmp_path: Path) -> None:
    code, text = _show(run_root / "tiny" / "models", tmp_path)
    assert code == 0, text
    assert text.count("== ") == 1 and "== tiny/models:" in text
    # inside a URI as well
    code, text = _show(f"file://{run_root}/tiny/models", tmp_path)
    assert code == 0 and "== tiny/models:" in text


def _partial(run_root: Path, into: Path) -> Path:
    """What a run whose unlearning units all failed leaves: the originals' rows (no
    ``forget_loss_original``: only unlearned rows carry it) and the errors."""
    models = Results(run_root, "tiny").read("models")
    originals = models[models["role"] == "original"].drop(
        columns=["forget_loss_original", "shards_retrained"], errors="ignore")
    partial = Results(into, "partial")
    partial.write("models", originals.to_dict("records"))
    partial.write("errors", [{"key": "err-1", "unit": "unlearn_batch", "error_type":
                              "ValueError", "error": "epochs must be >= 1"}])
    return into / "partial"


def test_show_a_partial_experiment(run_root: Path, tmp_path: Path) -> None:
    folder = _partial(run_root, tmp_path / "R")
    for target in (folder, folder.parent, folder / "models"):
        code, text = _show(target, tmp_path)
        assert code == 0, text
        assert "== partial/models: 1 rows" in text
        assert "no summary" not in text  # the models summary copes with the missing column
    assert "== partial/errors" in _show(folder, tmp_path)[1]


def test_a_failing_summary_falls_back_to_the_rows(run_root: Path, tmp_path: Path) -> None:
    """A summary that raises (a plug-in's, say) yields a note and the first rows."""
    folder = _partial(run_root, tmp_path / "R")

    def broken(df: pd.DataFrame) -> pd.DataFrame:
        return df[["no_such_column"]]

    saved = TABLE_SUMMARIES["models"]
    TABLE_SUMMARIES["models"] = broken
    try:
        code, text = _show(folder, tmp_path)
    finally:
        TABLE_SUMMARIES["models"] = saved
    assert code == 0, text
    assert "no summary: KeyError" in text
    assert "== partial/errors" in text  # the other tables still follow


def test_a_damaged_part_is_reported_and_the_rest_shown(run_root: Path, tmp_path: Path) -> None:
    folder = _partial(run_root, tmp_path / "R")
    part = next((folder / "models").glob("part-*.parquet"))
    part.write_bytes(b"not parquet")
    code, text = _show(folder, tmp_path)
    assert code == 0, text
    # The damaged file itself is named, with what to do about it.
    assert (f"== partial/models: unreadable (DamagedPart: {part}: not a readable Parquet "
            "part (ArrowInvalid") in text
    assert "move it out of" in text
    assert "== partial/errors: 1 rows" in text


def test_show_an_empty_results_folder(tmp_path: Path) -> None:
    empty = tmp_path / "R"
    empty.mkdir()
    (empty / "_artifacts").mkdir()  # a run stopped before its first table
    code, text = _show(empty, tmp_path)
    assert code == 0
    assert text.strip() == f"no result tables under {empty}"
    code, text = _show(f"file://{empty}", tmp_path)
    assert code == 0 and text.strip() == f"no result tables under file://{empty}"


@pytest.mark.parametrize("name, expect", [("afile", "is a file"),
                                          ("missing", "does not exist"),
                                          ("notes", "not a results folder")])
def test_show_refuses_what_is_not_a_results_folder(tmp_path: Path, name: str,
                                                   expect: str) -> None:
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x\n")
    code, text = _show(tmp_path / name, tmp_path)
    assert code == 2
    assert text.strip().startswith(f"unlearn-audit: {tmp_path / name}: {expect}")
    assert len(text.strip().splitlines()) == 1
