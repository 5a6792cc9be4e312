"""The attack extension point: a small base class, a registry, shared errors.

An attack receives :class:`tasks.cases.Case` objects only, never a forget request or the
forgotten samples (those stay in :class:`tasks.cases.GroundTruth`, which analysis holds).

Lifecycle of :meth:`Attack.run`::

    attack = ATTACKS.get("inversion")()
    config = build(attack.Config, {"iterations": 100}, "recovery.configs[0]")
    result = attack.run(cases, config, seeds=[0, 1], callback=None)
    result.per_target()  # {"images": [...], ...}: one entry per case, same order

Adding an attack: subclass :class:`Attack`, declare ``Config`` (a frozen dataclass with a
``dry_run`` flag) and decorate the class with ``@ATTACKS.register("name")``; the conformance kit
in ``tests/conformance/test_attack_conformance.py`` then runs it automatically.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from tasks.cases import Case
from tasks.registry import Registry


class NonFiniteLossError(FloatingPointError):
    """The attack's objective became NaN or infinite; the attack aborts instead of returning
    garbage that would be scored as a (bad) reconstruction."""


class AttackConfigError(ValueError):
    """A configuration the case cannot support (e.g. known labels under paper knowledge)."""


class AttackResult(abc.ABC):
    @abc.abstractmethod
    def per_target(self) -> dict[str, list[Any]]:
        """Every output as a list with one entry per input case (in input order)."""


class Attack(abc.ABC):
    name: ClassVar[str] = ""
    Config: ClassVar[type]

    @abc.abstractmethod
    def run(self, cases: Sequence[Case], config: Any, *, seeds: Sequence[int] | None = None,
            callback: Callable[..., Any] | None = None) -> AttackResult:
        """Attack every case; ``seeds[i]`` fixes the randomness of case i (default: i)."""


ATTACKS: Registry[type[Attack]] = Registry("attack")


def target_seeds(cases: Sequence[Case], seeds: Sequence[int] | None) -> list[int]:
    if seeds is None:
        return list(range(len(cases)))
    if len(seeds) != len(cases):
        raise ValueError(f"{len(seeds)} seeds for {len(cases)} cases")
    return [int(s) for s in seeds]
