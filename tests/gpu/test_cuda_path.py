"""The CUDA path (issue 16, item 4): runs where a GPU is present, skips with the reason
otherwise. The CPU suite never needs it; a GPU machine runs it as ``pytest tests/gpu``."""

from __future__ import annotations

import copy
import dataclasses
import io
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from orchestrator.context import TaskContext
from orchestrator.engine.execute import execute_inline
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import expand
from orchestrator.store.tables import Results
from tasks.attacks.precision import cuda_tf32
from tasks.defences import DEFENCES, UpdateContext
from tasks.training import TrainConfig, predict_logits, seed_everything
from tasks.unlearning import (
    UNLEARNING,
    ForgetConfig,
    ForgetRequest,
    UnlearningMethod,
    make_requests,
)
from tests.conftest import reduced_quickstart
from tests.defences.tiny_spec import TINY

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device on this machine (torch.cuda.is_available() is False): the GPU "
           "path is checked only where one is present")


def test_fast_recovery_loss_on_cuda_equals_cpu():
    from tasks.attacks.inversion import make_batched_loss
    from tasks.models import ModelConfig, build_torch_model

    model = build_torch_model(ModelConfig("convnet", {"width": 8}), (3, 32, 32), 10,
                              [0.5] * 3, [0.25] * 3, seed=0).eval()
    torch.manual_seed(0)
    t, r, k = 4, 2, 1
    gstack = OrderedDict((n, torch.randn(t, *p.shape)) for n, p in model.named_parameters())
    gnorm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gstack.values()))
    x0 = torch.rand(t, r, k, 3, 32, 32)
    ysoft = F.softmax(torch.randn(t, r, k, 10), -1)
    out = {}
    for device in ("cpu", "cuda"):
        fn, used = make_batched_loss(model.to(device), 1e-2, "auto")
        assert used == "fast"
        x = x0.clone().to(device).requires_grad_(True)
        with cuda_tf32(False):  # this compares float32 arithmetic on both devices
            total, _ = fn(x, ysoft.to(device), OrderedDict((n, g.to(device)) for n, g in
                                                            gstack.items()), gnorm.to(device))
            total.sum().backward()
        out[device] = (total.detach().cpu(), x.grad.cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_recovery_on_cuda_at_every_precision(digits_state):
    """fp32 and TF32 on CUDA recover as well as the CPU, within 1 dB of PSNR; bf16 (2.6 dB
    below fp32 on the CPU) still well beyond the mean image. 150 signed steps amplify any
    change in rounding (another library sums in another order), so the recoveries are not equal
    pixel for pixel: on an H200 (torch 2.11, 2026-12-04) CPU fp32 gave 28.36 dB, CUDA fp32
    27.78, TF32 28.17 and bf16 27.35."""
    from tasks.attacks.inversion import InversionConfig, recover
    from tasks.cases import build_case
    from tasks.metrics import psnr
    from tasks.unlearning import UNLEARNING, ForgetRequest

    ga = UNLEARNING.get("gradient_ascent")()
    per_device = {}
    for device in ("cpu", "cuda"):
        cases, truths = [], []
        for i in (1, 2, 4, 9):
            req = ForgetRequest(f"r{i}", "single", (i,))
            theta_u = ga.unlearn(digits_state, req, ga.Params(lr=1.0, steps=1))
            case, truth = build_case(dataset=digits_state.dataset, theta=digits_state.original,
                                     theta_u=theta_u, request=req, knowledge="reference",
                                     unlearn_lr=1.0, exact=False, device=device)
            cases.append(case)
            truths.append(truth)
        per_device[device] = (cases, truths)
    runs = {}
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "tf32"),
                              ("cuda", "bf16")):
        cases, truths = per_device[device]
        res = recover(cases, InversionConfig(iterations=150, restarts=3, precision=precision),
                      seeds=[0, 1, 2, 3])
        runs[device, precision] = float(np.mean([psnr(res.images[i], t.x)[0]
                                                  for i, t in enumerate(truths)]))
    reference = runs["cpu", "fp32"]
    assert abs(runs["cuda", "fp32"] - reference) < 1.0, runs
    assert abs(runs["cuda", "tf32"] - reference) < 1.0, runs
    mean_img = digits_state.dataset.x_test.mean(0, keepdims=True)
    baseline = np.mean([psnr(mean_img, t.x)[0] for t in per_device["cpu"][1]])
    assert runs["cuda", "bf16"] - baseline > 6.0, (runs, baseline)


def test_quickstart_runs_on_cuda_end_to_end(tmp_path, repo):
    spec = reduced_quickstart()
    spec["runtime"]["device"] = "cuda"
    # Ray hands a task the GPU only when it asks for one: a quarter each, packed on one device.
    spec["resources"] = {kind: {"cpus": 1, "gpus": 0.25} for kind in ("train", "unlearn",
                                                                      "attack")}
    path = tmp_path / "qs.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "run", str(path),
                           "--results", str(tmp_path / "R"), "--quiet"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    import pandas as pd

    errors = tmp_path / "R" / "qs" / "errors"
    assert not errors.exists(), pd.read_parquet(errors).to_dict("records")
    rec = pd.read_parquet(tmp_path / "R" / "qs" / "recoveries")
    assert len(rec) and rec["psnr"].notna().all()
    assert len(pd.read_parquet(tmp_path / "R" / "qs" / "label_inference"))


# --- every torch task on the GPU (the static audit of the CUDA path) ---------------------------

GPU = "cuda"


def _on(model: nn.Module, device: str) -> bool:
    return {p.device.type for p in model.parameters()} == {torch.device(device).type}


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


def _toy_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5)).eval()


def _toy_pair() -> tuple[nn.Module, nn.Module, np.ndarray, np.ndarray]:
    """theta, theta_u (theta moved by a small update) and toy data (80 records, 4 classes)."""
    theta, theta_u = _toy_mlp(), _toy_mlp()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in theta_u.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
    x = np.random.default_rng(0).normal(size=(80, 12)).astype(np.float32)
    return theta, theta_u, x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)


UPDATE_DEFENCES = [(n, {}) for n in DEFENCES.names() if DEFENCES.get(n).acts_on == "update"]
UPDATE_DEFENCES.append(("pruning", {"scope": "all"}))
UPDATE_IDS = [n + "".join(f"-{v}" for v in f.values()) for n, f in UPDATE_DEFENCES]
TRAINING_UPDATES = {"fine_tuning"}  # update defences that train: equal within float tolerance


@pytest.mark.parametrize(("name", "fixed"), UPDATE_DEFENCES, ids=UPDATE_IDS)
def test_update_defence_on_cuda_equals_cpu(name, fixed):
    """Obfuscation draws its noise on the CPU and pruning ranks magnitudes there, so both
    publish the same numbers on either device; fine-tuning trains on the GPU. Each leaves
    its inputs alone and publishes a model on their device."""
    defence = DEFENCES.get(name)()
    params = defence.params(defence.example_strength, fixed)
    theta, theta_u, x, y = _toy_pair()
    out = {}
    for device in ("cpu", GPU):
        t, tu = copy.deepcopy(theta).to(device), copy.deepcopy(theta_u).to(device)
        before = _flat(t), _flat(tu)
        ctx = UpdateContext(x, y, np.arange(40, 80), TrainConfig(epochs=1, batch_size=16), device)
        with cuda_tf32(False):
            published = defence.apply(t, tu, params, seed=3, context=ctx)
        assert _on(published, device)
        assert torch.equal(_flat(t), before[0]) and torch.equal(_flat(tu), before[1])
        out[device] = _flat(published)
    assert not torch.equal(out[GPU], _flat(theta_u))  # the example strength does something
    if name in TRAINING_UPDATES:
        torch.testing.assert_close(out[GPU], out["cpu"], rtol=1e-4, atol=1e-5)
    else:
        assert torch.equal(out[GPU], out["cpu"])


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_dp_sgd_trains_on_cuda(sampling):
    """DP-SGD on the GPU. Opacus draws the noise there from a CUDA generator, so noisy models
    differ from the CPU's; the accountant does not depend on the device, and without noise
    (clipping only) both devices train the same model within float tolerance."""
    from tasks.defences import DPParams, train_dp

    _, _, x, y = _toy_pair()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=16, momentum=0.0)
    runs = {}
    for device in ("cpu", GPU):
        for sigma in (0.0, 1.0):
            params = DPParams(noise_multiplier=sigma, sampling=sampling)
            with cuda_tf32(False):
                res = train_dp(_toy_mlp().train(), x, y, np.arange(64), cfg, params, seed=0,
                               device=device)
            assert _on(res.model, device) and torch.isfinite(_flat(res.model)).all()
            runs[device, sigma] = res
    assert (runs[GPU, 1.0].epsilon, runs[GPU, 1.0].steps) == \
        (runs["cpu", 1.0].epsilon, runs["cpu", 1.0].steps)
    torch.testing.assert_close(_flat(runs[GPU, 0.0].model), _flat(runs["cpu", 0.0].model),
                               rtol=1e-4, atol=1e-5)


TORCH_METHODS = [n for n in UNLEARNING.names() if "torch" in UNLEARNING.get(n).families]
STACKED = [n for n in TORCH_METHODS
           if UNLEARNING.get(n).unlearn_members is not UnlearningMethod.unlearn_members]
# Settings under which each method does something on the kit's small state (as its conformance
# test sets them); retrain_dp without noise, so that its models compare across devices.
METHOD_PARAMS = {"gradient_ascent": {"lr": 0.5}, "newton": {"lam": 1e-3}, "sisa": {"shards": 2},
                 "retrain_dp": {"noise_multiplier": 0.0}}


def _method(name: str):
    from tasks.testing.states import typed

    cls = UNLEARNING.get(name)
    return cls(), typed(cls.Params, METHOD_PARAMS.get(name, {}), "params")


def _small_state(device: str, pretrained: bool = False, seed: int = 0):
    """The unlearning kit's small digits state on ``device`` (theta_0 pretrained on the CPU)."""
    from tasks.testing.states import small_state

    state = small_state("torch", pretrained=pretrained, seed=seed)
    return dataclasses.replace(state, device=torch.device(device))


def _class_request(state) -> ForgetRequest:
    return make_requests(ForgetConfig(kind="class_share", classes=(3,), shares=(1.0,)),
                         state.train_indices, state.dataset.y_train, seed=0)[0]


@pytest.mark.parametrize("name", TORCH_METHODS)
def test_unlearning_method_on_cuda_matches_cpu(name):
    """Every torch unlearning method trains theta and unlearns on the GPU, its models stay
    there, and they predict as the CPU's do: float reduction order differs between devices and
    a threshold (SSD's selection, SalUn's saliency) may tip for a weight or two, so agreement
    rather than equality."""
    method, params = _method(name)
    logits = {}
    for device in ("cpu", GPU):
        state = _small_state(device, UNLEARNING.get(name).requires_pretraining)
        with cuda_tf32(False):
            seed_everything(state.seed)
            state.original = method.train_original(state, params)
            seed_everything(state.seed)
            model = method.unlearn(state, _class_request(state), params)
        assert _on(state.original, device) and _on(model, device)
        logits[device] = predict_logits(model, state.dataset.x_test, device)
    a, b = logits[GPU], logits["cpu"]
    assert np.isfinite(a).all()
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.95
    assert np.abs(a - b).mean() <= 0.02 * np.abs(b).mean()


def test_bad_teachers_teacher_leaves_the_cuda_generator_alone():
    """Building the incompetent teacher seeds torch's generators, the GPU's too (dropout on a
    GPU draws from it): the caller's CPU and CUDA streams are restored."""
    state = _small_state(GPU)
    torch.manual_seed(123)
    before = torch.get_rng_state(), torch.cuda.get_rng_state()
    UNLEARNING.get("bad_teacher")().incompetent_teacher(state)
    after = torch.get_rng_state(), torch.cuda.get_rng_state()
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", STACKED)
def test_stacked_unlearning_on_cuda_equals_member_by_member(name):
    """Two members through ``unlearn_members`` on the GPU (one vectorised tasks.ensemble
    program where the maths allows) give the models member-by-member unlearning gives."""
    method, params = _method(name)
    states = []
    for seed in (0, 1):
        state = _small_state(GPU, seed=seed)
        seed_everything(seed)
        state.original = method.train_original(state, params)
        states.append(state)
    request = _class_request(states[0])
    # Equally many records each, so a stacked implementation takes its stacked path.
    requests = [dataclasses.replace(request, indices=request.indices[1:]),
                dataclasses.replace(request, indices=request.indices[:-1])]
    with cuda_tf32(False):
        together = method.unlearn_members(states, requests, params)
        alone = [UnlearningMethod.unlearn_members(method, [s], [r], params)[0]
                 for s, r in zip(states, requests)]
    x = states[0].dataset.x_test[:100]
    for a, b in zip(together, alone, strict=True):
        assert _on(a, GPU)
        np.testing.assert_allclose(predict_logits(a, x, GPU), predict_logits(b, x, GPU),
                                   atol=1e-3)


def _unlearned_class(digits_state):
    """theta_u: one gradient-ascent step on class 3 (on the CPU), and its request."""
    ga = UNLEARNING.get("gradient_ascent")()
    request = _class_request(digits_state)
    return ga.unlearn(digits_state, request, ga.Params(lr=0.5)), request


@pytest.mark.parametrize("box", ["white", "black"])
def test_probing_on_cuda(digits_state, box):
    """Label inference with the case on the GPU: probes crafted through it (white box:
    autograd there; black box: counted queries), then scored."""
    from tasks.attacks.probing import ProbeConfig, ProbingLabelInference
    from tasks.cases import build_case

    theta_u, request = _unlearned_class(digits_state)
    config = ProbeConfig(box=box, probes_per_class=2, iterations_per_call=4, max_calls=2,
                         coordinates=16, query_chunk=64)
    runs = {}
    for device in ("cpu", GPU):
        case, _ = build_case(dataset=digits_state.dataset, theta=digits_state.original,
                             theta_u=theta_u, request=request, knowledge="paper",
                             white_box=box == "white", device=device)
        runs[device] = ProbingLabelInference().run([case], config, seeds=[0])
    res, n_cls = runs[GPU], digits_state.dataset.num_classes
    assert res.predicted[0].shape == (1,) and 0 <= int(res.predicted[0][0]) < n_cls
    assert res.delta_by_class[0].shape == (n_cls,)
    assert res.n_probes[0] == 2 * n_cls and res.crafting_queries[0] > 0
    assert res.scoring_queries[0] == runs["cpu"].scoring_queries[0] == 2 * 2 * n_cls


def test_output_defences_answer_through_cuda_query_access(digits_state):
    """An output defence inside QueryAccess: logits on the GPU, defended on the host, the
    answer back on the GPU and equal to the CPU's."""
    from tasks.cases import QueryAccess
    from tasks.defences import defend_outputs

    x = torch.as_tensor(digits_state.dataset.x_test[:64])
    for name in [n for n in DEFENCES.names() if DEFENCES.get(n).acts_on == "outputs"]:
        cls = DEFENCES.get(name)
        fixed = {cls.strength_field: cls.example_strength} if cls.strength_field else {}
        answers = {}
        for device in ("cpu", GPU):
            model = copy.deepcopy(digits_state.original).to(device)
            answer = QueryAccess(model, device, lambda z, n=name, f=fixed: defend_outputs(
                z, n, f))(x)
            assert answer.device.type == torch.device(device).type
            answers[device] = answer.cpu()
        torch.testing.assert_close(answers[GPU], answers["cpu"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("path", "label_mode"),
                         [("vmap", "known"), ("fast", "inferred"), ("fast", "optimised")])
def test_recovery_paths_and_label_modes_on_cuda(digits_state, path, label_mode):
    """Feature recovery on the GPU by the vmap path too, with labels inferred from g* (the same
    as the CPU's: g* is an exact difference) or optimised there."""
    from tasks.attacks.inversion import InversionConfig, recover
    from tasks.cases import build_case

    ga = UNLEARNING.get("gradient_ascent")()
    request = ForgetRequest("r1", "single", (1,))
    theta_u = ga.unlearn(digits_state, request, ga.Params(lr=1.0, steps=1))
    knowledge = "reference" if label_mode == "known" else "paper"
    config = InversionConfig(knowledge=knowledge, label_mode=label_mode, iterations=20,
                             restarts=2)
    runs = {}
    for device in ("cpu", GPU):
        case, _ = build_case(dataset=digits_state.dataset, theta=digits_state.original,
                             theta_u=theta_u, request=request, knowledge=knowledge,
                             unlearn_lr=1.0, exact=False, device=device)
        runs[device] = recover([case], config, seeds=[0], path=path)
    res = runs[GPU]
    assert res.images[0].shape == (1, *digits_state.dataset.input_shape)
    assert ((res.images[0] >= 0) & (res.images[0] <= 1)).all()
    assert np.isfinite(res.matching_loss).all()
    if label_mode != "optimised":
        np.testing.assert_array_equal(res.labels[0], runs["cpu"].labels[0])


def test_exported_pair_side_runs_on_cuda():
    """A torch.export program exported on the CPU that creates tensors in forward (burnt-in
    ``device=cpu``) and holds a lifted constant: loaded for the GPU, it runs there."""
    from tasks.pairs.torch_formats import load_export_side

    class WithConstants(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + torch.ones(x.shape[0], 3) + torch.tensor([1.0, 2.0, 3.0])

    x = torch.rand(5, 4)
    ep = torch.export.export(WithConstants().eval(), (x[:2],),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    cpu = load_export_side("original", "m.pt2", buf.getvalue(), "cpu").module(x)
    side = load_export_side("original", "m.pt2", buf.getvalue(), GPU)
    out = side.module(x.to(GPU))
    assert out.device.type == torch.device(GPU).type
    torch.testing.assert_close(out.cpu(), cpu)


# Stages the quickstart does not run, tiny, inline: defences (the update defences among them),
# membership (SISA, DP-SGD, a chain) and per-example scoring (stacked ensembles).
STAGE_SPECS = {
    "defences": ({**TINY, "defences": {**TINY["defences"], "sweeps": [
        *TINY["defences"]["sweeps"], {"defence": "fine_tuning", "strengths": [1]}]}},
        "defences"),
    "membership": ({
        "experiment": "mia_cuda", "seed": 0, "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "lr": 0.05, "batch_size": 16},
        "unlearning": [{"method": "gradient_ascent", "lr": 0.01}, {"method": "sisa", "shards": 2},
                       {"method": "retrain_dp", "noise_multiplier": 1.0}],
        "membership": {"set_num": 1, "set_size": 40, "unlearning_size": 2,
                       "attack_models": ["dt"], "scenarios": ["single", "chain"],
                       "shuffled_control": [], "membership_rows": False, "figures": False}},
        "membership_attacks"),
    "per_example": ({
        "experiment": "pe_cuda", "seed": 0, "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "lr": 0.05, "batch_size": 32},
        "unlearning": [{"method": "retrain"}, {"method": "gradient_ascent", "lr": 0.1}],
        "per_example": {"models": 12, "targets": 8, "base_size": 64, "members_per_task": 12,
                        "exposed": 2, "scoring": "in_task", "figures": False}},
        "ulira"),
}


@pytest.mark.parametrize("stage", sorted(STAGE_SPECS))
def test_stage_runs_inline_on_cuda(tmp_path, stage):
    """The provider and a stage's units with the device cuda, inline: models trained,
    unlearned, defended and scored on the GPU without one error row."""
    data, table = STAGE_SPECS[stage]
    (spec,) = expand({**data, "runtime": {"device": GPU}})
    _, units = plan_run(spec, None)
    results = Results(tmp_path / "R", spec.experiment)
    ctx = TaskContext(spec.experiment, str(tmp_path / "R"), str(tmp_path / "A"), None, GPU)
    report = execute_inline(units, results, ctx)
    assert report.failed == 0, report.errors
    assert len(results.read(table))


def test_compiled_recovery_on_cuda_equals_eager(digits_state):
    """``compile: true`` on the GPU (Inductor's Triton kernels) recovers what the eager path
    recovers there."""
    from tasks.attacks.inversion import InversionConfig, recover
    from tasks.cases import build_case

    ga = UNLEARNING.get("gradient_ascent")()
    cases = []
    for i in (1, 6):
        request = ForgetRequest(f"r{i}", "single", (i,))
        theta_u = ga.unlearn(digits_state, request, ga.Params(lr=1.0, steps=1))
        cases.append(build_case(dataset=digits_state.dataset, theta=digits_state.original,
                                theta_u=theta_u, request=request, knowledge="reference",
                                unlearn_lr=1.0, exact=False, device=GPU)[0])
    runs = [recover(cases, InversionConfig(iterations=40, restarts=2, compile=compiled),
                    seeds=[3, 4]) for compiled in (False, True)]
    np.testing.assert_allclose(runs[1].matching_loss, runs[0].matching_loss, atol=1e-4)
    for eager, compiled in zip(runs[0].images, runs[1].images):
        np.testing.assert_allclose(compiled, eager, atol=1e-3)
