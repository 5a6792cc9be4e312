"""Conformance kit: every registered attack passes the same suite.

Output shapes, seed determinism, abort on a non-finite loss, a one-iteration dry run, and the
threat-model boundary (the attack sees only a Case: changing the forgotten samples after the
case is built changes nothing). A new attack registers its small test setting in SETTINGS;
an attack without one fails ``test_every_attack_has_a_setting``.
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from tasks.attacks import ATTACKS, NonFiniteLossError
from tasks.cases import Case, GroundTruth, build_case
from tasks.data import Dataset
from tasks.params import build
from tasks.unlearning import UNLEARNING, ForgetConfig, ForgetRequest, make_requests

# attack name -> (small config, case knowledge, white box, request kind)
SETTINGS = {
    "inversion": ({"iterations": 4, "restarts": 2}, "reference", True, "single"),
    "probing": ({"probes_per_class": 1, "iterations_per_call": 3, "max_calls": 1,
                 "box": "black"}, "paper", False, "class"),
}


def _cases(state, name, dataset=None):
    dataset = dataset or state.dataset
    _, knowledge, white, kind = SETTINGS[name]
    ga = UNLEARNING.get("gradient_ascent")()
    if kind == "single":
        requests = [ForgetRequest(f"r{i}", "single", (i,)) for i in (0, 9)]
    else:
        requests = make_requests(ForgetConfig(kind="class_share", classes=(1, 4),
                                              shares=(0.5,)), state.train_indices,
                                 state.dataset.y_train, 0)
    cases, truths = [], []
    for req in requests:
        theta_u = ga.unlearn(state, req, ga.Params(lr=1.0))
        case, truth = build_case(dataset=dataset, theta=state.original, theta_u=theta_u,
                                 request=req, knowledge=knowledge, white_box=white,
                                 unlearn_lr=1.0, exact=False)
        cases.append(case)
        truths.append(truth)
    return cases, truths


def _config(name, **extra):
    attack = ATTACKS.get(name)
    return build(attack.Config, {**SETTINGS[name][0], **extra}, name)


def _flat(result) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) for vals in result.per_target().values()
            for v in vals]


def test_every_attack_has_a_setting():
    missing = [n for n in ATTACKS.names() if n not in SETTINGS and not _exempt(n)]
    assert not missing, f"add a conformance setting for {missing}"


def _exempt(name: str) -> bool:
    # Membership inference attacks (issue 4) consume posteriors tables, not Cases; they
    # carry their own conformance suite.
    return "membership" in name or "mia" in name


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_output_shapes(digits_state, name):
    cases, truths = _cases(digits_state, name)
    result = ATTACKS.get(name)().run(cases, _config(name), seeds=[0, 1])
    out = result.per_target()
    for key, values in out.items():
        assert len(values) == len(cases), key
    if name == "inversion":
        for img, truth in zip(out["images"], truths):
            assert img.shape == truth.x.shape and img.min() >= 0 and img.max() <= 1
    if name == "probing":
        for pred, delta in zip(out["predicted"], out["delta_by_class"]):
            assert pred.shape == (1,) and delta.shape == (10,)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_seed_determinism(digits_state, name):
    cases, _ = _cases(digits_state, name)
    attack = ATTACKS.get(name)()
    a = _flat(attack.run(cases, _config(name), seeds=[5, 6]))
    b = _flat(attack.run(cases, _config(name), seeds=[5, 6]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_non_finite_loss_aborts(digits_state, name):
    cases, _ = _cases(digits_state, name)
    for case in cases:
        for model in (case.theta, case.theta_u, case.query_original._model):
            if model is not None:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError):
        ATTACKS.get(name)().run(cases, _config(name), seeds=[0, 1])


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_dry_run_is_one_iteration(digits_state, name):
    cases, _ = _cases(digits_state, name)
    cfg = _config(name, dry_run=True)
    result = ATTACKS.get(name)().run(cases, cfg, seeds=[0, 1])
    if name == "inversion":
        assert result.iterations == 1
    else:
        assert all(len(v) == len(cases) for v in result.per_target().values())


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_attack_cannot_reach_the_forgotten_samples(digits_state, name):
    """The attack API takes Cases only; a Case holds no ground truth, and scrambling the
    forgotten samples in the provider's dataset after the case is built changes nothing."""
    params = list(inspect.signature(ATTACKS.get(name).run).parameters)
    assert params[:2] == ["self", "cases"]
    field_types = {f.name: f.type for f in dataclasses.fields(Case)}
    assert "GroundTruth" not in " ".join(map(str, field_types.values()))
    d = digits_state.dataset
    private = Dataset(d.name, d.kind, d.x_train.copy(), d.y_train.copy(), d.x_test, d.y_test,
                      d.num_classes, d.mean, d.std)
    cases, truths = _cases(digits_state, name, dataset=private)
    for case in cases:
        assert not any(isinstance(v, GroundTruth) for v in vars(case).values())
        if case.metadata.knowledge == "paper":
            assert case.metadata.labels is None
    before = _flat(ATTACKS.get(name)().run(cases, _config(name), seeds=[0, 1]))
    for truth in truths:
        private.x_train[list(truth.indices)] = np.random.default_rng(0).random(
            truth.x.shape, dtype=np.float32)
    after = _flat(ATTACKS.get(name)().run(cases, _config(name), seeds=[0, 1]))
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
