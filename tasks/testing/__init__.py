"""Conformance kits for plug-ins, in the style of ``optuna.testing``: subclass and get the suite.

A plug-in's test module subclasses a kit, names its component and a small configuration, and
pytest collects every test of the kit for it (the kits' names do not start with ``Test``, so the
bases themselves are never collected)::

    from tasks.testing import AttackConformance

    class TestMyAttack(AttackConformance):
        attack = "my_package.attacks:MyAttack"
        config = {"iterations": 3}

Attacks whose threat model asks for shadow pairs (membership inference against unlearning)
receive posterior cases, not image cases: their kit is :class:`MembershipAttackConformance`.

This package imports pytest: import it from tests only.
"""

from __future__ import annotations

from tasks.testing.attacks import AttackConformance, flat_outputs
from tasks.testing.defences import DefenceConformance
from tasks.testing.membership import MembershipAttackConformance, posterior_sides
from tasks.testing.states import digits, digits_state, registered_name, resolve, small_state
from tasks.testing.unlearning import UnlearningConformance

KITS = (AttackConformance, MembershipAttackConformance, UnlearningConformance,
        DefenceConformance)

__all__ = [
    "KITS",
    "AttackConformance",
    "DefenceConformance",
    "MembershipAttackConformance",
    "UnlearningConformance",
    "digits",
    "digits_state",
    "flat_outputs",
    "posterior_sides",
    "registered_name",
    "resolve",
    "small_state",
]
