"""The kits pass a well-behaved out-of-tree plug-in and fail flawed ones.

The toys live in ``tests/conformance/toys.py`` (outside the package) and are named as
``module:attr``, as a plug-in's own tests would name them. A flawed toy is checked by calling
the kit's test directly: it must fail (AssertionError or pytest's ``Failed``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from tasks.registry import UnknownComponentError
from tasks.testing import (
    AttackConformance,
    DefenceConformance,
    UnlearningConformance,
    digits_state,
)

TOYS = "tests.conformance.toys"
FAILS = (AssertionError, pytest.fail.Exception)


class TestToyAttack(AttackConformance):
    attack = f"{TOYS}:ToyLabelAttack"


class TestToyWhiteBoxAttack(AttackConformance):
    attack = f"{TOYS}:ToyWhiteBoxAttack"


class TestToyRetrain(UnlearningConformance):
    method = f"{TOYS}:ToyRetrain"


class TestToySharpen(DefenceConformance):
    defence = f"{TOYS}:ToySharpen"


def _attack_kit(flaw: str = "", attack: str = "ToyLabelAttack") -> AttackConformance:
    class Kit(AttackConformance):
        config: ClassVar[dict[str, Any]] = {"flaw": flaw}

    Kit.attack = f"{TOYS}:{attack}"
    return Kit()


@pytest.mark.parametrize("flaw,test", [
    ("short_output", "test_output_shapes"),
    ("unseeded", "test_seed_determinism"),
    ("ignores_nan", "test_non_finite_loss_aborts"),
    ("pickled_prepare", "test_prepared_arrays_are_accepted"),
])
def test_attack_kit_fails_a_flawed_attack(flaw, test):
    getattr(_attack_kit(), test)(digits_state())  # the sound toy passes
    with pytest.raises((*FAILS, ValueError)):  # np.load refuses pickled arrays: ValueError
        getattr(_attack_kit(flaw), test)(digits_state())


def test_attack_kit_fails_an_unknown_scorer():
    with pytest.raises(UnknownComponentError, match="no_such_scorer"):
        _attack_kit(attack="ToyAttackWithoutScorer").test_scorer_turns_results_into_rows(
            digits_state())


def test_attack_kit_fails_a_request_kind_against_the_threat_model():
    kit = _attack_kit()
    kit.request_kind = "single"
    with pytest.raises(FAILS):
        kit.test_case_follows_the_threat_model(digits_state())


def _method_kit(toy: str) -> UnlearningConformance:
    class Kit(UnlearningConformance):
        method = f"{TOYS}:{toy}"

    return Kit()


@pytest.mark.parametrize("toy,test,family", [
    ("ToyRetrainFromOriginal", "test_retrains_from_scratch", "torch"),
    ("ToyNoOp", "test_forget_loss_rises", "sklearn"),
    ("ToyInPlace", "test_leaves_the_original_alone", "torch"),
])
def test_unlearning_kit_fails_a_flawed_method(toy, test, family):
    getattr(_method_kit("ToyRetrain"), test)(family)  # the sound toy passes
    with pytest.raises((*FAILS, AttributeError)):  # reading a missing original: AttributeError
        getattr(_method_kit(toy), test)(family)


def test_unlearning_kit_fails_a_misnamed_step_size():
    with pytest.raises(FAILS, match="step_size_param 'lr'"):
        _method_kit("ToyMisnamedStepSize").test_declares_its_capabilities()


@pytest.mark.parametrize("toy,test", [
    ("ToySharpenInPlace", "test_leaves_its_inputs_alone"),
    ("ToySharpenWrongIdentity", "test_identity_strength_changes_nothing"),
])
def test_defence_kit_fails_a_flawed_defence(toy, test):
    class Kit(DefenceConformance):
        defence = f"{TOYS}:{toy}"

    with pytest.raises(FAILS):
        getattr(Kit(), test)()
