"""The ``label_inference`` spec section: which class was forgotten (Hu et al., probing).

A shorthand for the generic ``attacks`` stage: per (box, decision score) one entry with the
``probing`` attack on the section's own forget requests of kind ``class_share`` (for every
class c and share p: the first floor(n_c p) class-c training samples), unlearned with the
section's ``unlearning`` list (default: the spec's). Probes are the attack's ``prepare`` step:
crafted once per (original, box) and reused for every unlearned model and score; one
``label_inference`` row per (request, box, score).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.engine.plan import CorePlan, Unit
from orchestrator.spec.schema import Spec
from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.stages.attacks.planning import AttackEntry, own_method, plan_entries
from tasks.attacks.probing import ProbeConfig
from tasks.params import FieldError, check, check_each, to_dict

TABLE = "label_inference"


@dataclass(frozen=True)
class LabelInferenceStage:
    shares: tuple[float, ...] = (0.1, 0.5, 1.0)
    classes: tuple[int, ...] | None = None  # default: every class
    boxes: tuple[Literal["white", "black"], ...] = ("white", "black")
    scores: tuple[Literal["prob", "logodds"], ...] = ("prob", "logodds")
    # Unlearning methods for these requests, written like the spec's ``unlearning`` list;
    # default: the spec's list.
    unlearning: tuple[dict[str, Any], ...] | None = None
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    requests_per_task: int = 10
    figure: bool = True

    def __post_init__(self) -> None:
        if not self.shares:
            raise FieldError("shares", "must hold at least one share in (0, 1]")
        check_each("shares", self.shares, low=0, low_open=True, high=1)
        check_each("classes", self.classes, low=0, integer=True)
        if not self.boxes or not self.scores:
            raise ValueError("boxes and scores must not be empty")
        check("requests_per_task", self.requests_per_task, low=1, integer=True)
        if self.unlearning is not None:
            if not self.unlearning:
                raise FieldError("unlearning", "expected a non-empty list of methods")
            for i, item in enumerate(self.unlearning):
                own_method(item, f"unlearning[{i}]")

    def entries(self) -> dict[str, AttackEntry]:
        forget = {"kind": "class_share", "shares": list(self.shares),
                  "classes": None if self.classes is None else list(self.classes)}
        out = {}
        for box in self.boxes:
            for score in self.scores:
                config = to_dict(dataclasses.replace(self.probes, box=box, score=score))
                out[f"{box}-{score}"] = AttackEntry(
                    "probing", config, forget=forget, unlearning=self.unlearning,
                    targets_per_task=self.requests_per_task, figure=self.figure)
        return out


def plan_label_inference(spec: Spec, core: CorePlan, params: LabelInferenceStage) -> list[Unit]:
    return plan_entries(spec, core, params.entries(), "label_inference")



STAGES.register("label_inference")(StageEntry(LabelInferenceStage, plan_label_inference))
