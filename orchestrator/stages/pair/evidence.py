"""The pre-registered membership test of the user's pair and its measured error rates.

One test per attack, fixed before the user's pair is scored:

1. The attacker's shadow rows are split by shadow original (by shadow pair when there is one
   original): every (feature, attack model) is fitted on one half and the combination with
   the highest AUC on the other half (the validation pairs) is selected.
2. That fitted combination scores the user's pair: each forgotten record's p-value is its
   score's rank among the never-used records (``negatives``),
   ``p = (1 + #{negatives scoring >= it}) / (n + 1)`` (reported per record); the k records
   together are judged by a one-sided Mann-Whitney rank-sum test of their scores against the
   n negatives, its p-value from ``PERMUTATIONS`` seeded label permutations,
   ``(1 + #{permuted rank sums >= observed}) / (B + 1)`` — exact under the null (deleted and
   never-used records exchangeable), shared negatives included; for k = 1 it is the record's
   own p-value. The records are called identifiable only when that p is at most ``ALPHA``; the
   smallest p the design allows is ``1 / (n + 1)`` for one record, ``max(1 / C(n + k, k),
   1 / (B + 1))`` for k. (Simes' combination of the per-record p-values is also valid here,
   but has little power beyond one record: see :func:`simes`.)
3. The same test is run on the validation shadow pairs: k never-used records claimed as
   deleted (a true null: neither model of their pair saw them) and k records the shadow pairs
   did delete, each against the other never-used records; how often it fires on each is its
   false-positive rate and its power.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tasks.analysis.statistics import auc, stratified_auc_ci
from tasks.attacks.membership import (
    NONE,
    MembershipConfig,
    MembershipInference,
    PairRows,
    posterior_case,
)

ALPHA = 0.05
TRIALS = 200  # error-rate trials drawn for k > 1 (k = 1: every validation record, once)
PERMUTATIONS = 999
COMBINE = "one-sided Mann-Whitney rank-sum test"


def record_pvalues(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Each positive's p-value from its rank among ``negatives`` (ties count against it)."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    pos = np.asarray(positives, dtype=np.float64)
    at_least = len(neg) - np.searchsorted(neg, pos, side="left")
    return (1.0 + at_least) / (len(neg) + 1.0)


def simes(pvalues: np.ndarray) -> float:
    """Simes' combination of k p-values: min over i of k p_(i) / i (capped at 1)."""
    p = np.sort(np.asarray(pvalues, dtype=np.float64))
    if not len(p):
        return float("nan")
    return float(min(1.0, np.min(len(p) * p / np.arange(1, len(p) + 1))))


def combined_p(positives: np.ndarray, negatives: np.ndarray, seed: int = 0,
               permutations: int = PERMUTATIONS) -> float:
    """The k positives against the negatives: the rank-sum permutation p-value (k = 1: the
    record's own p-value, exact)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    k = len(pos)
    if k == 0 or not len(neg):
        return float("nan")
    if k == 1:
        return float(record_pvalues(pos, neg)[0])
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))  # midranks: ties handled exactly
    observed = ranks[:k].sum()
    rng = np.random.default_rng([seed, 17, k, len(neg)])
    # The k smallest of N uniform keys: a uniform k-subset per permutation.
    subsets = rng.random((permutations, len(ranks))).argpartition(k - 1, axis=1)[:, :k]
    sums = ranks[subsets].sum(axis=1)
    return float((1 + np.sum(sums >= observed - 1e-9)) / (permutations + 1))


def smallest_p(k: int, n: int, permutations: int = PERMUTATIONS) -> float:
    """The smallest p-value the design (k claimed records, n negatives) can give."""
    from math import comb

    if k <= 1:
        return 1.0 / (n + 1)
    return max(1.0 / comb(n + k, k), 1.0 / (permutations + 1))


def split_shadow(meta: dict[str, np.ndarray], label: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(fit mask, validation mask, unit) of the shadow rows: by original when there are
    several, else by pair; alternate units go to validation. None when either half lacks a
    member or a never-used record."""
    sets = np.asarray(meta["set_index"])
    if len(np.unique(sets)) >= 2:
        unit, ids = "shadow originals", sets
    else:
        unit, ids = "shadow pairs", np.asarray(meta["pair_index"])
    units = np.unique(ids)
    if len(units) < 2:
        return None
    val = np.isin(ids, units[1::2])
    fit = ~val
    for mask in (fit, val):
        if len(np.unique(np.asarray(label)[mask])) < 2:
            return None
    return fit, val, unit


def _subset(rows: PairRows, mask: np.ndarray) -> PairRows:
    return PairRows(rows.p_logits[mask], rows.q_logits[mask], np.asarray(rows.label)[mask],
                    {k: np.asarray(v)[mask] for k, v in rows.meta.items()})


def _join(a: PairRows, b: PairRows) -> PairRows:
    n_a, n_b = len(a.label), len(b.label)
    return PairRows(np.concatenate([a.p_logits, b.p_logits]),
                    np.concatenate([a.q_logits, b.q_logits]),
                    np.concatenate([np.asarray(a.label), np.asarray(b.label)]),
                    {"set_index": np.zeros(n_a + n_b, int),
                     "pair_index": np.zeros(n_a + n_b, int)})


def error_rates(val_scores: np.ndarray, val_label: np.ndarray, k: int, seed: int,
                alpha: float = ALPHA, trials: int = TRIALS) -> dict[str, Any]:
    """How often the test fires on the validation shadow pairs: k never-used records claimed
    as deleted (false positives) and k deleted records (power), each against the never-used
    records not claimed. k = 1: every record once; else ``trials`` seeded draws."""
    neg = val_scores[val_label == 0]
    pos = val_scores[val_label == 1]
    rng = np.random.default_rng([seed, 31, k])
    out: dict[str, Any] = {"fpr_fired": 0, "fpr_trials": 0, "power_fired": 0,
                           "power_trials": 0, "shadow_reference_size": len(neg)}
    if len(neg) >= k + 1:
        draws = ([np.array([i]) for i in range(len(neg))] if k == 1 else
                 [rng.choice(len(neg), k, replace=False) for _ in range(trials)])
        for claim in draws:
            rest = np.delete(neg, claim)
            out["fpr_fired"] += int(combined_p(neg[claim], rest, seed) <= alpha)
        out["fpr_trials"] = len(draws)
    if len(pos) >= k and len(neg):
        draws = ([np.array([i]) for i in range(len(pos))] if k == 1 else
                 [rng.choice(len(pos), k, replace=False) for _ in range(trials)])
        for claim in draws:
            out["power_fired"] += int(combined_p(pos[claim], neg, seed) <= alpha)
        out["power_trials"] = len(draws)
    for name in ("fpr", "power"):
        n = out[f"{name}_trials"]
        out[name] = out[f"{name}_fired"] / n if n else float("nan")
    return out


def preregistered_test(target: PairRows, shadow: PairRows, config: MembershipConfig,
                       transform: str = "none", transform_params: dict | None = None,
                       seed: int = 0, alpha: float = ALPHA
                       ) -> tuple[dict[str, Any], np.ndarray] | None:
    """The one test of the user's pair (see the module docstring): its row for the ``mia``
    table and its scores on the target rows; None when the shadow rows cannot be split into
    a fit and a validation half."""
    split = split_shadow(shadow.meta, np.asarray(shadow.label))
    if split is None:
        return None
    fit, val, unit = split
    fit_rows, val_rows = _subset(shadow, fit), _subset(shadow, val)
    n_val = int(val.sum())
    case, _ = posterior_case(_join(val_rows, target), fit_rows, transform, transform_params)
    typed = MembershipConfig(config.features, config.attack_models, config.model_params,
                             shuffled_control=(), classical=config.classical,
                             dry_run=config.dry_run)
    result = MembershipInference().run([case], typed, seeds=[seed])
    entries = [e for e, (_, _, c) in enumerate(result.entries) if c == NONE]
    val_label = np.asarray(val_rows.label)
    val_auc = [auc(val_label, result.scores[0][e, :n_val]) for e in entries]
    best = entries[int(np.nanargmax(val_auc))]
    feature, model, _ = result.entries[best]
    scores = result.scores[0][best]
    s_val, s_t = scores[:n_val], scores[n_val:]
    t_label = np.asarray(target.label)
    pos, neg = s_t[t_label == 1], s_t[t_label == 0]
    k, n = len(pos), len(neg)
    pvals = record_pvalues(pos, neg)
    combined = combined_p(pos, neg, seed)
    point, low, high = stratified_auc_ci(t_label, s_t)
    records = np.asarray(target.meta.get("record", np.arange(len(t_label))))[t_label == 1]
    row = {"test": "preregistered", "feature": feature, "attack_model": model,
           "control": NONE, "selection": "highest AUC on the validation shadow pairs",
           "selection_auc": float(max(val_auc)), "candidates": len(entries),
           "split_unit": unit, "n_fit_rows": int(fit.sum()), "n_validation_rows": n_val,
           "forget_size": k, "n_negatives": n,
           "records": json.dumps([int(r) for r in records]),
           "record_p": json.dumps([round(float(p), 6) for p in pvals]),
           "combine": COMBINE, "permutations": PERMUTATIONS if k > 1 else 0,
           "combined_p": combined, "min_p": smallest_p(k, n),
           "alpha": alpha, "identifiable": bool(combined <= alpha),
           "auc": point, "auc_low": low, "auc_high": high,
           **error_rates(s_val, val_label, k, seed, alpha)}
    return row, s_t
