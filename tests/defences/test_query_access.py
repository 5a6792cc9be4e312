"""A defended black-box case: the attacker reaches only the defended outputs, never the model
behind them, and crafts its probes through that same defended access."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from torch import nn

import orchestrator.stages.defences  # noqa: F401  (registers the stage and the transforms)
from orchestrator.context import TaskContext
from orchestrator.engine.execute import execute_inline
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import expand
from orchestrator.store.tables import Results
from tasks.cases import Case, QueryAccess, build_case
from tasks.data import load_dataset
from tasks.defences import output_transform
from tasks.unlearning import ForgetRequest
from tests.defences.tiny_spec import TINY


def _reachable(root: object, depth: int = 6) -> list[object]:
    """Every object reached from ``root`` through attributes an attack could read without
    touching module globals: ``__dict__`` and ``__slots__`` values, ``__closure__`` cells,
    ``__self__``, ``__func__``, ``__wrapped__``, and container items, ``depth`` levels deep."""
    seen: dict[int, object] = {}
    todo = [(root, 0)]
    while todo:
        obj, level = todo.pop()
        if id(obj) in seen or level > depth or isinstance(obj, type | types.ModuleType):
            continue
        seen[id(obj)] = obj
        nxt: list[object] = []
        if isinstance(obj, dict):
            nxt += list(obj.keys()) + list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            nxt += list(obj)
        nxt += list(getattr(obj, "__dict__", {}).values())
        for klass in type(obj).__mro__:
            for slot in getattr(klass, "__slots__", ()):
                if hasattr(obj, slot):
                    nxt.append(getattr(obj, slot))
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                nxt.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        for name in ("__self__", "__func__", "__wrapped__", "__call__"):
            if hasattr(obj, name):
                nxt.append(getattr(obj, name))
        todo += [(o, level + 1) for o in nxt]
    return list(seen.values())


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize(("defence", "params"), [("label_only", {}), ("top_k", {"k": 1}),
                                                 ("temperature", {"temperature": 5.0})])
def test_a_defended_black_box_case_reaches_no_model(defence, params):
    digits = load_dataset("digits")
    theta, theta_u = _mlp(), _mlp()
    request = ForgetRequest("r0", "single", (0, 1))
    case, _ = build_case(dataset=digits, theta=theta, theta_u=theta_u, request=request,
                         knowledge="paper", white_box=False,
                         output_transform=output_transform(defence, params))
    assert case.theta is None and case.theta_u is None
    x = torch.as_tensor(digits.x_train[:8])
    for access in (case.query_original, case.query_unlearned, copy.deepcopy(case.query_original)):
        found = [o for o in _reachable(access) if isinstance(o, nn.Module | torch.Tensor)]
        assert not found, f"{defence}: the access reaches {[type(o).__name__ for o in found]}"
    # ... and it still answers, with the defended outputs only.
    answer = case.query_unlearned(x).numpy()
    if defence == "label_only":
        assert set(np.unique(answer)) <= {0.0, 1.0} and np.allclose(answer.sum(1), 1.0)
    assert case.query_unlearned.queries == 8


def test_query_access_stays_in_its_process():
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(QueryAccess(_mlp()))


BLACK_LABEL_ONLY = {
    **TINY, "experiment": "defences_black_probes",
    "defences": {"attack": "label_inference", "max_requests": 1, "figure": False,
                 "label_inference": {"shares": [1.0], "classes": [0], "boxes": ["black"],
                                     "scores": ["prob"],
                                     "probes": {"box": "black", "probes_per_class": 1,
                                                "max_calls": 1, "iterations_per_call": 2}},
                 "sweeps": [{"defence": "label_only", "strengths": [None],
                             "attack": "label_inference"}]},
}


def test_black_box_probes_are_crafted_through_the_defended_access(tmp_path, monkeypatch):
    # Under label-only output a black-box attacker sees only labels, while crafting its probes
    # as while scoring them: every crafting query of the label_only point answers one-hot.
    from tasks.attacks import probing

    seen: list[bool] = []  # per crafting: did every answer it got come back one-hot?
    real = probing.craft_probes

    def craft(case, config, seed=0):
        access, answers = case.query_original, []

        def spy(x):
            out = access(x)
            answers.append(out.detach().cpu().numpy())
            return out

        probes = real(Case(case.metadata, theta=case.theta, query_original=spy,
                           device=case.device), config, seed)
        p = np.concatenate(answers)
        seen.append(bool(np.isin(p, (0.0, 1.0)).all()))
        return probes

    monkeypatch.setattr(probing, "craft_probes", craft)
    (spec,) = expand(BLACK_LABEL_ONLY)
    _, units = plan_run(spec, None)
    results = Results(tmp_path / "R", spec.experiment)
    ctx = TaskContext(spec.experiment, str(tmp_path / "R"), str(tmp_path / "A"), None, "cpu")
    report = execute_inline(units, results, ctx)
    assert report.failed == 0, report.errors
    assert sorted(seen) == [False, True]  # the baseline sees posteriors, label_only labels
    prepares = [u for u in units if u.fn == "attack_prepare"]
    assert sorted(u.params.get("defence", "none") for u in prepares) == ["label_only", "none"]
    rows = results.read("defences")
    assert set(rows.defence) == {"none", "label_only"}
