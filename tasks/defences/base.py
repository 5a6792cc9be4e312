"""The defence extension point: a small base class per place a defence acts, one registry.

A defence acts in exactly one place (``acts_on``):

* ``"update"``   -- on the unlearning update: (theta, theta_u) -> a defended theta_u that the
  provider publishes instead (Hu et al.'s defences against feature recovery);
* ``"outputs"``  -- on the posteriors a black-box user sees: logits (n, C) -> posteriors (n, C),
  applied to the original and the unlearned model alike, and to the attacker's shadow models too
  (the adaptive attacker of Chen et al.);
* ``"training"`` -- on how every model is trained (DP-SGD): shadow and target models alike.

Lifecycle::

    defence = DEFENCES.get("pruning")()
    params = defence.params(0.8)                 # the swept strength, typed and checked
    theta_u_published = defence.apply(theta, theta_u, params, seed=0)

Every defence declares a frozen ``Params`` dataclass; :meth:`Defence.params` builds it from a
strength and fixed settings with :func:`tasks.params.build`, so unknown keys fail with the list of
allowed ones. ``identity_strength`` is the strength at which the defence provably changes
nothing (``None`` when no such strength exists, e.g. label-only output or DP-SGD, whose clipping
alone changes training). Adding a defence: subclass one of :class:`UpdateDefence`,
:class:`OutputDefence` or :class:`TrainingDefence`, decorate it with
``@DEFENCES.register("name")``; ``tests/conformance/test_defence_conformance.py`` then runs it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from torch import nn

from tasks.params import build
from tasks.registry import Registry, lacks_members

ActsOn = Literal["update", "outputs", "training"]


class DefenceError(ValueError):
    """A defence setting that cannot be applied to this model or these outputs."""


class Defence(abc.ABC):
    name: ClassVar[str] = ""
    acts_on: ClassVar[ActsOn]
    # The Params field a sweep varies ("sigma", "ratio", "epochs", "k", ...); None: no strength.
    strength_field: ClassVar[str | None] = None
    identity_strength: ClassVar[float | None] = None
    # A strength that changes something, used by the conformance kit.
    example_strength: ClassVar[float | None] = None
    # Which paper proposed it: "hu2024" (against inversion) or "chen2021" (against MIA).
    paper: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Params:
        pass

    def params(self, strength: float | None = None, fixed: Mapping[str, Any] | None = None,
               path: str = "") -> Any:
        """Typed params from a swept ``strength`` plus ``fixed`` settings (ParamError if bad)."""
        data = dict(fixed or {})
        if strength is not None:
            if self.strength_field is None:
                raise DefenceError(f"defence {self.name!r} has no strength to sweep; "
                                   f"give strengths: [null]")
            if self.strength_field in data:
                raise DefenceError(f"defence {self.name!r}: {self.strength_field!r} is the "
                                   "swept strength; set it in strengths, not in params")
            data[self.strength_field] = strength
        return build(self.Params, data, path or self.name)

    def strength_of(self, params: Any) -> float | None:
        return None if self.strength_field is None else getattr(params, self.strength_field)


class UpdateDefence(Defence):
    """Defends the published unlearned model; the original theta is left as it is."""

    acts_on: ClassVar[ActsOn] = "update"
    paper = "hu2024"

    @abc.abstractmethod
    def apply(self, theta: nn.Module, theta_u: nn.Module, params: Any, *, seed: int = 0,
              context: UpdateContext | None = None) -> nn.Module:
        """A new, defended copy of ``theta_u`` (inputs are never modified). ``seed`` fixes any
        randomness; ``context`` carries data for defences that train (fine-tuning)."""


class OutputDefence(Defence):
    """Post-processing of stored logits; deterministic, so no seed."""

    acts_on: ClassVar[ActsOn] = "outputs"
    paper = "chen2021"

    @abc.abstractmethod
    def apply(self, logits: np.ndarray, params: Any) -> np.ndarray:
        """logits (n, C) -> defended posteriors (n, C), float64, rows summing to 1."""


class TrainingDefence(Defence):
    """Replaces the training recipe of every model (shadow and target alike)."""

    acts_on: ClassVar[ActsOn] = "training"
    paper = "chen2021"

    @abc.abstractmethod
    def train(self, model: nn.Module, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
              cfg: Any, params: Any, *, seed: int, device: Any = "cpu",
              exclude: tuple[int, ...] = ()) -> Any:
        """Train ``model`` on x[indices] minus ``exclude``; returns a result holding the model
        and what the defence reports (epsilon for DP-SGD)."""


@dataclass
class UpdateContext:
    """Data a training update defence (fine-tuning) may use: held-out samples only."""

    x: np.ndarray  # the dataset's training inputs (indices point into it)
    y: np.ndarray
    heldout: np.ndarray  # indices of samples that were never in theta's training set
    train_cfg: Any  # tasks.training.TrainConfig: the provider's recipe (lr, batch, optimiser)
    device: Any = "cpu"
    source: str = "public"  # which split ``heldout`` came from (recorded in results)


def _check_defence(obj: object) -> str:
    lacks = lacks_members(obj, Defence, ("Params", "acts_on"))
    if not lacks and not issubclass(obj, (UpdateDefence, OutputDefence,  # type: ignore[arg-type]
                                          TrainingDefence)):
        lacks = "subclass UpdateDefence, OutputDefence or TrainingDefence"
    return lacks


DEFENCES: Registry[type[Defence]] = Registry("defence", group="unlearn_audit.defences",
                                             check=_check_defence)
