"""Settings of the ``membership`` section and its scenarios (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tasks.attacks.membership import (
    ATTACK_MODELS,
    FEATURES,
    OUTPUT_TRANSFORMS,
    UNLEARNING_FEATURES,
)
from tasks.registry import UnknownComponentError

SCENARIOS = ("single", "in_in", "group", "online", "chain")


@dataclass(frozen=True)
class MembershipParams:
    """Settings of the ``membership`` section (reference values of ATTACKS.md 6.2-6.5)."""

    set_num: int = 10  # originals per side
    set_size: int = 2000  # |S_i|, capped at max_set_fraction of the positive pool
    max_set_fraction: float = 0.5
    unlearning_size: int = 20  # unlearned models (pairs) per original
    scenarios: tuple[str, ...] = ("single",)
    group_size: int = 10  # records per deletion in the group scenario
    features: tuple[str, ...] = UNLEARNING_FEATURES
    attack_models: tuple[str, ...] = ("dt", "rf", "lr", "mlp")
    split_seed: int = 100
    replace_seed: int = 0
    deletion_sampling: Literal["without_replacement", "independent"] = "without_replacement"
    chain_reference: Literal["previous", "original"] = "previous"
    deletions_per_task: int = 20  # unlearned models per Ray task
    unlearned_eval_size: int = 1000  # test records scoring each unlearned model's accuracy
    # Applied to shadow and target logits alike before every feature (defences plug in here).
    output_defence: str = "none"
    output_defence_params: dict[str, Any] = field(default_factory=dict)
    attack_seed: int = 0
    shuffled_control: tuple[str, ...] = ("dt",)  # attack models also fitted on shuffled labels
    membership_rows: bool = True  # per-target-sample scores in the ``membership`` table
    figures: bool = True

    def __post_init__(self) -> None:
        if self.set_num < 1 or self.set_size < 2 or self.unlearning_size < 1:
            raise ValueError("set_num >= 1, set_size >= 2 and unlearning_size >= 1 are required")
        if self.group_size < 1 or self.deletions_per_task < 1:
            raise ValueError("group_size and deletions_per_task must be at least 1")
        if not 0 < self.max_set_fraction <= 1:
            raise ValueError("max_set_fraction must lie in (0, 1]")
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise ValueError(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
        try:  # unknown names raise with the list of known ones
            for f in self.features:
                FEATURES.get(f)
            for m in (*self.attack_models, *self.shuffled_control):
                ATTACK_MODELS.get(m)
            OUTPUT_TRANSFORMS.get(self.output_defence)
        except UnknownComponentError as err:
            raise ValueError(str(err)) from None


@dataclass(frozen=True)
class Scenario:
    name: str
    k: int
    positive: Literal["deleted", "remaining"] = "deleted"
    online: bool = False
    chain: bool = False

    @property
    def family(self) -> str:
        """Scenarios with the same family share their unlearned models."""
        return f"k{self.k}" + ("-online" if self.online else "") + ("-chain" if self.chain
                                                                      else "")


def scenario(name: str, params: MembershipParams) -> Scenario:
    return {"single": Scenario("single", 1), "in_in": Scenario("in_in", 1, "remaining"),
            "group": Scenario("group", params.group_size),
            "online": Scenario("online", 1, online=True),
            "chain": Scenario("chain", 1, chain=True)}[name]



def eval_records(seed: int, n_test: int, size: int) -> np.ndarray:
    """The test records (``unlearned_eval_size`` of them) that score every unlearned model of
    a seed; the originals' test accuracy in the attack rows is read on the same records."""
    return np.sort(np.random.default_rng([seed, 17]).permutation(n_test)[:size])
