"""The unlearning conformance kit: subclass :class:`UnlearningConformance`.

Each test that trains runs once per model family the method supports (``torch``: a small MLP,
``sklearn``: a logistic regression, both on 300 digits). The forget request is a whole class,
so the forget loss rises clearly even for fine-tuning-based forgetting.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from tasks.params import ParamError
from tasks.testing.states import Kit, resolve, small_state, typed
from tasks.training import mean_loss, predict_logits
from tasks.unlearning import (
    UNLEARNING,
    ForgetConfig,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    fit_standard,
    make_requests,
)

FAMILIES = ("torch", "sklearn")


def logits(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of a torch model, a scikit-learn wrapper or an ensemble of either."""
    return model.logits(x) if hasattr(model, "logits") else predict_logits(model, x)


def same_predictions(a: Any, b: Any, x: np.ndarray) -> None:
    np.testing.assert_array_equal(logits(a, x), logits(b, x))


class UnlearningConformance(Kit):
    """Base class of an unlearning method's conformance tests.

    Declare in the subclass::

        class TestGradientAscent(UnlearningConformance):
            method = "gradient_ascent"        # registry name, "pkg.mod:Cls" or the class
            params = {"lr": 0.5}              # small, and strong enough to forget a class

    Optional: ``families`` (default: the method's), ``from_scratch_params`` (params of the
    retrain-identity test, e.g. shared DP noise), ``forget_loss_factor``.
    """

    method: ClassVar[str | type] = ""
    params: ClassVar[dict[str, Any]] = {}
    families: ClassVar[tuple[str, ...] | None] = None
    from_scratch_params: ClassVar[dict[str, Any] | None] = None
    # A clear relative rise: fine-tuning-based forgetting is gentle, exact retraining is not.
    forget_loss_factor: ClassVar[float] = 1.5

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Tests that take ``family`` run once per family the method supports."""
        if "family" in metafunc.fixturenames:
            families = self.families or self.method_class().families
            metafunc.parametrize("family", list(families))

    # --- helpers ----------------------------------------------------------------------------------

    def method_class(self) -> type[UnlearningMethod]:
        return resolve(UNLEARNING, self.method)

    def make_params(self, **extra: Any) -> Any:
        return typed(self.method_class().Params, {**self.params, **extra}, "params")

    def make_state(self, family: str) -> TrainingState:
        return small_state(family, pretrained=self.method_class().requires_pretraining)

    def trained(self, family: str, params: Any = None
                ) -> tuple[UnlearningMethod, TrainingState, Any]:
        method = self.method_class()()
        state = self.make_state(family)
        params = self.make_params() if params is None else params
        state.original = method.train_original(state, params)
        return method, state, params

    def class_request(self, state: TrainingState) -> ForgetRequest:
        return make_requests(ForgetConfig(kind="class_share", classes=(3,), shares=(1.0,)),
                             state.train_indices, state.dataset.y_train, seed=0)[0]

    def fit_without(self, method: UnlearningMethod, state: TrainingState,
                    request: ForgetRequest, params: Any) -> Any:
        """The method's own recipe run on the training set minus the request (plus its
        replacement records): what a method that retrains from scratch must equal."""
        removed = dataclasses.replace(
            state, original=None, removed=tuple(state.removed) + tuple(request.indices))
        if type(method).train_original is UnlearningMethod.train_original:
            # The base recipe (fit_standard) does not read ``state.removed``.
            return fit_standard(removed, exclude=removed.removed, extra=request.replacement)
        assert not request.replacement, "override fit_without for replacement records"
        return method.train_original(removed, params)

    # --- the suite -------------------------------------------------------------------------------

    def test_declares_its_capabilities(self) -> None:
        cls = self.method_class()
        lacks = UNLEARNING.check(cls) if UNLEARNING.check is not None else ""
        assert not lacks, lacks
        assert dataclasses.is_dataclass(cls.Params) and cls.Params.__dataclass_params__.frozen
        assert isinstance(cls.exact, bool)
        assert cls.families and set(cls.families) <= set(FAMILIES), cls.families
        for flag in ("retrains_from_scratch", "supports_replacement", "returns_ensemble",
                     "requires_pretraining"):
            assert isinstance(getattr(cls, flag), bool), f"{flag} must be a bool"
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        step = cls.step_size_param
        assert step is None or isinstance(step, str)
        if step is not None:
            assert step in fields, f"step_size_param {step!r} is not a field of Params"
            value = cls().step_size(self.make_params())
            assert value is None or isinstance(value, (int, float)), value
        if cls.returns_ensemble:
            assert "shards" in fields, "an ensemble method's Params needs an int 'shards'"
            assert isinstance(self.make_params().shards, int)
        if cls.retrains_from_scratch:
            assert cls.exact, "a method that retrains from scratch is exact"

    def test_params_reject_unknown_keys(self) -> None:
        with pytest.raises(ParamError, match="params.no_such_setting: unknown key"):
            self.make_params(no_such_setting=1)

    def test_forget_loss_rises(self, family: str) -> None:
        method, state, params = self.trained(family)
        request = self.class_request(state)
        unlearned = method.unlearn(state, request, params)
        idx = np.asarray(request.indices)
        x, y = state.dataset.x_train[idx], state.dataset.y_train[idx]
        before = mean_loss(logits(state.original, x), y)
        after = mean_loss(logits(unlearned, x), y)
        assert np.isfinite(after)
        assert after > self.forget_loss_factor * before + 1e-4, \
            f"forget loss {before:.4f} -> {after:.4f}"

    def test_seed_determinism(self, family: str) -> None:
        results = []
        for _ in range(2):
            method, state, params = self.trained(family)
            results.append((state.original, method.unlearn(state, self.class_request(state),
                                                           params)))
        x = self.make_state(family).dataset.x_test[:50]
        same_predictions(results[0][0], results[1][0], x)
        same_predictions(results[0][1], results[1][1], x)

    def test_unlearn_members_equals_unlearning_each(self, family: str) -> None:
        """Two members (other seeds and requests) through ``unlearn_members``: the same
        models as :meth:`unlearn` member by member, up to float tolerance (a method whose
        maths stacks may run them as one program; the rest inherit the loop)."""
        method, first, params = self.trained(family)
        _, second, _ = self.trained(family)
        second = dataclasses.replace(second, seed=first.seed + 1)
        second.original = method.train_original(second, params)
        states = [first, second]
        request = self.class_request(first)
        # Equally many records each, so a stacked implementation takes its stacked path.
        requests = [dataclasses.replace(request, indices=request.indices[1:]),
                    dataclasses.replace(request, indices=request.indices[:-1])]
        together = method.unlearn_members(states, requests, params)
        assert len(together) == 2
        x = first.dataset.x_test[:50]
        for state, req, model in zip(states, requests, together):
            alone = UnlearningMethod.unlearn_members(method, [state], [req], params)[0]
            np.testing.assert_allclose(logits(model, x), logits(alone, x), atol=1e-4)

    def test_leaves_the_original_alone(self, family: str) -> None:
        method, state, params = self.trained(family)
        x = state.dataset.x_test[:50]
        before = logits(state.original, x)
        method.unlearn(state, self.class_request(state), params)
        np.testing.assert_array_equal(logits(state.original, x), before)

    def test_retrains_from_scratch(self, family: str) -> None:
        """retrains_from_scratch: unlearn() never reads the original (the orchestrator does
        not wait for one) and equals the recipe fitted without the forgotten records."""
        cls = self.method_class()
        if not cls.retrains_from_scratch:
            pytest.skip("the method does not retrain from scratch")
        overrides = self.from_scratch_params or {}
        method, state, params = self.trained(family, self.make_params(**overrides))
        request = make_requests(ForgetConfig(kind="single", count=1), state.train_indices,
                                state.dataset.y_train, seed=3)[0]
        blind = dataclasses.replace(state, original=None)
        unlearned = method.unlearn(blind, request, params)
        reference = self.fit_without(method, state, request, params)
        x = state.dataset.x_test[:50]
        same_predictions(unlearned, reference, x)
        assert not np.array_equal(logits(unlearned, x), logits(state.original, x))

    def test_replacement_records_are_learnt(self, family: str) -> None:
        cls = self.method_class()
        if not cls.supports_replacement:
            pytest.skip("the method does not support replacement records")
        method, state, params = self.trained(family)
        plain = make_requests(ForgetConfig(kind="single", count=1), state.train_indices,
                              state.dataset.y_train, seed=4)[0]
        pool = np.setdiff1d(np.arange(len(state.dataset.y_train)), state.train_indices)
        replaced = dataclasses.replace(plain, replacement=tuple(int(i) for i in pool[:20]))
        x = state.dataset.x_test[:50]
        a = logits(method.unlearn(state, plain, params), x)
        b = logits(method.unlearn(state, replaced, params), x)
        assert not np.array_equal(a, b), "the replacement records changed nothing"

    def test_ensemble_shards(self, family: str) -> None:
        cls = self.method_class()
        if not cls.returns_ensemble:
            pytest.skip("the method does not return an ensemble")
        method, state, params = self.trained(family)
        unlearned = method.unlearn(state, self.class_request(state), params)
        for model in (state.original, unlearned):
            assert len(model.shards) == params.shards

    @staticmethod
    def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                      b.state_dict().values()))
