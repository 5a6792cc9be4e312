"""Plain-words verdicts per attack, each with the number behind it and a bootstrap 95 % interval.

Used by ``unlearn-audit report`` (orchestrator/reporting/html_report.py). Every interval is a percentile
bootstrap with a fixed seed, so the same results give the same report; each verdict says what
it resamples (targets, deletion requests, records or AUC rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.analysis.statistics import (
    bootstrap_ci,
    has_interval,
    stratified_auc_ci,
)


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
    if not has_interval(low, high):
        return f"{value:{fmt}}"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _over(n: int, what: str, interval: str = "95 % bootstrap interval") -> str:
    """What the interval is over, or why there is none."""
    if n < 2:
        return f"{n} {what}; too few for an interval"
    return f"{interval} over {n} {what}"


def _groups(df: pd.DataFrame, cols: list[str]):
    cols = [c for c in cols if c in df.columns]
    if not cols:
        yield (), df
        return
    filled = df.assign(**{c: df[c].astype(str).fillna("-") for c in cols})
    for key, group in filled.groupby(cols, sort=True):
        yield (key if isinstance(key, tuple) else (key,)), group


SINGLE = "one sample, no verdict"


def recovery_verdicts(df: pd.DataFrame) -> list[Verdict]:
    out = []
    if not {"psnr", "psnr_mean_image"} <= set(df.columns):
        return out
    for (method, config), g in _groups(df, ["unlearning_method", "attack_config"]):
        gain = (g["psnr"] - g["psnr_mean_image"]).to_numpy(dtype=float)
        m, lo, hi = bootstrap_ci(gain)
        if not has_interval(lo, hi):
            head = SINGLE
        elif lo > 0:
            head = "forgotten images are recoverable"
        elif hi < 0:
            head = "forgotten images are not recovered (worse than the mean image)"
        else:
            head = "no clear evidence that forgotten images are recoverable"
        sentence = (f"{head}: {_ci(m, lo, hi, '+.1f')} dB over the mean image "
                    f"({_over(len(gain), 'targets')}); 0 dB means no better "
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
        n = len(hits[~np.isnan(hits)])
        if n < 2:
            head = SINGLE
            number = (f"{int(np.nansum(hits))} of {n} requests correct (one request: no "
                      f"p-value; too few for an interval)")
        else:
            head = ("the forgotten class is identified" if lo > chance
                    else "no clear evidence that the forgotten class can be identified")
            number = (f"accuracy {_ci(m, lo, hi, '.2f')} (95 % bootstrap interval over "
                      f"{n} deletion requests)")
        sentence = f"{head}: {number}; chance is {chance:.2f} (top-{top_k} of {classes} classes)"
        out.append(Verdict("label inference", method, config, sentence, m, lo, hi, n))
    return out


def mia_verdicts(df: pd.DataFrame, records: pd.DataFrame | None = None) -> list[Verdict]:
    """A pair from outside: its pre-registered test per attack (rows ``test ==
    "preregistered"``); its other (feature, attack model) rows are exploratory, never
    verdicts. The membership stage: per method, scenario, feature and attack model, the
    interval over records (positives and negatives resampled separately) when the
    ``membership`` table holds their scores, else over the AUC rows (sets and seeds)."""
    out: list[Verdict] = []
    if "auc" not in df.columns:
        return out
    if "control" in df.columns:
        df = df[df["control"].fillna("none") == "none"]
    if "test" in df.columns:
        out += [preregistered_verdict(r)
                for r in df[df["test"] == "preregistered"].to_dict("records")]
        df = df[~df["test"].isin(["preregistered", "exploratory"])]
    cols = ["unlearning_method", "scenario", "feature", "attack_model"]
    usable = records is not None and {"mia_key", "label", "score"} <= set(records.columns)
    for key, g in _groups(df, cols):
        method, config = key[0], " / ".join(key[1:])
        rec = records[records["mia_key"].isin(g["key"])] if usable else None
        if rec is not None and rec["label"].nunique() == 2:
            label = rec["label"].to_numpy(dtype=float)
            m, lo, hi = stratified_auc_ci(label, rec["score"].to_numpy(dtype=float))
            k, n_neg = int((label > 0.5).sum()), int((label <= 0.5).sum())
            n = k + n_neg
            over = (f"95 % stratified bootstrap interval: {k} deleted and {n_neg} never-used "
                    f"records' scores resampled separately" if has_interval(lo, hi) else
                    f"{k} deleted and {n_neg} never-used records; too few for an interval")
        else:
            m, lo, hi = bootstrap_ci(g["auc"].to_numpy(dtype=float))
            n = len(g)
            over = _over(n, "AUC rows (target sets and seeds; no per-record scores in the "
                            "table)")
        head = (SINGLE if not has_interval(lo, hi) else "deleted records are identifiable"
                if lo > 0.5 else "no clear evidence that deleted records are identifiable")
        sentence = f"{head}: AUC {_ci(m, lo, hi, '.2f')} ({over}); chance is 0.50"
        out.append(Verdict("membership inference", method, config, sentence, m, lo, hi, n))
    return out


def _num(row: dict, name: str, default: float = float("nan")) -> float:
    value = row.get(name)
    try:
        return default if value is None else float(value)
    except (TypeError, ValueError):
        return default


def _rates(row: dict) -> str:
    """The test's false-positive rate and power, measured on the attacker's shadow pairs."""
    recipe = row.get("shadow_recipe") or row.get("unlearning_method") or "-"
    k, ref = int(_num(row, "forget_size", 0)), int(_num(row, "shadow_reference_size", 0))
    where = (f"Measured on the attacker's shadow pairs (unlearned with {recipe}: the "
             f"attacker's guess at how your pair was unlearned), against {ref} never-used "
             f"shadow records")
    rec = "record" if k == 1 else "records"
    null = f"true-null trials ({k} never-used {rec} claimed as deleted)"
    parts = []
    for name, trials_of, rate in (("fpr", null, "false-positive rate"),
                                  ("power", f"trials with {k} deleted {rec}", "power")):
        fired, trials = int(_num(row, f"{name}_fired", 0)), int(_num(row, f"{name}_trials", 0))
        if trials:
            parts.append(f"it fired on {fired} of {trials} {trials_of}: {rate} "
                         f"{fired / trials:.2f}")
        else:
            parts.append(f"its {rate} could not be measured (too few validation shadow "
                         f"records)")
    # Measured on pairs made the attacker's way: a pair unlearned otherwise (another recipe,
    # k records deleted at once) can hide from a test that finds every shadow deletion.
    return (f"{where}: {'; '.join(parts)}. Both rates describe pairs made the attacker's "
            f"way; a pair trained or unlearned otherwise may be harder to read.")


def preregistered_verdict(row: dict) -> Verdict:
    """The verdict of a pair's pre-registered membership test (one row of ``mia``)."""
    k, n = int(_num(row, "forget_size", 0)), int(_num(row, "n_negatives", 0))
    p, alpha = _num(row, "combined_p"), _num(row, "alpha", 0.05)
    min_p = _num(row, "min_p", 1.0 / (n + 1))
    m, lo, hi = _num(row, "auc"), _num(row, "auc_low"), _num(row, "auc_high")
    power = _num(row, "power")
    config = f"pre-registered: {row.get('feature')} / {row.get('attack_model')}"
    if np.isnan(p):
        sentence = (f"no pre-registered test, so no verdict: {row.get('note') or 'no test'}. "
                    f"The exploratory rows of the mia table are not verdicts.")
        return Verdict("membership inference", "your pair", "no test", sentence, m, lo, hi, k)
    if min_p > alpha:
        head = "this design cannot show that deleted records are identifiable"
    elif p <= alpha:
        head = "deleted records are identifiable"
    else:
        head = "no evidence that deleted records are identifiable"
    what = ("the deleted record's p-value: its score ranked among" if k == 1 else
            f"the {k} deleted records' scores against" )
    how = ("" if k == 1 else
           f" by a {row.get('combine') or 'rank-sum test'} "
           f"({int(_num(row, 'permutations', 0))} permutations; per-record p-values in the "
           f"mia table)")
    floor = (f"1/{n + 1} = {min_p:.2g}" if k == 1 else f"{min_p:.2g}")
    auc_over = ("95 % stratified bootstrap interval: deleted and never-used records "
                "resampled separately" if has_interval(lo, hi) else
                f"{k} deleted record{'s' if k != 1 else ''}; too few for an interval")
    test = (f"the pre-registered test ({row.get('feature')} features, "
            f"{row.get('attack_model')} attack model: of {int(_num(row, 'candidates', 0))} "
            f"combinations the highest AUC, {_num(row, 'selection_auc'):.2f}, on "
            f"{int(_num(row, 'n_validation_rows', 0))} validation shadow rows, chosen before "
            f"your pair was scored)")
    sentence = (f"{head}: p = {p:.3g}, {what} {n} never-used test records{how} "
                f"(level {alpha:g}; the smallest p this design allows is {floor}); AUC {_ci(m, lo, hi, '.2f')} ({auc_over}); {test}. "
                f"{_rates(row)}")
    if head.startswith("no evidence") and not power >= 0.5:
        sentence += " With this little power, 'no evidence' says little."
    return Verdict("membership inference", "your pair", config, sentence, m, lo, hi, k)


def exploratory_note(df: pd.DataFrame | None) -> str | None:
    """How many exploratory combinations a pair's ``mia`` table holds (never verdicts)."""
    if df is None or "test" not in df.columns:
        return None
    rows = df[(df["test"] == "exploratory") & (df.get("control", "none") == "none")]
    if rows.empty:
        return None
    return (f"Exploratory, not verdicts: {len(rows)} other (feature, attack model) "
            f"combinations were also scored on your pair (the mia table, column test = "
            f"exploratory). Picking the best of them after seeing your pair would raise false "
            f"alarms; only the pre-registered test above is judged.")


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
                    f"{_ci(m, lo, hi, '.3f')} ({_over(len(g), 'rows')}); "
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
