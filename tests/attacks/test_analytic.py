"""The analytic first-layer attack (issue 28, item 3a): exact where the maths says so, and
where it stops being exact.

The quickstart's digits MLP (hidden 64, 30 epochs of SGD with momentum), one record deleted
by one gradient-ascent step: the record comes back at 40 dB PSNR or more, equal to an
independent reading written here (one row of ΔW over its bias entry, un-normalised by hand).
Several ascent steps on the one record stay exact, and so do descent steps with momentum;
of two records in one request only the one with the larger gradient comes back; fine-tuning
and weight decay break the ratio; a first layer without a bias, a convolutional one or one
behind a non-affine map is refused.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tasks.attacks import ATTACKS, AttackConfigError
from tasks.attacks.analytic import AnalyticConfig
from tasks.cases import build_case
from tasks.metrics import psnr
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, train_model
from tasks.unlearning import UNLEARNING, ForgetConfig, TrainingState, make_requests


@pytest.fixture(scope="module")
def quickstart_state(digits) -> TrainingState:
    """The quickstart's provider: its model and training recipe on digits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = ModelConfig("mlp", {"hidden": [64]})
        model = build_torch_model(cfg, digits.input_shape, 10, digits.mean, digits.std, seed=0)
        idx = np.arange(len(digits.y_train))
        tc = TrainConfig(epochs=30, lr=0.05, batch_size=64, optimizer="sgd", momentum=0.9)
        train_model(model, digits.x_train, digits.y_train, idx, tc, 0)
    finally:
        torch.set_num_threads(threads)
    return TrainingState(digits, cfg, tc, idx, 0, original=model)


def _cases(state: TrainingState, method: str, params: dict, forget: ForgetConfig):
    unlearning = UNLEARNING.get(method)()
    typed = unlearning.Params(**params)
    requests = make_requests(forget, state.train_indices, state.dataset.y_train, seed=0)
    pairs = [build_case(dataset=state.dataset, theta=state.original,
                        theta_u=unlearning.unlearn(state, r, typed), request=r,
                        knowledge="paper") for r in requests]
    return [c for c, _ in pairs], [t for _, t in pairs]


def _attack(cases, **config):
    return ATTACKS.get("analytic")().run(cases, AnalyticConfig(**config), seeds=[0] * len(cases))


def _by_hand(case) -> np.ndarray:
    """The textbook reading: the row whose bias moved most, divided by that bias entry, then
    the model's normalisation undone (mean and std from the public metadata)."""
    first = next(m for m in case.theta.modules() if isinstance(m, nn.Linear))
    first_u = next(m for m in case.theta_u.modules() if isinstance(m, nn.Linear))
    dw = (first_u.weight - first.weight).double()
    db = (first_u.bias - first.bias).double()
    row = int(db.abs().argmax())
    u = (dw[row] / db[row]).numpy()
    meta = case.metadata
    mean = np.asarray(meta.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(meta.std, dtype=np.float64)[:, None, None]
    return np.clip(u.reshape(meta.input_shape) * std + mean, 0, 1)[None]


def test_one_ascent_step_on_one_record_gives_it_back_exactly(quickstart_state):
    cases, truths = _cases(quickstart_state, "gradient_ascent", {"lr": 1.0, "steps": 1},
                           ForgetConfig(kind="single", count=4))
    result = _attack(cases)
    for image, cosine, label, case, truth in zip(result.images, result.cosine, result.labels,
                                                 cases, truths):
        assert psnr(image, truth.x)[0] >= 40.0
        # The same record as the textbook's one row (which rounds more: one row's ratio).
        assert psnr(image, _by_hand(case))[0] >= 40.0
        assert cosine > 1 - 1e-3  # ΔW is rank one up to float32 rounding
        assert label[0] == truth.y[0]  # the last layer's bias names the class


def test_several_plain_ascent_steps_on_one_record_stay_exact(quickstart_state):
    cases, truths = _cases(quickstart_state, "gradient_ascent", {"lr": 0.05, "steps": 5},
                           ForgetConfig(kind="single", count=2))
    for image, truth in zip(_attack(cases).images, truths):
        assert psnr(image, truth.x)[0] >= 40.0


def test_descent_steps_with_momentum_on_one_record_stay_exact(quickstart_state, digits):
    """The ratio cancels the sign and the steps' weights: three SGD steps with momentum 0.9
    that fit one record (descent, not ascent) still give it back."""
    request = make_requests(ForgetConfig(kind="single", count=1), quickstart_state.train_indices,
                            digits.y_train, seed=1)[0]
    i = request.indices[0]
    model = copy.deepcopy(quickstart_state.original).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.from_numpy(digits.x_train[i:i + 1]), torch.tensor([int(digits.y_train[i])])
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    case, truth = build_case(dataset=digits, theta=quickstart_state.original,
                             theta_u=model.eval(), request=request, knowledge="paper")
    assert psnr(_attack([case]).images[0], truth.x)[0] >= 40.0


def test_two_records_in_one_request_give_back_one_of_them_at_most(quickstart_state):
    """ΔW sums the records' updates, each scaled by its loss gradient; on a trained model one
    record's usually dominates (the worse fit), so the fit reads that record and the other
    stays hidden — and ΔW is so nearly rank one that the cosine cannot tell."""
    cases, truths = _cases(quickstart_state, "gradient_ascent", {"lr": 1.0, "steps": 1},
                           ForgetConfig(kind="group", count=4, size=2))
    for image, truth in zip(_attack(cases).images, truths):
        low, high = sorted(psnr(np.repeat(image, 2, 0), truth.x))
        assert high >= 40.0 and low < 20.0


def test_fine_tuning_on_the_retained_data_is_not_one_records_update(quickstart_state):
    cases, truths = _cases(quickstart_state, "finetune", {"epochs": 1},
                           ForgetConfig(kind="single", count=2))
    result = _attack(cases)
    for image, cosine, truth in zip(result.images, result.cosine, truths):
        assert psnr(image, truth.x)[0] < 30.0 and cosine < 0.9


def test_weight_decay_breaks_the_ratio(quickstart_state):
    """An ascent step that also shrinks the weights (decay 1e-2) adds -λW to ΔW: no longer
    proportional to the record."""
    cases, truths = _cases(quickstart_state, "gradient_ascent", {"lr": 1.0, "steps": 1},
                           ForgetConfig(kind="single", count=2))
    exact = _attack(cases)
    for case in cases:
        with torch.no_grad():
            for p, p0 in zip(case.theta_u.parameters(), case.theta.parameters()):
                p.sub_(1e-2 * p0)
    decayed = _attack(cases)
    for before, after, truth in zip(exact.images, decayed.images, truths):
        assert psnr(after, truth.x)[0] < psnr(before, truth.x)[0] - 10


def _case_of(model: nn.Module, digits) -> object:
    model_u = copy.deepcopy(model)
    with torch.no_grad():
        for p in model_u.parameters():
            p.add_(0.01)
    request = make_requests(ForgetConfig(kind="single", count=1), np.arange(10),
                            digits.y_train, seed=0)[0]
    return build_case(dataset=digits, theta=model, theta_u=model_u, request=request,
                      knowledge="paper")[0]


def test_a_first_layer_without_bias_or_not_on_the_record_is_refused(digits):
    no_bias = nn.Sequential(nn.Flatten(), nn.Linear(64, 16, bias=False), nn.ReLU(),
                            nn.Linear(16, 10))
    with pytest.raises(AttackConfigError, match="needs a bias in the first linear layer"):
        _attack([_case_of(no_bias, digits)])
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 10))
    with pytest.raises(AttackConfigError, match="takes 72 features, the record has 64"):
        _attack([_case_of(conv, digits)])
    squashed = nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(64, 10))
    with pytest.raises(AttackConfigError, match="elementwise affine map"):
        _attack([_case_of(squashed, digits)])


def test_the_generic_attacks_stage_runs_it_end_to_end(tmp_path, local_ray):
    """A spec names it like any attack; its rows land in the recoveries table beside the
    inversion's, with the same columns: exact for gradient ascent, not for retraining."""
    import pandas as pd
    import yaml

    from tests.bad_inputs.harness import run_cli

    spec = {"experiment": "analytic", "seed": 0,
            "dataset": {"name": "digits", "train_size": 400},
            "model": {"name": "mlp", "hidden": [64]},
            "training": {"epochs": 10, "lr": 0.05, "batch_size": 64, "momentum": 0.9},
            "forget": {"kind": "single", "count": 3},
            "unlearning": [{"method": "retrain"},
                           {"method": "gradient_ascent", "lr": 1.0, "steps": 1}],
            "attacks": {"exact": {"attack": "analytic"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, out, err = run_cli(["run", "spec.yaml", "--results", "R", "--quiet"], tmp_path)
    assert code == 0, out + err
    rows = pd.read_parquet(tmp_path / "R" / "analytic" / "recoveries")
    assert len(rows) == 6 and set(rows["attack"]) == {"analytic"}
    by_method = rows.groupby("unlearning_method")["psnr"]
    assert by_method.min()["gradient_ascent"] >= 40.0
    assert by_method.max()["retrain"] < 30.0
    assert (rows["psnr"] > rows["psnr_mean_image"]).sum() >= 3


def test_a_spec_naming_it_for_a_convolutional_model_is_refused_before_any_work(tmp_path):
    import yaml

    from tests.bad_inputs.harness import refused

    spec = {"experiment": "analytic-cnn", "dataset": {"name": "digits"},
            "model": {"name": "simple_cnn"}, "unlearning": [{"method": "gradient_ascent"}],
            "attacks": {"exact": {"attack": "analytic"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    refused(["run", "spec.yaml", "--results", "R", "--dry-run"], tmp_path,
            ("attacks.exact: attack 'analytic' cannot attack model 'simple_cnn'",
             "fully connected first layer"))
