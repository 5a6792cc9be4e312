"""Every table folder of a run holds Parquet only, so any tool reads it straight from its path:
pandas, pyarrow, polars and duckdb, as the README promises.

The quickstart at a reduced size (the same stages, so the same tables: models, recoveries,
label_inference, prepared, figure_index; about 20 s), run through the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

EXPECTED = {"models", "recoveries", "label_inference", "prepared", "figure_index"}


@pytest.fixture(scope="module")
def experiment(quickstart_results) -> Path:
    return quickstart_results / "qs"


def _table_folders(experiment: Path) -> list[Path]:
    """Every folder a reader might take for a table: all but _arrays/, figures/ and dot-names."""
    return sorted(p for p in experiment.iterdir() if p.is_dir()
                  and not p.name.startswith(("_", ".")) and p.name != "figures")


def test_the_quickstart_writes_its_tables_and_figures_apart(experiment):
    tables = {p.name for p in _table_folders(experiment)}
    assert tables == EXPECTED
    pngs = list((experiment / "figures").iterdir())
    assert pngs and all(p.suffix == ".png" for p in pngs)  # images only: not a table
    for folder in _table_folders(experiment):
        stray = [p.name for p in folder.iterdir() if p.suffix != ".parquet" or not p.is_file()]
        assert not stray, f"{folder.name} holds more than Parquet: {stray}"


def test_every_table_reads_with_pandas_pyarrow_polars_and_duckdb(experiment):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    for folder in _table_folders(experiment):
        path = str(folder)
        counts = {
            "pandas": len(pd.read_parquet(path)),
            "pyarrow": pq.read_table(path).num_rows,
            "polars": pl.read_parquet(path).height,
            "duckdb": duckdb.sql(
                f"select count(*) from read_parquet('{path}/*.parquet', union_by_name=true)"
            ).fetchall()[0][0],
        }
        parts = sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))
        assert set(counts.values()) == {parts}, (folder.name, counts, parts)
        assert parts > 0, folder.name


def test_parts_share_one_schema_when_later_rows_widen_a_column(tmp_path):
    """Original models have no forget size (all null in their part), unlearned ones do; a new
    column appears later. Each reader still takes the folder as one table, with every value."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    from orchestrator.store.tables import Results

    results = Results(tmp_path, "exp")
    results.write("models", [{"key": "a", "forget_size": None, "acc": 1}])
    results.write("models", [{"key": "b", "forget_size": 3, "acc": 0.5},
                             {"key": "c", "forget_size": None, "acc": 0.25}])
    results.write("models", [{"key": "d", "forget_size": 2, "acc": 1, "shards": 4}])
    folder = tmp_path / "exp" / "models"
    schemas = {str(pq.read_schema(p)) for p in folder.glob("*.parquet")}
    assert len(schemas) == 1, schemas
    frame = pd.read_parquet(folder).sort_values("key")
    assert frame["forget_size"].isna().tolist() == [True, False, True, False]
    assert frame["forget_size"].dropna().tolist() == [3, 2]
    assert frame["shards"].notna().sum() == 1 and frame["acc"].tolist() == [1, 0.5, 0.25, 1]
    assert pl.read_parquet(folder).height == 4
    assert duckdb.sql(f"select count(*) from '{folder}/*.parquet'").fetchall()[0][0] == 4
