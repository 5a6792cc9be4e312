"""A toy unlearning method, attack and scorer that live outside the unlearn-audit package.

docs/components.md walks through this file; tests/test_plugins.py copies it into an empty
folder, puts that folder on PYTHONPATH and names the three classes in a spec as
``toy_plugins:LastLayerAscent``, ``toy_plugins:BiasShiftAttack`` (whose scorer is
``toy_plugins:LabelGuessScorer``) — run, defence sweep and search work without a file of the
package changing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from tasks.analysis import ScoredBatch, Scorer
from tasks.attacks import Attack, AttackResult, ThreatModel
from tasks.unlearning import UnlearningMethod, copy_model


class LastLayerAscent(UnlearningMethod):
    """Gradient ascent on the forgotten samples, restricted to the last linear layer."""

    exact = False
    families = ("torch",)
    step_size_param = "lr"

    @dataclass(frozen=True)
    class Params:
        lr: float = 0.5
        steps: int = 1

        def __post_init__(self) -> None:
            if self.lr <= 0 or self.steps < 1:
                raise ValueError("lr must be > 0 and steps >= 1")

    def unlearn(self, state, request, params):
        model = copy_model(state.original).train()
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        idx = np.asarray(request.indices)
        x = torch.as_tensor(state.dataset.x_train[idx], device=state.device)
        y = torch.as_tensor(state.dataset.y_train[idx], device=state.device)
        for _ in range(params.steps):
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [last.weight, last.bias])
            with torch.no_grad():  # ascent: the forgotten samples' loss goes up
                last.weight += params.lr * grads[0]
                last.bias += params.lr * grads[1]
        return model.eval()


@dataclass(frozen=True)
class BiasShiftConfig:
    dry_run: bool = False


@dataclass
class LabelGuesses(AttackResult):
    guesses: list[int]

    def per_target(self) -> dict[str, list]:
        return {"guess": list(self.guesses)}


class BiasShiftAttack(Attack):
    """White box: ascent on a class-y sample lowers the last-layer bias of y most."""

    Config = BiasShiftConfig
    scorer = "toy_plugins:LabelGuessScorer"

    def threat_model(self, config) -> ThreatModel:
        return ThreatModel(white_box=True, knowledge="paper", model_family="torch")

    def run(self, cases: Sequence, config, *, seeds=None, callback=None, prepared=None):
        guesses = []
        for case in cases:
            bias = [m for m in case.theta.modules() if isinstance(m, torch.nn.Linear)][-1].bias
            bias_u = [m for m in case.theta_u.modules()
                      if isinstance(m, torch.nn.Linear)][-1].bias
            guesses.append(int(torch.argmin(bias_u - bias)))
        return LabelGuesses(guesses)


class LabelGuessScorer(Scorer):
    table: ClassVar[str] = "toy_guesses"
    metrics: ClassVar[dict[str, str]] = {"accuracy": "maximize"}
    leakage: ClassVar[str] = "accuracy"

    def score(self, result, truths, config, context) -> ScoredBatch:
        rows, hits = [], []
        for guess, truth in zip(result.guesses, truths):
            hit = guess == int(truth.y[0])
            rows.append([{"guess": guess, "true_label": int(truth.y[0]), "correct": hit}])
            hits.append(float(hit))
        return ScoredBatch(rows, {"accuracy": np.asarray(hits)})
