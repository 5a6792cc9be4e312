"""Toy plug-ins outside the package (named as ``tests.conformance.toys:Name``).

Each toy is small but real, and has a ``flaw`` switch (or a flawed subclass) that breaks one
promise of its interface, so ``test_kits_catch_flaws.py`` can show that the kits fail for it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tasks.attacks.base import Attack, AttackResult, NonFiniteLossError, ThreatModel, target_seeds
from tasks.cases import Case
from tasks.defences.base import OutputDefence
from tasks.training import train_model
from tasks.unlearning import UnlearningMethod, fit_standard

AttackFlaw = Literal["", "short_output", "unseeded", "ignores_nan", "pickled_prepare"]


@dataclass(frozen=True)
class ToyConfig:
    probes: int = 30
    flaw: AttackFlaw = ""
    dry_run: bool = False


@dataclass
class ToyResult(AttackResult):
    predicted: list[np.ndarray]
    delta_by_class: list[np.ndarray]
    queries: list[int]
    probes_failed: list[int]

    def per_target(self) -> dict[str, list]:
        return {"predicted": self.predicted, "delta_by_class": self.delta_by_class,
                "queries": self.queries, "probes_failed": self.probes_failed}


class ToyLabelAttack(Attack):
    """Label inference from random probes: the class whose mean confidence drops most."""

    name = "toy_label"
    Config = ToyConfig
    scorer = "label_inference"

    def threat_model(self, config: ToyConfig) -> ThreatModel:
        return ThreatModel(white_box=False, knowledge="paper", forget_kind="class_share")

    def _probes(self, case: Case, config: ToyConfig, seed: int | None) -> np.ndarray:
        n = 1 if config.dry_run else config.probes
        rng = np.random.default_rng(seed)
        return rng.random((n, *case.metadata.input_shape), dtype=np.float32)

    def prepare(self, case: Case, config: ToyConfig, seed: int) -> dict[str, Any]:
        x = self._probes(case, config, seed)
        if config.flaw == "pickled_prepare":
            return {"x": x, "notes": np.asarray([{"crafted": True}], dtype=object)}
        return {"x": x}

    def run(self, cases: Sequence[Case], config: ToyConfig, *,
            seeds: Sequence[int] | None = None, callback=None,
            prepared: dict[str, np.ndarray] | None = None) -> ToyResult:
        seeds = target_seeds(cases, seeds)
        out = ToyResult([], [], [], [])
        for case, seed in zip(cases, seeds):
            if prepared is not None:
                x = np.asarray(prepared["x"])
            else:
                x = self._probes(case, config, None if config.flaw == "unseeded" else seed)
            before = case.query_original.queries + case.query_unlearned.queries
            p0 = case.query_original(torch.as_tensor(x)).double().numpy()
            p1 = case.query_unlearned(torch.as_tensor(x)).double().numpy()
            delta = (p1 - p0).mean(0)
            if not np.isfinite(delta).all():
                if config.flaw != "ignores_nan":
                    raise NonFiniteLossError("non-finite probabilities")
                delta = np.nan_to_num(delta)
            out.predicted.append(np.asarray([int(np.argmin(delta))]))
            out.delta_by_class.append(delta)
            out.queries.append(case.query_original.queries + case.query_unlearned.queries
                               - before)
            out.probes_failed.append(0)
        if config.flaw == "short_output":
            out.predicted.pop()
        return out


class ToyWhiteBoxAttack(ToyLabelAttack):
    """The toy with theta and theta_u in its cases (it still only queries them)."""

    def threat_model(self, config: ToyConfig) -> ThreatModel:
        return ThreatModel(white_box=True, knowledge="paper", forget_kind="class_share")


class ToyAttackWithoutScorer(ToyLabelAttack):
    scorer = "no_such_scorer"


# --- unlearning --------------------------------------------------------------------------------

class ToyRetrain(UnlearningMethod):
    """Exact unlearning by replaying the standard recipe without the forget set."""

    name = "toy_retrain"
    exact = True
    retrains_from_scratch = True

    @dataclass(frozen=True)
    class Params:
        eta: float = 0.1

    def unlearn(self, state, request, params):
        return fit_standard(state, exclude=tuple(state.removed) + request.indices)


class ToyRetrainFromOriginal(ToyRetrain):
    """Claims to retrain from scratch but fine-tunes the original on the retained set."""

    def unlearn(self, state, request, params):
        d = state.dataset
        return train_model(copy.deepcopy(state.original), d.x_train, d.y_train,
                           state.train_indices, state.train_cfg, state.seed,
                           exclude=request.indices)


class ToyMisnamedStepSize(ToyRetrain):
    exact = False
    retrains_from_scratch = False
    step_size_param = "lr"  # Params has "eta", not "lr"


class ToyNoOp(ToyRetrain):
    """Forgets nothing: returns a copy of the original."""

    retrains_from_scratch = False

    def unlearn(self, state, request, params):
        return copy.deepcopy(state.original)


class ToyInPlace(ToyNoOp):
    """Forgets by perturbing the original itself (the provider's theta changes too)."""

    families = ("torch",)

    def unlearn(self, state, request, params):
        with torch.no_grad():
            for p in state.original.parameters():
                p.add_(torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
        return state.original


# --- defences ----------------------------------------------------------------------------------

class ToySharpen(OutputDefence):
    """softmax(z * s): s = 1 is the identity."""

    name = "toy_sharpen"
    strength_field = "s"
    identity_strength = 1.0
    example_strength = 3.0
    paper = "toy"

    @dataclass(frozen=True)
    class Params:
        s: float = 1.0

    def apply(self, logits, params):
        z = np.asarray(logits, dtype=np.float64) * params.s
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


class ToySharpenInPlace(ToySharpen):
    def apply(self, logits, params):
        logits *= params.s
        return super().apply(logits, ToySharpen.Params(1.0))


class ToySharpenWrongIdentity(ToySharpen):
    identity_strength = 0.0  # softmax(0 * z) is uniform, not the identity

