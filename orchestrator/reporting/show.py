"""Readable summaries of result tables (``unlearn-audit show`` and the end of ``run``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from orchestrator.store.location import Location
from orchestrator.store.tables import Results, list_experiments

# table name -> function giving a compact summary frame; stages register theirs here.
TABLE_SUMMARIES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {}


def summary(table: str):
    def decorate(fn):
        TABLE_SUMMARIES[table] = fn
        return fn

    return decorate


def present(df: pd.DataFrame, **aggs: tuple[str, object]) -> dict[str, tuple[str, object]]:
    """The named aggregations whose column ``df`` has: a failed unit's rows lack some columns
    (an experiment holding only the originals has no ``forget_loss_original``)."""
    return {name: agg for name, agg in aggs.items() if agg[0] in df.columns}


def by(df: pd.DataFrame, *cols: str) -> list[str]:
    """The grouping columns ``df`` has."""
    return [c for c in cols if c in df.columns]


@summary("models")
def _models(df: pd.DataFrame) -> pd.DataFrame:
    if "unlearning_method" in df:
        df = df.assign(unlearning_method=df["unlearning_method"].fillna("-"))
    grouped = df.groupby(by(df, "role", "unlearning_method"), sort=False)
    return grouped.agg(**present(
        df, models=("key", "count"), train_acc=("train_acc", "mean"),
        test_acc=("test_acc", "mean"), forget_acc=("forget_acc", "mean"),
        forget_loss=("forget_loss", "mean"),
        forget_loss_before=("forget_loss_original", "mean"),
        wall_s=("wall_s", "sum"))).round(4)


@summary("errors")
def _errors(df: pd.DataFrame) -> pd.DataFrame:
    return df[by(df, "unit", "error_type", "error")].head(20)


def attack_table(df: pd.DataFrame) -> pd.DataFrame:
    """Means of the numeric and boolean columns a scorer wrote, per method and configuration."""
    skip = {"seed", "n_finetune", "wall_s", "batch_wall_s", "batch_targets", "exact",
            "white_box"}
    cols = [c for c in df.columns
            if c not in skip and not c.startswith(("cfg.", "attack.")) and
            (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    grouped = df.groupby(["unlearning_method", "attack_config"], sort=True)
    out = grouped[cols].mean(numeric_only=False).astype(float).round(4)
    out.insert(0, "rows", grouped.size())
    return out


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in df.columns if not c.startswith("cfg.")][:12]
    return df[cols].head(8)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def describe_table(results: Results, table: str) -> str:
    name = f"{results.experiment}/{table}"
    try:
        df = results.read(table)
        parts = len(results.parts(table))
    except Exception as err:  # noqa: BLE001  (a damaged part must not hide the other tables)
        return f"== {name}: unreadable ({_one_line(err)})"
    head = f"== {name}: {len(df)} rows, {parts} parts"
    if df.empty:
        return head
    fn = TABLE_SUMMARIES.get(table)
    if fn is None and {"attack", "attack_config", "unlearning_method"} <= set(df.columns):
        fn = attack_table  # a plug-in attack's scorer table
    body = _plain(df)
    if fn is not None:
        try:
            body = fn(df)
        except Exception as err:  # noqa: BLE001  (summaries, plug-ins' too, are display only)
            head += f"\n(no summary: {_one_line(err)}; the first rows instead)"
    with pd.option_context("display.width", 160, "display.max_columns", 30,
                           "display.max_colwidth", 60):
        return head + "\n" + body.to_string()


def describe(root: str, experiment: str | None = None, table: str | None = None) -> str:
    """Every table of one experiment (or of every experiment under ``root``; or one table). A
    stage's table is summarised once ``orchestrator.stages`` is imported (the CLI does so;
    stages import this module to register their summaries, so it cannot import them)."""
    experiments = [experiment] if experiment else list_experiments(root)
    blocks = []
    for exp in experiments:
        results = Results(root, exp)
        for name in [table] if table else results.tables():
            blocks.append(describe_table(results, name))
    return "\n\n".join(blocks) if blocks else f"no result tables under {root}"


class NotResults(ValueError):
    """``show`` was given something that is not a results folder; the message says what."""


def locate(target: str) -> tuple[str, str | None, str | None]:
    """(results root, experiment, table) that ``target`` names: a results folder, one
    experiment's folder or one table's folder, as a local path or a URI. An existing folder
    without tables (a fresh or empty results folder) gives ``(target, None, None)``.

    Raises :class:`NotResults` for a path that does not exist, a file, or a folder that holds
    other files but no tables."""
    try:
        loc = Location(target)
        kind = loc.kind()
    except (OSError, ValueError, pa.ArrowException) as err:
        raise NotResults(f"cannot read it ({_one_line(err)})") from None
    if kind == "missing":
        raise NotResults("does not exist")
    if kind == "file":
        raise NotResults("is a file, not a results folder (give RESULTS or RESULTS/<experiment>)")
    if loc.list_files(suffix=".parquet"):
        parent, table = loc.split()
        root, experiment = Location(parent).split()
        return root, experiment, table
    children = loc.list_dirs()
    if any(loc.list_files(child, suffix=".parquet") for child in children):
        root, experiment = loc.split()
        return root, experiment, None
    if any(Results(target, child).tables() for child in children):
        return target, None, None
    if loc.list_files():
        raise NotResults("not a results folder (no Parquet tables in it)")
    return target, None, None
