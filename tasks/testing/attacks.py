"""The attack conformance kit: subclass :class:`AttackConformance` and get the whole suite.

The kit builds real cases (a small MLP trained on digits, unlearned by gradient ascent) the way
the generic ``attacks`` stage does: exactly what the attack's ``threat_model(config)`` asks
for. It checks the attack against them: one output per case, determinism, a non-finite
objective aborting, a one-iteration dry run, the threat-model boundary, the scorer it names and
the arrays ``prepare`` hands to ``run``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from tasks.analysis import SCORERS, ScoringContext
from tasks.attacks import ATTACKS, Attack, NonFiniteLossError
from tasks.attacks.base import ThreatModel
from tasks.cases import Case, GroundTruth, QueryAccess, build_case
from tasks.data import Dataset
from tasks.testing.states import Kit, digits_state, resolve, typed
from tasks.unlearning import UNLEARNING, ForgetConfig, TrainingState, make_requests

_REQUESTS = {
    "single": ForgetConfig(kind="single", count=2),
    "group": ForgetConfig(kind="group", count=2, size=2),
    "class_share": ForgetConfig(kind="class_share", classes=(1, 4), shares=(0.5,)),
}


def flat_outputs(result: Any) -> list[np.ndarray]:
    """Every per-target output of ``result`` as float64 arrays, for exact comparisons."""
    return [np.asarray(v, dtype=np.float64) for values in result.per_target().values()
            for v in values]


def assert_same(a: Any, b: Any, what: str) -> None:
    fa, fb = flat_outputs(a), flat_outputs(b)
    assert len(fa) == len(fb), what
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x, y, err_msg=what)


def _poisoned(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.fill_(float("nan"))
    return clone


class AttackConformance(Kit):
    """Base class of an attack's conformance tests (pytest collects its ``Test...`` subclasses).

    Declare in the subclass::

        class TestInversion(AttackConformance):
            attack = "inversion"              # registry name, "pkg.mod:Cls" or the class
            config = {"iterations": 4, "restarts": 2}   # small: the suite runs it ~15 times
            request_kind = "single"           # default: the threat model's forget_kind

    Optional: ``no_loss_reason`` (why the attack has no objective that could become
    non-finite: skips that test), ``unlearning``/``unlearning_params`` (how theta_u is made),
    a ``state`` fixture (another provider state, e.g. tabular data) and
    :meth:`check_outputs` (attack-specific shapes).
    """

    attack: ClassVar[str | type] = ""
    config: ClassVar[dict[str, Any]] = {}
    request_kind: ClassVar[str | None] = None
    seed: ClassVar[int] = 0  # case i is attacked with seed + i
    no_loss_reason: ClassVar[str | None] = None
    unlearning: ClassVar[str] = "gradient_ascent"
    unlearning_params: ClassVar[dict[str, Any]] = {"lr": 1.0}

    # --- what a subclass may override -----------------------------------------------------------

    @pytest.fixture
    def state(self) -> TrainingState:
        """The provider: a trained original and its training data."""
        return digits_state()

    def check_outputs(self, out: dict[str, list[Any]], cases: Sequence[Case],
                      truths: Sequence[GroundTruth]) -> None:
        """Attack-specific checks of ``result.per_target()`` (shapes, ranges)."""

    # --- helpers ----------------------------------------------------------------------------------

    def attack_class(self) -> type[Attack]:
        return resolve(ATTACKS, self.attack)

    def make_config(self, **extra: Any) -> Any:
        return typed(self.attack_class().Config, {**self.config, **extra}, "config")

    def threat(self) -> ThreatModel:
        return self.attack_class()().threat_model(self.make_config())

    def kind(self) -> str:
        return self.request_kind or self.threat().forget_kind or "single"

    def make_cases(self, state: TrainingState, *, dataset: Dataset | None = None,
                   poison: bool = False) -> tuple[list[Case], list[GroundTruth]]:
        """One case per forget request, holding exactly what the threat model asks for.

        ``dataset``: the provider's data the truth is read from (default the state's);
        ``poison``: theta and theta_u with NaN parameters."""
        threat = self.threat()
        method = UNLEARNING.get(self.unlearning)()
        params = typed(method.Params, self.unlearning_params, "unlearning_params")
        requests = make_requests(_REQUESTS[self.kind()], state.train_indices,
                                 state.dataset.y_train, seed=0)
        cases, truths = [], []
        for request in requests:
            theta, theta_u = state.original, method.unlearn(state, request, params)
            if poison:
                theta, theta_u = _poisoned(theta), _poisoned(theta_u)
            case, truth = build_case(
                dataset=dataset or state.dataset, theta=theta, theta_u=theta_u,
                request=request, knowledge=threat.knowledge, white_box=threat.white_box,
                n_finetune=len(state.train_indices), unlearn_lr=method.step_size(params),
                exact=method.exact, device=state.device)
            cases.append(case)
            truths.append(truth)
        return cases, truths

    def seeds_for(self, cases: Sequence[Case]) -> list[int]:
        return [self.seed + i for i in range(len(cases))]

    def run_attack(self, cases: Sequence[Case], config: Any = None,
                   seeds: Sequence[int] | None = None, **kwargs: Any) -> Any:
        config = self.make_config() if config is None else config
        seeds = self.seeds_for(cases) if seeds is None else list(seeds)
        return self.attack_class()().run(cases, config, seeds=seeds, **kwargs)

    def check_result(self, result: Any, cases: Sequence[Case],
                     truths: Sequence[GroundTruth]) -> dict[str, list[Any]]:
        out = result.per_target()
        assert isinstance(out, dict) and out, "per_target() must return a non-empty dict"
        for key, values in out.items():
            assert isinstance(key, str), key
            assert len(values) == len(cases), f"per_target()[{key!r}]: one entry per case"
        self.check_outputs(out, cases, truths)
        return out

    # --- the suite -------------------------------------------------------------------------------

    def test_fits_the_interface(self) -> None:
        cls = self.attack_class()
        lacks = ATTACKS.check(cls) if ATTACKS.check is not None else ""
        assert not lacks, lacks
        assert dataclasses.is_dataclass(cls.Config), "Config must be a dataclass"
        assert cls.Config.__dataclass_params__.frozen, "Config must be frozen"
        assert "dry_run" in {f.name for f in dataclasses.fields(cls.Config)}, \
            "Config needs a dry_run flag"
        assert isinstance(self.threat(), ThreatModel)
        settings = cls().prepare_settings(self.make_config())
        assert isinstance(settings, dict) and settings == cls().prepare_settings(
            self.make_config()), "prepare_settings() must be a stable dict (a cache key)"

    def test_output_shapes(self, state: TrainingState) -> None:
        cases, truths = self.make_cases(state)
        self.check_result(self.run_attack(cases), cases, truths)

    def test_seed_determinism(self, state: TrainingState) -> None:
        """The same cases and seeds give the same outputs, run after run (the attack does not
        change its cases either: the second run reuses them)."""
        cases, _ = self.make_cases(state)
        assert_same(self.run_attack(cases), self.run_attack(cases), "same seeds, same cases")

    def test_seeds_fix_each_case(self, state: TrainingState) -> None:
        """``seeds[i]`` fixes case i: a case attacked alone gives its output in the batch (the
        stage batches cases freely)."""
        cases, _ = self.make_cases(state)
        batch = self.run_attack(cases).per_target()
        alone = self.run_attack(cases[-1:], seeds=self.seeds_for(cases)[-1:]).per_target()
        for key, values in alone.items():
            np.testing.assert_allclose(np.asarray(values[0], dtype=np.float64),
                                       np.asarray(batch[key][-1], dtype=np.float64),
                                       rtol=1e-5, atol=1e-6, err_msg=key)

    def test_non_finite_loss_aborts(self, state: TrainingState) -> None:
        if self.no_loss_reason:
            pytest.skip(self.no_loss_reason)
        cases, _ = self.make_cases(state, poison=True)
        with pytest.raises(NonFiniteLossError):
            self.run_attack(cases)

    def test_dry_run(self, state: TrainingState) -> None:
        cases, truths = self.make_cases(state)
        full = self.check_result(self.run_attack(cases), cases, truths)
        result = self.run_attack(cases, self.make_config(dry_run=True))
        dry = self.check_result(result, cases, truths)
        assert set(dry) == set(full), "a dry run returns the same outputs"
        if hasattr(result, "iterations"):
            assert result.iterations == 1

    def test_cannot_reach_the_forgotten_samples(self, state: TrainingState) -> None:
        """run() takes Cases only; a Case holds no ground truth; scrambling the forgotten
        samples in the provider's data after the cases are built changes nothing."""
        cls = self.attack_class()
        assert list(inspect.signature(cls.run).parameters)[:2] == ["self", "cases"]
        fields = " ".join(str(f.type) for f in dataclasses.fields(Case))
        assert "GroundTruth" not in fields
        d = state.dataset
        private = dataclasses.replace(d, x_train=d.x_train.copy(), y_train=d.y_train.copy())
        cases, truths = self.make_cases(state, dataset=private)
        for case in cases:
            assert not any(isinstance(v, GroundTruth) for v in vars(case).values())
        before = self.run_attack(cases)
        rng = np.random.default_rng(0)
        for truth in truths:
            idx = list(truth.indices)
            private.x_train[idx] = rng.random(truth.x.shape, dtype=np.float32)
            private.y_train[idx] = (private.y_train[idx] + 1) % d.num_classes
        assert_same(before, self.run_attack(cases), "scrambled forgotten samples")

    def test_case_follows_the_threat_model(self, state: TrainingState) -> None:
        threat = self.threat()
        if threat.forget_kind is not None:
            assert self.kind() == threat.forget_kind, \
                f"the threat model asks for {threat.forget_kind!r} requests"
        if threat.data_kind != "any":
            assert state.dataset.kind == threat.data_kind, \
                f"the attack needs {threat.data_kind} data: override the state fixture"
        cases, truths = self.make_cases(state)
        for case in cases:
            if not threat.white_box:
                assert case.theta is None and case.theta_u is None and case.theta0 is None
            for query in (case.query_original, case.query_unlearned):
                assert isinstance(query, QueryAccess)
                exposed = [n for n in dir(query) if isinstance(getattr(query, n), nn.Module)]
                assert not exposed, f"QueryAccess exposes a model: {exposed}"
            meta = case.metadata
            assert meta.knowledge == threat.knowledge
            reference = (meta.k, meta.labels, meta.unlearn_lr, meta.n_finetune, meta.exact)
            if threat.knowledge == "paper":
                assert all(v is None for v in reference), "paper knowledge leaks reference data"
            else:
                assert all(v is not None for v in reference)
        self.check_result(self.run_attack(cases), cases, truths)

    def test_scorer_turns_results_into_rows(self, state: TrainingState) -> None:
        cls = self.attack_class()
        scorer_cls = resolve(SCORERS, cls.scorer)
        scorer = scorer_cls()
        assert scorer.metrics and scorer.leakage in scorer.metrics
        assert set(scorer.metrics.values()) <= {"maximize", "minimize"}
        cases, truths = self.make_cases(state)
        config = self.make_config()
        result = self.run_attack(cases, config)
        d = state.dataset
        context = ScoringContext(num_classes=d.num_classes, std=d.std,
                                 mean_image=d.x_test.mean(0), mean_source="test_split", seed=0)
        scored = scorer.score(result, truths, config, context)
        assert len(scored.rows) == len(cases), "one row list per case"
        for rows, truth in zip(scored.rows, truths):
            expected = len(truth.indices) if scorer.per_sample else 1
            assert len(rows) == expected, f"{truth.request_id}: {len(rows)} rows, {expected}"
            assert all(isinstance(row, dict) and row for row in rows)
        for name in scorer.metrics:
            assert name in scored.metrics, f"declared metric {name!r} missing"
            values = np.asarray(scored.metrics[name], dtype=np.float64)
            assert values.shape == (len(cases),), name
            assert not np.isinf(values).any(), f"{name}: finite or NaN only"

    def test_prepared_arrays_are_accepted(self, state: TrainingState) -> None:
        """prepare() (against the original alone) returns arrays that survive the artifact
        store (npz, no pickle) and that run(prepared=...) accepts."""
        cls = self.attack_class()
        if cls.prepare is Attack.prepare:
            pytest.skip("the attack does not override prepare()")
        cases, truths = self.make_cases(state)
        original = dataclasses.replace(cases[0], theta_u=None, query_unlearned=None,
                                       theta0=None)
        config = self.make_config()
        arrays = cls().prepare(original, config, self.seed)
        assert isinstance(arrays, dict) and arrays
        assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items())
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        buf.seek(0)
        with np.load(buf, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
        first = self.run_attack(cases, config, prepared=stored)
        self.check_result(first, cases, truths)
        assert_same(first, self.run_attack(cases, config, prepared=stored), "same prepared")
