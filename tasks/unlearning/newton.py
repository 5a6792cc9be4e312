"""Certified removal by one Newton step on an L2-regularised linear head (Guo et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.func import grad, hessian
from torch.nn import functional as F

from tasks.params import check
from tasks.training import train_model
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    copy_model,
    fit_standard,
    retained_indices,
)

# torch.func.hessian pushes one tangent per head weight through a chunk of records: bound
# weights x records x (features + classes) so wide heads run in smaller chunks.
_CHUNK_FLOATS = 2**25
_B_TAG = 0x4E455754  # "NEWT": keeps the perturbation's stream apart from other seeded draws


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(frozen feature map, last linear layer) of an ``nn.Sequential`` ending in ``nn.Linear``."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        # A spec's model choice that does not fit: a ValueError, like check_family's.
        raise ValueError(  # noqa: TRY004
            f"unlearning method 'newton' needs an nn.Sequential whose last layer is "
            f"nn.Linear (mlp, convnet, resnet18, simple_cnn), got {type(model).__name__}")
    return model[:-1], model[-1]


def _head_weights(head: nn.Linear) -> list[nn.Parameter]:
    return [head.weight] + ([head.bias] if head.bias is not None else [])


def _perturbation(seed: int, size: int, sigma: float) -> torch.Tensor:
    """b ~ N(0, sigma^2 I) of the objective b^T w, drawn from the seed alone: theta, theta_u
    and every retrained reference of one seed share it."""
    rng = np.random.default_rng([seed, _B_TAG])
    return torch.as_tensor(rng.standard_normal(size) * sigma, dtype=torch.float64)


def _count_held(state: TrainingState) -> int:
    keep = np.asarray(state.train_indices, dtype=np.int64)
    return int((~np.isin(keep, np.asarray(state.removed, dtype=np.int64))).sum())


@UNLEARNING.register("newton")
class NewtonRemoval(UnlearningMethod):
    """Certified removal by a Newton step (Guo, Goldstein, Hannun and van der Maaten,
    "Certified data removal from machine learning models", ICML 2020).

    For an L2-regularised linear softmax classifier w (multinomial logistic regression: the
    torch ``mlp`` with ``hidden: []``) trained to the minimum of the sum-form objective
    ``L(w; D) = sum_D CE + lam |D| / 2 ||w||^2 + b^T w``, removing U from D gives
    ``D' = D - U`` and::

        theta_u = w + H^-1 Delta,   Delta = sum_U grad CE(w) + lam |U| w,
        H = sum_D' hess CE(w) + lam |D'| I  (+ damping |D'| I)

    with H built exactly by ``torch.func.hessian`` (in mean form, divided by |D'|). ``lam``
    defaults to the recipe's ``weight_decay`` (SGD's weight decay minimises mean CE +
    weight_decay / 2 ||w||^2, the same objective divided by |D|).

    Generalisation (ours, not the paper's): on any ``nn.Sequential`` ending in ``nn.Linear``
    the step updates that last layer only, the layers below frozen as a feature map (the
    setting of the paper's experiments on public-data features). theta's lower layers stay as
    trained, so they still carry whatever they learnt from U: only the head is "removed".

    ``noise_sigma`` > 0 trains theta with Guo et al.'s objective perturbation b^T w on the head,
    b ~ N(0, sigma^2 I) drawn from the seed; SGD sees it as b / |D| added to the head's
    gradient of every batch (the mean-form objective). b cancels from Delta, so the default
    ``step: forget`` is the paper's update; ``step: retained`` instead takes the Newton step
    on the retained objective at theta, ``-H^-1 (grad L(w; D') incl. b)``, which equals it at
    an exact optimum and also corrects theta's remaining optimisation error.
    """

    name = "newton"
    exact = False
    families = ("torch",)
    step_size_param = None  # the Newton step has no step size to tune

    # What the removal certifies, and when (Guo et al., Theorems 1 and 3); not computed here.
    certificate: ClassVar[str] = (
        "(epsilon, delta)-certified removal of U from the linear head: the released theta_u is "
        "indistinguishable, up to e^epsilon and delta, from the head trained on D' alone, when "
        "(1) theta is the exact minimiser of the perturbed objective, (2) the gradient "
        "residual ||grad L(theta_u; D')|| <= eps' (one removal: eps' <= "
        "4 gamma C^2 / (lam^2 (n - 1)), C bounding ||grad CE|| per record and gamma the "
        "Lipschitz constant of its second derivative; residuals add up over removals) and "
        "(3) b ~ N(0, sigma^2 I) with sigma >= c eps' / epsilon, c = sqrt(2 log(1.5 / delta)). "
        "With noise_sigma 0, or a feature map trained on D itself, nothing is certified.")

    @dataclass(frozen=True)
    class Params:
        lam: float | None = None  # None: the recipe's weight_decay
        noise_sigma: float = 0.0
        damping: float = 1e-4
        step: Literal["forget", "retained"] = "forget"

        def __post_init__(self) -> None:
            # lam 0 leaves a softmax head's Hessian singular: the step would be undefined.
            check("lam", self.lam, low=0, low_open=True, optional=True)
            check("noise_sigma", self.noise_sigma, low=0)
            check("damping", self.damping, low=0)

    def original_recipe(self, params: Params) -> dict[str, Any]:
        # Without a perturbation theta is the standard recipe's (and may share its cache).
        return {"objective_perturbation": params.noise_sigma} if params.noise_sigma else {}

    def train_original(self, state: TrainingState, params: Params) -> nn.Module:
        self.check_family(state)
        removed = tuple(state.removed)
        if not params.noise_sigma:
            return fit_standard(state, exclude=removed)
        model = state.initial_model()
        _, head = split_head(model)
        weights = _head_weights(head)
        b = _perturbation(state.seed, sum(w.numel() for w in weights), params.noise_sigma)
        b = b / max(_count_held(state), 1)
        handles, start = [], 0
        for w in weights:
            part = b[start: start + w.numel()].view_as(w).to(device=w.device, dtype=w.dtype)
            start += w.numel()
            # A gradient hook adds d(b^T w / n)/dw = b / n to every batch's gradient, so the
            # recipe's own loop (order, optimiser, weight decay) trains the perturbed objective.
            handles.append(w.register_hook(lambda g, part=part: g + part))
        try:
            d = state.dataset
            train_model(model, d.x_train, d.y_train, state.train_indices, state.train_cfg,
                        state.seed, state.device, exclude=removed)
        finally:
            for h in handles:
                h.remove()
        return model

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params) -> nn.Module:
        self.check_family(state)
        lam = params.lam if params.lam is not None else state.train_cfg.weight_decay
        if lam <= 0:
            raise ValueError("unlearning method 'newton' needs an L2 strength > 0: the recipe "
                             "has weight_decay 0, so set the method's params.lam")
        device = state.device
        model = copy_model(state.original).to(device).eval()
        body, head = split_head(model)
        retain = retained_indices(state, request)
        if not len(retain):
            raise ValueError("unlearning method 'newton': no retained record is left")
        held = np.asarray(state.train_indices, dtype=np.int64)
        forget = np.asarray(request.indices, dtype=np.int64)
        # Only records theta still holds contribute to Delta.
        forget = forget[np.isin(forget, held) & ~np.isin(forget, np.asarray(state.removed))]
        weights = _head_weights(head)
        w = torch.cat([p.detach().reshape(-1) for p in weights]).to(torch.float64)
        out_dim, in_dim = head.weight.shape
        has_bias = head.bias is not None

        def loss_sum(wf: torch.Tensor, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = feats @ wf[: out_dim * in_dim].view(out_dim, in_dim).T
            if has_bias:
                logits = logits + wf[out_dim * in_dim:]
            return F.cross_entropy(logits, y, reduction="sum")

        d = state.dataset
        chunk = max(1, _CHUNK_FLOATS // (w.numel() * (in_dim + out_dim)))
        n_r = len(retain)
        hess = torch.zeros(w.numel(), w.numel(), dtype=torch.float64, device=device)
        grad_r = torch.zeros_like(w)
        for start in range(0, n_r, chunk):
            feats, y = self._features(body, d, retain[start: start + chunk], device)
            hess += hessian(loss_sum)(w, feats, y)
            if params.step == "retained":
                grad_r += grad(loss_sum)(w, feats, y)
        eye = torch.eye(w.numel(), dtype=torch.float64, device=device)
        hess = hess / n_r + (lam + params.damping) * eye
        if params.step == "forget":
            # Delta / |D'|: the forget records' loss gradient plus their share of the L2 term.
            delta = lam * len(forget) * w
            for start in range(0, len(forget), chunk):
                feats, y = self._features(body, d, forget[start: start + chunk], device)
                delta += grad(loss_sum)(w, feats, y)
            step = torch.linalg.solve(hess, delta / n_r)
        else:
            b = _perturbation(state.seed, w.numel(), params.noise_sigma).to(device)
            step = -torch.linalg.solve(hess, (grad_r + b) / n_r + lam * w)
        new = w + step
        with torch.no_grad():
            start = 0
            for p in weights:
                p.copy_(new[start: start + p.numel()].view_as(p).to(p.dtype))
                start += p.numel()
        return model

    @staticmethod
    def _features(body: nn.Module, d, idx: np.ndarray,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-body features (float64, for an accurate Hessian) and labels of ``idx``."""
        with torch.no_grad():
            feats = body(torch.as_tensor(d.x_train[idx], device=device))
        return (feats.reshape(len(idx), -1).to(torch.float64),
                torch.as_tensor(d.y_train[idx], device=device, dtype=torch.long))
