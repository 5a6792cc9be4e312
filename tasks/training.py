"""Seeded, deterministic training of torch models on in-memory arrays.

Data order is drawn per epoch over the *full* index list and the removed samples are then
dropped, so a model retrained without a forget set sees the remaining samples in the same order
as the original did (ATTACKS.md section 2: same hyperparameters, data order and seeds).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn


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


def train_model(model: nn.Module, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
                cfg: TrainConfig, seed: int, device: torch.device | str = "cpu",
                exclude: Iterable[int] = (), extra: np.ndarray | None = None) -> nn.Module:
    """Train ``model`` in place on ``x[indices] minus exclude (plus extra)``; returns it.

    ``extra`` indices (online-learning replacements) join the order after the shuffle seed is
    applied to the full list, so the original samples keep their relative order.
    """
    device = torch.device(device)
    model.to(device)
    xs = torch.as_tensor(x, device=device)
    ys = torch.as_tensor(y, device=device)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.lr_milestones), cfg.lr_decay)
    base = np.asarray(indices, dtype=np.int64)
    if extra is not None and len(extra):
        base = np.concatenate([base, np.asarray(extra, dtype=np.int64)])
    exclude = list(exclude)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(cfg.epochs):
        train_mode(model, cfg.bn_mode)
        order = torch.as_tensor(epoch_order(base, seed, epoch, exclude), device=device)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start: start + cfg.batch_size]
            if len(batch) < 2 and cfg.bn_mode == "train" and has_batchnorm(model):
                continue  # BatchNorm cannot train on a single sample
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xs[batch]), ys[batch])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model


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
