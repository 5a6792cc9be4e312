"""Parquet result tables: ``RESULTS/<experiment>/<table>/part-*.parquet``.

Every row has a ``key``. Parts are written whole and atomically (see :class:`Location`), and a
part's name is the hash of the keys it holds, so a resumed run that writes the same rows again
replaces the file instead of adding a copy; readers also keep one row per key.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.spec import stable_hash
from orchestrator.storage import Location


def _cell(value: Any) -> Any:
    """Scalars stay scalars; tuples, lists and dicts become JSON text (one schema per column)."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return value


def rows_to_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, list] = {}
    for i, row in enumerate(rows):
        for name in row:
            columns.setdefault(name, [None] * i)
        for name, col in columns.items():
            col.append(_cell(row.get(name)))
    frame = pd.DataFrame(columns)
    return pa.Table.from_pandas(frame, preserve_index=False)


class Results:
    """The result tables of one experiment."""

    def __init__(self, root: str | os.PathLike, experiment: str) -> None:
        self.location = Location(root)
        self.experiment = experiment

    def table_dir(self, table: str) -> str:
        return self.location.path(self.experiment, table)

    def write(self, table: str, rows: Iterable[dict[str, Any]]) -> str | None:
        rows = list(rows)
        if not rows:
            return None
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {table}: duplicate keys in one write")
        buf = io.BytesIO()
        pq.write_table(rows_to_arrow(rows), buf)
        name = f"part-{stable_hash(sorted(keys), 20)}.parquet"
        return self.location.write_bytes(buf.getvalue(), self.experiment, table, name)

    def parts(self, table: str) -> list[str]:
        return self.location.list_files(self.experiment, table, suffix=".parquet")

    def tables(self) -> list[str]:
        """Folders holding Parquet parts (figures and images live beside them)."""
        return [t for t in self.location.list_dirs(self.experiment) if self.parts(t)]

    def read(self, table: str) -> pd.DataFrame:
        frames = []
        for part in self.parts(table):
            with self.location.fs.open_input_file(part) as fh:
                frames.append(pq.read_table(fh).to_pandas())
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        return frame.drop_duplicates("key", keep="last").reset_index(drop=True)

    def existing_keys(self, table: str) -> set[str]:
        keys: set[str] = set()
        for part in self.parts(table):
            with self.location.fs.open_input_file(part) as fh:
                keys.update(pq.read_table(fh, columns=["key"]).column("key").to_pylist())
        return keys

    def clear(self, table: str) -> None:
        for part in self.parts(table):
            self.location.fs.delete_file(part)


# Arrays, JSON points and images a stage keeps for its figures live in
# RESULTS/<experiment>/_arrays/<table>/, beside the tables: a table folder holds Parquet only.
ARRAYS_DIR = "_arrays"


def list_experiments(root: str | os.PathLike) -> list[str]:
    return Location(root).list_dirs()
