"""Attacks on unlearning, behind one registry (:data:`ATTACKS`).

Every attack consumes the cases its threat model names, never ground truth. Registered
attacks: ``inversion`` (feature recovery, :mod:`tasks.attacks.inversion`), ``analytic``
(exact recovery from a fully connected first layer, :mod:`tasks.attacks.analytic`) and ``probing``
(label inference, :mod:`tasks.attacks.probing`) on :class:`tasks.cases.Case` objects;
``membership`` (membership inference against unlearning, :mod:`tasks.attacks.membership`) on
posterior cases with shadow pairs.
"""

from __future__ import annotations

from tasks.attacks import analytic as _analytic  # noqa: F401  (registers "analytic")
from tasks.attacks import inversion as _inversion  # noqa: F401  (registers "inversion")
from tasks.attacks import membership as _membership  # noqa: F401  (registers "membership")
from tasks.attacks import probing as _probing  # noqa: F401  (registers "probing")
from tasks.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfigError,
    AttackResult,
    NonFiniteLossError,
    ThreatModel,
)

__all__ = ["ATTACKS", "Attack", "AttackConfigError", "AttackResult", "NonFiniteLossError",
           "ThreatModel"]
