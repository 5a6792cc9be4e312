"""Conformance of the Fisher forgetting and Newton-step (certified removal) plug-ins."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import torch

from tasks.models import ModelConfig
from tasks.params import ParamError
from tasks.testing import UnlearningConformance, digits
from tasks.training import TrainConfig, predict_logits
from tasks.unlearning import ForgetConfig, TrainingState, make_requests


class TestFisher(UnlearningConformance):
    method = "fisher"
    # At the default cap (0.05) the scrubbing noise is too small to move the kit's class-3
    # margins: at seed 0 the forget loss even falls (0.0123 -> 0.011), and over 30 seeds it
    # passes 1.5x in only ~40% of draws. A looser cap with a larger alpha raises it ~8x here.
    params: ClassVar[dict] = {"alpha": 0.03, "cap": 0.2}

    def test_noise_is_bounded_by_the_cap(self) -> None:
        method, state, params = self.trained("torch", self.make_params(alpha=10.0, cap=0.01))
        unlearned = method.unlearn(state, self.class_request(state), params)
        for p, q in zip(state.original.parameters(), unlearned.parameters()):
            # Gaussian draws beyond 6 std are practically impossible at this size.
            assert torch.all((q - p).abs() <= 6 * 0.01)
            assert torch.any(q != p)

    def test_params_must_be_positive(self) -> None:
        for key in ("alpha", "cap", "max_records"):
            with pytest.raises(ParamError, match=key):
                self.make_params(**{key: 0})


class TestNewton(UnlearningConformance):
    method = "newton"
    # The kit's recipe trains without weight decay, and the Newton step needs an L2 strength.
    params: ClassVar[dict] = {"lam": 1e-3}

    def test_needs_an_l2_strength(self) -> None:
        method = self.method_class()()
        state = self.make_state("torch")
        state.original = method.train_original(state, self.make_params())
        with pytest.raises(ValueError, match="lam"):
            method.unlearn(state, self.class_request(state), self.make_params(lam=None))

    @pytest.mark.parametrize(("sigma", "step"), [(0.0, "forget"), (1.0, "retained")])
    def test_step_approaches_retraining_on_a_linear_model(self, sigma: float, step: str) -> None:
        """Multinomial logistic regression, full-batch and trained to convergence: the Newton
        step lands far closer to retraining without U than theta is (the same perturbation b
        in both trainings when sigma > 0)."""
        method = self.method_class()()
        recipe = TrainConfig(epochs=300, lr=0.5, batch_size=300, weight_decay=1e-2)
        state = TrainingState(digits(), ModelConfig("mlp", {"hidden": []}), recipe,
                              np.arange(300), seed=0)
        params = self.make_params(lam=None, noise_sigma=sigma, step=step)
        state.original = method.train_original(state, params)
        request = make_requests(ForgetConfig(kind="group", count=1, size=10),
                                state.train_indices, state.dataset.y_train, seed=1)[0]
        unlearned = method.unlearn(state, request, params)
        without = dataclasses.replace(state, original=None, removed=tuple(request.indices))
        retrained = method.train_original(without, params)

        def flat(model: torch.nn.Module) -> torch.Tensor:
            return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        before = (flat(state.original) - flat(retrained)).norm()
        after = (flat(unlearned) - flat(retrained)).norm()
        assert after * 5 < before, f"distance to retraining {before:.3g} -> {after:.3g}"
        x = state.dataset.x_test
        gap = np.abs(predict_logits(unlearned, x) - predict_logits(retrained, x)).max()
        assert gap * 5 < np.abs(predict_logits(state.original, x)
                                - predict_logits(retrained, x)).max()
