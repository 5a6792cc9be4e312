"""Random relabelling: fine-tune on U under wrong labels, mixed with the retained records."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tasks.training import seed_key, train_model
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


def wrong_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn label other than ``y`` for every record: y + a shift in 1..C-1."""
    if num_classes < 2:
        raise ValueError("random relabelling needs at least two classes")
    shift = rng.integers(1, num_classes, size=len(y))
    return ((np.asarray(y, dtype=np.int64) + shift) % num_classes).astype(np.int64)


def relabelled_finetune(state: TrainingState, request: ForgetRequest, *, epochs: int,
                        lr: float | None, batch_size: int | None, purpose: str = "random_label",
                        mask: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of theta trained ``epochs`` on U (wrong labels) plus the retained records (true
    labels), shuffled together. ``mask`` (parameter name -> 0/1 tensor): only weights where
    it is 1 move, the rest keep theta's values exactly. The wrong labels and the batch order
    come from the member's ``purpose`` seeds (SalUn draws its own: ``purpose="salun"``)."""
    seeds = state.seeds
    key = seed_key(purpose)
    model = copy_model(state.original).to(state.device)
    d = state.dataset
    forget = np.asarray(request.indices, dtype=np.int64)
    retain = retained_indices(state, request)
    # The labels are drawn once, so every epoch pushes U towards the same wrong classes.
    y_forget = wrong_labels(d.y_train[forget], d.num_classes,
                            np.random.default_rng([seeds.root, key]))
    # U first, then the retained records, copied out: on a conv model the copy's layout
    # (not only its values) decides the kernel, and this keeps the published numbers.
    x_mix = d.x_train[np.concatenate([forget, retain])]
    y_mix = np.concatenate([y_forget, d.y_train[retain].astype(np.int64)])
    cfg = finetune_config(state.train_cfg, epochs, lr, batch_size)
    before_step = None
    if mask is not None:
        # Decay goes into the gradient before masking, so frozen weights do not decay either;
        # with zero gradients SGD's momentum and Adam's moments stay zero, so they stay put.
        cfg = dataclasses.replace(cfg, weight_decay=0.0)
        before_step = _masking(mask, state.train_cfg.weight_decay)
    return train_model(model, x_mix, y_mix, np.arange(len(y_mix)), cfg, seeds.root + key,
                       state.device, before_step=before_step)


def _masking(mask: dict[str, torch.Tensor],
             weight_decay: float) -> Callable[[nn.Module], None]:
    """A ``before_step`` hook: add the decay to every gradient, then zero it off ``mask``."""
    def before_step(model: nn.Module) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if not p.requires_grad or p.grad is None:
                    continue
                if weight_decay:
                    p.grad.add_(p, alpha=weight_decay)
                p.grad.mul_(mask[n])
    return before_step


@UNLEARNING.register("random_label")
class RandomLabel(UnlearningMethod):
    """Random relabelling (Graves, Nagisetty and Ganesh, "Amnesiac machine learning",
    AAAI 2021).

    Fine-tunes theta for ``epochs`` on the forget set, each record given a random wrong label
    (never its true one, drawn once from the seed), shuffled together with the retained
    records under their true labels. ``lr``/``batch_size`` default to the original recipe's
    (optimiser, momentum and weight decay always are the recipe's).
    """

    name = "random_label"
    exact = False
    families = ("torch",)
    step_size_param = "lr"  # None: the original recipe's

    Params = EpochParams

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        return relabelled_finetune(state, request, epochs=params.epochs, lr=params.lr,
                                   batch_size=params.batch_size, purpose="random_label")
