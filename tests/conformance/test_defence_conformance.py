"""Every registered defence passes this suite (register a defence: it runs here too).

Checks per defence: output shapes, seed determinism, finite outputs, the identity strength
changes nothing (where the defence declares one), unknown params are rejected, inputs are not
modified. The harness per ``acts_on`` kind is small and real: a 2-layer MLP pair for update
defences, random logits for output defences, a few DP-SGD steps on digits for training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tasks.defences import DEFENCES, UpdateContext
from tasks.params import ParamError
from tasks.training import TrainConfig

NAMES = DEFENCES.names()


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def _pair():
    theta, theta_u = _model(0), _model(0)
    with torch.no_grad():
        for p in theta_u.parameters():
            p.add_(0.01)
    return theta, theta_u


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)


def _run(name: str, strength, seed: int = 0):
    """Apply defence ``name`` once; returns a flat float64 array of what it produced."""
    d = DEFENCES.get(name)()
    params = d.params(strength)
    x, y = _data()
    if d.acts_on == "update":
        theta, theta_u = _pair()
        ctx = UpdateContext(x, y, np.arange(60, 120), TrainConfig(epochs=1, lr=0.05,
                                                                 batch_size=16))
        out = d.apply(theta, theta_u, params, seed=seed, context=ctx)
        assert [p.shape for p in out.parameters()] == [p.shape for p in theta_u.parameters()]
        return torch.cat([p.detach().flatten() for p in out.parameters()]).double().numpy()
    if d.acts_on == "outputs":
        z = np.random.default_rng(1).normal(scale=2.0, size=(50, 4))
        out = d.apply(z, params)
        assert out.shape == z.shape
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-9)
        assert (out >= 0).all()
        return out.ravel()
    assert d.acts_on == "training"
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16, momentum=0.0)
    result = d.train(_model(0).train(), x, y, np.arange(64), cfg, params, seed=seed)
    assert np.isfinite(result.epsilon) and result.epsilon > 0
    return torch.cat([p.detach().flatten() for p in result.model.parameters()]).numpy()


def _strength(name: str):
    return DEFENCES.get(name).example_strength


@pytest.mark.parametrize("name", NAMES)
def test_declares_where_it_acts_and_a_paper(name):
    d = DEFENCES.get(name)()
    assert d.acts_on in ("update", "outputs", "training")
    assert d.paper in ("hu2024", "chen2021")
    if d.strength_field is not None:
        assert d.strength_field in d.Params.__dataclass_fields__
        assert d.example_strength is not None


@pytest.mark.parametrize("name", NAMES)
def test_finite_and_seed_deterministic(name):
    a = _run(name, _strength(name), seed=0)
    b = _run(name, _strength(name), seed=0)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_example_strength_changes_something(name):
    d = DEFENCES.get(name)()
    if d.acts_on == "update":
        _, theta_u = _pair()
        base = torch.cat([p.detach().flatten() for p in theta_u.parameters()]).double().numpy()
    elif d.acts_on == "outputs":
        z = np.random.default_rng(1).normal(scale=2.0, size=(50, 4))
        base = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).ravel()
    else:
        pytest.skip("a training defence has no undefended output to compare with here")
    assert not np.allclose(_run(name, _strength(name)), base)


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if DEFENCES.get(n).identity_strength is not None])
def test_identity_strength_changes_nothing(name):
    d = DEFENCES.get(name)()
    out = _run(name, d.identity_strength)
    if d.acts_on == "update":
        _, theta_u = _pair()
        ref = torch.cat([p.detach().flatten() for p in theta_u.parameters()]).double().numpy()
        np.testing.assert_array_equal(out, ref)
    else:
        z = np.random.default_rng(1).normal(scale=2.0, size=(50, 4))
        e = np.exp(z - z.max(1, keepdims=True))
        np.testing.assert_allclose(out, (e / e.sum(1, keepdims=True)).ravel(), atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_params_rejected(name):
    d = DEFENCES.get(name)()
    with pytest.raises(ParamError, match="unknown key"):
        d.params(None, {"no_such_setting": 1})


@pytest.mark.parametrize("name", [n for n in NAMES if DEFENCES.get(n).acts_on == "update"])
def test_update_defences_leave_inputs_alone(name):
    theta, theta_u = _pair()
    before = [p.detach().clone() for p in (*theta.parameters(), *theta_u.parameters())]
    d = DEFENCES.get(name)()
    x, y = _data()
    ctx = UpdateContext(x, y, np.arange(60, 120), TrainConfig(epochs=1, batch_size=16))
    d.apply(theta, theta_u, d.params(_strength(name)), seed=0, context=ctx)
    after = [p.detach() for p in (*theta.parameters(), *theta_u.parameters())]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
