"""Output (posterior) defences (Chen et al., CCS 2021; ATTACKS.md 8.2).

Post-processing of stored logits (n, C), applied to the original's and the unlearned model's
outputs alike, and by the adaptive attacker to its shadow models' outputs as well. Every
membership feature, the classical baseline included, must be built from these defended
posteriors (ATTACKS.md 6.4); :func:`register_output_transforms` puts them in the membership
attack's ``OUTPUT_TRANSFORMS`` lookup table so that the stage applies them before every feature.
Importing this module (``import tasks.defences``) does so for every defence defined here.

* ``label_only``   one-hot(argmax z) (first index on ties); no strength.
* ``top_k``        keep the k largest softmax entries; spread 1 - sum(top k) evenly over the
  other C - k classes. k >= C is rejected (the reference's k = C - 1 + 1 "off" divides by zero
  or a negative number). k = C - 1 returns the softmax itself.
* ``temperature``  softmax(z / T) on the logits; T > 0. The argmax is unchanged for every T.

Scikit-learn targets store log-probabilities as logits, so softmax recovers their
probabilities and temperature acts on log p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.attacks.membership import OUTPUT_TRANSFORMS
from tasks.defences.base import DEFENCES, DefenceError, OutputDefence
from tasks.params import check


def _check(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise DefenceError(f"output defences need logits shaped (n, C >= 2), got {z.shape}")
    if not np.isfinite(z).all():
        raise DefenceError("non-finite logits: cannot post-process them")
    return z


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@DEFENCES.register("label_only")
class LabelOnly(OutputDefence):
    """p, q -> one-hot(argmax)."""

    name = "label_only"

    @dataclass(frozen=True)
    class Params:
        pass

    def apply(self, logits, params=None):
        z = _check(logits)
        out = np.zeros_like(z)
        out[np.arange(len(z)), z.argmax(axis=1)] = 1.0
        return out


@DEFENCES.register("top_k")
class TopK(OutputDefence):
    """Top-k posteriors; the remainder spread evenly over the other classes."""

    name = "top_k"
    strength_field = "k"
    example_strength = 1

    @dataclass(frozen=True)
    class Params:
        k: int = 1

        def __post_init__(self) -> None:
            # The upper bound, below the number of classes, depends on the data.
            check("k", self.k, low=1, integer=True)

    def apply(self, logits, params: Params):
        z = _check(logits)
        n, c = z.shape
        if params.k >= c:
            raise DefenceError(f"top_k: k = {params.k} must be below the number of classes "
                               f"C = {c} (the remainder is divided by C - k)")
        p = softmax(z)
        # Stable descending order: on ties the lower class index is kept.
        top = np.argsort(-p, axis=1, kind="stable")[:, :params.k]
        rows = np.arange(n)[:, None]
        kept = p[rows, top]
        rest = (1.0 - kept.sum(axis=1, keepdims=True)) / (c - params.k)
        out = np.repeat(rest, c, axis=1)
        out[rows, top] = kept
        return out


@DEFENCES.register("temperature")
class Temperature(OutputDefence):
    """softmax(z / T)."""

    name = "temperature"
    strength_field = "temperature"
    identity_strength = 1.0
    example_strength = 5.0

    @dataclass(frozen=True)
    class Params:
        temperature: float = 1.0

        def __post_init__(self) -> None:
            check("temperature", self.temperature, low=0, low_open=True)

    def apply(self, logits, params: Params):
        return softmax(_check(logits) / params.temperature)


def defend_outputs(logits: np.ndarray, defence: str = "none",
                   params: dict[str, Any] | None = None) -> np.ndarray:
    """logits (n, C) -> posteriors (n, C) under an output defence ("none": plain softmax)."""
    if defence == "none":
        if params:
            raise DefenceError(f"defence 'none' takes no params, got {sorted(params)}")
        return softmax(_check(logits))
    cls = DEFENCES.get(defence)
    if cls.acts_on != "outputs":
        raise DefenceError(f"defence {defence!r} acts on {cls.acts_on}, not on outputs")
    d = cls()
    return d.apply(logits, d.params(None, params, defence))


def output_transform(defence: str, params: dict[str, Any] | None = None
                     ) -> Callable[[np.ndarray], np.ndarray] | None:
    """What a query answer goes through under ``defence`` (logits -> defended posteriors), for
    :class:`tasks.cases.QueryAccess`: None unless ``defence`` acts on outputs."""
    if defence == "none" or DEFENCES.get(defence).acts_on != "outputs":
        return None
    settings = dict(params or {})

    def transform(logits: np.ndarray) -> np.ndarray:
        return defend_outputs(logits, defence, settings)

    return transform


def register_output_transforms(registry) -> list[str]:
    """Add every output defence to a ``name -> fn(logits, **params)`` registry (the membership
    attack's ``OUTPUT_TRANSFORMS``) unless the name is already there; returns the names added."""
    added = []
    for name in DEFENCES.names():
        if DEFENCES.get(name).acts_on != "outputs" or name in registry:
            continue

        def transform(logits, _name=name, **params):
            return defend_outputs(logits, _name, params)

        transform.__doc__ = DEFENCES.get(name).__doc__
        registry.register(name)(transform)
        added.append(name)
    return added


# The membership attack's posterior seam learns every output defence by name as soon as the
# defences exist, whoever imports them (no caller has to remember to register them).
register_output_transforms(OUTPUT_TRANSFORMS)
