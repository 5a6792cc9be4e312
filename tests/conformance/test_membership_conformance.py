"""Membership inference against unlearning subclasses the posterior-case attack kit
(:class:`tasks.testing.MembershipAttackConformance`): real tiny shadow and target pairs, the
threat-model boundary (no candidate's membership in a case), seeds, dry run and the scorer."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from tasks.attacks import ATTACKS
from tasks.attacks.membership import CLASSICAL
from tasks.testing import MembershipAttackConformance, posterior_sides


class TestMembership(MembershipAttackConformance):
    attack = "membership"
    config: ClassVar[dict] = {"features": ["sorted_diff", "l2_distance"],
                              "attack_models": ["dt", "lr"], "shuffled_control": ["dt"],
                              "shuffles": 2}

    def check_outputs(self, out, cases, truths):
        for case, scores, shadow in zip(cases, out["scores"], out["shadow_scores"]):
            # one row per fitted (feature, model, control); a dry run fits fewer
            assert scores.shape == (len(shadow), len(case.p))
            assert shadow.shape[1] == len(case.shadow.label)
            assert ((scores >= 0) & (scores <= 1)).all()

    def test_entries_and_dry_run(self):
        config = self.make_config()
        assert config.entries()[0] == ("sorted_diff", "dt", "none")
        assert (CLASSICAL, "lr", "none") in config.entries()
        assert ("l2_distance", "dt", "shuffled_labels") in config.entries()
        assert len(config.entries()) == 3 * 2 + 3  # 3 features x 2 models + 3 dt controls
        assert self.make_config(dry_run=True).entries() == (
            ("sorted_diff", "dt", "none"), (CLASSICAL, "dt", "none"))

    def test_unknown_names_give_the_registrys_message(self):
        cls = ATTACKS.get("membership").Config
        with pytest.raises(ValueError, match="direct_diff"):
            cls(features=("nope",))
        with pytest.raises(ValueError, match="rf"):
            cls(attack_models=("svm",))
        with pytest.raises(ValueError, match="rf"):
            cls(model_params={"svm": {}})


class TestDefendedMembership(TestMembership):
    """Both sides answer through an output defence (registered by ``tasks.defences``)."""

    output_defence = "label_only"

    @pytest.fixture(autouse=True)
    def _defences(self):
        import tasks.defences  # noqa: F401  (registers the output transforms)


def _run(cases, **config):
    attack = ATTACKS.get("membership")()
    return attack.run(cases, attack.Config(**config), seeds=[0] * len(cases))


def test_the_attack_finds_the_unlearning_signal_of_real_pairs():
    """Logistic regressions retrained without one record: the deleted record's posterior
    moves, a never-used record's barely; p alone (the classical attack) sees little."""
    from tasks.analysis import SCORERS, ScoringContext

    cases, truths = TestMembership().make_cases(posterior_sides())
    config = ATTACKS.get("membership").Config(features=("sorted_diff",), attack_models=("dt",))
    result = ATTACKS.get("membership")().run(cases, config, seeds=[0, 1])
    scored = SCORERS.get("membership")().score(result, truths, config,
                                               ScoringContext(num_classes=10))
    assert scored.metrics["auc"].mean() > 0.8
    gains = [r["auc_gain"] for rows in scored.rows for r in rows if r["feature"] != CLASSICAL]
    assert np.mean(gains) > 0.2


def test_model_params_reach_the_classifier():
    cases, _ = TestMembership().make_cases(posterior_sides())
    common = {"features": ("sorted_diff",), "attack_models": ("lr",), "classical": False}
    default = _run(cases, **common)
    weak = _run(cases, **common, model_params={"lr": {"logisticregression__C": 1e-4}})
    assert not np.allclose(default.scores[0], weak.scores[0])
    # A tiny C shrinks the scores toward the shadow members' share (one half).
    assert np.abs(weak.scores[0] - 0.5).max() < np.abs(default.scores[0] - 0.5).max()
