"""Parquet result tables: ``RESULTS/<experiment>/<table>/part-*.parquet``.

Every row has a ``key``. Parts are written whole and atomically (see :class:`Location`), and a
part's name is the hash of the keys it holds, so a resumed run that writes the same rows again
replaces the file instead of adding a copy; readers also keep one row per key.

All parts of a table share one schema, so any reader takes the folder as one dataset (pandas,
pyarrow, polars, duckdb read ``RESULTS/<experiment>/<table>`` directly): a column keeps one
type, and when a later part widens it (a column that was all null gets a type, ints meet
floats, a new column appears) the earlier parts are rewritten to match.
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

from orchestrator.spec.hashing import stable_hash
from orchestrator.store.location import Location, unreadable_file

# A compacted table's parts: at most this many rows, and about this many bytes in memory.
PART_ROWS = 200_000
PART_BYTES = 64 << 20
# Runs compact a table once it holds this many parts (each flush of a run writes one).
COMPACT_AT_PARTS = 32
# Tables renamed since an earlier version: old folder -> current name. Readers take an old
# folder's parts as the current table's; a run moves them (``move_renamed_tables``, under the
# experiment's lock) so that readers of the folder itself (pandas, duckdb) see one table.
RENAMED_TABLES = {"defenses": "defences", "mia": "membership_attacks",
                  "membership": "membership_records"}


class DamagedPart(ValueError):
    """A table part that Parquet cannot read. Parts are written whole, so it was cut short or
    changed afterwards (a failed copy, a full disk elsewhere); the message names the file."""

    def __init__(self, part: str, err: BaseException) -> None:
        folder = part.rsplit("/", 1)[0]
        text = " ".join(str(err).split())
        super().__init__(f"{part}: not a readable Parquet part ({type(err).__name__}: "
                         f"{text[:200]}); move it out of {folder} and rerun the experiment "
                         "to compute its rows again")


def _cell(value: Any) -> Any:
    """Scalars stay scalars; tuples, lists and dicts become JSON text (one schema per column)."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return value


def _column(values: list) -> pa.Array:
    # Straight to Arrow, not through pandas: ints with a None stay int64 (pandas makes them
    # float64 in one part and not in the next), so parts agree on types.
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds of value: keep them as text
        return pa.array([None if v is None else str(v) for v in values], pa.string())


_PLAIN = frozenset({int, float, str, bool, type(None)})  # cells Arrow takes as they are


def rows_to_arrow(rows: list[dict[str, Any]]) -> pa.Table:
    # Column by column: only a column holding other kinds of value pays a call per cell (a
    # cell-by-cell loop over a paper-scale table took seconds of the driver's time).
    names = dict.fromkeys(name for row in rows for name in row)
    columns = {}
    for name in names:
        col = [row.get(name) for row in rows]
        if not {type(v) for v in col} <= _PLAIN:
            col = [_cell(v) for v in col]
        columns[name] = _column(col)
    return pa.table(columns)


def _wider(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """One type holding both: null gives way, numbers widen to float64, else text."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    if any(f(a) for f in numeric) and any(f(b) for f in numeric):
        return pa.float64()
    return pa.string()


def unify_schemas(old: pa.Schema | None, new: pa.Schema) -> pa.Schema:
    if old is None:
        return new
    fields = {f.name: f.type for f in old}
    for f in new:
        fields[f.name] = _wider(fields[f.name], f.type) if f.name in fields else f.type
    return pa.schema(list(fields.items()))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in its order and types (missing: null)."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


class Results:
    """The result tables of one experiment."""

    def __init__(self, root: str | os.PathLike, experiment: str) -> None:
        self.location = Location(root)
        self.experiment = experiment
        self._schemas: dict[str, pa.Schema | None] = {}  # table -> its parts' common schema
        self._mixed: set[str] = set()  # tables whose parts disagree (written before this rule)

    def table_dir(self, table: str) -> str:
        return self.location.path(self.experiment, table)

    def write(self, table: str, rows: Iterable[dict[str, Any]]) -> str | None:
        rows = list(rows)
        if not rows:
            return None
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {table}: duplicate keys in one write")
        data = rows_to_arrow(rows)
        name = f"part-{stable_hash(sorted(keys), 20)}.parquet"
        old = self._schema(table)
        schema = unify_schemas(old, data.schema)
        if old is not None and (not schema.equals(old) or table in self._mixed):
            # Widen the parts already written (under the experiment's lock: one writer).
            for part in self.parts(table):
                if part.rsplit("/", 1)[-1] != name:
                    self._write_part(conform(self._read_part(part), schema), table,
                                     part.rsplit("/", 1)[-1])
        self._schemas[table] = schema
        self._mixed.discard(table)
        return self._write_part(conform(data, schema), table, name)

    def _schema(self, table: str) -> pa.Schema | None:
        if table not in self._schemas:
            schema, seen = None, []
            for part in self.parts(table):
                seen.append(self._part_schema(part))
                schema = unify_schemas(schema, seen[-1])
            if any(not s.equals(schema) for s in seen):
                self._mixed.add(table)
            self._schemas[table] = schema
        return self._schemas[table]

    def _open_part(self, part: str, read):
        """``read`` of the part's open file; DamagedPart where Parquet cannot read it."""
        try:
            with self.location.fs.open_input_file(part) as fh:
                return read(fh)
        except Exception as err:
            if unreadable_file(err):
                raise DamagedPart(part, err) from err
            raise

    def _read_part(self, part: str, columns: list[str] | None = None) -> pa.Table:
        return self._open_part(part, lambda fh: pq.read_table(fh, columns=columns))

    def _part_schema(self, part: str) -> pa.Schema:
        return self._open_part(part, pq.read_schema)

    def check_parts(self) -> None:
        """Read every part's footer and keys: DamagedPart for the first that Parquet cannot
        read, so a command refuses a damaged folder before it starts instead of failing
        part-way. (Damage inside another column shows only where that column is read.)"""
        for table in self.tables():
            for part in self.parts(table):
                self._read_part(part, columns=["key"])

    def _write_part(self, data: pa.Table, table: str, name: str) -> str:
        buf = io.BytesIO()
        pq.write_table(data.replace_schema_metadata(None), buf)
        return self.location.write_bytes(buf.getvalue(), self.experiment, table, name)

    def parts(self, table: str) -> list[str]:
        found = self.location.list_files(self.experiment, table, suffix=".parquet")
        for old, new in RENAMED_TABLES.items():
            if new == table:  # an older version's folder of this table
                found += self.location.list_files(self.experiment, old, suffix=".parquet")
        return found

    def tables(self) -> list[str]:
        """Tables holding Parquet parts (figures and images live beside them), by their
        current names."""
        names = {RENAMED_TABLES.get(t, t) for t in self.location.list_dirs(self.experiment)}
        return sorted(t for t in names if self.parts(t))

    def move_renamed_tables(self) -> list[str]:
        """Move the parts of tables an older version named otherwise into the current folder
        (each part copied whole before its old file goes). The caller holds the lock."""
        moved = []
        for old, new in RENAMED_TABLES.items():
            before = len(moved)
            for part in self.location.list_files(self.experiment, old, suffix=".parquet"):
                name = part.rsplit("/", 1)[-1]
                if not self.location.exists(self.experiment, new, name):
                    self.location.write_bytes(self.location.read_bytes(self.experiment, old, name),
                                              self.experiment, new, name)
                self.location.fs.delete_file(part)
                moved.append(f"{old}/{name}")
            if len(moved) > before:
                self.location.fs.delete_dir(self.location.path(self.experiment, old))
                self._schemas.pop(new, None)
        return moved

    def read(self, table: str) -> pd.DataFrame:
        frames = [self._read_part(part).to_pandas() for part in self.parts(table)]
        if not frames:
            return pd.DataFrame()
        frame = pd.concat(frames, ignore_index=True)
        return frame.drop_duplicates("key", keep="last").reset_index(drop=True)

    def existing_keys(self, table: str) -> set[str]:
        keys: set[str] = set()
        for part in self.parts(table):
            keys.update(self._read_part(part, columns=["key"]).column("key").to_pylist())
        return keys

    def has_repeated_keys(self, table: str) -> bool:
        seen: set[str] = set()
        for part in self.parts(table):
            keys = self._read_part(part, columns=["key"]).column("key").to_pylist()
            if seen.intersection(keys):
                return True
            seen.update(keys)
        return False

    def compact(self, table: str, max_rows: int = PART_ROWS,
                max_bytes: int = PART_BYTES) -> tuple[int, int]:
        """Rewrite ``table`` as few parts of at most ``max_rows`` rows and about ``max_bytes``
        each: one row per key (the row :meth:`read` keeps), sorted by key. (parts before,
        parts after.)

        The new parts are written before the old ones are deleted, so an interruption leaves at
        worst duplicate rows, which every reader drops. The caller holds the experiment's lock.
        """
        parts = self.parts(table)
        if not parts:
            return 0, 0
        schema = self._schema(table)
        data = pa.concat_tables([conform(self._read_part(p), schema) for p in parts])
        last = {k: i for i, k in enumerate(data.column("key").to_pylist())}
        data = data.take(pa.array([last[k] for k in sorted(last)], pa.int64()))
        per_part = max(1, min(max_rows, int(max_bytes * data.num_rows / max(1, data.nbytes))))
        written = set()
        for begin in range(0, data.num_rows, per_part):
            chunk = data.slice(begin, per_part)
            name = f"part-{stable_hash(chunk.column('key').to_pylist(), 20)}.parquet"
            self._write_part(chunk, table, name)
            written.add(name)
        for part in parts:
            if part.rsplit("/", 1)[-1] not in written:
                self.location.fs.delete_file(part)
        self._schemas[table] = schema
        self._mixed.discard(table)
        return len(parts), len(written)

    def clear(self, table: str) -> None:
        for part in self.parts(table):
            self.location.fs.delete_file(part)
        self._schemas.pop(table, None)
        self._mixed.discard(table)


# Arrays, JSON points and images a stage keeps for its figures live in
# RESULTS/<experiment>/_arrays/<table>/, beside the tables: a table folder holds Parquet only.
ARRAYS_DIR = "_arrays"
# The PNGs stay where users look for them, RESULTS/<experiment>/figures/ (a folder of images,
# not a table); the table listing them is figure_index, so no table folder holds a PNG.
FIGURES_DIR = "figures"
FIGURE_INDEX = "figure_index"


def compact_tables(results: Results, min_parts: int = COMPACT_AT_PARTS
                   ) -> dict[str, tuple[int, int]]:
    """Compact every table of ``results`` holding at least ``min_parts`` parts, or a key in
    two parts (rows written again, as when a lost model was made again), so that a reader
    that does not drop duplicates, reading the folder as one dataset, sees each row once."""
    out = {}
    for table in results.tables():
        parts = results.parts(table)
        if len(parts) >= min_parts or (len(parts) > 1 and results.has_repeated_keys(table)):
            out[table] = results.compact(table)
    return out


def list_experiments(root: str | os.PathLike) -> list[str]:
    return Location(root).list_dirs()
