"""Stored posteriors: the pair's class probabilities on chosen records, in Parquet or CSV.

Columns: ``record_id`` (int), ``model`` ("original"/"unlearned"; optional when the file holds one
model), ``split`` ("train" (default) / "test"; optional) and ``p_0`` .. ``p_{C-1}``. Nothing can
be queried beyond the stored rows, so the side has no module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.pairs.base import PairError, PairSide, buffer, short, side_key, suffix

MODELS = ("original", "unlearned")
SPLITS = ("train", "test")
_READERS = {".parquet": ("Parquet", pd.read_parquet), ".pq": ("Parquet", pd.read_parquet),
            ".csv": ("CSV", pd.read_csv)}


def read_table(path: str, data: bytes, key: str) -> pd.DataFrame:
    ext = suffix(path)
    if ext not in _READERS:
        raise PairError(key, f"{path}: not a posteriors file (extension {ext or '(none)'!r}; "
                             "use .parquet or .csv)")
    kind, reader = _READERS[ext]
    try:
        table = reader(buffer(data))
    except Exception as err:
        raise PairError(key, f"{path}: not a posteriors file (cannot be read as {kind}: "
                             f"{short(err, 120)})") from err
    if not isinstance(table, pd.DataFrame):  # pragma: no cover - both readers give frames
        raise PairError(key, f"{path}: not a posteriors file (not a table)")
    return table


def _first(values, limit: int = 3) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def validate(table: pd.DataFrame, path: str, key: str, dataset) -> pd.DataFrame:
    """The table with ``model``/``split`` filled in, or a PairError naming file and column."""
    c = dataset.num_classes
    probs = [f"p_{k}" for k in range(c)]
    needed = f"record_id and p_0 .. p_{c - 1} for the dataset's {c} classes"
    for col in ["record_id", *probs]:
        if col not in table.columns:
            raise PairError(key, f"{path}: missing column {col} (needs {needed})")
    extra = [col for col in table.columns if isinstance(col, str) and col.startswith("p_")
             and col not in probs]
    if extra:
        raise PairError(key, f"{path}: column {extra[0]} is not a class of the dataset "
                             f"(needs {needed})")
    if len(table) == 0:
        raise PairError(key, f"{path}: no rows")
    ids = table["record_id"]
    if not pd.api.types.is_integer_dtype(ids) or pd.api.types.is_bool_dtype(ids):
        raise PairError(key, f"{path}: column record_id: expected integers, found {ids.dtype}")
    if (ids < 0).any():
        raise PairError(key, f"{path}: column record_id: negative id {ids[ids < 0].iloc[0]}")
    table = table.copy()
    for col, allowed, default in (("model", MODELS, None), ("split", SPLITS, "train")):
        if col not in table.columns:
            table[col] = default
            continue
        values = table[col]
        bad = values[~values.isin(allowed)]
        if len(bad):
            raise PairError(key, f"{path}: column {col}: value {bad.iloc[0]!r} is not "
                                 + " or ".join(repr(a) for a in allowed))
    for col in probs:
        values = table[col]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise PairError(key, f"{path}: column {col}: expected probabilities, found "
                                 f"{values.dtype}")
        if values.isna().any():
            rid = ids[values.isna()].iloc[0]
            raise PairError(key, f"{path}: column {col}: missing value (record_id {rid})")
        outside = (values < 0) | (values > 1)
        if outside.any():
            raise PairError(key, f"{path}: column {col}: {values[outside].iloc[0]} is outside "
                                 f"[0, 1] (record_id {ids[outside].iloc[0]})")
    sums = table[probs].to_numpy(dtype=np.float64).sum(axis=1)
    off = np.abs(sums - 1.0) > 1e-3
    if off.any():
        row = int(np.argmax(off))
        raise PairError(key, f"{path}: columns p_0 .. p_{c - 1}: the probabilities of "
                             f"record_id {ids.iloc[row]} sum to {sums[row]:.6g}; each row must "
                             "sum to 1 (within 1e-3)")
    dup = table.duplicated(["model", "split", "record_id"])
    if dup.any():
        row = table[dup].iloc[0]
        who = "" if row["model"] is None else f"model {row['model']}, "
        hint = "" if row["model"] is not None else \
            " (without a model column the file holds one model)"
        raise PairError(key, f"{path}: column record_id: {row['record_id']} appears more than "
                             f"once for {who}split {row['split']}{hint}")
    for split in SPLITS:
        size = len(getattr(dataset, f"x_{split}"))
        beyond = table[(table["split"] == split) & (table["record_id"] >= size)]
        if len(beyond):
            raise PairError(key, f"{path}: column record_id: {beyond['record_id'].iloc[0]} is "
                                 f"beyond the {split} split's {size} records")
    return table


@dataclass
class Posteriors:
    """One model's stored probabilities: per split, a dense (n_split, C) array (NaN = absent)."""

    path: str
    key: str
    rows: dict[str, np.ndarray]

    def available(self, split: str) -> np.ndarray:
        """Record ids of ``split`` with stored probabilities."""
        return np.flatnonzero(~np.isnan(self.rows[split][:, 0]))

    def logits(self, split: str, ids: np.ndarray) -> np.ndarray:
        stored = self.rows[split]
        inside = (ids >= 0) & (ids < len(stored))
        present = np.zeros(len(ids), dtype=bool)
        present[inside] = ~np.isnan(stored[ids[inside], 0])
        if not present.all():
            raise PairError(self.key, f"{self.path}: no {split} rows for record_id "
                                      f"{_first(ids[~present])}")
        return np.log(np.clip(stored[ids], 1e-12, 1.0)).astype(np.float32)


def posteriors_side(name: str, path: str, table: pd.DataFrame, dataset,
                    shared: bool) -> PairSide:
    """The side ``name`` from a validated table; ``shared``: both sides name this file."""
    key = side_key(name)
    if table["model"].isna().all():
        if shared:
            raise PairError(key, f"{path}: no model column; when original and unlearned name "
                                 "the same file, a model column ('original' / 'unlearned') "
                                 "tells their rows apart")
        mine = table
    else:
        if table["model"].isna().any():
            raise PairError(key, f"{path}: column model: empty values")
        mine = table[table["model"] == name]
        if len(mine) == 0:
            raise PairError(key, f"{path}: no rows with model {name!r}")
    probs = [f"p_{k}" for k in range(dataset.num_classes)]
    rows = {}
    for split in SPLITS:
        stored = np.full((len(getattr(dataset, f"x_{split}")), len(probs)), np.nan)
        part = mine[mine["split"] == split]
        stored[part["record_id"].to_numpy(dtype=np.int64)] = part[probs].to_numpy(np.float64)
        rows[split] = stored
    return PairSide(name, False, None, source=path, posteriors=Posteriors(path, key, rows))
