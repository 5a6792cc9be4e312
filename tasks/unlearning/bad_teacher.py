"""Bad Teacher: distil theta's student from a random teacher on U and from theta elsewhere."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.models import build_torch_model
from tasks.params import check
from tasks.training import train_model
from tasks.unlearning.approximate import EpochParams
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    finetune_config,
    retained_indices,
)


@torch.no_grad()
def _soft_targets(model: nn.Module, x: torch.Tensor, temperature: float,
                  chunk: int = 1024) -> torch.Tensor:
    """Log-probabilities of ``model`` softened by ``temperature``, computed in chunks."""
    model.eval()
    parts = [F.log_softmax(model(x[s: s + chunk]) / temperature, dim=1)
             for s in range(0, len(x), chunk)]
    return torch.cat(parts)


@UNLEARNING.register("bad_teacher")
class BadTeacher(UnlearningMethod):
    """Bad Teacher (Chundawat, Tarun, Mandal and Kankanhalli, "Can bad teaching induce
    forgetting? Unlearning in deep networks using an incompetent teacher", AAAI 2023).

    A student starts at theta and is distilled for ``epochs`` on U, whose targets come from a
    randomly initialised model of the same architecture (the incompetent teacher), mixed with
    a ``retain_share`` sample of the retained records, whose targets come from theta (the
    competent teacher). The loss is KL(teacher || student) of outputs softened by
    ``temperature``, unscaled as in the paper. ``lr``/``batch_size`` default to the original
    recipe's (optimiser, momentum and weight decay always are the recipe's).
    """

    name = "bad_teacher"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    @dataclass(frozen=True)
    class Params(EpochParams):
        temperature: float = 1.0
        retain_share: float = 0.3

        def __post_init__(self) -> None:
            super().__post_init__()
            check("temperature", self.temperature, low=0, low_open=True)
            check("retain_share", self.retain_share, low=0, low_open=True, high=1)

    def incompetent_teacher(self, state: TrainingState) -> nn.Module:
        """A fresh random model of theta's architecture. Built directly rather than with
        ``state.initial_model``, which would load theta_0 when the recipe pretrains."""
        d = state.dataset
        # Its own seed: the incompetent teacher must not be theta's initialisation.
        seed = state.seeds.seed("bad_teacher/teacher") % 2**32
        # build_torch_model seeds torch's global generators: keep the caller's streams intact
        # (torch.manual_seed reseeds CUDA's too, which dropout on a GPU draws from).
        cuda = [state.device] if torch.device(state.device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            model = build_torch_model(state.model_cfg, d.input_shape, d.num_classes, d.mean,
                                      d.std, seed=seed)
        return model.to(state.device).eval()

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        device = state.device
        student = copy_model(state.original).to(device)
        forget = np.asarray(request.indices, dtype=np.int64)
        retain = retained_indices(state, request)
        n_retain = min(len(retain), math.ceil(params.retain_share * len(retain)))
        sample = np.sort(state.seeds.rng("bad_teacher/sample").choice(retain, size=n_retain,
                                                                      replace=False))
        d = state.dataset
        x_forget = torch.as_tensor(d.x_train[forget], device=device)
        x_retain = torch.as_tensor(d.x_train[sample], device=device)
        # The teachers are frozen, so every record's target is fixed: compute each once. The
        # untrained student is theta itself, so it serves as the competent teacher.
        t = params.temperature
        targets = torch.cat([_soft_targets(self.incompetent_teacher(state), x_forget, t),
                             _soft_targets(student, x_retain, t)])
        x_mix = torch.cat([x_forget, x_retain])

        def loss_fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                    batch: torch.Tensor) -> torch.Tensor:
            log_s = F.log_softmax(model(x) / t, dim=1)
            return F.kl_div(log_s, target, log_target=True, reduction="batchmean")

        cfg = finetune_config(state.train_cfg, params.epochs, params.lr, params.batch_size)
        # The soft targets stand where labels would: record i of x_mix learns targets[i].
        return train_model(student, x_mix, targets, np.arange(len(x_mix)), cfg,
                           state.seeds.seed("bad_teacher/sample"), device, loss_fn=loss_fn)
