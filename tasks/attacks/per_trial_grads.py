"""Per-trial parameter gradients without ``vmap``: one batched forward and backward.

Feature recovery optimises many trials (targets x restarts) at once; each trial holds k
samples and needs the gradient of its own loss with respect to *every* parameter, kept
differentiable with respect to its input (the cosine objective is backpropagated to x).

With BatchNorm on running statistics (eval mode) every sample's forward pass is independent of
the others, so one ordinary batched forward of all trials' samples, and one backward of the
sum of the trial losses down to each layer's *output* (``autograd.grad(create_graph=True)``),
give every sample's output gradient delta exactly. The per-trial parameter gradients then
follow from layer inputs and output gradients, grouped by trial:

* ``Linear``:    dW = sum_i delta_i a_i^T, db = sum_i delta_i (one ``bmm`` over trials);
* ``Conv2d``:    dW = sum_i delta_i unfold(a_i)^T (im2col, one ``bmm``), db = sum delta;
* ``BatchNorm`` (eval): dgamma = sum delta * (a - mean) / sqrt(var + eps), dbeta = sum delta.

No convolution runs per sample (vmap turns the per-sample weight gradient into a grouped
convolution with one group per sample, whose double backward is slow on CPU). The path applies
only when every module of the model is of a type listed here (anything else, or a module
called twice per forward, makes :func:`fast_path_reason` give a reason and the caller keeps
the general ``vmap`` path).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PerTrialGradients", "fast_path_reason"]

# Modules with parameters whose per-sample gradient is written out below.
_PARAM_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
# Parameter-free modules whose forward treats every sample on its own (in eval mode).
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
                nn.Softplus, nn.Hardtanh)
_SAMPLEWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
               nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
_CONTAINERS = (nn.Sequential,)


def _known_custom() -> tuple[type, ...]:
    """This project's own modules whose forward is known to be samplewise."""
    try:
        from tasks.models import BasicBlock, Normalize
    except ImportError:  # pragma: no cover - models always importable in this project
        return ()
    return (BasicBlock, Normalize)


def _module_reason(name: str, mod: nn.Module) -> str | None:
    label = name or "<root>"
    if isinstance(mod, _PARAM_LAYERS):
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                           or isinstance(mod.padding, str)):
            return f"{label}: Conv2d with groups, non-zero padding mode or string padding"
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and (
                mod.training or not mod.track_running_stats or mod.running_mean is None):
            return f"{label}: BatchNorm without running statistics in eval mode"
        return None
    if isinstance(mod, _ELEMENTWISE):
        if getattr(mod, "inplace", False):
            return f"{label}: in-place activation"
        return None
    if isinstance(mod, _SAMPLEWISE + _CONTAINERS + _known_custom()):
        if isinstance(mod, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) and mod.return_indices:
            return f"{label}: pooling that returns indices"
        return None
    return f"{label}: unsupported module {type(mod).__name__}"


def fast_path_reason(model: nn.Module) -> str | None:
    """None when :class:`PerTrialGradients` applies to ``model``, else why not."""
    if model.training:
        return "model in training mode"
    owned, seen = set(), set()
    for name, mod in model.named_modules(remove_duplicate=False):
        if isinstance(mod, _PARAM_LAYERS):
            if id(mod) in seen:
                return f"{name}: a layer with parameters appears twice in the model"
            seen.add(id(mod))
        why = _module_reason(name, mod)
        if why is not None:
            return why
        if isinstance(mod, _PARAM_LAYERS):
            owned.update(id(p) for p in mod.parameters(recurse=False))
        elif any(True for _ in mod.parameters(recurse=False)):
            return f"{name or '<root>'}: parameters outside Linear/Conv2d/BatchNorm"
    if any(id(p) not in owned for p in model.parameters()):
        return "a parameter outside Linear/Conv2d/BatchNorm"
    return None


class PerTrialGradients:
    """Per-trial gradients of the soft-label cross-entropy for one model (eval mode).

    Call with x (N, k, *input) and soft labels (N, k, classes): returns, per parameter name in
    ``model.named_parameters()`` order, the (N, *shape) gradient of each trial's loss
    ``-(y * log_softmax(f(x))).sum(-1).mean()`` (mean over its k samples), built with
    ``create_graph=True`` so that it can be backpropagated to x and y.
    """

    def __init__(self, model: nn.Module) -> None:
        why = fast_path_reason(model)
        if why is not None:
            raise ValueError(f"per-trial fast path does not apply: {why}")
        self.param_names = [n for n, _ in model.named_parameters()]
        # A private copy: parameters become constants, BatchNorm becomes its eval-mode affine
        # map (one fused multiply-add whose double backward is trivial).
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        _freeze_batchnorm(self.model)
        self.layers: list[tuple[str, nn.Module]] = [
            (name, mod) for name, mod in self.model.named_modules()
            if isinstance(mod, (nn.Linear, nn.Conv2d))
            or (isinstance(mod, _FrozenBatchNorm) and mod.names)]
        self._calls: dict[int, list] = {}

    def _hook(self, mod, inputs, output):
        self._calls[id(mod)].append((inputs[0], output))

    def _forward(self, x: torch.Tensor):
        self._calls = {id(m): [] for _, m in self.layers}
        handles = [m.register_forward_hook(self._hook) for _, m in self.layers]
        try:
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        calls, self._calls = self._calls, {}
        for name, mod in self.layers:
            if len(calls[id(mod)]) != 1:
                raise ValueError(f"per-trial fast path: {name or '<root>'} was called "
                                 f"{len(calls[id(mod)])} times in one forward")
        return out, calls

    def __call__(self, x: torch.Tensor, ysoft: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        n, k = x.shape[:2]
        if not (x.requires_grad or ysoft.requires_grad):  # scoring only: still needs a graph
            x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            return self._grads(x, ysoft, n, k)

    def _grads(self, x, ysoft, n, k):
        out, calls = self._forward(x.reshape(n * k, *x.shape[2:]))
        logp = F.log_softmax(out, dim=-1)
        loss = -(ysoft.reshape(n * k, -1) * logp).sum() / k  # sum over trials of their means
        outputs = [calls[id(m)][0][1] for _, m in self.layers]
        deltas = torch.autograd.grad(loss, outputs, create_graph=True)
        grads: dict[str, torch.Tensor] = {}
        for (name, mod), delta in zip(self.layers, deltas):
            a = calls[id(mod)][0][0]
            prefix = f"{name}." if name else ""
            for pname, g in _layer_grads(mod, a, delta, n, k).items():
                grads[prefix + pname] = g
        return OrderedDict((p, grads[p]) for p in self.param_names)


def _by_trial(t: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """(n*k, C, L) per sample -> (n, C, k*L) per trial (samples side by side along L)."""
    if k == 1:
        return t
    c, length = t.shape[1], t.shape[2]
    return t.reshape(n, k, c, length).transpose(1, 2).reshape(n, c, k * length)


def _conv_weight_grads(mod: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor, n: int, k: int
                       ) -> torch.Tensor:
    """Per-trial weight gradients of a convolution as one grouped weight-gradient convolution:
    the n*k samples become the groups of a single image, so sample b's weight gradient is group
    b's. Differentiable (the double backward is a pair of grouped convolutions)."""
    b = n * k
    c_in, h, w = a.shape[1:]
    c_out = delta.shape[1]
    # Only the weight's shape matters when just the weight gradient is asked for (its double
    # backward does not read it either): an untouched buffer, never a b-fold copy.
    # Under bf16 autocast a and delta may differ in dtype (an aten call is not autocast):
    # one dtype for the three operands.
    delta = delta.to(a.dtype)
    weight = a.new_empty((b * c_out, *mod.weight.shape[1:]))
    gw = torch.ops.aten.convolution_backward(
        delta.reshape(1, b * c_out, *delta.shape[2:]), a.reshape(1, b * c_in, h, w),
        weight, None, list(mod.stride),
        list(mod.padding), list(mod.dilation), False, [0, 0], b, [False, True, False])[1]
    gw = gw.reshape(b, *mod.weight.shape)
    return gw if k == 1 else gw.reshape(n, k, *mod.weight.shape).sum(1)


def _layer_grads(mod: nn.Module, a: torch.Tensor, delta: torch.Tensor, n: int, k: int
                 ) -> dict[str, torch.Tensor]:
    g: dict[str, torch.Tensor] = {}
    if isinstance(mod, nn.Linear):
        a2 = a.reshape(n * k, -1, a.shape[-1]).transpose(1, 2)  # (B, in, L)
        d2 = delta.reshape(n * k, -1, delta.shape[-1]).transpose(1, 2)  # (B, out, L)
        a2, d2 = _by_trial(a2, n, k), _by_trial(d2, n, k)
        g["weight"] = torch.bmm(d2, a2.transpose(1, 2))
        if mod.bias is not None:
            g["bias"] = d2.sum(2)
        return g
    if isinstance(mod, nn.Conv2d):
        d2 = delta.reshape(n * k, delta.shape[1], -1)  # (B, Cout, L)
        g["weight"] = _conv_weight_grads(mod, a, delta, n, k)
        if mod.bias is not None:
            g["bias"] = _by_trial(d2, n, k).sum(2)
        return g
    # Frozen BatchNorm: y = (a - mean) * invstd * gamma + beta, so dgamma = invstd *
    # sum delta * (a - mean) and dbeta = sum delta.
    c = a.shape[1]
    d2 = _by_trial(delta.reshape(n * k, c, -1), n, k)
    dbeta = d2.sum(2)
    if mod.has_weight:
        da = (d2 * _by_trial(a.reshape(n * k, c, -1), n, k)).sum(2)
        g["weight"] = (da - dbeta * mod.mean) * mod.invstd
    if mod.has_bias:
        g["bias"] = dbeta
    return g


class _FrozenBatchNorm(nn.Module):
    """BatchNorm on running statistics as y = a * scale + shift (per channel)."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        invstd = torch.rsqrt(bn.running_var.detach() + bn.eps)
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(invstd)
        beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(invstd)
        mean = bn.running_mean.detach()
        self.has_weight, self.has_bias = bn.weight is not None, bn.bias is not None
        self.names = [n for n, p in (("weight", bn.weight), ("bias", bn.bias)) if p is not None]
        self.register_buffer("mean", mean.clone())
        self.register_buffer("invstd", invstd)
        self.register_buffer("scale", gamma * invstd)
        self.register_buffer("shift", beta - mean * gamma * invstd)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (a.dim() - 2)
        return torch.addcmul(self.shift.view(shape), a, self.scale.view(shape))


def _freeze_batchnorm(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(parent, name, _FrozenBatchNorm(child))
