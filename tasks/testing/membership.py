"""The conformance kit of attacks on posterior cases with shadow pairs (``shadow_pairs`` in the
threat model; membership inference against unlearning): subclass
:class:`MembershipAttackConformance` and get the suite.

The image-case kit (:class:`tasks.testing.AttackConformance`) builds :class:`tasks.cases.Case`
objects from a trained torch model; an attack whose threat model asks for shadow pairs receives
:class:`tasks.attacks.membership.PosteriorCase` objects instead. This kit builds them from
real tiny model pairs: scikit-learn logistic regressions on 8x8 digits, each original
retrained without one of its records (the unlearned model), on a shadow and a disjoint target
half. A pair's positive is its deleted record, its negative a record no model of the side saw.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

from tasks.analysis import SCORERS, ScoringContext
from tasks.attacks import AttackConfigError
from tasks.attacks.base import ThreatModel
from tasks.attacks.membership import MembershipTruth, PairRows, PosteriorCase, posterior_case
from tasks.cases import Case, PublicMetadata
from tasks.testing.attacks import AttackConformance, assert_same, flat_outputs
from tasks.testing.states import digits, resolve

Sides = tuple[PairRows, PairRows]  # (shadow, target)


def _fit(x: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(max_iter=200).fit(x, y)


def _logits(model, x: np.ndarray, classes: int) -> np.ndarray:
    """Log-probabilities over every class (a class missing from a fit gets a tiny mass)."""
    out = np.full((len(x), classes), np.log(1e-12))
    out[:, model.classes_] = model.predict_log_proba(x)
    return out


def _side(pool: np.ndarray, x: np.ndarray, y: np.ndarray, sets: int, set_size: int,
          deletions: int, rng: np.random.Generator) -> PairRows:
    """``sets`` originals on disjoint sets of ``pool``, ``deletions`` retrained pairs each."""
    order = rng.permutation(pool)
    members, outsiders = order[:sets * set_size], order[sets * set_size:]
    classes = int(y.max()) + 1
    p, q, label, meta = [], [], [], {"set_index": [], "pair_index": [], "record": []}
    for s in range(sets):
        train = members[s * set_size:(s + 1) * set_size]
        original = _fit(x[train], y[train])
        for j in range(deletions):
            deleted, never = train[j], outsiders[s * deletions + j]
            unlearned = _fit(x[np.delete(train, j)], y[np.delete(train, j)])
            records = np.array([deleted, never])
            p.append(_logits(original, x[records], classes))
            q.append(_logits(unlearned, x[records], classes))
            label += [1, 0]
            meta["set_index"] += [s, s]
            meta["pair_index"] += [j, j]
            meta["record"] += [int(deleted), int(never)]
    return PairRows(np.concatenate(p), np.concatenate(q), np.asarray(label),
                    {k: np.asarray(v) for k, v in meta.items()})


@functools.lru_cache(maxsize=2)
def posterior_sides(sets: int = 2, set_size: int = 80, deletions: int = 6,
                    seed: int = 0) -> Sides:
    """Shadow and target rows of tiny real pairs on digits (disjoint halves; cached)."""
    d = digits()
    x = d.x_train.reshape(len(d.x_train), -1).astype(np.float64)
    halves = np.array_split(np.random.default_rng(seed).permutation(len(x)), 2)
    rng = np.random.default_rng([seed, 1])
    shadow, target = (_side(h, x, d.y_train, sets, set_size, deletions, rng) for h in halves)
    return shadow, target


class MembershipAttackConformance(AttackConformance):
    """Base class of a posterior-case attack's conformance tests.

    Declare in the subclass::

        class TestMembership(MembershipAttackConformance):
            attack = "membership"
            config = {"features": ["sorted_diff"], "attack_models": ["dt"]}

    Optional: ``output_defence``/``output_defence_params`` (what both sides answer through),
    a ``state`` fixture returning other (shadow, target) :class:`PairRows`, and
    :meth:`check_outputs`. The target side is cut into one case per original.
    """

    output_defence: ClassVar[str] = "none"
    output_defence_params: ClassVar[dict[str, Any]] = {}
    no_loss_reason: ClassVar[str | None] = (
        "no objective: the attack fits classifiers (non-finite posteriors are refused, see "
        "test_non_finite_posteriors_are_refused)")

    @pytest.fixture
    def state(self) -> Sides:  # type: ignore[override]
        """The provider: the attacker's shadow rows and the target rows."""
        return posterior_sides()

    def make_cases(self, state: Sides, *, dataset: Any = None,  # type: ignore[override]
                   poison: bool = False) -> tuple[list[PosteriorCase], list[MembershipTruth]]:
        """One posterior case per target original, each with every shadow row.

        ``poison``: NaN logits on both models of both sides."""
        shadow, target = state
        if poison:
            nan = np.full_like(shadow.p_logits, np.nan)
            shadow = PairRows(nan, nan, shadow.label, shadow.meta)
            tnan = np.full_like(target.p_logits, np.nan)
            target = PairRows(tnan, tnan, target.label, target.meta)
        cases, truths = [], []
        for s in np.unique(target.meta["set_index"]):
            rows = np.flatnonzero(target.meta["set_index"] == s)
            case, truth = posterior_case(target, shadow, self.output_defence,
                                         self.output_defence_params, rows=rows)
            cases.append(case)
            truths.append(truth)
        return cases, truths

    def scored(self, cases: Sequence[PosteriorCase], truths: Sequence[MembershipTruth],
               result: Any, config: Any) -> Any:
        scorer = resolve(SCORERS, self.attack_class().scorer)()
        context = ScoringContext(num_classes=int(cases[0].p.shape[1]), seed=0)
        return scorer, scorer.score(result, truths, config, context)

    # --- the suite: what differs from image cases --------------------------------------------

    def test_threat_model_asks_for_shadow_pairs(self) -> None:
        threat = self.threat()
        assert isinstance(threat, ThreatModel)
        assert threat.shadow_pairs, "a posterior-case attack declares shadow_pairs=True"
        assert not threat.white_box and threat.knowledge == "paper"

    def test_non_finite_posteriors_are_refused(self, state: Sides) -> None:
        """NaN logits stop the output defence (building the case) or the attack."""
        with pytest.raises(ValueError):
            cases, _ = self.make_cases(state, poison=True)
            self.run_attack(cases)

    def test_cannot_reach_the_forgotten_samples(self, state: Sides) -> None:
        """run() takes cases only; a case holds no candidate's membership; the truth reaches
        the scorer alone: permuting it changes the scores' AUC, not the attack's output."""
        cls = self.attack_class()
        assert list(inspect.signature(cls.run).parameters)[:2] == ["self", "cases"]
        cases, truths = self.make_cases(state)
        for case in cases:
            assert not any(isinstance(v, MembershipTruth) for v in vars(case).values())
            names = {f.name for f in dataclasses.fields(case)}
            assert not names & {"label", "labels", "membership", "truth"}, names
        config = self.make_config()
        result = self.run_attack(cases, config)
        flipped = [MembershipTruth(1 - t.label, t.meta) for t in truths]
        assert_same(result, self.run_attack(cases, config), "same cases, other truth")
        _, a = self.scored(cases, truths, result, config)
        _, b = self.scored(cases, flipped, result, config)
        assert a.rows != b.rows, "the scorer must read the truth it is given"

    def test_case_follows_the_threat_model(self, state: Sides) -> None:
        cases, truths = self.make_cases(state)
        for case in cases:
            assert isinstance(case, PosteriorCase)
            assert case.shadow.label is not None and len(case.shadow.label)
            modules = [k for k, v in vars(case).items() if hasattr(v, "parameters")]
            assert not modules, f"a posterior case exposes a model: {modules}"
        self.check_result(self.run_attack(cases), cases, truths)

    def test_refuses_image_cases(self) -> None:
        meta = PublicMetadata("digits", "image", (1, 8, 8), 10, None, None)
        with pytest.raises(AttackConfigError):
            self.run_attack([Case(meta)])

    def test_scorer_turns_results_into_rows(self, state: Sides) -> None:
        cases, truths = self.make_cases(state)
        config = self.make_config()
        result = self.run_attack(cases, config)
        scorer, scored = self.scored(cases, truths, result, config)
        assert scorer.metrics and scorer.leakage in scorer.metrics
        assert set(scorer.metrics.values()) <= {"maximize", "minimize"}
        assert len(scored.rows) == len(cases), "one row list per case"
        entries = getattr(result, "entries", None)
        for rows in scored.rows:
            assert rows and all(isinstance(row, dict) and row for row in rows)
            if entries is not None:
                assert len(rows) == len(entries), "one row per (feature, model, control)"
        for name in scorer.metrics:
            values = np.asarray(scored.metrics[name], dtype=np.float64)
            assert values.shape == (len(cases),), name
            assert not np.isinf(values).any(), f"{name}: finite or NaN only"
        assert all(np.isfinite(v).all() for v in flat_outputs(result))
