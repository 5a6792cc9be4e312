from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.attacks import AttackConfigError
from tasks.attacks.inversion import (
    InversionConfig,
    infer_labels_from_gradient,
    matching_loss,
    recover,
    target_gradient,
)
from tasks.cases import build_case
from tasks.metrics import psnr
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState


def _ascent_cases(state, indices, lr=1.0, knowledge="reference"):
    ga = UNLEARNING.get("gradient_ascent")()
    cases, truths = [], []
    for i in indices:
        req = ForgetRequest(f"r{i}", "single", (int(i),))
        theta_u = ga.unlearn(state, req, ga.Params(lr=lr, steps=1))
        case, truth = build_case(dataset=state.dataset, theta=state.original, theta_u=theta_u,
                                 request=req, knowledge=knowledge, unlearn_lr=lr, exact=False)
        cases.append(case)
        truths.append(truth)
    return cases, truths


@pytest.mark.parametrize("knowledge", ["paper", "reference"])
def test_matching_cosine_is_plus_one_at_the_true_input(digits_state, knowledge):
    """Sign check (ATTACKS.md 3.2): g* is a positive multiple of grad L(U)."""
    cases, truths = _ascent_cases(digits_state, [3], lr=1e-3, knowledge=knowledge)
    gstar, model, where = target_gradient(cases[0], knowledge)
    assert where == "theta"
    x, y = torch.as_tensor(truths[0].x), torch.as_tensor(truths[0].y)
    assert 1 - float(matching_loss(model, x, y, gstar)) == pytest.approx(1.0, abs=1e-3)
    # Eq. 2 read literally (theta - theta_u) is anti-aligned: cos = -1.
    flipped = type(gstar)((n, -g) for n, g in gstar.items())
    assert 1 - float(matching_loss(model, x, y, flipped)) == pytest.approx(-1.0, abs=1e-3)


def test_exact_reference_target_is_the_gradient_at_theta0(digits):
    """Refit after a one-step fine-tune: -(N (theta - theta0) - (N - k)(theta_u - theta0)) is
    eta * sum_U grad L(theta0), so the true sample has cos = +1 at theta0."""
    cfg = ModelConfig("mlp", {"hidden": [16]})
    theta0 = build_torch_model(cfg, digits.input_shape, 10, digits.mean, digits.std, seed=1)
    idx = np.arange(8)
    tc = TrainConfig(epochs=1, lr=1e-3, batch_size=128, momentum=0.0)
    state = TrainingState(digits, cfg, tc, idx, 0, pretrained_state=theta0.state_dict())
    refit = UNLEARNING.get("refit")()
    from tasks.unlearning import fit_standard

    state.original = fit_standard(state)
    req = ForgetRequest("r", "single", (5,))
    theta_u = refit.unlearn(state, req, refit.Params())
    case, truth = build_case(dataset=digits, theta=state.original, theta_u=theta_u, request=req,
                             knowledge="reference", theta0=theta0, n_finetune=8, exact=True)
    gstar, model, where = target_gradient(case, "reference")
    assert where == "theta0"
    cos = 1 - float(matching_loss(model, torch.as_tensor(truth.x), torch.as_tensor(truth.y),
                                  gstar))
    assert cos == pytest.approx(1.0, abs=1e-3)


def test_batched_and_one_at_a_time_recovery_agree(digits_state):
    cases, _ = _ascent_cases(digits_state, [0, 7, 11])
    cfg = InversionConfig(iterations=15, restarts=2)
    seeds = [101, 202, 303]
    batched = recover(cases, cfg, seeds=seeds)
    for i, case in enumerate(cases):
        alone = recover([case], cfg, seeds=[seeds[i]])
        np.testing.assert_allclose(alone.images[0], batched.images[i], atol=1e-4)
        np.testing.assert_allclose(alone.restart_losses[0], batched.restart_losses[i],
                                   atol=1e-5)
        assert alone.best_restart[0] == batched.best_restart[i]


def test_recovery_beats_the_mean_image_and_picks_the_best_restart(digits_state):
    cases, truths = _ascent_cases(digits_state, [1, 2, 4, 9])
    res = recover(cases, InversionConfig(iterations=150, restarts=3), seeds=[0, 1, 2, 3])
    mean_img = digits_state.dataset.x_test.mean(0, keepdims=True)
    gains = [psnr(res.images[i], t.x)[0] - psnr(mean_img, t.x)[0] for i, t in enumerate(truths)]
    assert np.mean(gains) > 6.0
    for losses, best, loss in zip(res.restart_losses, res.best_restart, res.matching_loss):
        assert losses[best] == pytest.approx(losses.min()) and loss == pytest.approx(losses.min())


def test_labels_inferred_from_the_last_layer_gradient(digits_state):
    cases, truths = _ascent_cases(digits_state, [0, 5, 6, 20], knowledge="paper")
    for case, truth in zip(cases, truths):
        gstar, model, _ = target_gradient(case, "paper")
        assert infer_labels_from_gradient(gstar, model, 10, 1)[0] == truth.y[0]


def test_optimised_labels_run_and_report_the_label_used(digits_state):
    cases, _ = _ascent_cases(digits_state, [0], knowledge="paper")
    res = recover(cases, InversionConfig(knowledge="paper", label_mode="optimised",
                                         iterations=5, restarts=2))
    assert res.labels[0].shape == (1,) and 0 <= res.labels[0][0] < 10


def test_group_request_is_recovered_jointly(digits_state):
    ga = UNLEARNING.get("gradient_ascent")()
    req = ForgetRequest("g", "group", (3, 40))
    theta_u = ga.unlearn(digits_state, req, ga.Params(lr=1.0))
    case, _ = build_case(dataset=digits_state.dataset, theta=digits_state.original,
                         theta_u=theta_u, request=req, knowledge="reference", unlearn_lr=1.0,
                         exact=False)
    res = recover([case], InversionConfig(iterations=3, restarts=2))
    assert res.images[0].shape == (2, 1, 8, 8) and res.labels[0].shape == (2,)


def test_reference_settings_and_knowledge_checks(digits_state):
    assert InversionConfig().milestones() == [3749, 6249, 8756]
    cfg = InversionConfig()
    assert (cfg.lr, cfg.tv_weight, cfg.restarts, cfg.iterations) == (0.04, 1e-2, 5, 10_000)
    cases, _ = _ascent_cases(digits_state, [0], knowledge="paper")
    assert cases[0].metadata.labels is None
    with pytest.raises(AttackConfigError):  # the paper's attacker does not know y_U
        recover(cases, InversionConfig(knowledge="paper", label_mode="known", iterations=1))
    with pytest.raises(AttackConfigError):  # reference attack on a paper case
        recover(cases, InversionConfig(knowledge="reference", iterations=1))


def test_callback_sees_every_iteration_and_can_stop(digits_state):
    cases, _ = _ascent_cases(digits_state, [0, 1])
    seen = []

    def cb(progress):
        seen.append(progress)
        return progress.iteration >= 4

    res = recover(cases, InversionConfig(iterations=50, restarts=2), callback=cb)
    assert [p.iteration for p in seen] == [1, 2, 3, 4] and res.stopped_early
    assert res.iterations == 4 and seen[-1].matching_loss.shape == (2,)


def test_tv_is_the_mean_anisotropic_total_variation():
    from tasks.attacks.inversion import tv_mean

    x = torch.zeros(1, 1, 4, 4)
    x[..., 2:] = 1.0  # one vertical edge: 4 of 12 horizontal differences are 1
    assert float(tv_mean(x)) == pytest.approx(4 / 12)
    assert float(tv_mean(torch.full((2, 3, 5, 5), 0.7))) == 0  # no edge, no variation


def test_fast_and_vmap_paths_recover_the_same_images(digits_state):
    """The batched per-trial-gradient path (the default here) and the vmap path agree."""
    cases, _ = _ascent_cases(digits_state, [0, 7])
    cfg = InversionConfig(iterations=10, restarts=2)
    fast = recover(cases, cfg, seeds=[1, 2], path="fast")
    old = recover(cases, cfg, seeds=[1, 2], path="vmap")
    for i in range(2):
        np.testing.assert_allclose(fast.images[i], old.images[i], atol=1e-4)
        np.testing.assert_allclose(fast.restart_losses[i], old.restart_losses[i], atol=1e-5)


def test_precision_bf16_recovers_as_well_and_tf32_is_fp32_off_cuda(digits_state):
    """bf16 autocast changes the arithmetic (the images differ) and costs some PSNR (measured
    2.6 dB here, 28.4 -> 25.7) but still recovers well beyond the mean image; tf32 on a CPU is
    fp32 bit for bit."""
    cases, truths = _ascent_cases(digits_state, [1, 2, 4, 9])
    runs = {p: recover(cases, InversionConfig(iterations=150, restarts=3, precision=p),
                       seeds=[0, 1, 2, 3]) for p in ("fp32", "tf32", "bf16")}
    for a, b in zip(runs["fp32"].images, runs["tf32"].images):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - b).max()) for a, b in
               zip(runs["fp32"].images, runs["bf16"].images)) > 1e-3
    gain = {p: np.mean([psnr(r.images[i], t.x)[0] for i, t in enumerate(truths)])
            for p, r in runs.items()}
    mean_img = digits_state.dataset.x_test.mean(0, keepdims=True)
    baseline = np.mean([psnr(mean_img, t.x)[0] for t in truths])
    assert gain["bf16"] - baseline > 6.0, (gain, baseline)
    assert gain["fp32"] - 5.0 < gain["bf16"] <= gain["fp32"] + 1.0, gain
    for p, r in runs.items():
        assert np.isfinite(r.matching_loss).all(), p


@pytest.mark.parametrize("path", ["fast", "vmap"])
def test_bf16_runs_on_both_per_trial_gradient_paths(digits_state, path):
    cases, _ = _ascent_cases(digits_state, [0, 7])
    res = recover(cases, InversionConfig(iterations=5, restarts=2, precision="bf16"),
                  seeds=[1, 2], path=path)
    assert all(np.isfinite(img).all() for img in res.images)
    assert np.isfinite(res.matching_loss).all()


def test_precision_enters_result_keys_only_when_not_fp32():
    """Adding the field left the keys of rows written before it as they were."""
    from tasks.params import key_settings, to_dict

    assert "precision" in to_dict(InversionConfig())  # the row's attack.* columns show it
    assert "precision" not in key_settings(InversionConfig())
    assert key_settings(InversionConfig(precision="bf16"))["precision"] == "bf16"


def test_large_models_recover_in_chunks_of_targets_small_ones_together(digits_state):
    """Per-trial gradients past the device's budget split a group into chunks (ResNet-18 on a
    CPU: one target at a time); the MLP stays whole; a search's callback keeps groups whole;
    chunking changes nothing in what is recovered."""
    from torch import nn

    from tasks.attacks.recovery_groups import TRIAL_GRADIENT_BUDGET, group_targets

    big = nn.Linear(4096, 4096)  # 64 MiB of float32 weights: over the CPU budget per trial
    small = digits_state.original
    assert 2 * 4096 * 4097 * 4 > TRIAL_GRADIENT_BUDGET["cpu"]
    chunks = group_targets([(big, 1)] * 3 + [(small, 1)] * 3, restarts=2, device="cpu")
    assert [m for _, _, m in chunks] == [[0], [1], [2], [3, 4, 5]]
    whole = group_targets([(big, 1)] * 3, restarts=2, device="cpu", chunk=False)
    assert [m for _, _, m in whole] == [[0, 1, 2]]
    cases, _ = _ascent_cases(digits_state, [3, 5, 8])
    cfg = InversionConfig(iterations=20, restarts=2)
    together = recover(cases, cfg, seeds=[0, 1, 2])
    budget = TRIAL_GRADIENT_BUDGET["cpu"]
    try:
        TRIAL_GRADIENT_BUDGET["cpu"] = 1  # every target its own chunk
        apart = recover(cases, cfg, seeds=[0, 1, 2])
    finally:
        TRIAL_GRADIENT_BUDGET["cpu"] = budget
    for a, b in zip(together.images, apart.images):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("caller_flushes", [False, True])
def test_recovery_flushes_denormals_on_cpu_and_restores_the_callers_setting(caller_flushes):
    from tasks.attacks.precision import flush_denormals

    def flushed() -> bool:
        return (torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0

    torch.set_flush_denormal(caller_flushes)
    try:
        with flush_denormals(torch.device("cpu")):
            assert flushed()  # denormal arithmetic is many times slower on x86
        assert flushed() == caller_flushes
    finally:
        torch.set_flush_denormal(False)
