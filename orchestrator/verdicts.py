"""Plain-words verdicts per attack, each with the number behind it and a bootstrap 95 % interval.

Used by ``unlearn-audit report`` (orchestrator/html_report.py). Every interval is a percentile
bootstrap with a fixed seed, so the same results give the same report; each verdict says what
it resamples (targets, deletion requests, records or AUC rows).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

RESAMPLES = 1000
SEED = 0
KNOWN_TABLES = {"models", "recoveries", "label_inference", "mia", "membership", "defenses",
                "guesses", "membership_ranking",
                "prepared", "figure_index", "errors"}


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean,
                 resamples: int = RESAMPLES, seed: int = SEED,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(statistic, low, high): the percentile bootstrap interval of ``stat`` over ``values``
    (resampled with replacement along the first axis). One value gives a zero-width interval;
    none gives NaNs."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1:
        data = data[~np.isnan(data)]
    n = len(data)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(stat(data))
    if n == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = np.array([stat(data[i]) for i in idx], dtype=np.float64)
    stats = stats[~np.isnan(stats)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return point, float(low), float(high)


def auc(pairs: np.ndarray) -> float:
    """ROC AUC of rows (label, score): the Mann-Whitney statistic, ties counted half."""
    labels, scores = pairs[:, 0] > 0.5, pairs[:, 1]
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class Verdict:
    attack: str            # feature recovery, label inference, ...
    method: str            # unlearning method
    config: str            # attack configuration (or defence and strength)
    sentence: str          # the plain-words verdict, numbers and interval included
    value: float
    low: float
    high: float
    n: int


def _ci(value: float, low: float, high: float, fmt: str) -> str:
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _groups(df: pd.DataFrame, cols: list[str]):
    cols = [c for c in cols if c in df.columns]
    if not cols:
        yield (), df
        return
    filled = df.assign(**{c: df[c].astype(str).fillna("-") for c in cols})
    for key, group in filled.groupby(cols, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), group


def recovery_verdicts(df: pd.DataFrame) -> list[Verdict]:
    out = []
    if not {"psnr", "psnr_mean_image"} <= set(df.columns):
        return out
    for (method, config), g in _groups(df, ["unlearning_method", "attack_config"]):
        gain = (g["psnr"] - g["psnr_mean_image"]).to_numpy(dtype=float)
        m, lo, hi = bootstrap_ci(gain)
        if lo > 0:
            head = "forgotten images are recoverable"
        elif hi < 0:
            head = "forgotten images are not recovered (worse than the mean image)"
        else:
            head = "no clear evidence that forgotten images are recoverable"
        sentence = (f"{head}: {m:+.1f} dB over the mean image [{lo:+.1f}, {hi:+.1f}] "
                    f"(95 % bootstrap interval over {len(gain)} targets); 0 dB means no better "
                    f"than the attacker's public mean image")
        out.append(Verdict("feature recovery", method, config, sentence, m, lo, hi, len(gain)))
    return out


def _classes(g: pd.DataFrame) -> int:
    if "delta_by_class" in g.columns:
        first = g["delta_by_class"].dropna()
        if len(first):
            value = first.iloc[0]
            value = json.loads(value) if isinstance(value, str) else value
            return len(value)
    return int(g["true_class"].nunique()) if "true_class" in g.columns else 0


def label_verdicts(df: pd.DataFrame) -> list[Verdict]:
    out = []
    if "correct" not in df.columns:
        return out
    for (method, config), g in _groups(df, ["unlearning_method", "attack_config"]):
        hits = g["correct"].astype(float).to_numpy()
        m, lo, hi = bootstrap_ci(hits)
        classes = _classes(g)
        top_k = int(g["top_k"].iloc[0]) if "top_k" in g.columns else 1
        chance = min(1.0, top_k / classes) if classes else float("nan")
        if lo > chance:
            head = "the forgotten class is identified"
        else:
            head = "no clear evidence that the forgotten class can be identified"
        sentence = (f"{head}: accuracy {_ci(m, lo, hi, '.2f')} (95 % bootstrap interval over "
                    f"{len(hits)} deletion requests); chance is {chance:.2f} "
                    f"(top-{top_k} of {classes} classes)")
        out.append(Verdict("label inference", method, config, sentence, m, lo, hi, len(hits)))
    return out


def mia_verdicts(df: pd.DataFrame, records: pd.DataFrame | None = None) -> list[Verdict]:
    """Per method, scenario, feature and attack model. The interval is over records when the
    ``membership`` table holds their scores, else over the AUC rows (sets and seeds)."""
    out = []
    if "auc" not in df.columns:
        return out
    if "control" in df.columns:
        df = df[df["control"].fillna("none") == "none"]
    cols = ["unlearning_method", "scenario", "feature", "attack_model"]
    usable = records is not None and {"mia_key", "label", "score"} <= set(records.columns)
    for key, g in _groups(df, cols):
        method, config = key[0], " / ".join(key[1:])
        rec = records[records["mia_key"].isin(g["key"])] if usable else None
        if rec is not None and rec["label"].nunique() == 2:
            pairs = rec[["label", "score"]].to_numpy(dtype=float)
            m, lo, hi = bootstrap_ci(pairs, stat=auc)
            over, n = f"{len(pairs)} records' membership scores", len(pairs)
        else:
            m, lo, hi = bootstrap_ci(g["auc"].to_numpy(dtype=float))
            n = len(g)
            over = f"{n} AUC rows (target sets and seeds; no per-record scores in the table)"
        head = ("deleted records are identifiable" if lo > 0.5
                else "no clear evidence that deleted records are identifiable")
        sentence = (f"{head}: AUC {_ci(m, lo, hi, '.2f')} (95 % bootstrap interval over "
                    f"{over}); chance is 0.50")
        out.append(Verdict("membership inference", method, config, sentence, m, lo, hi, n))
    return out


def defence_verdicts(df: pd.DataFrame) -> list[Verdict]:
    out = []
    if "attack_metric" not in df.columns:
        return out
    for key, g in _groups(df, ["attack", "unlearning_method", "defence", "strength"]):
        attack, method = (key + ("-", "-"))[:2]
        config = " ".join(str(k) for k in key[2:])
        m, lo, hi = bootstrap_ci(g["attack_metric"].to_numpy(dtype=float))
        utility = (g["test_acc_unlearned"].mean() if "test_acc_unlearned" in g.columns
                   else float("nan"))
        sentence = (f"with defence {config}: leakage (the {attack} attack's metric) "
                    f"{_ci(m, lo, hi, '.3f')} (95 % bootstrap interval over {len(g)} rows); "
                    f"utility: test accuracy {utility:.3f}")
        out.append(Verdict("defence", method, config, sentence, m, lo, hi, len(g)))
    return out


def plugin_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean [95 % interval over rows] of each numeric column, per method and configuration."""
    skip = {"seed", "n_finetune", "wall_s", "batch_wall_s", "batch_targets", "exact",
            "white_box"}
    cols = [c for c in df.columns if c not in skip and not c.startswith(("cfg.", "attack."))
            and (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c]))]
    rows = []
    for (method, config), g in _groups(df, ["unlearning_method", "attack_config"]):
        row = {"unlearning_method": method, "attack_config": config, "rows": len(g)}
        for c in cols:
            m, lo, hi = bootstrap_ci(g[c].astype(float).to_numpy())
            row[c] = _ci(m, lo, hi, ".4g")
        rows.append(row)
    return pd.DataFrame(rows)


def ranking(models: pd.DataFrame | None, verdicts: list[Verdict]) -> pd.DataFrame | None:
    """Unlearning methods ranked by leakage (mean rank over the attacks measured, lower leaks
    less), ties broken by utility (test accuracy of the unlearned models)."""
    leak: dict[str, dict[str, list[float]]] = {}
    for v in verdicts:
        if v.attack == "defence" or v.method in ("-", "nan", "None"):
            continue
        leak.setdefault(v.attack, {}).setdefault(v.method, []).append(v.value)
    methods = sorted({m for per in leak.values() for m in per})
    if models is not None and {"unlearning_method", "test_acc"} <= set(models.columns):
        unl = models[models["unlearning_method"].notna()]
        if "role" in unl.columns:
            unl = unl[unl["role"] != "original"]
        acc = unl.groupby("unlearning_method")["test_acc"].mean()
        methods = sorted(set(methods) | set(acc.index.astype(str)))
    else:
        acc = pd.Series(dtype=float)
    if len(methods) < 2:
        return None
    table = pd.DataFrame(index=pd.Index(methods, name="unlearning_method"))
    for attack, per in leak.items():
        table[attack] = pd.Series({m: float(np.mean(v)) for m, v in per.items()})
    table["test accuracy"] = acc.reindex(methods).to_numpy(dtype=float)
    leak_cols = list(leak)
    table["leakage rank"] = (table[leak_cols].rank(method="average").mean(axis=1)
                             if leak_cols else np.nan)
    table = table.sort_values(["leakage rank", "test accuracy"], ascending=[True, False])
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.round(3)
