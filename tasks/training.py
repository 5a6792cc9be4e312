"""Seeded, deterministic training of torch models on in-memory arrays.

Data order is drawn per epoch over the *full* index list and the removed samples are then
dropped, so a model retrained without a forget set sees the remaining samples in the same order
as the original did (ATTACKS.md section 2: same hyperparameters, data order and seeds).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    # "eval" freezes BatchNorm running statistics (the reference fine-tuning recipe).
    bn_mode: Literal["train", "eval"] = "train"
    # Multiply the learning rate by `lr_decay` at these epochs.
    lr_milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1

    def __post_init__(self) -> None:
        from tasks.params import FieldError, check, check_each

        check("epochs", self.epochs, low=0, integer=True)
        check("lr", self.lr, low=0, low_open=True)
        check("batch_size", self.batch_size, low=1, integer=True)
        check("momentum", self.momentum, low=0, high=1, high_open=True)
        check("weight_decay", self.weight_decay, low=0)
        check("lr_decay", self.lr_decay, low=0, low_open=True)
        check_each("lr_milestones", self.lr_milestones, low=1, integer=True)
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise FieldError("lr_milestones", f"must be increasing epochs, got "
                                              f"{list(self.lr_milestones)}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# Keys of the sub-purposes that predate :class:`SeedStream`: they keep the offsets their models
# were published with. A new purpose takes no entry here (its key derives from its name).
PINNED_SEED_KEYS: dict[str, int] = {
    "finetune": 1_000_003,
    "scrub/retain": 2_000_003,
    "scrub/forget": 2_000_004,
    "bad_teacher/teacher": 3_000_017,
    "bad_teacher/sample": 3_000_019,  # the retained sample and the batch order
    "random_label": 4_000_037,  # the wrong labels and the batch order
    "salun": 5_000_011,
    "neggrad_plus/retain": 6_000_011,
    "neggrad_plus/forget": 6_000_012,
    "l1_sparse": 7_000_003,
}


def seed_key(purpose: str) -> int:
    """The key of a sub-purpose: pinned (:data:`PINNED_SEED_KEYS`), else 2**32 plus 62 bits of
    the BLAKE2b hash of its name, so it is stable across runs and machines and clear of every
    pinned key and of any member seed below 2**32."""
    pinned = PINNED_SEED_KEYS.get(purpose)
    if pinned is not None:
        return pinned
    digest = hashlib.blake2b(purpose.encode(), digest_size=8).digest()
    return 2**32 + int.from_bytes(digest, "big") % 2**62


@dataclass(frozen=True)
class SeedStream:
    """A member's seeds, one per named sub-purpose (the order of an unlearning method's epochs,
    its random teacher, ...), so that no file picks offsets by hand.

    ``seed(purpose)`` is ``root + seed_key(purpose)`` (an int seed: :func:`epoch_order`,
    model initialisation); ``rng(purpose)`` is ``default_rng([root, seed_key(purpose)])``.
    Name purposes ``"<method>/<what>"``; different purposes give unrelated streams.
    """

    root: int

    def seed(self, purpose: str) -> int:
        return self.root + seed_key(purpose)

    def rng(self, purpose: str) -> np.random.Generator:
        return np.random.default_rng([self.root, seed_key(purpose)])


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def deterministic_mode(device: torch.device) -> None:
    """Same seed, same numbers: no autotuned kernels, deterministic algorithms where possible."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_order(indices: np.ndarray, seed: int, epoch: int,
                exclude: Iterable[int] = ()) -> np.ndarray:
    """Shuffle of the full index list for one epoch, with excluded samples dropped after."""
    rng = np.random.default_rng([seed, epoch])
    order = indices[rng.permutation(len(indices))]
    excluded = np.fromiter(exclude, dtype=np.int64)
    if excluded.size:
        order = order[~np.isin(order, excluded)]
    return order


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_mode(model: nn.Module, mode: str) -> None:
    """Train mode, with BatchNorm statistics frozen when the recipe freezes them."""
    model.train()
    if mode == "eval":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


# loss_fn(model, x_batch, y_batch, batch_indices) -> the step's scalar loss
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  indices: torch.Tensor) -> torch.Tensor:
    """The default loss of :func:`train_model`: mean cross-entropy of the batch."""
    return F.cross_entropy(model(x), y)


def train_model(model: nn.Module, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
                indices: np.ndarray, cfg: TrainConfig, seed: int,
                device: torch.device | str = "cpu", exclude: Iterable[int] = (),
                extra: np.ndarray | None = None, *, loss_fn: LossFn = cross_entropy,
                optimizer: torch.optim.Optimizer | None = None, first_epoch: int = 0,
                before_step: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Train ``model`` in place on ``x[indices] minus exclude (plus extra)``; returns it.

    ``extra`` indices (online-learning replacements) join the order after the shuffle seed is
    applied to the full list, so the original samples keep their relative order.

    The hooks that make an unlearning method a loss over this loop:

    - ``loss_fn(model, x[batch], y[batch], batch)`` gives each step's loss (default
      cross-entropy). It is called once per step taken, in order, so it may keep state (count
      steps, cycle through a second set); ``batch`` indexes ``x`` and ``y``, and ``y`` may hold
      any per-record target (soft labels), or be ignored.
    - ``optimizer``: go on with the caller's optimiser (momentum carries across calls); the
      caller then owns the learning-rate schedule (``cfg.lr_milestones`` are not applied).
    - ``first_epoch``: the epochs are ``first_epoch, ...`` (their orders
      ``epoch_order(..., seed, epoch)``), so alternating passes can run one call each.
    - ``before_step(model)``: called with the gradients in place, before the optimiser steps.
    """
    device = torch.device(device)
    model.to(device)
    xs = torch.as_tensor(x, device=device)
    ys = torch.as_tensor(y, device=device)
    sched = None
    if optimizer is None:
        optimizer = make_optimizer(model, cfg)
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.lr_milestones),
                                                     cfg.lr_decay)
    base = np.asarray(indices, dtype=np.int64)
    if extra is not None and len(extra):
        base = np.concatenate([base, np.asarray(extra, dtype=np.int64)])
    exclude = list(exclude)
    skip_single = cfg.bn_mode == "train" and has_batchnorm(model)
    for epoch in range(first_epoch, first_epoch + cfg.epochs):
        train_mode(model, cfg.bn_mode)
        order = torch.as_tensor(epoch_order(base, seed, epoch, exclude), device=device)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start: start + cfg.batch_size]
            if len(batch) < 2 and skip_single:
                continue  # BatchNorm cannot train on a single sample
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, xs[batch], ys[batch], batch)
            loss.backward()
            if before_step is not None:
                before_step(model)
            optimizer.step()
        if sched is not None:
            sched.step()
    model.eval()
    return model


def steps_per_epoch(n: int, batch_size: int, model: nn.Module, bn_mode: str) -> int:
    """Steps :func:`train_model` takes in an epoch over ``n`` records (a one-record batch is
    skipped when BatchNorm trains)."""
    batches = -(-n // batch_size)
    if bn_mode != "train" or not has_batchnorm(model):
        return batches
    return 0 if batch_size == 1 else batches - int(n % batch_size == 1)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether a BatchNorm layer is in the model (it cannot train on a one-sample batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor,
                   device: torch.device | str = "cpu", batch_size: int = 1024) -> np.ndarray:
    """Logits (n, C) of ``model`` in eval mode."""
    model.eval()
    device = torch.device(device)
    model.to(device)
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start: start + batch_size], device=device)
        out.append(model(xb).float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float((logits.argmax(axis=1) == y).mean())


def mean_loss(logits: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    lt = torch.as_tensor(logits)
    return float(nn.functional.cross_entropy(lt, torch.as_tensor(y), reduction="mean"))
