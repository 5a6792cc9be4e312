"""``unlearning``: tune an unlearning method to a stated utility target before it is judged.

A leaderboard compares methods fairly only at settings each could reasonably be run with
(issue 15; Deep Unlearn tunes every method with Optuna first). The target, after the NeurIPS
2023 challenge and SCRUB's evaluation: the unlearned model's accuracy on the forget set close
to that of retraining without it (``match: accuracy``) — or its mean loss there, relative to
retraining's (``match: loss``; for models that generalise, where retraining still classifies
most forgotten records correctly and accuracy alone is met by doing nothing) — while its test
accuracy stays within ``max_test_drop`` of the original's. A trial sets the method's parameters through spec key paths
(``unlearning.0.lr`` in the search space); the core plan trains theta and unlearns the search
requests with those settings, and the ``reference`` method (retraining, listed in the spec's
``unlearning``) unlearns the same requests once. Per request::

    forget_gap = |forget_acc(method) - forget_acc(reference)|           (match: accuracy)
               = |forget_loss(method) - forget_loss(reference)| / forget_loss(reference)
    test_drop  = test_acc(original) - test_acc(method)
    target_gap = forget_gap + penalty * max(0, test_drop - max_test_drop)

The best settings are re-scored on held-out requests (``search.heldout``) that no trial saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.provider import load_original, model_logits, provider_state
from orchestrator.search.base import OBJECTIVES, Objective, TargetSet
from orchestrator.spec.schema import Spec
from tasks.params import FieldError, check
from tasks.training import accuracy, mean_loss


@dataclass(frozen=True)
class UtilityTarget:
    reference: str = "retrain"  # the unlearning entry whose forget accuracy is the target
    match: Literal["accuracy", "loss"] = "accuracy"  # what of the forget set to match
    max_test_drop: float = 0.01  # test accuracy may fall this far below the original's
    penalty: float = 10.0  # per unit of test accuracy lost beyond max_test_drop

    def __post_init__(self) -> None:
        check("max_test_drop", self.max_test_drop, low=0, high=1)
        check("penalty", self.penalty, low=0)
        if not self.reference:
            raise FieldError("reference", "name an unlearning method listed in the spec")


def _reference_index(spec: Spec, config: UtilityTarget) -> int:
    for i, entry in enumerate(spec.unlearning[1:], start=1):
        if entry.method == config.reference:
            return i
    raise ValueError(f"search.attack.reference: the spec's unlearning list needs "
                     f"{config.reference!r} after the tuned method (unlearning[0]), got "
                     f"{[e.method for e in spec.unlearning]}")


@OBJECTIVES.register("unlearning")
class UnlearningObjective(Objective):
    """Distance of unlearning[0] from the utility target (module docstring); also reported:
    its forget and test accuracy and the reference's forget accuracy."""

    Config = UtilityTarget
    metrics: ClassVar[dict[str, str]] = {
        "target_gap": "minimize", "forget_gap": "minimize", "test_drop": "minimize",
        "forget_acc": "minimize", "test_acc": "maximize", "reference_forget_acc": "minimize",
        "forget_loss": "maximize", "reference_forget_loss": "maximize"}
    default_metric = "target_gap"

    def check_config(self, spec: Spec, config: UtilityTarget,
                     data_root: str | None = None) -> None:
        _reference_index(spec, config)

    def evaluate(self, targets: TargetSet, ctx: TaskContext, config: UtilityTarget,
                 report=None) -> dict[str, np.ndarray]:
        spec, core = targets.spec, targets.core
        ref_index = _reference_index(spec, config)
        by_request = {(p.seed, p.request.request_id): p for p in core.pairs
                      if p.method_index == ref_index}
        out: dict[str, list[float]] = {name: [] for name in self.metrics}
        states: dict[int, object] = {}
        for pair in targets.pairs:
            if pair.seed not in states:
                states[pair.seed] = provider_state(spec, pair.seed, ctx,
                                                   core.pretrain_keys.get(pair.seed))
            state = states[pair.seed]
            d = state.dataset
            idx = np.asarray(pair.request.indices)
            ref = by_request[(pair.seed, pair.request.request_id)]
            models = {"original": load_original(spec, pair.seed, 0, pair.original_key, ctx,
                                                state),
                      "method": _load(spec, ctx, pair.unlearned_key, state),
                      "reference": _load(spec, ctx, ref.unlearned_key, state)}
            outputs = {k: _logits(m, d.x_train, idx, state) for k, m in models.items()}
            forget = {k: accuracy(v, d.y_train[idx]) for k, v in outputs.items()}
            loss = {k: mean_loss(v, d.y_train[idx]) for k, v in outputs.items()}
            test = {k: accuracy(_logits(m, d.x_test, None, state), d.y_test)
                    for k, m in models.items() if k != "reference"}
            if config.match == "accuracy":
                gap = abs(forget["method"] - forget["reference"])
            else:
                gap = abs(loss["method"] - loss["reference"]) / max(loss["reference"], 1e-12)
            drop = test["original"] - test["method"]
            out["forget_gap"].append(gap)
            out["test_drop"].append(drop)
            out["target_gap"].append(gap + config.penalty * max(0.0, drop
                                                                 - config.max_test_drop))
            out["forget_acc"].append(forget["method"])
            out["reference_forget_acc"].append(forget["reference"])
            out["forget_loss"].append(loss["method"])
            out["reference_forget_loss"].append(loss["reference"])
            out["test_acc"].append(test["method"])
        return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _load(spec: Spec, ctx: TaskContext, key: str, state):
    """An unlearned model: torch weights, or a scikit-learn model's stored logits."""
    if spec.model.family == "sklearn":
        return ctx.store.load_arrays(key)
    from orchestrator.engine.provider import load_torch_model

    return load_torch_model(ctx, key, state)


def _logits(model, x: np.ndarray, idx: np.ndarray | None, state) -> np.ndarray:
    if isinstance(model, dict):  # stored logits of a scikit-learn model: train / test
        split = model["train"] if idx is not None else model["test"]
        return split[idx] if idx is not None else split
    return model_logits(model, x[idx] if idx is not None else x, state.device)
