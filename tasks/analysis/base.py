"""The scoring layer: guesses of an attack + ground truth -> rows and per-target metrics.

Attacks never score themselves (breaching's attacks vs analysis): a :class:`Scorer` is the one
place where the ground truth of a forget request meets an attack's output. The generic attack
stage, the defences stage and the search objectives all score through it, so each metric
(Hungarian matching, baselines, PSNR capping, AUC, TPR at low FPR) has one copy.

Adding a scorer: subclass :class:`Scorer`, declare ``table``, ``metrics`` and ``leakage``,
implement :meth:`Scorer.score`, and register it with ``@SCORERS.register("name")`` (or name it
from an attack as ``package.module:MyScorer``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from tasks.attacks.base import AttackResult
from tasks.cases import GroundTruth
from tasks.registry import Registry, lacks_members


@dataclass(frozen=True)
class ScoringContext:
    """What scoring needs besides guesses and truth: the attacker's public baselines."""

    num_classes: int
    std: tuple[float, ...] | None = None
    mean_image: np.ndarray | None = None  # mean of the attacker's public data (images)
    mean_source: str | None = None  # which split ``mean_image`` came from
    seed: int = 0  # randomness of the random baselines


@dataclass
class ScoredBatch:
    """Scores of one batch of cases, in input order.

    ``rows[i]``: the rows of case i (one per forgotten sample when the scorer is
    ``per_sample``; else as many as the scorer makes, one for most attacks, one per (feature,
    attack model, control) for membership inference); ``metrics[name][i]``: case i's value of
    a per-target metric;
    ``arrays``: what the stage keeps beside the table for figures (images, deltas).
    """

    rows: list[list[dict[str, Any]]]
    metrics: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class Scorer(abc.ABC):
    table: ClassVar[str] = "attacks"  # where the generic stage writes the rows
    per_sample: ClassVar[bool] = False  # one row per forgotten sample (else per case)
    # Per-target metrics and their natural direction for an attacker ("maximize": larger
    # means a stronger attack). ``leakage`` is the one a defence sweep reports.
    metrics: ClassVar[dict[str, str]] = {}
    leakage: ClassVar[str] = ""

    @abc.abstractmethod
    def score(self, result: AttackResult, truths: Sequence[GroundTruth], config: Any,
              context: ScoringContext) -> ScoredBatch:
        """Rows and metrics for every case of ``result`` against ``truths`` (same order)."""

    def figure(self, arrays: list[dict[str, np.ndarray]], title: str) -> Any:
        """A matplotlib figure from the ``arrays`` of every batch, or None (no figure)."""
        return None


def _check_scorer(obj: object) -> str:
    lacks = lacks_members(obj, Scorer, ("score", "metrics", "leakage", "table"))
    if not lacks and getattr(obj, "leakage", "") not in getattr(obj, "metrics", {}):
        lacks = "'leakage' must name one of its 'metrics'"
    return lacks


SCORERS: Registry[type[Scorer]] = Registry("scorer", group="unlearn_audit.scorers",
                                           check=_check_scorer)


def scorer_for(attack: Any) -> Scorer:
    """The scorer instance an attack (class or instance) names."""
    return SCORERS.get(attack.scorer)()
