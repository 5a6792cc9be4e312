"""Do three audits give the same table rows as before a change? (issue 27's acceptance)

A refactoring that moves modules must leave the numbers alone. This runs the quickstart,
``chen2021_adult.yaml`` and ``ulira_digits.yaml`` into a scratch folder, reads every Parquet
table each writes, and compares the rows with those recorded before the change:

    .venv/bin/python benchmarks/check_rows_unchanged.py --record rows_before.json   # old tree
    .venv/bin/python benchmarks/check_rows_unchanged.py --compare rows_before.json  # new tree

Columns that differ between two identical runs by nature (wall times, paths, host names, the
code version) are left out, as are free-text notes; rows are compared as sets, since units
finish in any order. Floats are compared exactly: the same spec and seed give the same
numbers on CPU. ``--only quickstart`` narrows the run. Exit status 1 names every table whose
rows changed; 0 means every row is as before.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SPECS = {
    "quickstart": "search_spaces/quickstart.yaml",
    "chen2021_adult": "search_spaces/chen2021_adult.yaml",
    "ulira_digits": "search_spaces/ulira_digits.yaml",
}
# Column names (or name fragments) that vary between two identical runs.
VOLATILE = ("seconds", "wall", "time", "path", "host", "node", "code_version", "created",
            "config_hash", "artifact", "uri", "worker", "pid")


def _volatile(column: str) -> bool:
    # wall_s, train_s_per_model, ...: seconds, measured
    return (any(part in column for part in VOLATILE) or column.endswith("_s")
            or "_s_per_" in column)


def _cell(value):
    """A JSON-stable form of one cell: NaN spelled out, arrays as lists."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {k: _cell(v) for k, v in sorted(value.items())}
    if isinstance(value, bytes):
        return value.hex()
    return value


def _table_name(relative: str) -> str:
    """``exp/table/part-<hash>.parquet`` -> ``exp/table``: a table is the union of its parts,
    whose names depend on which units wrote them together."""
    head, _, tail = relative.rpartition("/")
    return head if tail.startswith("part-") else relative.removesuffix(".parquet")


def _merge_parts(tables: dict[str, list[str]]) -> dict[str, list[str]]:
    """Parts merged into their tables, under the tables' current names (``RENAMED_TABLES``)."""
    from orchestrator.store.tables import RENAMED_TABLES

    merged: dict[str, list[str]] = {}
    for name, rows in tables.items():
        experiment, _, table = _table_name(name + ".parquet").rpartition("/")
        table = RENAMED_TABLES.get(table, table)
        kept = [json.dumps({k: v for k, v in json.loads(r).items() if not _volatile(k)},
                           sort_keys=True) for r in rows]  # recorded under an older filter
        merged.setdefault(f"{experiment}/{table}" if experiment else table, []).extend(kept)
    return {name: sorted(rows) for name, rows in sorted(merged.items())}


def table_rows(folder: Path) -> dict[str, list[str]]:
    """Every table under ``folder``: its name -> its rows as sorted JSON strings."""
    tables: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        if "_artifacts" in path.parts:
            continue
        name = _table_name(str(path.relative_to(folder)))
        for row in pq.read_table(path).to_pylist():
            kept = {k: _cell(v) for k, v in sorted(row.items()) if not _volatile(k)}
            tables.setdefault(name, []).append(json.dumps(kept, sort_keys=True))
    return {name: sorted(rows) for name, rows in sorted(tables.items())}


def run_spec(name: str, scratch: Path) -> dict[str, list[str]]:
    results = scratch / name
    subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", SPECS[name],
                    "--results", str(results), "--num-cpus", "2", "--quiet"],
                   cwd=REPO, check=True)
    return table_rows(results)


def compare(before: dict, after: dict) -> list[str]:
    problems = []
    for spec in sorted(set(before) | set(after)):
        old, new = before.get(spec, {}), after.get(spec, {})
        for table in sorted(set(old) | set(new)):
            if table not in new:
                problems.append(f"{spec}: table {table} is gone")
            elif table not in old:
                problems.append(f"{spec}: table {table} is new")
            elif old[table] != new[table]:
                lost = len(set(old[table]) - set(new[table]))
                problems.append(f"{spec}: table {table}: {lost} of {len(old[table])} rows "
                                f"changed ({len(new[table])} rows now){_columns(old[table], new[table])}")
    return problems


def _columns(old: list[str], new: list[str]) -> str:
    """Which columns differ between rows of the same key (the first few)."""
    before = {r["key"]: r for r in map(json.loads, old) if "key" in r}
    after = {r["key"]: r for r in map(json.loads, new) if "key" in r}
    differ: dict[str, tuple] = {}
    for key in sorted(before.keys() & after.keys()):
        for col in sorted(before[key].keys() | after[key].keys()):
            if before[key].get(col) != after[key].get(col) and col not in differ:
                differ[col] = (before[key].get(col), after[key].get(col))
    shown = "; ".join(f"{c}: {str(a)[:40]} -> {str(b)[:40]}" for c, (a, b) in list(differ.items())[:6])
    return f"; columns: {shown}" if shown else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--record", type=Path, help="write the rows to this JSON file")
    what.add_argument("--compare", type=Path, help="compare the rows with this JSON file")
    parser.add_argument("--only", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    args = parser.parse_args(argv)
    if args.compare and not args.compare.is_file():
        print(f"--compare: {args.compare}: no such file", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rows_") as scratch:
        rows = {name: run_spec(name, Path(scratch)) for name in args.only}
    if args.record:
        args.record.write_text(json.dumps(rows, indent=0, sort_keys=True))
        print(f"recorded {sum(len(t) for r in rows.values() for t in r.values())} rows "
              f"of {sum(len(r) for r in rows.values())} tables in {args.record}")
        return 0
    before = json.loads(args.compare.read_text())
    before = {k: _merge_parts(v) for k, v in before.items() if k in args.only}
    problems = compare(before, rows)
    for line in problems:
        print(line)
    if not problems:
        print(f"same rows: {', '.join(args.only)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
