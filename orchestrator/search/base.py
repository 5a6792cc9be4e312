"""What every search objective is: the :class:`Objective` base, the :data:`OBJECTIVES`
registry and the :class:`TargetSet` a trial scores on.

The built-in objectives register themselves in :mod:`orchestrator.search.objectives` (inversion,
probing, defence) and :mod:`orchestrator.search.membership`; import ``OBJECTIVES`` from
``orchestrator.search.objectives``, which imports both, to see them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.plan import CorePlan, ModelPair
from orchestrator.spec.schema import Spec
from tasks.registry import Registry, lacks_members

__all__ = ["OBJECTIVES", "Objective", "Report", "TargetSet"]

Report = Callable[[dict[str, float]], None]


@dataclass
class TargetSet:
    """The forget requests a trial (or the held-out evaluation) scores on."""

    spec: Spec
    core: CorePlan
    pairs: list[ModelPair]
    seed_offset: int = 0  # attack randomness of target i is seed_offset + i


class Objective:
    """One kind of trial. ``evaluate`` returns per-target arrays, one per metric name."""

    Config: ClassVar[type]
    metrics: ClassVar[dict[str, str]]  # metric -> "maximize" | "minimize"
    default_metric: ClassVar[str]
    intermediate: ClassVar[tuple[str, ...]] = ()
    # True: the objective builds its own models instead of the core plan's forget requests
    # (search.targets / search.heldout / search.fanout do not apply). The Tune driver then calls
    # check_spec when loading the spec, prepare before the trials (on Ray) and evaluate_split
    # for a trial (heldout=False) or the held-out re-score (heldout=True).
    own_models: ClassVar[bool] = False

    def check_spec(self, spec: Spec) -> None:
        """Raise ValueError when the experiment cannot feed this objective."""

    def check_config(self, spec: Spec, config: Any, data_root: str | None = None) -> None:
        """Raise ValueError when ``config`` cannot attack the experiment's model pairs (checked
        on the base configuration when the search spec loads; ``data_root``: where a check
        that needs the dataset, e.g. its number of training records, reads it)."""

    def prepare(self, spec: Spec, results, ctx: TaskContext, progress: bool) -> None:
        raise NotImplementedError

    def evaluate_split(self, spec: Spec, config: Any, ctx: TaskContext, data_root: str | None,
                       *, heldout: bool) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def config(self, settings: dict[str, Any], path: str = "search.attack") -> Any:
        from tasks.params import build

        return build(self.Config, settings, path)

    def evaluate(self, targets: TargetSet, ctx: TaskContext, config: Any,
                 report: Report | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry(
    "search objective", check=lambda obj: lacks_members(obj, Objective,
                                                        ("Config", "metrics", "evaluate")))
