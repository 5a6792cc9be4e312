"""``compile: true``: the torch.func objective under torch.compile gives the eager results."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from tasks.attacks.compiled_objective import (
    chunk_targets_for,
    compiled_batched_loss,
    compiler_missing,
)
from tasks.attacks.inversion import InversionConfig, make_batched_loss, recover
from tasks.params import FieldError, key_settings
from tests.attacks.test_inversion import _ascent_cases

needs_compiler = pytest.mark.skipif(compiler_missing() is not None,
                                    reason=f"torch.compile: {compiler_missing()}")


@needs_compiler
@pytest.mark.parametrize("chunk", [None, 2])
def test_compiled_objective_equals_the_eager_fast_path_on_a_conv_batchnorm_model(chunk):
    """Values and the gradients handed to autograd (to x and the soft labels, each trial's
    own, scaled by the incoming gradient) match the eager fast path; also when the targets
    run two at a time (the last chunk padded)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    model[1].running_mean.uniform_(-0.1, 0.1)
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    t, r, k = 3, 2, 2
    gstack = OrderedDict((n, torch.randn(t, *p.shape)) for n, p in model.named_parameters())
    gnorm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gstack.values()))
    weights = torch.rand(t, r)  # a weighted sum: each trial's gradient scales on its own
    results = []
    for make in (lambda: make_batched_loss(model, 1e-2, "fast")[0],
                 lambda: compiled_batched_loss(model, 1e-2, chunk_targets=chunk)):
        x = torch.rand(t, r, k, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        logits = torch.randn(t, r, k, 3, generator=torch.Generator().manual_seed(2))
        x.requires_grad_(True)
        logits.requires_grad_(True)
        total, cost = make()(x, torch.softmax(logits, -1), gstack, gnorm)
        (total * weights).sum().backward()
        results.append((total.detach(), cost.detach(), x.grad, logits.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
    assert results[0][2].abs().sum() > 0 and results[0][3].abs().sum() > 0


@needs_compiler
@pytest.mark.parametrize("label_mode", ["known", "optimised"])
def test_compiled_recovery_equals_the_eager_one(digits_state, label_mode):
    cases, _ = _ascent_cases(digits_state, [1, 6])
    runs = [recover(cases, InversionConfig(iterations=40, restarts=2, label_mode=label_mode,
                                           compile=compiled), seeds=[3, 4])
            for compiled in (False, True)]
    for eager, compiled in zip(runs[0].images, runs[1].images):
        np.testing.assert_allclose(compiled, eager, atol=1e-4)
    np.testing.assert_allclose(runs[1].matching_loss, runs[0].matching_loss, atol=1e-5)


def test_chunks_follow_the_models_activations_on_a_cpu_only():
    """The CIFAR ConvNet (3.4 MiB of activations a trial) runs 4 targets x 2 restarts a call,
    the measured best; the digits MLP all at once in practice; other devices all at once."""
    from tasks.models import ModelConfig, build_torch_model

    def model(name, config, shape):
        return build_torch_model(ModelConfig(name, config), shape, 10, [0.5] * shape[0],
                                 [0.25] * shape[0], seed=0).eval()

    cpu = torch.device("cpu")
    convnet = model("convnet", {"width": 16}, (3, 32, 32))
    assert chunk_targets_for(convnet, (1, 3, 32, 32), 2, cpu) == 4
    assert chunk_targets_for(convnet, (1, 3, 32, 32), 1, cpu) == 9
    assert chunk_targets_for(convnet, (4, 3, 32, 32), 2, cpu) == 1  # never below one
    assert chunk_targets_for(model("mlp", {"hidden": [64]}, (1, 8, 8)), (1, 1, 8, 8), 2,
                             cpu) > 10_000
    assert chunk_targets_for(convnet, (1, 3, 32, 32), 2, torch.device("cuda")) is None


def test_compile_enters_result_keys_only_when_true():
    assert "compile" not in key_settings(InversionConfig())
    assert key_settings(InversionConfig(compile=True))["compile"] is True


def test_compile_without_a_cxx_compiler_is_refused_up_front(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(FieldError, match=r"^compile: true needs a C\+\+ compiler"):
        InversionConfig(compile=True)
    InversionConfig(compile=False)  # the default needs none


@needs_compiler
def test_a_second_model_of_the_same_shapes_gets_its_own_results():
    """Compiled programs are shared between models of one architecture (no recompilation);
    each model's own weights must reach it, never the first model's."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 2, 1, 1, 4, 4, generator=gen)
    ysoft = torch.softmax(torch.randn(2, 2, 1, 3, generator=gen), -1)
    from torch._dynamo.utils import counters

    graphs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        gstack = OrderedDict((n, torch.randn(2, *p.shape, generator=gen))
                             for n, p in model.named_parameters())
        gnorm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in gstack.values()))
        eager = make_batched_loss(model, 1e-2, "fast")[0](x, ysoft, gstack, gnorm)
        compiled = compiled_batched_loss(model, 1e-2)(x, ysoft, gstack, gnorm)
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0]  # the second model compiled nothing new


def test_compile_without_python_headers_is_refused_up_front(monkeypatch, tmp_path):
    import sysconfig

    paths = {**sysconfig.get_paths(), "include": str(tmp_path)}
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: paths)
    with pytest.raises(FieldError, match=r"^compile: true needs Python's C headers"):
        InversionConfig(compile=True)


@needs_compiler
def test_a_compilation_failure_is_one_line_that_names_the_way_out(digits_state, monkeypatch):
    """Inductor's failures run to pages of generated C++ (torch 2.13 fails on ResNet-18 in
    bf16); the recovery raises one line naming the option, the compiler's text as its cause."""
    import tasks.attacks.compiled_objective as co

    def fails(fn, **_):
        def call(*args):
            raise RuntimeError("CppCompileError: C++ compile error\n\nCommand:\ng++ -O3 ...")
        return call

    monkeypatch.setattr(co.torch, "compile", fails)
    cases, _ = _ascent_cases(digits_state, [1])
    with pytest.raises(co.CompileFailedError) as caught:
        recover(cases, InversionConfig(iterations=2, restarts=1, compile=True), seeds=[0])
    message = str(caught.value)
    assert "\n" not in message
    assert "RuntimeError: CppCompileError: C++ compile error" in message
    assert "set compile: false" in message
    assert isinstance(caught.value.__cause__, RuntimeError)
