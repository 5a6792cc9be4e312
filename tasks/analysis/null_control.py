"""The null control every per-example run carries: what its statistics read when nothing leaks.

A perfect unlearner leaves a model's outputs with one distribution whether it unlearned a
record (IN) or never saw it (OUT): the models are then exchangeable, and handing each model
another model's IN/OUT assignment (a permutation of the rows of ``member_in``, which keeps
every record's counts) leaves the distribution of every statistic unchanged. Scoring the run's
own phi under such permutations, exactly as the run scores it, gives the range its U-LiRA AUC,
TPR at 1 % FPR and median epsilon take under that null: with the run's models, records,
record difficulties and the correlation between records that one model's outputs share
(which a simulation with independent records misses: it put exact retraining's median
epsilon outside its range on digits). A method whose numbers lie inside the range is
indistinguishable from a perfect unlearner at this design; exact retraining (which is one)
reading outside it means the audit itself is not calibrated.
"""

from __future__ import annotations

import numpy as np

from tasks.analysis.epsilon import example_epsilons
from tasks.analysis.per_example import lira_scores, roc_metrics

LEVEL = 0.95
ALPHA = 0.01  # the null control's level: exact retraining is called a leak once in 100 runs


def membership_epsilons(phi: np.ndarray, member_in: np.ndarray, estimator: str) -> np.ndarray:
    """Per-record epsilon between the models IN (unlearned) and OUT on each record; NaN for a
    record with fewer than two models on a side (no range to compare; few members each
    unlearning a random half of the targets leave some records so)."""
    counts = member_in.sum(axis=0)
    if (counts == counts[0]).all() and 2 <= counts[0] <= len(member_in) - 2:
        order = np.argsort(~member_in, axis=0, kind="stable")  # equal sides: one call
        ranked = np.take_along_axis(phi, order, axis=0)
        return example_epsilons(ranked[:counts[0]], ranked[counts[0]:], estimator=estimator)
    out = np.full(phi.shape[1], np.nan)
    for r in np.flatnonzero((counts >= 2) & (len(member_in) - counts >= 2)):
        out[r] = example_epsilons(phi[member_in[:, r], r][:, None],
                                  phi[~member_in[:, r], r][:, None], estimator=estimator)[0]
    return out


def permutation_null(phi: np.ndarray, member_in: np.ndarray, variant: str, variance: str,
                     estimator: str, runs: int = 99, epsilon_runs: int = 19,
                     seed: int = 0) -> dict[str, float]:
    """The run's statistics under ``runs`` row permutations of ``member_in`` (module doc).

    Returns the 2.5 % and 97.5 % quantiles of U-LiRA's AUC (``null_auc_low`` / ``_high``;
    its median ``null_auc``, below 0.5 with few models a side) and TPR at 1 % FPR (``null_tpr_at_1pct_low`` / ``_high``), and, over the first
    ``epsilon_runs`` permutations (epsilon costs milliseconds a record), the median epsilon's
    median and largest value (``null_median_epsilon``, ``null_median_epsilon_high``: a run
    above the largest of 19 is outside at the 5 % level), and the permutation p-values of the
    observed AUC (two-sided, about the permutation median) and median epsilon (one-sided),
    ``null_auc_p``,
    ``null_median_epsilon_p``.
    """
    mask = np.asarray(member_in, dtype=bool)
    rng = np.random.default_rng([seed, 53])
    observed = roc_metrics(lira_scores(phi, mask, variant, variance), mask)
    observed_eps = float(np.nanmedian(membership_epsilons(phi, mask, estimator)))
    aucs, tprs, medians = [], [], []
    for b in range(max(runs, epsilon_runs)):
        shuffled = mask[rng.permutation(len(mask))]
        if b < runs:
            metrics = roc_metrics(lira_scores(phi, shuffled, variant, variance), shuffled)
            aucs.append(metrics["auc"])
            tprs.append(metrics["tpr_at_1pct"])
        if b < epsilon_runs:
            medians.append(float(np.nanmedian(membership_epsilons(phi, shuffled, estimator))))
    aucs, medians = np.asarray(aucs), np.asarray(medians)
    tail = (1 - LEVEL) / 2
    a_low, a_high = np.nanquantile(aucs, [tail, 1 - tail])
    t_low, t_high = np.nanquantile(tprs, [tail, 1 - tail])
    centre = float(np.nanmedian(aucs))  # below 0.5 with few models: leave-one-out fits
    far = np.abs(aucs - centre) >= abs(observed["auc"] - centre) - 1e-12
    return {"null_auc_low": float(a_low), "null_auc_high": float(a_high),
            "null_auc": centre,
            "null_tpr_at_1pct_low": float(t_low), "null_tpr_at_1pct_high": float(t_high),
            "null_median_epsilon": float(np.median(medians)),
            "null_median_epsilon_high": float(medians.max()),
            "null_auc_p": float((1 + far.sum()) / (len(aucs) + 1)),
            "null_median_epsilon_p": float((1 + (medians >= observed_eps - 1e-12).sum())
                                           / (len(medians) + 1)),
            "null_runs": int(runs), "null_epsilon_runs": int(epsilon_runs)}


def within_null(null: dict[str, float], level: float = ALPHA) -> bool:
    """Whether a run's U-LiRA AUC is consistent with a perfect unlearner: its two-sided
    permutation p-value (distance from the permutation median) above ``level``. The median
    epsilon's p-value is reported beside it but not used here: 19 permutations can reject at
    5 % at best, and a control that cries wolf once in ten runs is not one."""
    return bool(null["null_auc_p"] > level)


def below_chance(auc: float, null: dict[str, float], level: float = ALPHA) -> bool:
    """An attack that reads significantly below what a perfect unlearner gives it."""
    return bool(auc < null["null_auc"] and null["null_auc_p"] <= level)
