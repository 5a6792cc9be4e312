"""Fisher forgetting: scrub U by Gaussian noise shaped by the retained data's Fisher information.

The diagonal Fisher comes from :func:`tasks.unlearning.ssd.fisher_diagonal` (per-record
gradients with ``torch.func.vmap`` over ``grad``, in chunks), so both Fisher-based methods
measure importance the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tasks.params import check
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    retained_indices,
)
from tasks.unlearning.ssd import fisher_diagonal

# Weights no retained record moves have F = 0; the floor keeps F^(-1/4) finite, and ``cap``
# (not the floor) decides how much noise such weights receive.
_FISHER_FLOOR = 1e-12
# Tags that keep this method's random streams apart from others drawn from the same seed.
_SUBSET_TAG = 0x46495348  # "FISH"
_NOISE_TAG = 0x4E4F4953  # "NOIS"


@UNLEARNING.register("fisher")
class FisherForgetting(UnlearningMethod):
    """Fisher forgetting (Golatkar, Achille and Soatto, "Eternal sunshine of the spotless
    net: selective forgetting in deep networks", CVPR 2020).

    Estimates the diagonal Fisher information F of the retained records at theta (the mean
    over at most ``max_records`` of them of each weight's squared per-record gradient of the
    log-likelihood, i.e. the empirical Fisher with the true labels; theta in eval mode) and
    adds Gaussian noise to every trainable weight::

        theta_u = theta + std * N(0, 1),   std = min(alpha * max(F, floor) ** (-1/4), cap)

    Weights the retained data pin down (large F) barely move; weights only U relied on
    (small F) are drowned in noise, which erases what they held about U. ``alpha`` plays the
    role of the paper's (lambda * sigma_h^2) ** (1/4); ``cap`` bounds the noise of weights
    with near-zero Fisher, which would otherwise explode. Buffers (BatchNorm statistics) are
    left as they are. The retained subsample and the noise are both drawn from the state's
    seed, so the same request gives the same model.
    """

    name = "fisher"
    exact = False
    families = ("torch",)
    step_size_param = "alpha"  # the noise scale is this method's only "step"

    @dataclass(frozen=True)
    class Params:
        # On the kit's digits MLP (forgetting one class) 0.01 keeps the noise of its ~10% most
        # informative weights below the cap and costs about one point of test accuracy; from
        # about 0.03 on, the cap binds for nearly every weight and F no longer shapes the noise.
        alpha: float = 0.01
        cap: float = 0.05
        max_records: int = 2000

        def __post_init__(self) -> None:
            # alpha 0 or cap 0 would publish theta itself.
            check("alpha", self.alpha, low=0, low_open=True)
            check("cap", self.cap, low=0, low_open=True)
            check("max_records", self.max_records, low=1, integer=True)

    def _retained_sample(self, state: TrainingState, request: ForgetRequest,
                         max_records: int) -> np.ndarray:
        retain = retained_indices(state, request)
        if len(retain) <= max_records:
            return retain
        rng = np.random.default_rng([state.seed, _SUBSET_TAG])
        return np.sort(rng.choice(retain, size=max_records, replace=False))

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        model = copy_model(state.original).to(device).eval()
        idx = self._retained_sample(state, request, params.max_records)
        d = state.dataset
        fisher = fisher_diagonal(model, torch.as_tensor(d.x_train[idx], device=device),
                                 torch.as_tensor(d.y_train[idx], device=device))
        # The noise is drawn on the CPU so CPU and GPU runs of one seed publish the same model.
        seed = int(np.random.SeedSequence([state.seed, _NOISE_TAG]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n not in fisher:
                    continue  # frozen weights take no part
                std = (params.alpha * fisher[n].clamp_min(_FISHER_FLOOR).pow(-0.25)
                       ).clamp(max=params.cap)
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                p.add_(std * noise.to(device=p.device, dtype=p.dtype))
        return model
