"""The attack extension point: a small base class, its threat model, a registry, shared errors.

An attack receives :class:`tasks.cases.Case` objects only, never a forget request or the
forgotten samples (those stay in :class:`tasks.cases.GroundTruth`, which analysis holds). It
returns *guesses*; it never scores itself: its ``scorer`` (a name in
:data:`tasks.analysis.SCORERS`) turns guesses and ground truth into rows.

Lifecycle, as the generic ``attacks`` stage drives it::

    attack = ATTACKS.get("inversion")()                # or "package.module:MyAttack"
    config = build(attack.Config, {"iterations": 100}, "attacks[0].config")
    threat = attack.threat_model(config)               # what each Case must hold
    prepared = attack.prepare(original_case, config, seed)   # optional; once per theta
    result = attack.run(cases, config, seeds=[0, 1], prepared=prepared)
    result.per_target()                                # {"images": [...], ...}: one per case

Adding an attack: subclass :class:`Attack`, declare ``Config`` (a frozen dataclass with a
``dry_run`` flag), ``scorer`` and :meth:`threat_model`, and decorate the class with
``@ATTACKS.register("name")`` — or name it in a spec as ``package.module:Class``. Its tests
subclass :class:`tasks.testing.AttackConformance` and inherit the whole suite.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from tasks.cases import Case
from tasks.params import to_dict
from tasks.registry import Registry, lacks_members


class NonFiniteLossError(FloatingPointError):
    """The attack's objective became NaN or infinite; the attack aborts instead of returning
    garbage that would be scored as a (bad) reconstruction."""


class AttackConfigError(ValueError):
    """A configuration the case cannot support (e.g. known labels under paper knowledge)."""


@dataclass(frozen=True)
class ThreatModel:
    """What an attack needs from each case; the stage builds cases that hold exactly this.

    ``white_box``: theta and theta_u as modules (else only counted query access).
    ``knowledge``: ``paper`` (theta, theta_u alone) or ``reference`` (also theta_0, N, k, the
    unlearning step size and the forgotten labels, as the reference implementation assumes).
    ``data_kind`` / ``model_family``: what the attacked models and data must be.
    ``forget_kind``: the forget requests the attack is meant for (``class_share`` for label
    inference); ``None``: any kind, the experiment's own requests.
    ``shadow_pairs``: the attacker also holds shadow model pairs it trained itself, with their
    membership (membership inference against unlearning: posterior cases, not :class:`Case`).
    """

    white_box: bool = True
    knowledge: Literal["paper", "reference"] = "paper"
    data_kind: Literal["image", "tabular", "any"] = "any"
    model_family: Literal["torch", "any"] = "torch"
    forget_kind: Literal["single", "group", "class_share"] | None = None
    shadow_pairs: bool = False


class AttackResult(abc.ABC):
    @abc.abstractmethod
    def per_target(self) -> dict[str, list[Any]]:
        """Every output as a list with one entry per input case (in input order)."""


class Attack(abc.ABC):
    name: ClassVar[str] = ""
    Config: ClassVar[type]
    # Name of the scorer in tasks.analysis.SCORERS that turns this attack's guesses into rows
    # (or "package.module:Scorer").
    scorer: ClassVar[str] = ""
    # Attributes of the progress objects ``run`` passes to ``callback`` that a search may
    # report as intermediate results (ASHA), e.g. ("matching_loss",).
    progress_metrics: ClassVar[tuple[str, ...]] = ()
    # Configuration under the defaults when the attack audits a pair from outside (theta and
    # theta_u alone, no recipe): e.g. {"knowledge": "paper"}.
    pair_defaults: ClassVar[dict[str, Any]] = {}

    @abc.abstractmethod
    def threat_model(self, config: Any) -> ThreatModel:
        """What a case must hold for this configuration."""

    def unfit_model(self, config: Any, model: Any, input_shape: tuple[int, ...]) -> str:
        """Why this attack cannot run on ``model``'s architecture ("" when it can). Checked
        before any work: on an untrained model of the spec, or on a user's theta."""
        return ""

    def prepare(self, case: Case, config: Any, seed: int) -> dict[str, np.ndarray] | None:
        """Optional work against the original model alone (``case`` holds no theta_u), done
        once per original and reused for every unlearned model: arrays, or None."""
        return None

    def prepare_settings(self, config: Any) -> dict[str, Any]:
        """The settings ``prepare`` depends on (its cache key): configurations that differ
        only elsewhere share one prepared result."""
        return to_dict(config)

    @abc.abstractmethod
    def run(self, cases: Sequence[Case], config: Any, *, seeds: Sequence[int] | None = None,
            callback: Callable[..., Any] | None = None,
            prepared: dict[str, np.ndarray] | None = None) -> AttackResult:
        """Attack every case; ``seeds[i]`` fixes the randomness of case i (default: i)."""


def _check_attack(obj: object) -> str:
    lacks = lacks_members(obj, Attack, ("Config", "scorer", "run", "threat_model"))
    if not lacks and not getattr(obj, "scorer", ""):
        lacks = "set the class attribute 'scorer' to a scorer name"
    return lacks


ATTACKS: Registry[type[Attack]] = Registry("attack", group="unlearn_audit.attacks",
                                           check=_check_attack)


def target_seeds(cases: Sequence[Case], seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return list(range(len(cases)))
    if len(seeds) != len(cases):
        raise ValueError(f"{len(seeds)} seeds for {len(cases)} cases")
    return [int(s) for s in seeds]
