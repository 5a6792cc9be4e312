"""Readable summaries of result tables (``unlearn-audit show`` and the end of ``run``)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from orchestrator.tables import Results, list_experiments

# table name -> function giving a compact summary frame; stages register theirs here.
TABLE_SUMMARIES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {}


def summary(table: str):
    def decorate(fn):
        TABLE_SUMMARIES[table] = fn
        return fn

    return decorate


@summary("models")
def _models(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(unlearning_method=df["unlearning_method"].fillna("-"))
    grouped = df.groupby(["role", "unlearning_method"], sort=False)
    return grouped.agg(models=("key", "count"), train_acc=("train_acc", "mean"),
                       test_acc=("test_acc", "mean"), forget_acc=("forget_acc", "mean"),
                       forget_loss=("forget_loss", "mean"),
                       forget_loss_before=("forget_loss_original", "mean"),
                       wall_s=("wall_s", "sum")).round(4)


@summary("errors")
def _errors(df: pd.DataFrame) -> pd.DataFrame:
    return df[["unit", "error_type", "error"]].head(20)


def _attack_table(df: pd.DataFrame) -> pd.DataFrame:
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


def describe_table(results: Results, table: str) -> str:
    df = results.read(table)
    head = f"== {results.experiment}/{table}: {len(df)} rows, {len(results.parts(table))} parts"
    if df.empty:
        return head
    fn = TABLE_SUMMARIES.get(table)
    if fn is not None:
        body = fn(df)
    elif {"attack", "attack_config", "unlearning_method"} <= set(df.columns):
        body = _attack_table(df)  # a plug-in attack's scorer table
    else:
        cols = [c for c in df.columns if not c.startswith("cfg.")][:12]
        body = df[cols].head(8)
    with pd.option_context("display.width", 160, "display.max_columns", 30,
                           "display.max_colwidth", 60):
        return head + "\n" + body.to_string()


def describe(root: str, experiment: str | None = None) -> str:
    """Every table of one experiment (or of every experiment under ``root``). A stage's table
    is summarised once ``orchestrator.stages`` is imported (the CLI does so; stages import this
    module to register their summaries, so it cannot import them)."""
    experiments = [experiment] if experiment else list_experiments(root)
    blocks = []
    for exp in experiments:
        results = Results(root, exp)
        for table in results.tables():
            blocks.append(describe_table(results, table))
    return "\n\n".join(blocks) if blocks else f"no result tables under {root}"
