"""One test per mechanism, with numbers that could come out wrong."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from tasks.defences import (
    DEFENCES,
    DefenceError,
    DPParams,
    UpdateContext,
    defend_outputs,
    dp_epsilon,
    prunable,
    prune_count,
    train_dp,
)
from tasks.params import ParamError
from tasks.training import TrainConfig


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    theta = _mlp(seed)
    theta_u = _mlp(seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in theta_u.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=g))
    return theta, theta_u


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- pruning -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.8, 0.9, 0.99, 1.0])
def test_pruning_removes_exactly_the_requested_share(ratio):
    theta, theta_u = _pair()
    d = DEFENCES.get("pruning")()
    out = d.apply(theta, theta_u, d.params(ratio), seed=0)
    weights = torch.cat([p.detach().flatten() for _, p in prunable(out)])
    n = weights.numel()  # 12*16 + 16*5 = 272 weights; the 21 biases are not prunable
    assert n == 272
    assert int((weights == 0).sum()) == prune_count(n, ratio) == math.floor(ratio * n + .5)
    # Biases are untouched and the surviving weights are exactly theta_u's.
    before = dict(theta_u.named_parameters())
    for name, p in out.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, before[name])
        else:
            keep = p != 0
            assert torch.equal(p[keep], before[name][keep])


def test_pruning_removes_the_smallest_magnitudes_globally():
    theta, theta_u = _pair()
    d = DEFENCES.get("pruning")()
    out = d.apply(theta, theta_u, d.params(0.5), seed=0)
    orig = torch.cat([p.detach().abs().flatten() for _, p in prunable(theta_u)])
    kept = torch.cat([p.detach().flatten() for _, p in prunable(out)]) != 0
    # Global (not per layer): every pruned magnitude is <= every kept magnitude.
    assert orig[~kept].max() <= orig[kept].min()
    # Scope "all" ranks biases too: exactly round(p * 293) of all parameters become zero.
    out_all = d.apply(theta, theta_u, d.params(0.5, {"scope": "all"}), seed=0)
    assert int((_flat(out_all) == 0).sum()) == prune_count(293, 0.5)


def test_pruning_leaves_its_input_alone():
    theta, theta_u = _pair()
    before = _flat(theta_u).clone()
    DEFENCES.get("pruning")().apply(theta, theta_u, DEFENCES.get("pruning")().params(0.9))
    assert torch.equal(_flat(theta_u), before)


# --- obfuscation ---------------------------------------------------------------------------------

def test_noise_sigma_zero_changes_nothing():
    theta, theta_u = _pair()
    d = DEFENCES.get("obfuscation")()
    out = d.apply(theta, theta_u, d.params(0.0), seed=3)
    for a, b in zip(out.state_dict().values(), theta_u.state_dict().values()):
        assert torch.equal(a, b)
    assert out is not theta_u


def test_noise_has_the_requested_scale_on_the_update():
    theta, theta_u = _pair()
    d = DEFENCES.get("obfuscation")()
    sigma = 0.05
    out = d.apply(theta, theta_u, d.params(sigma), seed=3)
    noise = (_flat(out) - _flat(theta_u)).double()
    # 293 Gaussian draws: the sample std is within 20% of sigma, the mean near 0.
    assert abs(noise.std().item() / sigma - 1) < 0.2
    assert abs(noise.mean().item()) < 4 * sigma / math.sqrt(noise.numel())
    # Another seed, other noise; same seed, the same noise.
    again = d.apply(theta, theta_u, d.params(sigma), seed=3)
    other = d.apply(theta, theta_u, d.params(sigma), seed=4)
    assert torch.equal(_flat(out), _flat(again))
    assert not torch.equal(_flat(out), _flat(other))


def test_noise_lands_on_the_parameters_device():
    """The noise is drawn on the CPU (same numbers on every device) and moved to each
    parameter's device: ``meta`` stands in for a GPU here (before, CPU noise met the
    parameter in one expression and raised "Expected all tensors to be on the same device")."""
    theta, theta_u = (m.to("meta") for m in _pair())
    out = DEFENCES.get("obfuscation")().apply(
        theta, theta_u, DEFENCES.get("obfuscation")().params(0.1), seed=0)
    assert {p.device.type for p in out.parameters()} == {"meta"}


def test_negative_sigma_rejected():
    with pytest.raises(ParamError, match="sigma"):
        DEFENCES.get("obfuscation")().params(-1.0)


# --- fine-tuning ---------------------------------------------------------------------------------

def test_fine_tuning_trains_on_heldout_data_only():
    theta, theta_u = _pair()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    y = rng.integers(0, 5, 200)
    heldout = np.arange(100, 160)
    ctx = UpdateContext(x, y, heldout, TrainConfig(epochs=1, lr=0.1, batch_size=16))
    d = DEFENCES.get("fine_tuning")()
    assert torch.equal(_flat(d.apply(theta, theta_u, d.params(0), context=ctx)), _flat(theta_u))
    out = d.apply(theta, theta_u, d.params(2), context=ctx, seed=0)
    assert not torch.equal(_flat(out), _flat(theta_u))
    # Garbage outside the held-out rows must not matter: only heldout indices are read.
    x2 = x.copy()
    x2[:100] = 1e6
    out2 = d.apply(theta, theta_u, d.params(2), context=dataclasses.replace(ctx, x=x2), seed=0)
    assert torch.equal(_flat(out), _flat(out2))
    with pytest.raises(DefenceError, match="held-out"):
        d.apply(theta, theta_u, d.params(1), context=None)


# --- output defences ---------------------------------------------------------------------------

def _logits(n=300, c=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=3.0, size=(n, c))


@pytest.mark.parametrize("temperature", [0.05, 0.5, 1.0, 2.0, 10.0, 1000.0])
def test_temperature_keeps_the_argmax(temperature):
    z = _logits()
    p = defend_outputs(z, "temperature", {"temperature": temperature})
    assert np.array_equal(p.argmax(1), z.argmax(1))
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=0, atol=1e-12)


def test_temperature_flattens_and_sharpens():
    z = _logits()
    top = lambda t: defend_outputs(z, "temperature", {"temperature": t}).max(1).mean()
    assert top(0.1) > top(1.0) > top(10.0) > 0.1
    np.testing.assert_allclose(defend_outputs(z, "temperature", {"temperature": 1.0}),
                               defend_outputs(z), atol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 9])
def test_top_k_sums_to_one_and_keeps_the_top_entries(k):
    z = _logits()
    p = defend_outputs(z)
    out = defend_outputs(z, "top_k", {"k": k})
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=0, atol=1e-12)
    order = np.argsort(-p, axis=1, kind="stable")
    rows = np.arange(len(z))[:, None]
    np.testing.assert_array_equal(out[rows, order[:, :k]], p[rows, order[:, :k]])
    rest = out[rows, order[:, k:]]
    np.testing.assert_allclose(rest, rest[:, :1].repeat(10 - k, axis=1), atol=0)
    assert np.array_equal(out.argmax(1), z.argmax(1))
    if k == 9:  # C - 1: the single remaining class gets back exactly its own probability
        np.testing.assert_allclose(out, p, atol=1e-12)


@pytest.mark.parametrize("k", [10, 11, 50])
def test_top_k_rejects_k_at_or_above_the_number_of_classes(k):
    with pytest.raises(DefenceError, match="below the number of classes"):
        defend_outputs(_logits(), "top_k", {"k": k})
    with pytest.raises(ParamError):
        defend_outputs(_logits(), "top_k", {"k": 0})


def test_label_only_is_one_hot_argmax():
    z = _logits()
    out = defend_outputs(z, "label_only")
    assert set(np.unique(out)) == {0.0, 1.0}
    np.testing.assert_array_equal(out.argmax(1), z.argmax(1))
    np.testing.assert_array_equal(out.sum(1), 1.0)


# --- DP-SGD ------------------------------------------------------------------------------------

def _tiny_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0)
    return x, y


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_epsilon_comes_from_opacus_accountant(sampling):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    x, y = _tiny_data()
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=32, momentum=0.0)
    params = DPParams(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5, sampling=sampling)
    result = train_dp(_mlp(), x, y, np.arange(200), cfg, params, seed=0, exclude=(3, 7))
    # 198 samples in batches of 32: 7 batches per epoch, sample rate 1/7, 21 steps.
    assert result.steps == 21 and result.sample_rate == pytest.approx(1 / 7)
    acc = RDPAccountant()
    for _ in range(21):
        acc.step(noise_multiplier=1.1, sample_rate=1 / 7)
    assert result.epsilon == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-12)
    # ... and from the RDP analysis itself, with opacus' default orders.
    rdp = compute_rdp(q=1 / 7, noise_multiplier=1.1, steps=21, orders=acc.DEFAULT_ALPHAS)
    assert result.epsilon == pytest.approx(
        get_privacy_spent(orders=acc.DEFAULT_ALPHAS, rdp=rdp, delta=1e-5)[0], rel=1e-12)
    # The replay used by stages reports the same number without training.
    assert dp_epsilon(198, cfg, params)["epsilon"] == pytest.approx(result.epsilon, rel=1e-12)
    assert 0 < result.epsilon < 100 and result.sampling == sampling


def test_more_noise_gives_smaller_epsilon_and_training_is_seeded():
    x, y = _tiny_data()
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=32, momentum=0.0)
    eps = [train_dp(_mlp(), x, y, np.arange(128), cfg, DPParams(noise_multiplier=s), seed=0
                    ).epsilon for s in (0.7, 1.5, 4.0)]
    assert eps[0] > eps[1] > eps[2] > 0
    a = train_dp(_mlp(), x, y, np.arange(128), cfg, DPParams(), seed=5).model
    b = train_dp(_mlp(), x, y, np.arange(128), cfg, DPParams(), seed=5).model
    c = train_dp(_mlp(), x, y, np.arange(128), cfg, DPParams(), seed=6).model
    assert torch.equal(_flat(a), _flat(b)) and not torch.equal(_flat(a), _flat(c))
    # The returned model is a plain module: no opacus hooks or per-sample gradients left.
    assert not any(hasattr(p, "grad_sample") for p in a.parameters())
    assert not a._forward_hooks and not any(m._forward_hooks for m in a.modules())


def test_dp_rejects_sklearn_and_batchnorm_models():
    x, y = _tiny_data()
    cfg = TrainConfig(epochs=1, batch_size=32)
    from sklearn.tree import DecisionTreeClassifier

    with pytest.raises(DefenceError, match="torch models only"):
        train_dp(DecisionTreeClassifier(), x, y, np.arange(64), cfg, DPParams(), seed=0)
    bn = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    with pytest.raises(DefenceError, match="BatchNorm|batchnorm"):
        train_dp(bn, x, y, np.arange(64), cfg, DPParams(), seed=0)


def test_retrain_dp_draws_fresh_noise_for_theta_u_unless_shared():
    from tasks.data import load_dataset
    from tasks.models import ModelConfig
    from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState

    digits = load_dataset("digits")
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32, momentum=0.0)
    state = TrainingState(digits, ModelConfig("mlp", {"hidden": [8]}), cfg, np.arange(96), 0)
    method = UNLEARNING.get("retrain_dp")()
    request = ForgetRequest("r", "single", (5,))
    fresh, shared = DPParams(noise="fresh"), DPParams(noise="shared")
    assert method.original_recipe(fresh) == method.original_recipe(shared)
    state.original = method.train_original(state, fresh)
    u_fresh = method.unlearn(state, request, fresh)
    u_shared = method.unlearn(state, request, shared)
    u_fresh2 = method.unlearn(state, request, fresh)
    assert torch.equal(_flat(u_fresh), _flat(u_fresh2))  # still seeded
    # Shared noise: theta and theta_u differ only through the one record's clipped gradient;
    # fresh noise moves theta_u by a whole noise draw.
    d_shared = (_flat(u_shared) - _flat(state.original)).norm()
    d_fresh = (_flat(u_fresh) - _flat(state.original)).norm()
    assert d_fresh > 3 * d_shared > 0


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_dp_steps_do_not_depend_on_rows_outside_the_training_set(sampling):
    # opacus averages over len(dataset) * sample_rate: the loader must hold the training rows
    # only, or every step shrinks by |x| / |training set| (a 64x smaller lr on Adult).
    x, y = _tiny_data(n=256)
    big_x = np.concatenate([x[:64], np.zeros((1000, 12), np.float32)])
    big_y = np.concatenate([y[:64], np.zeros(1000, np.int64)])
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=16, momentum=0.0)
    params = DPParams(noise_multiplier=0.8, sampling=sampling)
    a = train_dp(_mlp(), x[:64], y[:64], np.arange(64), cfg, params, seed=1).model
    b = train_dp(_mlp(), big_x, big_y, np.arange(64), cfg, params, seed=1).model
    torch.testing.assert_close(_flat(a), _flat(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_pair_epsilon_is_the_accountant_over_both_trainings(accountant):
    from opacus.accountants import create_accountant

    from tasks.defences.dp import dp_epsilon_pair

    x, y = _tiny_data()
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=32, momentum=0.0)
    params = DPParams(noise_multiplier=1.1, accountant=accountant)
    theta = train_dp(_mlp(), x, y, np.arange(200), cfg, params, seed=0)
    theta_u = train_dp(_mlp(), x, y, np.arange(200), cfg, params, seed=0,
                       exclude=tuple(range(10)), noise_seed=5)
    # One accountant stepped through theta's training and then theta_u's.
    acc = create_accountant(mechanism=accountant)
    for result in (theta, theta_u):
        for _ in range(result.steps):
            acc.step(noise_multiplier=1.1, sample_rate=result.sample_rate)
    pair = dp_epsilon_pair(200, 190, cfg, params)
    assert pair["epsilon"] == pytest.approx(theta.epsilon, rel=1e-9)
    assert pair["epsilon_unlearned"] == pytest.approx(theta_u.epsilon, rel=1e-9)
    assert pair["epsilon_pair"] == pytest.approx(acc.get_epsilon(delta=params.delta), rel=1e-6)
    assert max(theta.epsilon, theta_u.epsilon) < pair["epsilon_pair"] < \
        theta.epsilon + theta_u.epsilon
    assert pair["pair_composition"] == "accountant" and pair["note"] is None


def test_pair_epsilon_under_gdp_and_with_shared_noise():
    from tasks.defences.dp import dp_epsilon_pair

    cfg = TrainConfig(epochs=2, batch_size=32)
    gdp = DPParams(noise_multiplier=1.1, accountant="gdp")
    # 200 and 190 records: 7 and 6 batches, two sample rates the GDP accountant cannot mix.
    pair = dp_epsilon_pair(200, 190, cfg, gdp)
    assert pair["pair_composition"] == "sequential"
    assert pair["epsilon_pair"] == pytest.approx(pair["epsilon"] + pair["epsilon_unlearned"])
    assert pair["delta_pair"] == pytest.approx(2 * gdp.delta)
    same = dp_epsilon_pair(200, 199, cfg, gdp)  # 7 batches each: one entry, steps added
    assert same["pair_composition"] == "accountant"
    assert same["epsilon"] < same["epsilon_pair"] < same["epsilon"] + same["epsilon_unlearned"]
    shared = dp_epsilon_pair(200, 199, cfg, DPParams(noise_multiplier=1.1, noise="shared"))
    assert math.isinf(shared["epsilon_pair"]) and "shared" in shared["note"]
    assert math.isfinite(shared["epsilon"])
