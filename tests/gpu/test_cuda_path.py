"""The CUDA path (issue 16, item 4): runs where a GPU is present, skips with the reason
otherwise. The CPU suite never needs it; a GPU machine runs it as ``pytest tests/gpu``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.conftest import reduced_quickstart

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
        # TF32 off: this compares float32 arithmetic on both devices.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        fn, used = make_batched_loss(model.to(device), 1e-2, "auto")
        assert used == "fast"
        x = x0.clone().to(device).requires_grad_(True)
        total, _ = fn(x, ysoft.to(device), OrderedDict((n, g.to(device)) for n, g in
                                                        gstack.items()), gnorm.to(device))
        total.sum().backward()
        out[device] = (total.detach().cpu(), x.grad.cpu())
    for a, b in zip(out["cpu"], out["cuda"]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_quickstart_runs_on_cuda_end_to_end(tmp_path, repo):
    spec = reduced_quickstart()
    spec["runtime"]["device"] = "cuda"
    # Ray hands a task the GPU only when it asks for one: a quarter each, packed on one device.
    spec["resources"] = {kind: {"cpus": 1, "gpus": 0.25} for kind in ("train", "unlearn",
                                                                      "attack")}
    path = tmp_path / "qs.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(path),
                           "--results", str(tmp_path / "R"), "--quiet"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    import pandas as pd

    errors = tmp_path / "R" / "qs" / "errors"
    assert not errors.exists(), pd.read_parquet(errors).to_dict("records")
    rec = pd.read_parquet(tmp_path / "R" / "qs" / "recoveries")
    assert len(rec) and rec["psnr"].notna().all()
    assert len(pd.read_parquet(tmp_path / "R" / "qs" / "label_inference"))
