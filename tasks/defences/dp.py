"""DP-SGD training with opacus (Chen et al.'s fourth defence; ATTACKS.md 8.2).

:func:`train_dp` trains a torch model with per-sample clipping (``max_grad_norm``) and Gaussian
noise (``noise_multiplier`` x clipping norm) through ``opacus.PrivacyEngine.make_private`` and
returns the epsilon that opacus' accountant (RDP by default) reports for ``delta``.

Batches (recorded as ``sampling`` in every result):

* ``fixed`` (default; the reference implementation's choice): batches of ``batch_size`` drawn
  from the same seeded per-epoch order as non-private training (:func:`tasks.training.epoch_order`),
  so a model retrained without U sees the remaining samples in the same order. Opacus accounts
  these steps with sample rate 1 / (batches per epoch), an analysis that assumes Poisson
  subsampling: the epsilon is the usual reported figure, not a proof for shuffled batches.
* ``poisson``: opacus' Poisson sampler (each sample joins each step with that rate; the
  accountant's assumption holds). The order is drawn from torch's RNG, seeded here.

:func:`dp_epsilon` replays exactly the accountant history :func:`train_dp` produces (same
mechanism, sample rate and number of steps), so a stage can record epsilon for models trained
elsewhere (the membership stage's originals and retrained models) without retraining them;
``tests/defences`` checks the two agree.

The unlearning method ``retrain_dp`` (:mod:`tasks.unlearning.retrain_dp`) trains theta and
every theta_u with DP-SGD (exact unlearning by private retraining), so the membership stage
builds DP shadow and target models alike without any change to it. Retraining replays theta's recipe (data order,
initialisation), but the noise is the privacy mechanism: with ``noise: shared`` theta_u draws
exactly theta's noise, so the noise cancels in theta - theta_u (and in p - q) and the pair leaks
the deleted record as if there were no noise (measured: membership AUC ~0.96 at every noise
multiplier); ``noise: fresh`` (default) draws theta_u's noise and Poisson draws from a seed of
its own (seed, removed records), so each release carries independent noise and the pair is
covered by composition.

The epsilon of a released pair (theta, theta_u) (:func:`dp_epsilon_pair`, column
``epsilon_pair`` of the ``mia`` and ``defences`` rows): theta and the retrained theta_u each
consume budget on the records they share, so the pair's epsilon (for the same ``delta``) is
what opacus' accountant reports over *both* trainings: its history holds theta's steps and
then theta_u's, and the RDP and PRV accountants compose the two. The GDP accountant reads only
one (noise, sample rate) entry: where the two trainings share it their steps are added,
otherwise the pair falls back to sequential composition, epsilon_theta + epsilon_theta_u at
2 delta (``pair_composition`` says which). With ``noise: shared`` the pair is not protected
at all: ``epsilon_pair`` is inf and ``dp_note`` says why.

Scikit-learn targets cannot be trained with DP-SGD; models with BatchNorm are rejected by
opacus (per-sample gradients are undefined under batch statistics): use an MLP or a ConvNet
with ``batchnorm: false``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tasks.defences.base import DEFENCES, DefenceError, TrainingDefence
from tasks.training import TrainConfig, epoch_order, make_optimizer


@dataclass(frozen=True)
class DPParams:
    noise_multiplier: float = 1.2
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    sampling: Literal["fixed", "poisson"] = "fixed"
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"
    # Noise (and Poisson draws) of a retrained theta_u: "fresh" = independent of theta's, as
    # the DP analysis of each release assumes; "shared" = theta's own seed, so theta and theta_u
    # carry the *same* noise, which cancels in their difference (see the module docstring).
    noise: Literal["fresh", "shared"] = "fresh"

    def __post_init__(self) -> None:
        from tasks.params import check

        check("noise_multiplier", self.noise_multiplier, low=0)
        check("max_grad_norm", self.max_grad_norm, low=0, low_open=True)
        check("delta", self.delta, low=0, high=1, low_open=True, high_open=True)


@dataclass
class DPResult:
    model: nn.Module
    epsilon: float  # from opacus' accountant, for ``delta``; inf when noise_multiplier is 0
    delta: float
    steps: int
    sample_rate: float
    sampling: str
    accountant: str
    noise_multiplier: float
    max_grad_norm: float


class _EpochOrderBatches(torch.utils.data.Sampler):
    """Fixed-size batches from the seeded per-epoch order of :func:`epoch_order`."""

    def __init__(self, base: np.ndarray, seed: int, batch_size: int,
                 exclude: tuple[int, ...], position: np.ndarray) -> None:
        self.base, self.seed, self.batch_size = base, seed, batch_size
        self.position = position  # dataset index -> row of the loader's dataset
        self.exclude = tuple(int(i) for i in exclude)
        self.n = len(epoch_order(base, seed, 0, self.exclude))
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        order = epoch_order(self.base, self.seed, self.epoch, self.exclude)
        self.epoch += 1
        for start in range(0, len(order), self.batch_size):
            yield self.position[order[start:start + self.batch_size]].tolist()


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise DefenceError("DP-SGD applies to torch models only; scikit-learn targets (dt, rf, "
                           "lr, sk_mlp) are not trained by gradient descent here: use a torch "
                           "model (e.g. mlp) for the DP-SGD defence")
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator also rejects eval mode, which is not the problem here
    errors = ModuleValidator.validate(model, strict=False)
    model.train(was_training)
    if errors:
        raise DefenceError("opacus cannot train this model with DP-SGD: "
                           + "; ".join(str(e) for e in errors[:3])
                           + " (use an MLP, or a ConvNet with batchnorm: false)")


def _accountant(kind: str):
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=kind)


def train_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
             cfg: TrainConfig, params: DPParams, seed: int, device: torch.device | str = "cpu",
             exclude: tuple[int, ...] = (), extra: np.ndarray | None = None,
             noise_seed: int | None = None) -> DPResult:
    """Train ``model`` in place with DP-SGD on x[indices] minus ``exclude`` (plus ``extra``).

    Args:
        model: a torch module without BatchNorm; trained in place and returned unwrapped.
        x, y: the full training arrays (n, ...) and (n,); ``indices`` select the training set.
        cfg: the non-private recipe (epochs, lr, batch_size, optimizer, momentum, weight decay,
            lr milestones); ``bn_mode`` is irrelevant (no BatchNorm).
        params: noise multiplier, clipping norm, delta, batch sampling, accountant.
        seed: fixes the batch order (fixed), and the Poisson draws and noise unless
            ``noise_seed`` is given, which then fixes those two.

    Returns:
        :class:`DPResult` with epsilon read from the privacy engine's accountant.
    """
    from opacus import PrivacyEngine

    _check_model(model)
    device = torch.device(device)
    model.to(device).train()
    base = np.asarray(indices, dtype=np.int64)
    if extra is not None and len(extra):
        base = np.concatenate([base, np.asarray(extra, dtype=np.int64)])
    # The loader's dataset must hold the training rows only: opacus divides the summed
    # clipped gradients by len(dataset) * sample_rate (its expected batch size), so the full
    # arrays would shrink every step by |x| / |training set|.
    kept = np.unique(epoch_order(base, seed, 0, tuple(int(i) for i in exclude)))
    if len(kept) == 0:
        raise DefenceError("DP-SGD: the training set is empty")
    position = np.full(int(base.max()) + 1, -1, dtype=np.int64)
    position[kept] = np.arange(len(kept))
    xs = torch.as_tensor(x[kept], device=device)
    ys = torch.as_tensor(y[kept], device=device)
    dataset = torch.utils.data.TensorDataset(xs, ys)
    if params.sampling == "fixed":
        sampler = _EpochOrderBatches(base, seed, cfg.batch_size, exclude, position)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False)
    opt = make_optimizer(model, cfg)
    rand_seed = int(seed if noise_seed is None else noise_seed)
    torch.manual_seed(rand_seed)  # Poisson draws use torch's global generator
    noise = torch.Generator(device=device).manual_seed(rand_seed + 104_729)
    with warnings.catch_warnings():
        # "Secure RNG turned off": a seeded generator is the point (repeatable experiments).
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=params.accountant)
        dp_model, dp_opt, dp_loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader,
            noise_multiplier=params.noise_multiplier, max_grad_norm=params.max_grad_norm,
            poisson_sampling=params.sampling == "poisson", noise_generator=noise)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.lr_milestones), cfg.lr_decay)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    # opacus' full backward hooks fire without input gradients; torch warns, harmlessly.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    for _epoch in range(cfg.epochs):
        dp_model.train()
        for xb, yb in dp_loader:
            dp_opt.zero_grad(set_to_none=True)
            if len(xb) == 0:
                # An empty Poisson draw still counts as a step for the accountant.
                dp_opt.step()
                steps += 1
                continue
            loss = loss_fn(dp_model(xb), yb)
            loss.backward()
            dp_opt.step()
            steps += 1
        sched.step()
    sample_rate = 1.0 / len(loader)
    if params.noise_multiplier == 0:
        epsilon = math.inf if steps else 0.0
    else:
        epsilon = float(engine.get_epsilon(params.delta)) if steps else 0.0
    trained = dp_model.to_standard_module()
    for p in trained.parameters():
        p.grad = None
    trained.eval()
    return DPResult(trained, epsilon, params.delta, steps, sample_rate, params.sampling,
                    params.accountant, params.noise_multiplier, params.max_grad_norm)


def dp_epsilon(n_train: int, cfg: TrainConfig, params: DPParams) -> dict[str, float]:
    """The (epsilon, steps, sample rate) :func:`train_dp` reports for ``n_train`` samples,
    from a fresh opacus accountant stepped exactly as training steps it."""
    batches = math.ceil(n_train / cfg.batch_size)
    sample_rate = 1.0 / batches
    steps = batches * cfg.epochs
    if params.noise_multiplier == 0:
        eps = math.inf if steps else 0.0
    elif steps == 0:
        eps = 0.0
    else:
        acc = _accountant(params.accountant)
        acc.history = [(params.noise_multiplier, sample_rate, steps)]
        eps = float(acc.get_epsilon(delta=params.delta))
    return {"epsilon": eps, "steps": steps, "sample_rate": sample_rate}


def dp_epsilon_pair(n_theta: int, n_theta_u: int, cfg: TrainConfig,
                    params: DPParams) -> dict[str, Any]:
    """Epsilon of the pair (theta on ``n_theta`` records, theta_u retrained on ``n_theta_u``),
    composed by opacus' accountant over both trainings (see the module docstring)."""
    one, two = dp_epsilon(n_theta, cfg, params), dp_epsilon(n_theta_u, cfg, params)
    out: dict[str, Any] = {"epsilon": one["epsilon"], "epsilon_unlearned": two["epsilon"],
                           "delta": params.delta, "steps": one["steps"],
                           "sample_rate": one["sample_rate"], "note": None}
    history = [(params.noise_multiplier, r["sample_rate"], r["steps"])
               for r in (one, two) if r["steps"]]
    if params.noise == "shared":
        out.update(epsilon_pair=math.inf, delta_pair=params.delta, pair_composition="none",
                   note="noise: shared - theta_u replays theta's noise, which cancels in the "
                        "pair; DP-SGD does not protect (theta, theta_u)")
    elif params.noise_multiplier == 0 or not history:
        out.update(epsilon_pair=math.inf if history else 0.0, delta_pair=params.delta,
                   pair_composition="accountant")
    elif params.accountant == "gdp" and len({h[:2] for h in history}) > 1:
        out.update(epsilon_pair=one["epsilon"] + two["epsilon"], delta_pair=2 * params.delta,
                   pair_composition="sequential")
    else:
        acc = _accountant(params.accountant)
        if params.accountant == "gdp":  # one entry: same noise and rate, steps added
            history = [(*history[0][:2], sum(h[2] for h in history))]
        acc.history = history
        out.update(epsilon_pair=float(acc.get_epsilon(delta=params.delta)),
                   delta_pair=params.delta, pair_composition="accountant")
    return out


@DEFENCES.register("dp_sgd")
class DPSGD(TrainingDefence):
    """DP-SGD training of every model (shadow and target alike), epsilon recorded."""

    name = "dp_sgd"
    strength_field = "noise_multiplier"
    example_strength = 1.0
    Params = DPParams

    def train(self, model, x, y, indices, cfg, params: DPParams, *, seed: int,
              device="cpu", exclude=()) -> DPResult:
        return train_dp(model, x, y, indices, cfg, params, seed, device, exclude)


__all__ = ["DPSGD", "DPParams", "DPResult", "dp_epsilon", "dp_epsilon_pair", "train_dp"]
