"""How ``show``, the end of ``run`` and the HTML report summarise each built-in table.

Pandas only, so that ``unlearn-audit show`` reads results without importing torch or the
stages that wrote them. A stage from outside the package registers its own
tables' summaries with :func:`orchestrator.reporting.show.summary`.
"""

from __future__ import annotations

import numpy as np

from orchestrator.reporting.show import by, present, summary


@summary("defences")
def _defences(df):
    cols = by(df, "attack", "unlearning_method", "attack_model", "defence", "strength")
    agg = present(df, rows=("key", "count"), leakage=("attack_metric", "mean"),
                  test_acc_orig=("test_acc_original", "mean"),
                  test_acc_unl=("test_acc_unlearned", "mean"))
    if "classical_auc" in df:
        agg["classical_auc"] = ("classical_auc", "mean")
    for col in ("epsilon", "epsilon_pair"):
        if col in df:
            agg[col] = (col, "mean")
    return df.groupby(cols, sort=True, dropna=False).agg(**agg).round(4)


@summary("membership_attacks")
def _mia(df):
    df = df[df["control"] == "none"] if "control" in df else df
    cols = by(df, "dataset", "model", "unlearning_method", "scenario", "feature")
    pivot = df.pivot_table(index=cols, columns="attack_model", values="auc", aggfunc="mean")
    extra = present(df, classical_auc=("classical_auc", "mean"),
                    deg_count=("deg_count", "mean"), deg_rate=("deg_rate", "mean"),
                    gap=("generalisation_gap", "mean"))
    return (pivot.join(df.groupby(cols).agg(**extra)) if extra else pivot).round(3)


@summary("membership_records")
def _membership(df):
    return df.groupby(by(df, "scenario", "feature", "attack_model")).agg(**present(
        df, rows=("key", "count"), members=("label", "sum"),
        mean_score=("score", "mean"))).head(12)


@summary("recoveries")
def _recoveries(df):
    cols = by(df, "unlearning_method", "attack_config", "n_finetune", "k")
    grouped = df.groupby(cols, sort=False, dropna=False)
    out = grouped.agg(**present(
        df, samples=("key", "count"), psnr=("psnr", "mean"), psnr_max=("psnr", "max"),
        ssim=("ssim", "mean"), psnr_mean_image=("psnr_mean_image", "mean"),
        psnr_random=("psnr_random", "mean"), cos=("cos_final", "mean"),
        label_acc=("label_used", lambda s: float(np.nan)), wall_s=("wall_s", "sum")))
    if {"label_used", "true_label"} <= set(df.columns):
        hits = (df["label_used"] == df["true_label"]).groupby([df[c] for c in cols],
                                                              sort=False, dropna=False).mean()
        out["label_acc"] = hits
    if {"psnr", "psnr_mean_image"} <= set(out.columns):
        out["gain_db"] = out["psnr"] - out["psnr_mean_image"]
    return out.round(3)


@summary("membership_ranking")
def _membership_ranking(df):
    """The records most likely deleted, per unlearning method the shadow pairs assumed."""
    return (df.sort_values("rank")
            .groupby(by(df, "unlearning_method"), sort=True).head(10)
            [by(df, "unlearning_method", "rank", "record", "score")])


@summary("guesses")
def _guesses(df):
    cols = [c for c in df.columns if c.startswith("guess_") and c != "guess_images"]
    return df[by(df, "attack", "attack_config", "pair_format", "queries") + cols].head(12)


@summary("prepared")
def _prepared(df):
    return df.groupby(by(df, "attack", "attack_config"), sort=True).agg(**present(
        df, originals=("key", "count"), queries=("queries", "sum"), wall_s=("wall_s", "max")))


@summary("label_inference")
def _label_inference(df):
    # p is None for requests that are not class shares (a pair from outside): keep them.
    grouped = df.groupby(by(df, "unlearning_method", "attack_config", "p"), sort=True,
                         dropna=False)
    return grouped.agg(**present(df, settings=("key", "count"), accuracy=("correct", "mean"),
                                 queries=("queries", "mean"),
                                 probes_failed=("probes_failed", "mean"))).round(3)


@summary("ulira")
def _ulira(df):
    cols = by(df, "design", "unlearning_method", "attack", "variant", "variance")
    agg = present(df, rows=("key", "count"), models=("n_models", "max"), auc=("auc", "mean"),
                  tpr_1pct=("tpr_at_1pct", "mean"), tpr_0_1pct=("tpr_at_0_1pct", "mean"),
                  odd_auc=("odd_auc", "mean"), odd_tpr_0_1pct=("odd_tpr_at_0_1pct", "mean"),
                  median_eps=("median_epsilon", "mean"), forget_score=("forget_score", "mean"),
                  eps_lb=("epsilon_lb", "mean"), records_named=("records_leaking", "max"),
                  in_null=("within_null", "max"))
    return df.groupby(cols, sort=True, dropna=False).agg(**agg).round(4)


@summary("per_example")
def _per_example(df):
    cols = by(df, "design", "unlearning_method")
    agg = present(df, records=("key", "count"), median_eps=("epsilon", "median"),
                  p90_eps=("epsilon", lambda s: s.quantile(0.9)),
                  max_eps=("epsilon", "max"), mean_record_auc=("record_auc", "mean"),
                  records_named=("leaks", "sum"))
    return df.groupby(cols, sort=True, dropna=False).agg(**agg).round(4)


@summary("leaderboard")
def _leaderboard(df):
    cols = by(df, "seed", "rank", "unlearning_method", "reading")
    agg = present(df, auc=("ulira_auc", "mean"), auc_low=("ulira_auc_low", "mean"),
                  auc_high=("ulira_auc_high", "mean"), tpr_1pct=("ulira_tpr_at_1pct", "mean"),
                  tpr_0_1pct=("ulira_tpr_at_0_1pct", "mean"),
                  eps_lb=("ulira_epsilon_lb", "mean"), median_eps=("median_epsilon", "mean"), chen_auc=("chen_auc", "mean"),
                  test_acc=("unlearned_test_acc", "mean"), forget_acc=("forget_acc", "mean"),
                  wall_vs_retrain=("wall_vs_retrain", "mean"),
                  recovery_gain_db=("recovery_gain_db", "mean"),
                  label_acc=("label_inference_acc", "mean"))
    return df.groupby(cols, sort=True, dropna=False).agg(**agg).round(4)
