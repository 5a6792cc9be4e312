"""Per-record membership tests for unlearning that are calibrated under the null.

``phi[j, r]`` is model j's logit-scaled confidence on record r; ``member_in[j, r]`` is True
when model j trained on record r and then unlearned it (IN), False when it never saw it (OUT).
"No leak" means that, per record, the IN and OUT models' phi are draws of one distribution.

Why not :func:`tasks.analysis.per_example.per_record_auc` on leave-one-out U-LiRA scores:
leaving model j out of its own side's fit moves that fit's mean away from phi[j, r], so j's
score leans towards the other side and the per-record AUC sits below 0.5 with no leak at
all (about 0.38 at 12 models, 0.41 at 24, 0.43 at 64). The statistics here are functions of
the record's raw phi and labels only, with no model scored by a fit it is left out of:

* :func:`record_auc`: the Mann-Whitney AUC of phi_IN against phi_OUT. Under the null the
  labels of a record are exchangeable across its models, so its mean is exactly 0.5 for
  any number of models.
* :func:`record_pvalues`: a permutation test of U-LiRA's per-record online fit (one Gaussian
  per side) against one Gaussian for both; a permutation p-value is exact (uniform up to
  its 1 / (B + 1) grid) whatever the distribution of phi.
* :func:`benjamini_hochberg`: picks the records to report with the false-discovery rate
  controlled (Benjamini & Hochberg 1995).

Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from tasks.analysis.per_example import check_pair

# Floor on each side's MLE variance, relative to the record's pooled MLE variance: a side
# whose phi are all equal (saturated predictions) gives a large finite statistic, not inf.
VAR_FLOOR = 1e-6
# Permutation rounds are drawn in chunks of about this many (round, model, record) cells,
# which bounds the working memory to some tens of MB whatever the number of rounds.
CHUNK_CELLS = 1 << 20
# Relative tolerance when counting T_b >= T: a permutation that reproduces the observed
# split (or its mirror when n_in = n_out) must count even if its sums round differently.
_TIE_RTOL = 1e-9


def record_auc(phi: np.ndarray, member_in: np.ndarray) -> np.ndarray:
    """Per record, P(phi_IN > phi_OUT) + P(phi_IN = phi_OUT) / 2 over its models, (R,).

    The Mann-Whitney AUC with average ranks (ties count one half). Under the null the IN
    labels of a record are a uniformly random subset of its models given their count, so
    the AUC's expectation is exactly 0.5 whatever the number of models. Above 0.5: models
    that unlearned the record are still more confident on it than models that never saw it
    (under-unlearning); below 0.5: less confident (over-unlearning, also a tell). NaN where
    a record has no IN or no OUT model.
    """
    phi, mask = check_pair(phi, member_in, finite=True)
    ranks = rankdata(phi, axis=0)
    n_in = mask.sum(axis=0)
    n_out = mask.shape[0] - n_in
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(mask, ranks, 0.0).sum(axis=0) - n_in * (n_in + 1) / 2
        out = u / (n_in * n_out)
    return np.where((n_in == 0) | (n_out == 0), np.nan, out)


def _lr_statistic(z: np.ndarray, zz: np.ndarray, mask: np.ndarray, n_in: np.ndarray,
                  n_out: np.ndarray) -> np.ndarray:
    """2 log LR of two Gaussians (one per side) against one, over the models axis (-2).

    ``z`` is phi standardised per record (mean 0, MLE variance 1), so the pooled term
    n log v_all vanishes and T = -n_in log v_in - n_out log v_out with MLE variances, each
    floored at VAR_FLOOR (relative to v_all = 1). ``mask`` may carry leading round axes.
    """
    s_in = np.where(mask, z, 0.0).sum(axis=-2)
    q_in = np.where(mask, zz, 0.0).sum(axis=-2)
    n = n_in + n_out
    with np.errstate(invalid="ignore", divide="ignore"):
        v_in = q_in / n_in - (s_in / n_in) ** 2
        v_out = (n - q_in) / n_out - (s_in / n_out) ** 2  # OUT sums: -s_in and n - q_in
    return (-n_in * np.log(np.maximum(v_in, VAR_FLOOR))
            - n_out * np.log(np.maximum(v_out, VAR_FLOOR)))


def record_pvalues(phi: np.ndarray, member_in: np.ndarray, permutations: int = 999,
                   seed: int = 0) -> np.ndarray:
    """Per record, a two-sided permutation p-value for "IN and OUT phi differ", (R,).

    Statistic: the Gaussian likelihood ratio of "IN and OUT each their own N(mu, sd)"
    against "one N(mu, sd) for all", MLE variances floored at VAR_FLOOR times the pooled
    one: U-LiRA's per-record online fit tested against no difference. It grows with a
    difference in means (either sign) and with a difference in spreads, so it catches both
    under- and over-unlearning and an unlearning that only changes how much phi varies.

    Calibration: under the null a record's labels are exchangeable across its models, so
    the observed T is one draw among the T_b of labels permuted within the record (its IN
    count kept), and p = (1 + #{b: T_b >= T}) / (B + 1) satisfies P(p <= a) <= a exactly,
    for any distribution of phi and any number of models. The permutations are drawn per
    record independently (one uniform matrix per round, arg-sorted along models), so the
    p-values of different records are independent under the null. Deterministic for a
    ``seed``. NaN where a record has fewer than 2 IN or 2 OUT models; 1 where its phi are
    all equal.
    """
    phi, mask = check_pair(phi, member_in, finite=True)
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) \
            or permutations < 1:
        raise ValueError(f"permutations must be an integer >= 1, got {permutations!r}")
    n_models, n_records = phi.shape
    n_in = mask.sum(axis=0).astype(np.float64)
    n_out = n_models - n_in
    # The statistic is invariant to a per-record affine map of phi (and so is the relative
    # floor): standardising makes v_all = 1 and keeps the sums free of cancellation.
    centred = phi - phi.mean(axis=0, keepdims=True)
    scale = np.sqrt((centred * centred).mean(axis=0, keepdims=True))
    z = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    zz = z * z
    observed = _lr_statistic(z, zz, mask, n_in, n_out)
    floor = observed - _TIE_RTOL * np.maximum(1.0, np.abs(observed))
    exceed = np.zeros(n_records, dtype=np.int64)
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // max(1, n_models * n_records))
    done = 0
    while done < permutations:
        rounds = min(chunk, permutations - done)
        order = np.argsort(rng.random((rounds, n_models, n_records)), axis=1)
        shuffled = np.take_along_axis(mask[None], order, axis=1)
        t_b = _lr_statistic(z, zz, shuffled, n_in, n_out)
        exceed += (t_b >= floor).sum(axis=0)
        done += rounds
    p = (1.0 + exceed) / (permutations + 1.0)
    return np.where((n_in < 2) | (n_out < 2), np.nan, p)


def benjamini_hochberg(pvalues: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg step-up at false-discovery rate ``q``: which p-values to reject.

    Sort the m p-values, take the largest k with p_(k) <= k q / m and reject the k smallest
    (Benjamini & Hochberg 1995, J. R. Stat. Soc. B 57(1):289-300). With independent (or
    positively dependent) p-values, valid ones (P(p <= a) <= a) included, the expected
    fraction of false discoveries among the rejections is at most q m_0 / m <= q.
    NaN p-values (untestable records) are never rejected and do not count in m: they are
    no hypotheses tested, and counting them would only make the procedure stricter.
    Returns a bool array of ``pvalues``' shape.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    valid = ~np.isnan(p)
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    reject = np.zeros(p.shape, dtype=bool)
    m = int(valid.sum())
    if m == 0:
        return reject
    ordered = np.sort(p[valid])
    passing = np.nonzero(ordered <= q * np.arange(1, m + 1) / m)[0]
    if len(passing):
        reject[valid] = p[valid] <= ordered[passing[-1]]
    return reject
