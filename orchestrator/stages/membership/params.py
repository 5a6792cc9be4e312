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
from tasks.params import FieldError, check, check_seed
from tasks.registry import UnknownComponentError

SCENARIOS = ("single", "in_in", "group", "online", "chain")


@dataclass(frozen=True)
class MembershipParams:
    """Settings of the ``membership`` section (reference values of ATTACKS.md 6.2-6.5)."""

    set_num: int = 10  # originals per side
    # |S_i|; at most max_set_fraction of the positive pool (checked when planned: a larger
    # request is an error unless cap_set_size, e.g. for a grid over datasets of several sizes).
    set_size: int = 2000
    max_set_fraction: float = 0.5
    cap_set_size: bool = False
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
        check("set_size", self.set_size, low=2, integer=True)
        for name in ("set_num", "unlearning_size", "group_size", "deletions_per_task",
                     "unlearned_eval_size"):
            check(name, getattr(self, name), low=1, integer=True)
        check("max_set_fraction", self.max_set_fraction, low=0, low_open=True, high=1)
        for name in ("split_seed", "replace_seed", "attack_seed"):
            check_seed(name, getattr(self, name))
        if not self.scenarios:
            raise FieldError("scenarios", f"give at least one of {', '.join(SCENARIOS)}")
        if not self.features or not self.attack_models:
            raise FieldError("features" if not self.features else "attack_models",
                             "must not be empty")
        for i, s in enumerate(self.scenarios):
            if s not in SCENARIOS:
                raise FieldError(f"scenarios[{i}]", f"unknown scenario {s!r}; known: "
                                                    f"{', '.join(SCENARIOS)}")
        try:  # unknown names raise with the list of known ones
            for f in self.features:
                FEATURES.get(f)
            for m in (*self.attack_models, *self.shuffled_control):
                ATTACK_MODELS.get(m)
            OUTPUT_TRANSFORMS.get(self.output_defence)
        except UnknownComponentError as err:
            raise ValueError(str(err)) from None
        self._check_defence_params()

    def _check_defence_params(self) -> None:
        """The output defence's settings, checked now rather than in every attack unit."""
        from tasks.defences import DEFENCES

        if self.output_defence == "none":
            if self.output_defence_params:
                raise FieldError("output_defence_params", "output_defence 'none' takes none")
        elif self.output_defence in DEFENCES.names():
            DEFENCES.get(self.output_defence)().params(None, self.output_defence_params,
                                                       "output_defence_params")


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
