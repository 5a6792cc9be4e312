from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tasks.attacks.probing import (
    ProbeConfig,
    craft_probes,
    importance_weights,
    infer_label,
    original_case,
    score_probes,
    zoo_gradient,
)
from tasks.cases import PublicMetadata, QueryAccess, build_case
from tasks.unlearning import UNLEARNING, ForgetConfig, make_requests


def test_zoo_estimate_agrees_with_autograd_on_a_smooth_function():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)

    def f(x):  # smooth, nonlinear, (n, d) -> (n,)
        return torch.log1p(torch.exp(x @ a.T + b)).sum(-1) + (x**2).sum(-1) * 0.3

    x = torch.rand(3, 6, dtype=torch.float64)
    coords = torch.tensor([[0, 2, 5], [1, 3, 4], [5, 4, 0]])
    calls = []
    est = zoo_gradient(lambda p, _owner: calls.append(len(p)) or f(p), x, coords, h=1e-4)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xg).sum(), xg)
    expect = torch.gather(grad, 1, coords)
    torch.testing.assert_close(est, expect, atol=1e-6, rtol=1e-6)
    assert calls == [3 * 2 * 3]  # every query of the iteration in one batched call
    # In chunks: the same estimate, at most ``chunk`` points per call, each point handed over
    # with the row of x it perturbs.
    chunked, owners = [], []
    est_chunked = zoo_gradient(lambda p, o: chunked.append(len(p)) or owners.append(o) or f(p),
                               x, coords, h=1e-4, chunk=5)
    # A batch of another size may take another BLAS path: f differs by an ulp (~1e-15), which
    # the 2h = 2e-4 divisor turns into ~1e-11; anything beyond that is a real difference.
    torch.testing.assert_close(est_chunked, est, atol=1e-10, rtol=0)
    assert chunked == [5, 5, 5, 3]
    assert torch.cat(owners).tolist() == [0] * 6 + [1] * 6 + [2] * 6


def test_zoo_points_in_float32_equal_the_cast_of_the_float64_points():
    x = torch.rand(2, 5, dtype=torch.float64)
    coords = torch.tensor([[0, 3], [4, 1]])
    seen: dict[str, list[torch.Tensor]] = {"64": [], "32": []}

    def record(key):
        return lambda p, _o: seen[key].append(p.clone()) or p.double().sum(-1)

    zoo_gradient(record("64"), x, coords, 1e-4)
    zoo_gradient(record("32"), x, coords, 1e-4, chunk=3, dtype=torch.float32)
    p64, p32 = torch.cat(seen["64"]), torch.cat(seen["32"])
    assert p64.dtype == torch.float64 and p32.dtype == torch.float32 and len(seen["32"]) == 3
    assert torch.equal(p32, p64.float())
    assert p64[0, 0] == x[0, 0] + 1e-4 and p64[2, 0] == x[0, 0] - 1e-4


def test_importance_map_favours_the_region_that_moved_and_keeps_every_pixel_reachable():
    shape = (3, 32, 32)
    moved = torch.zeros(2, 3 * 32 * 32, dtype=torch.float64)
    img = moved[0].view(shape)
    img[1, 5, 9] = 0.5  # one pixel in region (rows 4-7, cols 8-11) of channel 1
    w = importance_weights(moved, shape, floor=0.01)
    assert torch.allclose(w.sum(-1), torch.ones(2, dtype=torch.float64))
    region = w[0].view(shape)[1, 4:8, 8:12]
    # The whole 4x4 region shares the pooled change; every other pixel keeps the floor.
    assert torch.allclose(region, region[0, 0].expand_as(region))
    assert torch.isclose(region[0, 0] / w[0].min(), torch.tensor(0.51 / 0.01, dtype=w.dtype))
    assert torch.allclose(w[1], torch.full_like(w[1], 1 / w.shape[1]))  # nothing moved: uniform


def test_black_box_probes_with_importance_sampled_coordinates(probe_setup):
    meta, theta = probe_setup
    query = QueryAccess(theta)
    cfg = ProbeConfig(box="black", probes_per_class=1, iterations_per_call=4, max_calls=2,
                      coordinates=16)  # fewer than the 64 pixels: importance sampling is used
    probes = craft_probes(original_case(meta, None, query), cfg, seed=0)
    start = craft_probes(original_case(meta, None, QueryAccess(theta)),
                         ProbeConfig(box="black", probes_per_class=1, dry_run=True,
                                     coordinates=16), seed=0)
    assert probes.total_queries == query.queries
    # The probes moved towards their classes: mean own-class confidence went up.
    assert probes.confidence.mean() > start.confidence.mean()


def test_decision_rule_picks_the_largest_own_class_drop():
    rng = np.random.default_rng(0)
    m, c = 4, 5
    p0 = np.full((c * m, c), 0.001)
    for t in range(c):
        p0[t * m:(t + 1) * m, t] = 0.996
    p1 = p0.copy()
    p1[:, :] += rng.normal(0, 1e-5, p1.shape)
    p1[3 * m:4 * m, 3] -= 0.2  # class 3 forgotten
    p1[1 * m:2 * m, 1] -= 0.05  # class 1 a little
    for score in ("prob", "logodds"):
        pred, delta = infer_label(p0, p1, c, m, top_k=2, score=score)
        assert list(pred) == [3, 1]
        assert delta[3] < delta[1] < 0


@pytest.fixture(scope="module")
def probe_setup(digits_state):
    d = digits_state.dataset
    meta = PublicMetadata(d.name, d.kind, d.input_shape, d.num_classes, d.mean, d.std)
    theta = digits_state.original.eval()
    return meta, theta


def test_black_box_probes_count_every_query(probe_setup):
    meta, theta = probe_setup
    query = QueryAccess(theta)
    calls = []
    original_forward = theta.forward
    theta.forward = lambda x: calls.append(len(x)) or original_forward(x)
    try:
        cfg = ProbeConfig(box="black", probes_per_class=2, iterations_per_call=4, max_calls=2)
        probes = craft_probes(original_case(meta, None, query), cfg, seed=0)
    finally:
        del theta.forward
    assert probes.total_queries == query.queries == sum(calls)
    # One batched forward per iteration (2 * 64 + 1 points per active probe), never one image.
    assert len(calls) <= 2 * (4 * 2 + 2) + 3 and max(calls) >= 20 * 128
    assert probes.x.shape == (20, 1, 8, 8) and probes.x.min() >= 0 and probes.x.max() <= 1


def test_attempts_are_capped_when_the_threshold_is_unreachable(probe_setup):
    meta, theta = probe_setup
    cfg = ProbeConfig(box="white", probes_per_class=1, iterations_per_call=3, max_calls=2,
                      accept=1.0)
    probes = craft_probes(original_case(meta, theta, QueryAccess(theta)), cfg, seed=0)
    assert probes.calls.max() <= 2 and not probes.accepted.all()


def test_white_box_probes_reach_high_confidence_and_find_a_forgotten_class(digits_state):
    d = digits_state.dataset
    cfg = ProbeConfig(box="white", probes_per_class=5, score="logodds")
    reqs = make_requests(ForgetConfig(kind="class_share", classes=(2, 7), shares=(1.0,)),
                         digits_state.train_indices, d.y_train, 0)
    ga = UNLEARNING.get("gradient_ascent")()
    probes = None
    for req in reqs:
        theta_u = ga.unlearn(digits_state, req, ga.Params(lr=1e-3))
        case, _ = build_case(dataset=d, theta=digits_state.original, theta_u=theta_u,
                             request=req, knowledge="paper")
        if probes is None:
            probes = craft_probes(case, cfg, seed=0)
            assert probes.accepted.mean() >= 0.8
        pred, _delta, spent = score_probes(case, probes, cfg)
        assert pred[0] == req.forgotten_class and spent == 2 * len(probes.x)


# A child process so ru_maxrss (a high-water mark) measures crafting alone, not the test run.
_PEAK_SCRIPT = """
import resource, sys
import torch
from tasks.attacks.probing import ProbeConfig, craft_probes, original_case
from tasks.cases import PublicMetadata, QueryAccess
from tasks.models import ModelConfig, build_torch_model

torch.set_num_threads(1)
shape = (3, 32, 32)
mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
theta = build_torch_model(ModelConfig("mlp", {"hidden": [8]}), shape, 10, mean, std, seed=0)
meta = PublicMetadata("cifar10", "image", shape, 10, mean, std)
cfg = ProbeConfig(box="black", probes_per_class=2, iterations_per_call=2, max_calls=1,
                  coordinates=1024, accept=1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
probes = craft_probes(original_case(meta, None, QueryAccess(theta)), cfg, seed=0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert probes.x.shape == (20, 3, 32, 32)
print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_black_box_crafting_on_cifar_sized_inputs_holds_bounded_memory(repo):
    # 20 probes x 2 * 1024 coordinates x 3072 inputs: the full query tensor alone is 1 GiB in
    # float64, with its float32 copy and the model's first activations well over 2 GB.
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], cwd=repo, capture_output=True,
                         text=True, check=False, timeout=600)
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.split()[-1])
    assert grown < 512 * 2**20, f"crafting raised peak memory by {grown / 2**20:.0f} MiB"


def test_chunked_crafting_gives_the_probes_of_one_batch_per_iteration(probe_setup):
    meta, theta = probe_setup
    results = {}
    for chunk in (7, 10**6):  # 7 rows per call, or every row of an iteration in one call
        query, calls = QueryAccess(theta), []
        original_forward = theta.forward
        theta.forward = lambda x, calls=calls, fwd=original_forward: (calls.append(len(x))
                                                                       or fwd(x))
        try:
            cfg = ProbeConfig(box="black", probes_per_class=1, iterations_per_call=3,
                              max_calls=2, coordinates=16, loss="margin", query_chunk=chunk)
            results[chunk] = craft_probes(original_case(meta, None, query), cfg, seed=3)
        finally:
            del theta.forward
        assert results[chunk].total_queries == query.queries == sum(calls)
        assert max(calls) <= chunk
    small, whole = results[7], results[10**6]
    np.testing.assert_array_equal(small.queries, whole.queries)
    # Batch size changes float32 rounding inside the model, nothing else.
    np.testing.assert_allclose(small.x, whole.x, atol=2e-2)
    np.testing.assert_allclose(small.confidence, whole.confidence, atol=1e-3)


def test_query_chunk_must_be_positive():
    with pytest.raises(ValueError, match="query_chunk"):
        ProbeConfig(query_chunk=0)
