"""Exact recovery of a forgotten record from the first fully connected layer's update.

For a model whose first layer is fully connected, ``z = W u + b`` with ``u`` an elementwise
affine map of the record ``x`` (the model's normalisation, then flattening), a record's loss
has ``dL/dW = d uᵀ`` and ``dL/db = d`` where ``d = dL/dz``. Unlearning one record by plain
gradient steps moves the layer by ``ΔW = c uᵀ`` and ``Δb = c`` (``c`` sums the steps' ``d``
times their step sizes): every row of ΔW is ``u`` scaled by its bias entry, and
``u = ΔW_i / Δb_i`` for any row with ``Δb_i ≠ 0`` (Phong et al., "Privacy-Preserving Deep
Learning via Additively Homomorphic Encryption", 2017; the analytic attacks of the breaching
library). We take the least-squares rank-one fit over all rows,
``u = Σ_i Δb_i ΔW_i / Σ_i Δb_i²``: that ratio when the update is exact, the best rank-one
reading when it is not; then undo the affine map to get ``x``. Milliseconds, no optimisation,
and the upper bound of what the iterative inversion can reach on such a layer.

Exact (up to float rounding): one record, any number of plain gradient steps on it alone
(momentum too: still a sum of ``d uᵀ``), ascent or descent (the ratio cancels the sign).
Not exact: several records (``ΔW = Σ_j c_j u_jᵀ``: each record weighted by its loss gradient;
on a trained model one record's usually dominates, and the fit reads that one and hides the
others — a mixture when they are comparable), updates that also fit retained data
(fine-tuning), weight decay, per-parameter step scaling (Adam). Refused
(:class:`~tasks.attacks.base.AttackConfigError`): a first layer that is not fully connected on
the record itself, or that has no bias (ΔW then gives ``u`` only up to its scale).

``cosine``: the cosine between ΔW and its rank-one fit ``Δb uᵀ``, 1 exactly when the update
is one record's; ``matching_loss`` is ``1 - cosine`` (the inversion's columns, so the same
scorer and tables serve both).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from tasks.attacks.base import (
    ATTACKS,
    Attack,
    AttackConfigError,
    NonFiniteLossError,
    ThreatModel,
)
from tasks.attacks.inversion import RecoveryResult, infer_labels_from_gradient, target_gradient
from tasks.cases import Case

__all__ = ["AnalyticConfig", "AnalyticFirstLayer", "FirstLayer", "first_layer",
           "recover_first_layer_input"]

# Rows whose bias moved by less than this share of the largest move carry only rounding.
_ROW_FLOOR = 1e-6


@dataclass(frozen=True)
class AnalyticConfig:
    """``knowledge``: which update is read, as for the inversion (``paper``: θ_u − θ;
    ``reference``: also the exact-unlearning target from θ_0). ``clip``: clip the record to
    the data's range [0, 1]."""

    name: str = "analytic"
    knowledge: Literal["paper", "reference"] = "paper"
    clip: bool = True
    dry_run: bool = False  # the attack is one step: a dry run is the whole attack


@dataclass(frozen=True)
class FirstLayer:
    """The first fully connected layer a record meets: parameter names, and the affine map
    ``u = shift + scale * x.flatten()`` from the record to its input."""

    weight: str
    bias: str
    shift: torch.Tensor
    scale: torch.Tensor


def first_layer(model: nn.Module, input_shape: Sequence[int]) -> FirstLayer:
    """Find the first ``nn.Linear`` the forward pass reaches and check that its input is an
    elementwise affine map of the record (else the ratio recovers no record)."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[nn.Module, torch.Tensor]] = []

    def record(module, args):
        seen.append((module, args[0].detach()))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(m, nn.Linear)]
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    probes = [torch.zeros(1, *input_shape), torch.ones(1, *input_shape),
              torch.rand(1, *input_shape, generator=generator)]
    inputs = []
    try:
        with torch.no_grad():
            for probe in probes:
                seen.clear()
                model(probe.to(device))
                if not seen:
                    raise AttackConfigError("the analytic attack needs a fully connected layer")
                inputs.append((seen[0][0], seen[0][1].reshape(-1).double().cpu()))
    finally:
        for hook in hooks:
            hook.remove()
    layer = inputs[0][0]
    width = int(np.prod(input_shape))
    if layer.in_features != width:
        raise AttackConfigError(
            f"the analytic attack needs a fully connected first layer on the record: the first "
            f"linear layer ({names[layer]}) takes {layer.in_features} features, the record has "
            f"{width}")
    if layer.bias is None:
        raise AttackConfigError(f"the analytic attack needs a bias in the first linear layer "
                                f"({names[layer]}): without it the update gives the record "
                                "only up to its scale")
    shift, scale = inputs[0][1], inputs[1][1] - inputs[0][1]
    predicted = shift + scale * probes[2].reshape(-1).double()
    if (scale.abs() < 1e-12).any() or not torch.allclose(predicted, inputs[2][1], rtol=1e-4,
                                                         atol=1e-5):
        raise AttackConfigError(f"the analytic attack needs the first linear layer "
                                f"({names[layer]}) to see the record through an elementwise "
                                "affine map (normalisation, flattening) only")
    prefix = names[layer]
    return FirstLayer(f"{prefix}.weight", f"{prefix}.bias", shift, scale)


def recover_first_layer_input(delta_w: torch.Tensor, delta_b: torch.Tensor
                              ) -> tuple[torch.Tensor, float]:
    """The least-squares rank-one reading ``u`` of ``ΔW ≈ Δb uᵀ`` and the cosine between ΔW
    and that fit (1: the update is exactly one record's)."""
    dw, db = delta_w.double(), delta_b.double()
    if not (torch.isfinite(dw).all() and torch.isfinite(db).all()):
        raise NonFiniteLossError("the first layer's update is not finite")
    norm = float((db * db).sum())
    if norm <= 0 or float(db.abs().max()) <= 0:
        raise NonFiniteLossError("the first layer's bias did not move: no record to read")
    keep = db.abs() >= _ROW_FLOOR * db.abs().max()
    u = (db[keep, None] * dw[keep]).sum(0) / (db[keep] * db[keep]).sum()
    fit = db[:, None] * u[None, :]
    denom = float(dw.norm() * fit.norm())
    cosine = float((dw * fit).sum()) / denom if denom > 0 else 0.0
    return u, cosine


@ATTACKS.register("analytic")
class AnalyticFirstLayer(Attack):
    """Exact recovery from a fully connected first layer (Phong et al. 2017): the record is a
    row of ΔW divided by its bias entry."""

    name = "analytic"
    Config = AnalyticConfig
    scorer = "image_recovery"

    def threat_model(self, config: AnalyticConfig) -> ThreatModel:
        return ThreatModel(white_box=True, knowledge=config.knowledge, data_kind="image",
                           model_family="torch")

    def unfit_model(self, config: AnalyticConfig, model: nn.Module,
                    input_shape: tuple[int, ...]) -> str:
        try:
            first_layer(model, input_shape)
        except AttackConfigError as err:
            return str(err)
        except Exception as err:  # noqa: BLE001  a model that cannot be probed one record at a time
            return f"the analytic attack cannot probe this model ({type(err).__name__}: {err})"
        return ""

    def run(self, cases: Sequence[Case], config: AnalyticConfig, *,
            seeds: Sequence[int] | None = None, callback=None, prepared=None
            ) -> RecoveryResult:
        start = time.perf_counter()
        images, labels, cosines, used = [], [], [], []
        for case in cases:
            meta = case.metadata
            gstar, model, which = target_gradient(case, config.knowledge)
            layer = first_layer(model, meta.input_shape)
            u, cosine = recover_first_layer_input(gstar[layer.weight], gstar[layer.bias])
            x = ((u - layer.shift) / layer.scale).float().reshape(1, *meta.input_shape)
            if config.clip:
                x = x.clamp(0.0, 1.0)
            images.append(x.numpy())
            labels.append(infer_labels_from_gradient(gstar, model, meta.num_classes, 1))
            cosines.append(cosine)
            used.append(which)
        cos = np.asarray(cosines, dtype=np.float64)
        loss = 1.0 - cos
        return RecoveryResult(
            images=images, labels=labels, matching_loss=loss, cosine=cos,
            restart_losses=[np.asarray([v]) for v in loss],
            best_restart=np.zeros(len(cases), dtype=np.int64), iterations=1,
            wall_s=time.perf_counter() - start, knowledge=config.knowledge,
            label_mode="inferred", eval_model=used)
