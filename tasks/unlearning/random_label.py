"""Random relabelling: fine-tune on U under wrong labels, mixed with the retained records."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.training import epoch_order, has_batchnorm, make_optimizer, train_mode
from tasks.unlearning.approximate import EpochParams
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    retained_indices,
)


def wrong_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn label other than ``y`` for every record: y + a shift in 1..C-1."""
    if num_classes < 2:
        raise ValueError("random relabelling needs at least two classes")
    shift = rng.integers(1, num_classes, size=len(y))
    return ((np.asarray(y, dtype=np.int64) + shift) % num_classes).astype(np.int64)


def relabelled_finetune(state: TrainingState, request: ForgetRequest, *, epochs: int,
                        lr: float | None, batch_size: int | None, seed_offset: int,
                        mask: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A copy of theta trained ``epochs`` on U (wrong labels) plus the retained records (true
    labels), shuffled together. ``mask`` (parameter name -> 0/1 tensor): only weights where
    it is 1 move, the rest keep theta's values exactly."""
    device = state.device
    model = copy_model(state.original).to(device)
    d = state.dataset
    forget = np.asarray(request.indices, dtype=np.int64)
    retain = retained_indices(state, request)
    rng = np.random.default_rng([state.seed, seed_offset])
    # The labels are drawn once, so every epoch pushes U towards the same wrong classes.
    y_forget = wrong_labels(d.y_train[forget], d.num_classes, rng)
    idx = np.concatenate([forget, retain])
    x_mix = torch.as_tensor(d.x_train[idx], device=device)
    y_mix = torch.as_tensor(np.concatenate([y_forget, d.y_train[retain].astype(np.int64)]),
                            device=device)

    base = state.train_cfg
    cfg = dataclasses.replace(base, lr=lr or base.lr)
    if mask is not None:
        # Decay goes into the gradient before masking, so frozen weights do not decay either;
        # with zero gradients SGD's momentum and Adam's moments stay zero, so they stay put.
        cfg = dataclasses.replace(cfg, weight_decay=0.0)
    opt = make_optimizer(model, cfg)
    batch = batch_size or cfg.batch_size
    has_bn = has_batchnorm(model)
    positions = np.arange(len(idx), dtype=np.int64)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for epoch in range(epochs):
        train_mode(model, cfg.bn_mode)
        order = torch.as_tensor(epoch_order(positions, state.seed + seed_offset, epoch),
                                device=device)
        for start in range(0, len(order), batch):
            sel = order[start: start + batch]
            if len(sel) < 2 and has_bn and cfg.bn_mode == "train":
                continue  # BatchNorm cannot train on a single sample
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x_mix[sel]), y_mix[sel]).backward()
            if mask is not None:
                with torch.no_grad():
                    for n, p in named:
                        if p.grad is None:
                            continue
                        if base.weight_decay:
                            p.grad.add_(p, alpha=base.weight_decay)
                        p.grad.mul_(mask[n])
            opt.step()
    model.eval()
    return model


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

    # Labels and batch order are drawn apart from the original's epochs and other methods'.
    SEED_OFFSET = 4_000_037

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        return relabelled_finetune(state, request, epochs=params.epochs, lr=params.lr,
                                   batch_size=params.batch_size, seed_offset=self.SEED_OFFSET)
