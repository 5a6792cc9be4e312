"""Many small torch models in one vectorised program (issue 14, "many small models fast").

M members of one architecture have their parameters stacked along a leading member axis
(``torch.func.stack_module_state``); one ``vmap`` of ``functional_call`` runs every member's
forward pass at once, one backward pass yields every member's gradient, and the optimiser
maths of :func:`tasks.training.make_optimizer` (SGD with momentum / weight decay, Adam) is
applied to the stacked tensors. Each member reproduces :func:`tasks.training.train_model` with
its own seed: the same initial weights (``make_model(seed)``), the same batches
(``epoch_order(indices, seed, epoch, exclude)``), the same learning-rate schedule, so the
members equal one-at-a-time models up to float reduction order (tests/test_ensemble.py).

Limits, refused with a ValueError: members must hold the same number of training samples
after exclusion (their batches then line up step for step); training refuses BatchNorm (its
running statistics are updated in place) and active Dropout (one-at-a-time training draws its
masks from the global RNG in an order a batched program cannot replay). Gradient ascent runs in
eval mode, as :class:`tasks.unlearning.approximate.GradientAscent` does, and accepts both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from tasks.training import TrainConfig, epoch_order


def stateful_layer(model: nn.Module) -> str | None:
    """The first layer that keeps ensemble training from replaying one-at-a-time training
    (``"BatchNorm layer 'x'"``), or None when the whole model can train stacked."""
    for name, m in model.named_modules():
        # BatchNorm updates running statistics in place; one-at-a-time training draws dropout
        # masks from the global RNG in an order a batched program cannot replay.
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return f"BatchNorm layer {name!r}"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"dropout (p={m.p}) layer {name!r}"
    return None


def _refuse_stateful_training(model: nn.Module) -> None:
    layer = stateful_layer(model)
    if layer is not None:
        raise ValueError(f"ensemble training refuses {layer}: train such models one at a "
                         "time with tasks.training.train_model")


class _Stacked:
    """The members' tensors stacked on a leading axis, and one meta-device module to call."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        first = {n: t.shape for n, t in models[0].state_dict().items()}
        for i, m in enumerate(models[1:], start=1):
            other = {n: t.shape for n, t in m.state_dict().items()}
            if other != first:
                raise ValueError(f"ensemble member {i} differs from member 0 in its tensors "
                                 "(names or shapes): members must share one architecture")
        self.models = list(models)
        self.trainable = [n for n, p in models[0].named_parameters() if p.requires_grad]
        params, buffers = stack_module_state(list(models))
        self.params = {n: params[n].detach().to(device).requires_grad_(True)
                       for n in self.trainable}
        # Frozen parameters and buffers ride along as constants of the call.
        self.consts = {n: t.detach().to(device) for n, t in params.items()
                       if n not in self.params}
        self.consts.update({n: t.to(device) for n, t in buffers.items()})
        self.base = copy.deepcopy(models[0]).to("meta")

    def __len__(self) -> int:
        return len(self.models)

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """Logits (M, B, C) for member inputs ``xb`` of shape (M, B, ...)."""

        def one(p, c, x):
            return functional_call(self.base, {**p, **c}, (x,))

        return vmap(one)(self.params, self.consts, xb)

    def grads(self, xb: torch.Tensor, yb: torch.Tensor) -> list[torch.Tensor]:
        """Per-member gradients of the mean cross-entropy over each member's own batch.

        Members share no parameters, so the gradient of the summed per-member means is, for
        each member, the gradient of its own mean loss (what ``CrossEntropyLoss()`` gives
        one model)."""
        logits = self.forward(xb)  # (M, B, C)
        # Classes on dim 1, (M, C, B): the same per-sample log-softmax, about 7x faster on
        # CPU than flattening to (M * B, C), whose 10-wide rows vectorise poorly.
        per = nn.functional.cross_entropy(logits.transpose(1, 2), yb, reduction="none")
        loss = per.mean(dim=1).sum()
        return list(torch.autograd.grad(loss, list(self.params.values())))

    def write_back(self, models: Sequence[nn.Module]) -> list[nn.Module]:
        """Copy member i's slice of every stacked tensor into ``models[i]`` (in place)."""
        stacked = {**self.params, **self.consts}
        with torch.no_grad():
            for i, model in enumerate(models):
                for name, t in list(model.named_parameters()) + list(model.named_buffers()):
                    t.copy_(stacked[name][i].to(t.device))
        return list(models)


class _StackedOptimizer:
    """torch.optim.SGD / Adam (defaults of :func:`tasks.training.make_optimizer`) on stacked
    tensors, written out step for step as torch's single-tensor implementations do, so each
    member follows the same arithmetic as its own optimiser would."""

    def __init__(self, params: list[torch.Tensor], cfg: TrainConfig) -> None:
        self.params, self.cfg = params, cfg
        self.buf: list[torch.Tensor | None] = [None] * len(params)
        self.exp_avg = [torch.zeros_like(p) for p in params] if cfg.optimizer == "adam" else []
        self.exp_avg_sq = [torch.zeros_like(p) for p in params] if self.exp_avg else []
        self.steps = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        cfg = self.cfg
        self.steps += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if cfg.weight_decay != 0:
                g = g.add(p, alpha=cfg.weight_decay)
            if cfg.optimizer == "sgd":
                if cfg.momentum != 0:
                    if self.buf[i] is None:
                        self.buf[i] = g.detach().clone()
                    else:
                        self.buf[i].mul_(cfg.momentum).add_(g)  # dampening 0
                    g = self.buf[i]
                p.add_(g, alpha=-lr)
                continue
            beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults
            self.exp_avg[i].lerp_(g, 1 - beta1)
            self.exp_avg_sq[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step = float(self.steps)  # exact: torch's float32 step counter reads back whole
            bias1 = 1 - beta1**step
            bias2_sqrt = (1 - beta2**step) ** 0.5
            denom = (self.exp_avg_sq[i].sqrt() / bias2_sqrt).add_(eps)
            p.addcdiv_(self.exp_avg[i], denom, value=-(lr / bias1))


def _member_orders(index_sets: Sequence[np.ndarray], seeds: Sequence[int], epoch: int,
                   excludes: Sequence[Iterable[int]]) -> np.ndarray:
    orders = [epoch_order(idx, s, epoch, ex) for idx, s, ex in zip(index_sets, seeds, excludes)]
    sizes = sorted({len(o) for o in orders})
    if len(sizes) > 1:
        raise ValueError(f"ensemble members must train on equally many samples (after "
                         f"exclusion), got sizes {sizes}: their batches line up step for "
                         "step; group members by size or train them one at a time")
    return np.stack(orders)


def train_members(models: Sequence[nn.Module], x: np.ndarray, y: np.ndarray,
                  index_sets: Sequence[np.ndarray], cfg: TrainConfig, seeds: Sequence[int],
                  device: torch.device | str = "cpu",
                  excludes: Sequence[Iterable[int]] | None = None) -> list[nn.Module]:
    """Train ``models[i]`` in place as ``train_model(models[i], x, y, index_sets[i], cfg,
    seeds[i], device, exclude=excludes[i])`` would, all members in one vectorised program.

    Args:
        models: M modules of one architecture (their current weights are the start).
        x, y: the full arrays (n, ...) and (n,); index_sets index into them.
        index_sets: M index arrays; equally many samples per member after ``excludes``.
        seeds: M data-order seeds (``epoch_order``).
        excludes: per member, samples dropped after the shuffle (retraining without U).

    Returns the M models, trained and in eval mode.
    """
    m = len(models)
    excludes = [()] * m if excludes is None else [list(e) for e in excludes]
    if not (len(index_sets) == len(seeds) == len(excludes) == m):
        raise ValueError(f"ensemble of {m} models needs as many index sets, seeds and "
                         f"excludes, got {len(index_sets)}, {len(seeds)}, {len(excludes)}")
    for model in models:
        _refuse_stateful_training(model)
    device = torch.device(device)
    index_sets = [np.asarray(idx, dtype=np.int64) for idx in index_sets]
    _member_orders(index_sets, seeds, 0, excludes)  # refuse unequal sizes before any work
    stack = _Stacked(models, device)
    stack.base.train()
    xs = torch.as_tensor(x, device=device)
    ys = torch.as_tensor(y, device=device)
    opt = _StackedOptimizer(list(stack.params.values()), cfg)
    lr = cfg.lr
    for epoch in range(cfg.epochs):
        if epoch in cfg.lr_milestones:  # MultiStepLR: decayed after the previous epoch
            lr = lr * cfg.lr_decay
        order = torch.as_tensor(_member_orders(index_sets, seeds, epoch, excludes),
                                device=device)
        for start in range(0, order.shape[1], cfg.batch_size):
            batch = order[:, start: start + cfg.batch_size]
            opt.step(stack.grads(xs[batch], ys[batch]), lr)
    stack.write_back(models)
    for model in models:
        model.eval()
    return list(models)


def train_ensemble(make_model: Callable[[int], nn.Module], x: np.ndarray, y: np.ndarray,
                   index_sets: Sequence[np.ndarray], cfg: TrainConfig, seeds: Sequence[int],
                   device: torch.device | str = "cpu",
                   excludes: Sequence[Iterable[int]] | None = None) -> list[nn.Module]:
    """M fresh models trained as :func:`tasks.unlearning.base.fit_standard` trains one:
    member i is initialised by ``make_model(seeds[i])`` (which must seed its own weights, e.g.
    ``lambda s: build_torch_model(cfg, ..., seed=s)`` or ``state.initial_model``) and trained
    with data-order seed ``seeds[i]`` on ``index_sets[i]`` minus ``excludes[i]``."""
    device = torch.device(device)
    models = [make_model(int(s)).to(device) for s in seeds]
    return train_members(models, x, y, index_sets, cfg, seeds, device, excludes)


def gradient_ascent_members(models: Sequence[nn.Module], x: np.ndarray, y: np.ndarray,
                            forget_sets: Sequence[Sequence[int]], lr: float = 1e-3,
                            steps: int | None = None, batch_size: int = 128,
                            device: torch.device | str = "cpu") -> list[nn.Module]:
    """Copies of ``models``, member i moved by gradient ascent on its own ``forget_sets[i]``,
    with the maths of :class:`~tasks.unlearning.approximate.GradientAscent` (eval mode,
    batch min(batch_size, k), ``steps`` default k // batch, theta += lr * grad mean CE).
    All forget sets must have the same size k. The originals are left untouched."""
    sizes = sorted({len(f) for f in forget_sets})
    if len(forget_sets) != len(models):
        raise ValueError(f"{len(models)} models need as many forget sets, got "
                         f"{len(forget_sets)}")
    if len(sizes) != 1 or sizes[0] == 0:
        raise ValueError(f"gradient ascent across members needs non-empty forget sets of one "
                         f"size, got sizes {sizes}")
    device = torch.device(device)
    copies = [copy.deepcopy(m).to(device).eval() for m in models]
    stack = _Stacked(copies, device)
    stack.base.eval()  # BatchNorm uses running statistics, as in the reference
    k = sizes[0]
    batch = min(batch_size, k)
    steps = steps if steps is not None else max(1, k // batch)
    forget = torch.as_tensor(np.asarray(forget_sets, dtype=np.int64), device=device)
    xs = torch.as_tensor(x, device=device)
    ys = torch.as_tensor(y, device=device)
    for s in range(steps):
        sel = forget[:, torch.arange(s * batch, (s + 1) * batch, device=device) % k]
        grads = stack.grads(xs[sel], ys[sel])
        with torch.no_grad():
            for w, g in zip(stack.params.values(), grads):
                w.add_(g, alpha=lr)
    return stack.write_back(copies)


@torch.no_grad()
def ensemble_logits(models: Sequence[nn.Module], x: np.ndarray,
                    device: torch.device | str = "cpu", batch_size: int = 1024) -> np.ndarray:
    """Logits (M, n, C) of every member on every row of ``x`` (eval mode), vectorised."""
    device = torch.device(device)
    stack = _Stacked(models, device)
    stack.base.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[start: start + batch_size], device=device)
        out.append(stack.forward(xb.expand(len(stack), *xb.shape)).float().cpu())
    return torch.cat(out, dim=1).numpy()


def tune_cpu_allocator() -> bool:
    """Opt-in, process-wide: let glibc keep freed large blocks instead of returning them to
    the system. A stacked ensemble allocates megabyte activations every step; by default each
    one is a fresh mmap whose pages fault in again, which costs about a third of a step on CPU
    (benchmarks/bench_ensemble.py). Returns False where glibc's ``mallopt`` is unavailable."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 1 << 25))
