"""Membership inference against machine unlearning (Chen et al., CCS 2021; ATTACKS.md part B).

The attacker queries the original model (posterior p) and the unlearned model (posterior q) on
a record and decides whether the record was in the original training set and deleted
(``in_out``) or never used. Shadow model pairs, whose membership the attacker knows (it trained
them itself), train an attack classifier on features of (p, q); the target pairs' records are
the candidates it scores. The classical baseline (``basic_mia``) sees p alone.

The registry entry ``membership`` (:class:`MembershipInference`) turns
:class:`PosteriorCase` objects (candidates' posteriors plus the attacker's shadow pairs, no
membership truth) into P(member) scores; the scorer ``membership``
(:mod:`tasks.analysis.membership`) turns them with :class:`MembershipTruth` into rows::

    case, truth = posterior_case(target_rows, shadow_rows, "none")
    attack = ATTACKS.get("membership")()
    config = MembershipConfig(features=("sorted_diff",), attack_models=("dt",))
    result = attack.run([case], config, seeds=[0])
    scored = SCORERS.get(attack.scorer)().score(result, [truth], config, context)

Features, attack models and output transforms (the parts, by name) live in
:mod:`tasks.attacks.membership_features` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tasks.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfigError,
    AttackResult,
    ThreatModel,
    target_seeds,
)
from tasks.attacks.membership_features import (
    ATTACK_MODELS,
    CLASSICAL,
    FEATURES,
    OUTPUT_TRANSFORMS,
    UNLEARNING_FEATURES,
    AttackScores,
    attack_model,
    build_features,
    fit_and_score,
    posteriors,
    softmax,
)
from tasks.registry import UnknownComponentError

Array = np.ndarray
NONE, SHUFFLED = "none", "shuffled_labels"


@dataclass
class PairRows:
    """Stored rows of one side: p and q logits of each scored record, its membership label.

    ``meta`` holds per-row arrays the analysis keeps (set and pair index, record id, original
    model's key). :func:`posterior_case` splits a target side into what the attacker sees and
    the truth; a shadow side's labels are the attacker's own knowledge.
    """

    p_logits: Array  # (n, C) original (or previous version) model
    q_logits: Array  # (n, C) unlearned model
    label: Array  # (n,) 1 = member (deleted, or remaining for in_in), 0 = never used
    meta: dict[str, Array]

    def __post_init__(self) -> None:
        n = len(self.label)
        if self.p_logits.shape != self.q_logits.shape or len(self.p_logits) != n:
            raise ValueError(f"p {self.p_logits.shape}, q {self.q_logits.shape} and "
                             f"{n} labels do not line up")


@dataclass(frozen=True, eq=False)
class ShadowPairs:
    """The attacker's shadow pairs: posteriors of its own originals (p) and unlearned models (q)
    on records whose membership it knows (it built the pairs)."""

    p: Array  # (m, C)
    q: Array  # (m, C)
    label: Array  # (m,) 1 = member

    def __post_init__(self) -> None:
        if self.p.shape != self.q.shape or self.p.ndim != 2 or len(self.label) != len(self.p):
            raise ValueError(f"shadow p {self.p.shape}, q {self.q.shape} and "
                             f"{len(self.label)} labels do not line up")


@dataclass(frozen=True, eq=False)
class PosteriorCase:
    """What the membership attacker sees of one target: the original's (p) and the unlearned
    model's (q) posteriors on the candidate records, already through the output defence both
    models answer with, plus its shadow pairs. No candidate's membership: that is
    :class:`MembershipTruth`, which only the scorer holds.

    ``meta``: public bookkeeping of the candidate rows (record ids, set and pair index).
    """

    p: Array  # (n, C)
    q: Array  # (n, C)
    shadow: ShadowPairs
    meta: dict[str, Array] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.p.shape != self.q.shape or self.p.ndim != 2:
            raise ValueError(f"p {self.p.shape} and q {self.q.shape} must both be (n, C)")
        if self.shadow.p.shape[1] != self.p.shape[1]:
            raise ValueError(f"shadow posteriors have {self.shadow.p.shape[1]} classes, the "
                             f"candidates' {self.p.shape[1]}")


@dataclass(frozen=True, eq=False)
class MembershipTruth:
    """The candidates' membership (1 = member), in the case's row order; analysis only."""

    label: Array  # (n,)
    meta: dict[str, Array] = field(default_factory=dict)


def posterior_case(target: PairRows, shadow: PairRows, transform: str = "none",
                   params: dict[str, Any] | None = None,
                   rows: Array | None = None) -> tuple[PosteriorCase, MembershipTruth]:
    """Split stored rows into the attacker's view and the truth.

    Both sides answer through the output transform ``transform`` (the adaptive attacker's
    shadow models are defended alike, ATTACKS.md 6.4). ``rows``: the target rows to keep
    (index or mask; default all)."""
    sel = slice(None) if rows is None else rows
    meta = {k: np.asarray(v)[sel] for k, v in target.meta.items()}
    case = PosteriorCase(
        posteriors(target.p_logits[sel], transform, params),
        posteriors(target.q_logits[sel], transform, params),
        ShadowPairs(posteriors(shadow.p_logits, transform, params),
                    posteriors(shadow.q_logits, transform, params),
                    np.asarray(shadow.label).copy()),
        meta)
    return case, MembershipTruth(np.asarray(target.label)[sel].copy(), meta)


@dataclass(frozen=True)
class MembershipConfig:
    """Which attacks to fit: every (feature, attack model), plus the classical baseline.

    ``model_params``: per attack model, scikit-learn ``set_params`` overrides of its registry
    settings (the membership search's hyperparameters). ``shuffled_control``: attack models
    also fitted on shadow labels permuted at random (``shuffles`` seeded permutations, scores
    averaged): a control whose AUC must stay near 0.5 (one permutation can land +-0.15 away by
    chance when the features are informative, because the tree then splits on them anyway).
    ``classical``: also fit ``basic_mia`` (the baseline of the scorer's ``classical_*``,
    ``auc_gain`` and ``deg_*`` columns). ``dry_run``: the first feature and attack model
    only, no controls.
    """

    features: tuple[str, ...] = UNLEARNING_FEATURES
    attack_models: tuple[str, ...] = ("dt", "rf", "lr", "mlp")
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    shuffled_control: tuple[str, ...] = ()
    shuffles: int = 5
    classical: bool = True
    dry_run: bool = False

    def __post_init__(self) -> None:
        from tasks.params import FieldError, check

        if not self.features or not self.attack_models:
            raise ValueError("features and attack_models must not be empty")
        check("shuffles", self.shuffles, low=1, integer=True)
        try:  # unknown names raise with the list of known ones
            for f in self.features:
                FEATURES.get(f)
            for m in (*self.attack_models, *self.shuffled_control, *self.model_params):
                ATTACK_MODELS.get(m)
        except UnknownComponentError as err:
            raise ValueError(str(err)) from None
        for m, params in self.model_params.items():
            try:  # scikit-learn refuses unknown parameter names here, not at fit time
                attack_model(m, 0, params)
            except (ValueError, TypeError) as err:
                raise FieldError(f"model_params.{m}", str(err).splitlines()[0]) from None

    def entries(self) -> tuple[tuple[str, str, str], ...]:
        """(feature, attack model, control) of every fitted attack, in output order."""
        features, models, controls = self.features, self.attack_models, self.shuffled_control
        if self.dry_run:
            features, models, controls = features[:1], models[:1], ()
        names = tuple(dict.fromkeys((*features, CLASSICAL))) if self.classical else features
        out = []
        for name in names:
            for model in models:
                out.append((name, model, NONE))
                if model in controls:
                    out.append((name, model, SHUFFLED))
        return tuple(out)


@dataclass(frozen=True)
class EntryScores:
    """One fitted attack's P(member) on the shadow rows (train) and the candidates (test)."""

    feature: str
    attack_model: str
    control: str  # "none", or "shuffled_labels" (shadow labels permuted: AUC should be ~0.5)
    train_scores: Array
    test_scores: Array


@dataclass
class MembershipResult(AttackResult):
    """Scores of every case: ``scores[i]`` (E, n_i) on case i's candidates and
    ``shadow_scores[i]`` (E, m_i) on its shadow rows, row e for ``entries[e]``."""

    entries: tuple[tuple[str, str, str], ...]
    scores: list[Array]
    shadow_scores: list[Array]
    shadow_labels: list[Array]  # the attacker's own shadow membership (for the fit AUC)

    def per_target(self) -> dict[str, list[Any]]:
        return {"scores": list(self.scores), "shadow_scores": list(self.shadow_scores)}

    def entry_scores(self, i: int = 0) -> list[EntryScores]:
        """Case i's scores, one record per (feature, attack model, control)."""
        return [EntryScores(f, m, c, self.shadow_scores[i][e], self.scores[i][e])
                for e, (f, m, c) in enumerate(self.entries)]


def _attack_case(case: PosteriorCase, config: MembershipConfig,
                 seed: int) -> tuple[Array, Array]:
    for name, arr in (("p", case.p), ("q", case.q), ("shadow p", case.shadow.p),
                      ("shadow q", case.shadow.q)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} holds non-finite posteriors")
    label = case.shadow.label
    perms = [np.random.default_rng([seed, 99, i]).permutation(label)
             for i in range(config.shuffles)]
    train, test, xs_xt = [], [], {}
    for name, model, control in config.entries():
        if name not in xs_xt:
            xs_xt = {name: (build_features(name, case.shadow.p, case.shadow.q),
                            build_features(name, case.p, case.q))}
        xs, xt = xs_xt[name]
        params = config.model_params.get(model)
        if control == NONE:
            sc = fit_and_score(xs, label, xt, model, seed, params)
            train.append(sc.train)
            test.append(sc.test)
        else:
            scores = [fit_and_score(xs, y, xt, model, seed, params) for y in perms]
            train.append(np.mean([s.train for s in scores], axis=0))
            test.append(np.mean([s.test for s in scores], axis=0))
    return np.stack(test), np.stack(train)


@ATTACKS.register("membership")
class MembershipInference(Attack):
    """Chen et al.'s attack: black-box posteriors of (theta, theta_u) plus shadow pairs."""

    name: ClassVar[str] = "membership"
    Config: ClassVar[type] = MembershipConfig
    scorer: ClassVar[str] = "membership"

    def threat_model(self, config: MembershipConfig) -> ThreatModel:
        return ThreatModel(white_box=False, knowledge="paper", data_kind="any",
                           model_family="any", shadow_pairs=True)

    def run(self, cases: Sequence[PosteriorCase], config: MembershipConfig, *,
            seeds: Sequence[int] | None = None, callback: Callable[..., Any] | None = None,
            prepared: dict[str, Array] | None = None) -> MembershipResult:
        """Fit every entry of ``config`` on each case's shadow pairs (with ``seeds[i]``) and
        score the case's candidates."""
        for case in cases:
            if not isinstance(case, PosteriorCase):
                raise AttackConfigError(
                    "membership inference attacks posterior cases with shadow pairs "
                    f"(PosteriorCase), got {type(case).__name__}: run it through the "
                    "membership stage")
        scores, shadow_scores = [], []
        for case, seed in zip(cases, target_seeds(cases, seeds)):
            test, train = _attack_case(case, config, seed)
            scores.append(test)
            shadow_scores.append(train)
        return MembershipResult(config.entries(), scores, shadow_scores,
                                [np.asarray(c.shadow.label) for c in cases])


def run_attacks(shadow: PairRows, target: PairRows, features: tuple[str, ...],
                attack_models: tuple[str, ...], transform: str = "none",
                transform_params: dict[str, Any] | None = None, seed: int = 0,
                shuffled_control: tuple[str, ...] = (),
                shuffles: int = 5) -> list[EntryScores]:
    """Every (feature, attack model), plus the classical baseline for each attack model: the
    registered attack on one case of stored rows (tests and notebooks)."""
    case, _ = posterior_case(target, shadow, transform, transform_params)
    config = MembershipConfig(tuple(features), tuple(attack_models),
                              shuffled_control=tuple(shuffled_control), shuffles=shuffles)
    return MembershipInference().run([case], config, seeds=[seed]).entry_scores(0)


__all__ = ["ATTACK_MODELS", "CLASSICAL", "FEATURES", "OUTPUT_TRANSFORMS",
           "UNLEARNING_FEATURES", "AttackScores", "EntryScores", "MembershipConfig",
           "MembershipInference", "MembershipResult", "MembershipTruth", "PairRows",
           "PosteriorCase", "ShadowPairs", "attack_model", "build_features", "fit_and_score",
           "posterior_case", "posteriors", "run_attacks", "softmax"]
