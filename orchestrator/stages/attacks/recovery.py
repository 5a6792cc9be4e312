"""The ``recovery`` spec section: feature recovery (Hu et al.) on every (theta, theta_u).

A shorthand for the generic ``attacks`` stage: every configuration becomes one entry with the
``inversion`` attack, named after the configuration; rows go to ``recoveries`` (one per
forgotten sample, scored by :class:`tasks.analysis.images.ImageRecoveryScorer`: Hungarian
matching, a seeded random-image and a public mean-image baseline, PSNR capped at 100 dB).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.engine.plan import CorePlan, Unit
from orchestrator.spec.schema import Spec
from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.stages.attacks.planning import AttackEntry, plan_entries
from tasks.attacks.inversion import InversionConfig
from tasks.params import check, to_dict

TABLE = "recoveries"


@dataclass(frozen=True)
class RecoveryStage:
    """Settings of the ``recovery`` section."""

    # Attack configurations; each one attacks every selected model pair.
    configs: tuple[InversionConfig, ...] = (InversionConfig(),)
    methods: tuple[str, ...] | None = None  # unlearning methods to attack (default: all)
    targets_per_task: int = 16
    max_requests: int | None = None  # attack only the first requests of each method
    figure: bool = True

    def __post_init__(self) -> None:
        if not self.configs:
            raise ValueError("configs: give at least one attack configuration")
        names = [c.name for c in self.configs]
        if len(set(names)) != len(names):
            raise ValueError(f"configs: names must be unique, got {names}")
        check("targets_per_task", self.targets_per_task, low=1, integer=True)
        check("max_requests", self.max_requests, low=1, integer=True, optional=True)

    def entries(self) -> dict[str, AttackEntry]:
        return {c.name: AttackEntry("inversion", to_dict(c), methods=self.methods,
                                    targets_per_task=self.targets_per_task,
                                    max_requests=self.max_requests, figure=self.figure)
                for c in self.configs}


def plan_recovery(spec: Spec, core: CorePlan, params: RecoveryStage) -> list[Unit]:
    return plan_entries(spec, core, params.entries(), "recovery")



STAGES.register("recovery")(StageEntry(RecoveryStage, plan_recovery))
