"""The registry of spec sections that add work to a run (:data:`STAGES`).

It lives apart from :mod:`orchestrator.spec.schema` so that the stage modules (which import the spec)
and the spec parser (which looks sections up here) do not import each other. The registry is
filled by importing :mod:`orchestrator.stages`; the commands that build specs (``run``,
``tune``) do so before parsing a spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.registry import Registry

__all__ = ["CORE_ARTIFACT_TABLES", "STAGES", "StageEntry", "artifact_tables"]


@dataclass(frozen=True)
class StageEntry:
    """A spec section that adds work to a run: its settings class and its planner."""

    params: type
    planner: Any  # callable(spec, core: CorePlan, params) -> list[Unit]; see orchestrator.engine.plan
    # A stage that builds all its own models (membership inference's shadow/target sets)
    # turns off the core plan's originals and per-request unlearning.
    replaces_core: bool = False
    # Tables of this stage whose row keys name artifacts that other units load (an attack's
    # work on the original; the per-example members and scores): the engine remakes such a
    # unit when its artifact is gone and a unit still to run needs it.
    artifact_tables: tuple[str, ...] = ()


STAGES: Registry[StageEntry] = Registry("spec section")
CORE_ARTIFACT_TABLES = ("models",)  # the core plan's (and every stage's) trained models


def artifact_tables() -> set[str]:
    """Every table whose row keys name artifacts: the core's and each registered stage's."""
    return set(CORE_ARTIFACT_TABLES).union(*(STAGES.get(n).artifact_tables
                                             for n in STAGES.names()))
