"""Feature recovery of forgotten samples from a model pair (Hu et al., S&P 2024).

The attacker turns (theta, theta_u) into a target gradient g* and searches for inputs whose
training gradient points the same way (ATTACKS.md sections 3.2-3.3):

    loss(x) = 1 - <grad_theta L(f(x), y), g*> / (|grad| |g*|) + tv_weight * TV_mean(x)

one global cosine over all parameters, x kept in [0, 1] (the model starts with ``Normalize``),
signed AdamW with step decay, several restarts, the best restart picked by the same cosine
without TV. Target gradients, always a positive multiple of grad L(U):

* ``paper``                 g* = theta_u - theta, trial gradient at theta (Eq. 2 with the sign
                            fixed so that gradient ascent gives +grad L);
* ``reference``, approximate g* = (theta_u - theta) / eta at theta;
* ``reference``, exact       g* = -(N (theta - theta0) - (N - k)(theta_u - theta0)) at theta0.

Vectorised: every restart of every target that shares an evaluation model is optimised in one
program. When every layer is a supported type (Linear, Conv2d, BatchNorm on running statistics,
activations, pooling, flatten: :mod:`tasks.attacks.per_trial_grads`) all trials run as one
ordinary batch and the per-trial parameter gradients are formed from each layer's inputs and
output gradients (double backprop through them); otherwise ``vmap`` over targets and restarts of
``grad`` of the per-trial loss. Both give the same values within float tolerance. BatchNorm runs
on its running statistics (eval mode).

Entry point for the search: :func:`recover` (cases, config, callback) -> :class:`RecoveryResult`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfigError,
    AttackResult,
    NonFiniteLossError,
    ThreatModel,
    target_seeds,
)
from tasks.attacks.per_trial_grads import PerTrialGradients, fast_path_reason
from tasks.attacks.precision import Precision, arithmetic, flush_denormals, fp32_scoring
from tasks.attacks.recovery_groups import group_targets
from tasks.attacks.trial_loss import detached_params, make_trial_loss, per_trial_loss, tv_mean
from tasks.cases import Case

__all__ = [
    "GradientInversion",
    "InversionConfig",
    "RecoveryProgress",
    "RecoveryResult",
    "infer_labels_from_gradient",
    "make_batched_loss",
    "matching_loss",
    "recover",
    "target_gradient",
    "tv_mean",
]


@dataclass(frozen=True)
class InversionConfig:
    """Settings of one feature-recovery attack; the defaults are the reference configuration."""

    name: str = "reference"
    knowledge: Literal["paper", "reference"] = "reference"
    label_mode: Literal["known", "optimised", "inferred"] = "known"
    lr: float = 0.04
    tv_weight: float = 1e-2  # weight of TV_mean (mean, not sum: never reuse 1e-2 with sum-TV)
    restarts: int = 5
    iterations: int = 10_000
    optimizer: Literal["adamw", "adam"] = "adamw"
    signed: bool = True
    init: Literal["randn", "rand", "zeros"] = "randn"
    # lr x lr_decay at T // d for each divisor d (reference: 3749, 6249, 8756 at T = 10,000).
    lr_decay_divisors: tuple[float, ...] = (2.667, 1.6, 1.142)
    lr_decay: float = 0.5
    k: int = 1  # samples per request assumed under paper knowledge (reference: metadata.k)
    dry_run: bool = False  # one iteration only
    callback_every: int = 1
    # Arithmetic of the optimisation's passes: "fp32" (TF32 off on CUDA too), "tf32" (TF32
    # matmuls and convolutions on CUDA devices that have them; the same as fp32 elsewhere),
    # "bf16" (autocast to bfloat16 on any device). The final scoring is always fp32.
    precision: Precision = "fp32"
    # torch.compile the objective (written with torch.func; replaces recover's ``path``): a
    # minute or two to compile, then bf16 steps about 1.9x faster on a CPU (fp32 1.15x);
    # for long recoveries.
    compile: bool = False
    # Added in issue 16: keyed only when changed, so earlier rows keep their keys.
    KEYED_IF_CHANGED: ClassVar[dict[str, Any]] = {"precision": "fp32", "compile": False}

    def __post_init__(self) -> None:
        from tasks.params import FieldError, check, check_each

        for name in ("restarts", "iterations", "k", "callback_every"):
            check(name, getattr(self, name), low=1, integer=True)
        check("lr", self.lr, low=0, low_open=True)
        check("tv_weight", self.tv_weight, low=0)
        check("lr_decay", self.lr_decay, low=0, low_open=True)
        check_each("lr_decay_divisors", self.lr_decay_divisors, low=0, low_open=True)
        if self.compile:
            from tasks.attacks.compiled_objective import compiler_missing

            if why := compiler_missing():
                raise FieldError("compile", why)

    @property
    def steps(self) -> int:
        return 1 if self.dry_run else self.iterations

    def milestones(self) -> list[int]:
        t = self.steps
        return sorted({int(t // d) for d in self.lr_decay_divisors if 0 < int(t // d) < t})


@dataclass(frozen=True)
class RecoveryProgress:
    """What a callback sees after an iteration (for ASHA and progress logs)."""

    iteration: int  # 1-based
    target_indices: tuple[int, ...]  # which input cases this group holds
    matching_loss: np.ndarray  # (n,) best-restart 1 - cos (no TV) for those targets
    wall_s: float


@dataclass
class RecoveryResult(AttackResult):
    """Per target (input order): images (k, C, H, W) in [0, 1], labels used (k,), the
    best restart's 1 - cos and cos, every restart's final 1 - cos."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    matching_loss: np.ndarray  # (T,)
    cosine: np.ndarray  # (T,)
    restart_losses: list[np.ndarray]  # (R,) each
    best_restart: np.ndarray  # (T,)
    iterations: int
    wall_s: float
    stopped_early: bool = False
    knowledge: str = "reference"
    label_mode: str = "known"
    eval_model: list[str] = field(default_factory=list)  # "theta" or "theta0" per target

    def per_target(self) -> dict[str, list]:
        return {"images": self.images, "labels": self.labels,
                "matching_loss": list(self.matching_loss), "cosine": list(self.cosine),
                "restart_losses": self.restart_losses}


# --- target gradient ---------------------------------------------------------------------------

def target_gradient(case: Case, knowledge: str = "reference"
                    ) -> tuple[OrderedDict[str, torch.Tensor], nn.Module, str]:
    """g* (a positive multiple of grad L(U)) and the model the trial gradient is taken at.

    Returns (g* by parameter name, evaluation model, "theta" | "theta0").
    """
    meta = case.metadata
    if case.theta is None or case.theta_u is None:
        raise AttackConfigError("feature recovery needs white-box theta and theta_u")
    if knowledge == "reference" and meta.knowledge != "reference":
        raise AttackConfigError("knowledge 'reference' needs a case built with reference "
                                "knowledge (theta0, N, k, eta, labels)")
    theta, theta_u = detached_params(case.theta), detached_params(case.theta_u)
    if knowledge == "paper" or not meta.exact:
        scale = 1.0
        if knowledge == "reference" and meta.unlearn_lr:
            scale = 1.0 / meta.unlearn_lr
        g = OrderedDict((n, ((theta_u[n].double() - theta[n].double()) * scale).float())
                        for n in theta)
        return g, case.theta, "theta"
    if case.theta0 is None or meta.n_finetune is None or meta.k is None:
        raise AttackConfigError("the exact reference target needs a pretrained theta0, N and "
                                "k in the case (the recipe has no pretraining)")
    steps = getattr(meta, "train_steps", None)
    if steps is not None and steps > 1:
        # -(N(theta - theta0) - (N - k)(theta_u - theta0)) is grad L(U) only when theta and
        # theta_u are one full-batch step from theta0.
        raise AttackConfigError(f"the exact reference target assumes one training step from "
                                f"theta0; this recipe took {steps}")
    n, k = float(meta.n_finetune), float(meta.k)
    theta0 = detached_params(case.theta0)
    g = OrderedDict()
    for name in theta:
        t0 = theta0[name].double()
        g[name] = (-(n * (theta[name].double() - t0) - (n - k) * (theta_u[name].double() - t0))
                   ).float()
    return g, case.theta0, "theta0"


def _last_layer(model: nn.Module, num_classes: int) -> tuple[str | None, str | None]:
    weight = bias = None
    for name, p in model.named_parameters():
        if p.dim() == 2 and p.shape[0] == num_classes:
            weight, bias = name, None
        elif p.dim() == 1 and p.shape[0] == num_classes and weight is not None:
            bias = name
    return weight, bias


def infer_labels_from_gradient(gstar: OrderedDict[str, torch.Tensor], model: nn.Module,
                               num_classes: int, k: int) -> np.ndarray:
    """iDLG-style labels: with softmax cross-entropy the last layer's bias gradient is
    sum_i (p_i - onehot(y_i)), negative exactly at the true labels (for nonnegative features the
    weight rows' sums carry the same sign). Returns the k most negative classes (k > number of
    negative entries repeats the most negative)."""
    weight, bias = _last_layer(model, num_classes)
    if weight is None:
        raise AttackConfigError("label_mode 'inferred' needs a final linear layer")
    signal = gstar[bias] if bias is not None else gstar[weight].sum(1)
    order = torch.argsort(signal)
    negative = int((signal < 0).sum())
    labels = [int(order[i]) if i < max(negative, 1) else int(order[0]) for i in range(k)]
    return np.asarray(labels, dtype=np.int64)


# --- objective ---------------------------------------------------------------------------------

def matching_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  gstar: OrderedDict[str, torch.Tensor]) -> torch.Tensor:
    """1 - cos(grad L(f(x), y), g*) for one trial (x (k,C,H,W), y (k,) ints): the selection
    score, exactly the optimised forward path without TV."""
    ysoft = F.one_hot(y.long(), num_classes=_num_outputs(model, x)).float()
    gnorm = torch.sqrt(sum((g * g).sum() for g in gstar.values()))
    with torch.enable_grad():
        return make_trial_loss(model, 0.0)(x, ysoft, gstar, gnorm)[1].detach()


def _num_outputs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[-1])


def _tv_per_trial(x: torch.Tensor) -> torch.Tensor:
    """tv_mean of each trial of x (T, R, k, C, H, W) -> (T, R)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(2).mean(-1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(2).mean(-1)
    return dh + dw


def make_batched_loss(model: nn.Module, tv_weight: float, path: str = "auto"):
    """(x (T,R,k,C,H,W), soft labels (T,R,k,classes), g* stacked (T, ...), |g*| (T,)) ->
    (1 - cos + tv, 1 - cos), each (T, R).

    ``path``: "fast" (one batch, per-trial gradients from layer inputs and output gradients),
    "vmap" (vmap of grad of the per-trial loss) or "auto" (fast where every layer supports
    it). Returns (function, path used)."""
    if path not in ("auto", "fast", "vmap"):
        raise ValueError(f"path must be 'auto', 'fast' or 'vmap', got {path!r}")
    use_fast = path == "fast" or (path == "auto" and fast_path_reason(model) is None)
    if not use_fast:
        return per_trial_loss(model, tv_weight), "vmap"
    per_trial = PerTrialGradients(model)
    names = list(per_trial.param_names)

    def batched(x, ysoft, gstack, gnorm):
        t, r, k = x.shape[:3]
        g = per_trial(x.reshape(t * r, k, *x.shape[3:]), ysoft.reshape(t * r, k, -1))
        g = {n: g[n].float() for n in names}  # sums in fp32 under bf16 autocast too
        dot = sum((g[n].reshape(t, r, -1) * gstack[n].reshape(t, 1, -1)).sum(-1)
                  for n in names)
        sq = sum(g[n].reshape(t, r, -1).square().sum(-1) for n in names)
        cost = 1.0 - dot / (torch.sqrt(sq) * gnorm[:, None] + 1e-12)
        if tv_weight == 0:
            return cost, cost
        return cost + tv_weight * _tv_per_trial(x), cost

    return batched, "fast"


# --- the batched optimisation ------------------------------------------------------------------

def _init_images(gen: torch.Generator, cfg: InversionConfig, shape: tuple[int, ...]):
    if cfg.init == "randn":
        x = torch.randn(shape, generator=gen)
    elif cfg.init == "rand":
        x = torch.rand(shape, generator=gen)
    else:
        x = torch.zeros(shape)
    return x.clamp_(0.0, 1.0)


def _run_group(model: nn.Module, gstars: list, labels: list[np.ndarray], seeds: list[int],
               cfg: InversionConfig, input_shape: tuple[int, ...], num_classes: int,
               device: torch.device, callback, indices: tuple[int, ...], start: float,
               path: str = "auto"):
    """Optimise R restarts of T targets (same model, same k) together."""
    model = model.eval()
    t_count, k, r_count = len(gstars), len(labels[0]), cfg.restarts
    names = list(gstars[0])
    gstack = OrderedDict((n, torch.stack([g[n] for g in gstars]).to(device)) for n in names)
    gnorm = torch.sqrt(sum((gstack[n] ** 2).flatten(1).sum(1) for n in names))  # (T,)
    inits, label_inits = [], []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        inits.append(_init_images(gen, cfg, (r_count, k, *input_shape)))
        label_inits.append(torch.randn((r_count, k, num_classes), generator=gen))
    x = torch.stack(inits).to(device).requires_grad_(True)  # (T, R, k, C, H, W)
    opt_params = [x]
    if cfg.label_mode == "optimised":
        ylogit = torch.stack(label_inits).to(device).requires_grad_(True)  # (T, R, k, C)
        opt_params.append(ylogit)
    else:
        y = torch.as_tensor(np.stack(labels), device=device)
        yfixed = F.one_hot(y, num_classes).float()[:, None].expand(t_count, r_count, k,
                                                                    num_classes)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(opt_params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones(), gamma=cfg.lr_decay)
    dev = torch.device(device)
    whole, forward = arithmetic(cfg.precision, dev)
    if cfg.compile:
        from tasks.attacks.compiled_objective import chunk_targets_for, compiled_batched_loss

        chunk = chunk_targets_for(model, (k, *input_shape), r_count, dev)
        batched = compiled_batched_loss(model, cfg.tv_weight, forward, chunk)
    else:
        batched, _ = make_batched_loss(model, cfg.tv_weight, path)

    def soft_labels():
        return torch.softmax(ylogit, -1) if cfg.label_mode == "optimised" else yfixed

    with whole, flush_denormals(dev):
        done, stopped = _optimise(cfg, x, opt, sched, batched, soft_labels, gstack, gnorm,
                                  forward, callback, indices, start)
    # Score the final iterates by the same forward path, without TV, in fp32.
    final, _ = make_batched_loss(model, 0.0, path)
    ys, xd = soft_labels().detach(), x.detach()
    with fp32_scoring(dev), flush_denormals(dev):
        cost = final(xd, ys, gstack, gnorm)[1].detach()
    if not torch.isfinite(cost).all():
        raise NonFiniteLossError("non-finite matching loss at the final iterate")
    best = cost.argmin(1)
    tidx = torch.arange(t_count, device=device)
    images = xd[tidx, best].cpu().numpy()  # (T, k, C, H, W)
    used = ys[tidx, best].argmax(-1).cpu().numpy()  # (T, k)
    return images, used, cost.cpu().numpy(), best.cpu().numpy(), done, stopped


def _optimise(cfg: InversionConfig, x, opt, sched, batched, soft_labels, gstack, gnorm,
              forward, callback, indices: tuple[int, ...], start: float) -> tuple[int, bool]:
    """The signed-AdamW iterations; returns (iterations done, stopped by the callback)."""
    stopped, done = False, 0
    for it in range(1, cfg.steps + 1):
        opt.zero_grad(set_to_none=True)
        with forward():
            total, cost = batched(x, soft_labels(), gstack, gnorm)  # (T, R) each
        if not torch.isfinite(total).all():
            bad = [indices[i] for i in torch.nonzero(~torch.isfinite(total).all(1)).flatten()]
            raise NonFiniteLossError(f"iteration {it}: non-finite matching loss for targets "
                                     f"{bad}; aborting the recovery")
        total.sum().backward()
        if cfg.signed:
            x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)  # box constraint: every forward sees x in [0, 1]
        done = it
        if callback is not None and (it % cfg.callback_every == 0 or it == cfg.steps):
            best = cost.detach().min(1).values.cpu().numpy()
            verdict = callback(RecoveryProgress(it, indices, best, time.perf_counter() - start))
            if verdict is True:
                stopped = True
                break
    return done, stopped


def recover(cases: Sequence[Case], config: InversionConfig, *,
            seeds: Sequence[int] | None = None,
            callback: Callable[[RecoveryProgress], bool | None] | None = None,
            path: Literal["auto", "fast", "vmap"] = "auto") -> RecoveryResult:
    """Recover the forgotten samples of every case.

    Args:
        cases: one per forget request; only ``Case`` objects, never ground truth.
        config: an :class:`InversionConfig`.
        seeds: ``seeds[i]`` fixes case i's initialisations (default i), so a target recovers
            the same way alone or in a batch.
        callback: called every ``config.callback_every`` iterations with a
            :class:`RecoveryProgress`; returning ``True`` stops early (ASHA). Cases sharing an
            evaluation model and k form one group; groups run one after another.
        path: how per-trial gradients are formed: "auto" (the batched fast path of
            :mod:`tasks.attacks.per_trial_grads` where every layer supports it, else vmap),
            "fast" or "vmap" (the same results within float tolerance). Unused with
            ``config.compile``, which compiles the torch.func form
            (:mod:`tasks.attacks.compiled_objective`).

    Returns:
        :class:`RecoveryResult`, one entry per case in input order.
    """
    if not cases:
        raise ValueError("recover() needs at least one case")
    seeds = target_seeds(cases, seeds)
    start = time.perf_counter()
    meta0 = cases[0].metadata
    if meta0.kind != "image":
        raise AttackConfigError(f"feature recovery needs image data, got {meta0.kind!r}")
    prepared = []
    for case in cases:
        meta = case.metadata
        if config.knowledge == "reference" and meta.knowledge != "reference":
            raise AttackConfigError("config.knowledge 'reference' needs a reference case")
        k = meta.k if config.knowledge == "reference" else config.k
        gstar, model, where = target_gradient(case, config.knowledge)
        if config.label_mode == "known":
            if config.knowledge != "reference" or meta.labels is None:
                raise AttackConfigError("label_mode 'known' needs knowledge 'reference' "
                                        "(the paper's attacker does not know y_U)")
            labels = np.asarray(meta.labels, dtype=np.int64)
        elif config.label_mode == "inferred":
            labels = infer_labels_from_gradient(gstar, model, meta.num_classes, k)
        else:
            labels = np.zeros(k, dtype=np.int64)  # replaced by the optimised dummy labels
        prepared.append((gstar, model, where, labels))
    groups = group_targets([(p[1], len(p[3])) for p in prepared], config.restarts,
                           cases[0].device, chunk=callback is None)
    n = len(cases)
    images: list = [None] * n
    used: list = [None] * n
    restart_losses: list = [None] * n
    cost_best = np.zeros(n)
    best_restart = np.zeros(n, dtype=np.int64)
    iterations, stopped = 0, False
    for model, _, members in groups:
        out = _run_group(model, [prepared[i][0] for i in members],
                         [prepared[i][3] for i in members], [seeds[i] for i in members],
                         config, tuple(meta0.input_shape), meta0.num_classes,
                         cases[members[0]].device, callback, tuple(members), start, path)
        imgs, labs, costs, best, done, stop = out
        iterations, stopped = max(iterations, done), stopped or stop
        for j, i in enumerate(members):
            images[i], used[i] = imgs[j], labs[j]
            restart_losses[i] = costs[j]
            cost_best[i] = costs[j, best[j]]
            best_restart[i] = best[j]
    return RecoveryResult(images=images, labels=used, matching_loss=cost_best,
                          cosine=1.0 - cost_best, restart_losses=restart_losses,
                          best_restart=best_restart, iterations=iterations,
                          wall_s=time.perf_counter() - start, stopped_early=stopped,
                          knowledge=config.knowledge, label_mode=config.label_mode,
                          eval_model=[p[2] for p in prepared])


@ATTACKS.register("inversion")
class GradientInversion(Attack):
    """Feature recovery (Hu et al.): gradient inversion on the parameter difference."""

    name = "inversion"
    Config = InversionConfig
    scorer = "image_recovery"
    progress_metrics = ("matching_loss",)

    # A pair from outside: no theta_0, N or labels; labels are inferred from the gradient.
    pair_defaults: ClassVar[dict[str, Any]] = {"knowledge": "paper", "label_mode": "inferred"}

    def threat_model(self, config: InversionConfig) -> ThreatModel:
        return ThreatModel(white_box=True, knowledge=config.knowledge, data_kind="image",
                           model_family="torch")

    def run(self, cases: Sequence[Case], config: InversionConfig, *,
            seeds: Sequence[int] | None = None, callback=None,
            prepared=None) -> RecoveryResult:
        return recover(cases, config, seeds=seeds, callback=callback)
