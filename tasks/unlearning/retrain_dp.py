"""``retrain_dp``: exact unlearning of DP-SGD-trained models (retraining with DP-SGD).

Registered with the other unlearning methods, so ``import tasks.unlearning`` alone provides it;
the DP-SGD training itself, its accountant and the privacy of a released pair live in
:mod:`tasks.defences.dp` (see its docstring for ``noise: fresh`` against ``noise: shared``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from torch import nn

from tasks.defences.base import DefenceError
from tasks.defences.dp import DPParams, dp_epsilon_pair, train_dp
from tasks.training import TrainConfig
from tasks.unlearning.base import UNLEARNING, ForgetRequest, TrainingState, UnlearningMethod

__all__ = ["RetrainDP"]


@UNLEARNING.register("retrain_dp")
class RetrainDP(UnlearningMethod):
    """Exact unlearning of a DP-SGD model: theta = train_dp(S), theta_u = train_dp(S minus U)
    with the same seed, order and privacy settings. Torch models only."""

    name = "retrain_dp"
    exact = True
    families = ("torch",)
    retrains_from_scratch = True
    supports_replacement = True
    Params = DPParams

    def pair_privacy(self, params: DPParams, train_cfg: TrainConfig, n_theta: int,
                     n_theta_u: int) -> dict[str, Any]:
        return dp_epsilon_pair(n_theta, n_theta_u, train_cfg, params)

    def original_recipe(self, params: DPParams) -> dict[str, Any]:
        from tasks.params import to_dict

        recipe = to_dict(params)
        recipe.pop("noise")  # how theta_u draws its noise does not change theta
        return {"dp_sgd": recipe}

    def _fit(self, state: TrainingState, params: DPParams, exclude: tuple[int, ...],
             extra: tuple[int, ...] = (), noise_seed: int | None = None) -> nn.Module:
        if state.family != "torch":
            raise DefenceError(f"retrain_dp: DP-SGD needs a torch model, got the scikit-learn "
                               f"model {state.model_cfg.name!r}")
        d = state.dataset
        model = state.initial_model()
        result = train_dp(model, d.x_train, d.y_train, state.train_indices, state.train_cfg,
                          params, state.seed, state.device, exclude=exclude,
                          extra=np.asarray(extra, dtype=np.int64), noise_seed=noise_seed)
        result.model.dp_epsilon = result.epsilon  # plain attribute: not saved with weights
        return result.model

    def train_original(self, state: TrainingState, params: DPParams) -> nn.Module:
        return self._fit(state, params, tuple(state.removed))

    def unlearn(self, state: TrainingState, request: ForgetRequest,
                params: DPParams) -> nn.Module:
        self.check_family(state)
        removed = tuple(state.removed) + request.indices
        noise_seed = None
        if params.noise == "fresh":
            noise_seed = int.from_bytes(hashlib.sha256(
                f"{state.seed}:{sorted(removed)}:{list(request.replacement)}".encode()
            ).digest()[:4], "little")
        return self._fit(state, params, removed, request.replacement, noise_seed)
