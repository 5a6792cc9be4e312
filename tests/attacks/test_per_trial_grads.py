"""The batched per-trial-gradient path equals the vmap path (values and input gradients)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tasks.attacks.inversion import make_batched_loss
from tasks.attacks.per_trial_grads import PerTrialGradients, fast_path_reason
from tasks.models import ModelConfig, build_torch_model

CASES = {
    "mlp": (ModelConfig("mlp", {"hidden": [16]}), (1, 8, 8)),
    "convnet": (ModelConfig("convnet", {"width": 4}), (3, 16, 16)),
    "resnet18": (ModelConfig("resnet18", {"width": 4}), (3, 16, 16)),
}


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    cfg, shape = CASES[name]
    model = build_torch_model(cfg, shape, 10, [0.5] * shape[0], [0.25] * shape[0], seed=0)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval(), shape


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("k", [1, 2])
def test_fast_and_vmap_paths_agree(name, k):
    torch.manual_seed(0)
    model, shape = _model(name)
    assert fast_path_reason(model) is None
    t, r = 3, 2
    gstack = OrderedDict((n, torch.randn(t, *p.shape)) for n, p in model.named_parameters())
    gnorm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gstack.values()))
    x0 = torch.rand(t, r, k, *shape)
    ysoft = F.softmax(torch.randn(t, r, k, 10), -1)
    out = {}
    for path in ("fast", "vmap"):
        fn, used = make_batched_loss(model, 1e-2, path)
        assert used == path
        x = x0.clone().requires_grad_(True)
        total, cost = fn(x, ysoft, gstack, gnorm)
        total.sum().backward()
        out[path] = (total.detach(), cost.detach(), x.grad)
    for a, b in zip(out["fast"], out["vmap"]):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 1e-4 * max(scale, 1.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_trial_parameter_gradients_match_one_trial_autograd(name):
    model, shape = _model(name)
    x = torch.rand(4, 1, *shape)
    y = F.one_hot(torch.tensor([[1], [3], [5], [7]]), 10).float()
    grads = PerTrialGradients(model)(x, y)
    assert list(grads) == [n for n, _ in model.named_parameters()]
    ref_model = model  # the case models are frozen copies; autograd needs grads here
    params = [p.detach().requires_grad_(True) for p in ref_model.parameters()]
    names = [n for n, _ in ref_model.named_parameters()]
    for i in range(4):
        out = torch.func.functional_call(ref_model, dict(zip(names, params)), (x[i],))
        loss = -(y[i] * F.log_softmax(out, -1)).sum(-1).mean()
        ref = torch.autograd.grad(loss, params)
        for n, g in zip(names, ref):
            torch.testing.assert_close(grads[n][i], g, atol=1e-5, rtol=1e-4)


def test_unsupported_models_fall_back_to_vmap():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    assert "LayerNorm" in fast_path_reason(model.eval())
    assert make_batched_loss(model, 0.0, "auto")[1] == "vmap"
    assert "training" in fast_path_reason(model.train())
    shared = nn.Linear(10, 10)
    assert "twice" in fast_path_reason(nn.Sequential(shared, nn.ReLU(), shared).eval())
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)).eval()
    assert "groups" in fast_path_reason(grouped)
    assert fast_path_reason(nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True)).eval())


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_runs_under_bf16_autocast_close_to_fp32(name):
    """precision: bf16 autocasts the fast path too (its grouped weight-gradient convolution
    gets one dtype for its operands); the loss stays within bf16's precision of fp32's."""
    torch.manual_seed(0)
    model, shape = _model(name)
    t, r = 2, 2
    gstack = OrderedDict((n, torch.randn(t, *p.shape)) for n, p in model.named_parameters())
    gnorm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gstack.values()))
    x0 = torch.rand(t, r, 1, *shape)
    ysoft = F.softmax(torch.randn(t, r, 1, 10), -1)
    fn, _ = make_batched_loss(model, 1e-2, "fast")
    out = {}
    for precision in ("fp32", "bf16"):
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            total, _ = fn(x, ysoft, gstack, gnorm)
        total.sum().backward()
        assert torch.isfinite(x.grad).all()
        out[precision] = total.detach().float()
    assert torch.allclose(out["bf16"], out["fp32"], atol=0.05), (out["bf16"], out["fp32"])
