"""Settings of the ``per_example`` section (U-LiRA and the epsilon score; see the package doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orchestrator.stages.attacks.planning import AttackEntry
from tasks.params import FieldError, check, check_seed

VARIANTS = ("online", "offline")
VARIANCES = ("per_example", "fixed")
DESIGNS = ("ulira", "challenge")


@dataclass(frozen=True)
class PerExampleParams:
    """``design: ulira``: member j trains on the base set plus a random half of the targets
    and unlearns that half; per target, the members that unlearned it are IN, the others
    (never saw it) OUT. ``design: challenge`` (NeurIPS 2023): every member trains on base plus
    all targets and unlearns all of them (IN); as many retrained references, fitted on the
    base set with other seeds, are OUT."""

    design: Literal["ulira", "challenge"] = "ulira"
    models: int = 128  # members per method (challenge: unlearned models; as many references)
    targets: int = 128  # target records, scored on every member
    base_size: int = 512  # records every member trains on; never a target
    members_per_task: int = 64  # members trained as one stacked ensemble in one Ray task
    sample_seed: int = 0  # draws the targets, the base set and each member's half
    variants: tuple[str, ...] = VARIANTS
    variances: tuple[str, ...] = VARIANCES
    # challenge: the NeurIPS 2023 challenge's grid estimator (comparable with published
    # numbers); exact: the supremum over every threshold and interval (stronger, noisier).
    epsilon_estimator: Literal["challenge", "exact"] = "challenge"
    fdr: float = 0.05  # records named as leaking at this false-discovery rate (BH)
    permutations: int = 999  # per-record permutation test (p-values down to 1/1000)
    # The null control: permutations of which model unlearned which record (AUC; epsilon).
    null_runs: int = 99
    null_epsilon_runs: int = 19
    # Chen et al.'s attack on the same (theta, theta_u) pairs, for the comparison figure:
    # its attack models are fitted on the even members and score the odd ones.
    chen_features: tuple[str, ...] = ("direct_diff", "sorted_concat")
    chen_attack_model: str = "lr"
    exposed: int = 8  # most exposed records listed (and drawn, for image data)
    scoring_batch: int = 16  # members per Ray Data batch when scoring
    # ray_data: the (models x records) pipeline (unit kind ``pipeline``); in_task: the same
    # batches scored inside one attack task, for small runs where a pipeline's start-up and
    # scheduling cost more than the scoring itself.
    scoring: Literal["ray_data", "in_task"] = "ray_data"
    figures: bool = True
    leaderboard: bool = True  # table ``leaderboard``: methods ranked by leak, utility, cost
    # Image data: attacks of the generic ``attacks`` section (e.g. feature recovery and label
    # inference, Hu et al.) on every method, each entry with its own small ``forget:`` requests
    # (this stage plans no core pairs); the leaderboard joins their per-method results.
    attacks: dict[str, AttackEntry] | None = None

    def __post_init__(self) -> None:
        check("models", self.models, low=4, integer=True)
        check("targets", self.targets, low=2, integer=True)
        check("base_size", self.base_size, low=1, integer=True)
        check("fdr", self.fdr, low=0, high=1, low_open=True, high_open=True)
        check("permutations", self.permutations, low=19, integer=True)
        check("null_runs", self.null_runs, low=19, integer=True)
        check("null_epsilon_runs", self.null_epsilon_runs, low=19, integer=True)
        for name in ("members_per_task", "exposed", "scoring_batch"):
            check(name, getattr(self, name), low=1, integer=True)
        check_seed("sample_seed", self.sample_seed)
        if self.design == "ulira" and self.targets % 2:
            raise FieldError("targets", f"design 'ulira' gives every member half the targets: "
                                        f"use an even number, got {self.targets}")
        for name, allowed in (("variants", VARIANTS), ("variances", VARIANCES)):
            values = getattr(self, name)
            if not values:
                raise FieldError(name, f"give at least one of {', '.join(allowed)}")
            for i, v in enumerate(values):
                if v not in allowed:
                    raise FieldError(f"{name}[{i}]", f"unknown {v!r}; known: "
                                                     f"{', '.join(allowed)}")
        for name, entry in (self.attacks or {}).items():
            if entry.forget is None:
                raise FieldError(f"attacks.{name}.forget", "give the entry its own forget "
                                 "requests: this stage trains no core model pairs")
            if entry.unlearning is not None:
                raise FieldError(f"attacks.{name}.unlearning", "the leaderboard joins the "
                                 "attacks to the spec's own methods: leave this out")
        from tasks.attacks.membership import ATTACK_MODELS, FEATURES
        from tasks.registry import UnknownComponentError

        try:
            for f in self.chen_features:
                FEATURES.get(f)
            ATTACK_MODELS.get(self.chen_attack_model)
        except UnknownComponentError as err:
            raise ValueError(str(err)) from None
