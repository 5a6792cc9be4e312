"""Exact unlearning: replay the recipe without the forget set."""

from __future__ import annotations

from tasks.unlearning import stacked
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    fit_standard,
)


@UNLEARNING.register("retrain")
class Retrain(UnlearningMethod):
    """theta_u = train(S minus U) with the original's seed, order and hyperparameters.

    When the recipe pretrains theta_0 on public data (which never holds U), theta_0 is part of
    the recipe and is reused, so the result equals :class:`Refit`. Online learning: the
    request's replacement samples join the training set.
    """

    name = "retrain"
    exact = True
    retrains_from_scratch = True
    supports_replacement = True

    def unlearn(self, state: TrainingState, request: ForgetRequest, params) -> object:
        return fit_standard(state, exclude=tuple(state.removed) + request.indices,
                            extra=request.replacement)

    def unlearn_members(self, states, requests, params) -> list[object]:
        return stacked.retrain_members(self, states, requests, params)


@UNLEARNING.register("refit")
class Refit(UnlearningMethod):
    """theta_u = finetune(theta_0, D_ft minus U): exact unlearning of the fine-tuning stage
    (the reference implementation of Hu et al.). Needs a recipe with ``pretraining``."""

    name = "refit"
    exact = True
    families = ("torch",)
    retrains_from_scratch = True  # from theta_0, never from the original
    supports_replacement = True
    requires_pretraining = True

    def unlearn(self, state: TrainingState, request: ForgetRequest, params) -> object:
        self.check_family(state)
        if state.pretrained_state is None:
            raise ValueError("unlearning method 'refit' needs a pretrained theta_0: "
                             "add a 'pretraining' block to the spec")
        return fit_standard(state, exclude=tuple(state.removed) + request.indices,
                            extra=request.replacement)
