"""Any registered attack as a search objective: the attack plus its scorer's metrics.

``search.objective`` may name any attack (``inversion``, ``probing``, ``package.module:Class``);
the trial builds the cases the attack's threat model asks for, runs it (its ``prepare`` step
once per original), and its scorer (:mod:`tasks.analysis`) gives the per-target metrics, so a
new attack is searchable with no code here. Attacks that report progress (``progress_metrics``)
feed ASHA's intermediate results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.plan import training_set_size
from orchestrator.engine.provider import load_provider_pairs, load_torch_model
from orchestrator.search.base import Objective, Report, TargetSet
from orchestrator.stages.attacks.planning import check_reference_target
from orchestrator.stages.attacks.units import scoring_context
from tasks.analysis import SCORERS
from tasks.attacks import ATTACKS, Attack

# (target index, theta, theta_u, provider state) -> the model published in theta_u's place
Publish = Callable[[int, Any, Any, Any], Any]


class AttackObjective(Objective):
    """Base of the objectives made by :func:`attack_objective`."""

    attack: ClassVar[str] = ""

    def evaluate(self, targets: TargetSet, ctx: TaskContext, config: Any,
                 report: Report | None = None) -> dict[str, np.ndarray]:
        return evaluate_attack(self.attack, config, targets, ctx, report)

    def check_config(self, spec, config: Any, data_root: str | None = None) -> None:
        check_attack_config(spec, self.attack, config, data_root=data_root)


def check_attack_config(spec, ref: str, config: Any, path: str = "search.attack",
                        data_root: str | None = None) -> None:
    """The attacks stage's refusals, for the pairs a search attacks (the first unlearning
    method's): a model family or data kind the attack cannot use, and the exact reference
    target without a pretrained theta0 or after more than one training step -- counted on
    the training records the core plan selects from the dataset (loaded from ``data_root``
    only when the step count decides), as the stage counts them."""
    threat = ATTACKS.get(ref)().threat_model(config)
    if threat.model_family == "torch" and spec.model.family != "torch":
        raise ValueError(f"{path}: attack {ref!r} needs a torch model, got {spec.model.name!r}")
    if threat.knowledge == "reference":
        check_reference_target(spec, spec.unlearning[0].method, path,
                               lambda: training_set_size(spec, spec.dataset.load(data_root)))


def evaluate_attack(ref: str, config: Any, targets: TargetSet, ctx: TaskContext,
                    report: Report | None = None, publish=None) -> dict[str, np.ndarray]:
    """Per-target metrics of attack ``ref`` on ``targets`` (``publish``: see load_cases)."""
    attack = ATTACKS.get(ref)()
    scorer = SCORERS.get(attack.scorer)()
    threat = attack.threat_model(config)
    cases, truths, state = load_cases(targets, ctx, threat.knowledge, threat.white_box,
                                      publish=publish)
    prepares = type(attack).prepare is not Attack.prepare
    # One run per original (its prepared arrays shared by that original's targets).
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(targets.pairs):
        groups.setdefault(pair.original_key if prepares else "", []).append(i)
    progress = _Progress(report, getattr(attack, "progress_metrics", ()))
    metrics: dict[str, np.ndarray] = {}
    for members in groups.values():
        first = targets.pairs[members[0]]
        prepared = None
        if prepares:
            # Seeded by the experiment seed, not the chunk: the same probes whatever the
            # search's fanout.
            prepared = attack.prepare(_original_case(cases[members[0]]), config, first.seed)
        result = attack.run([cases[i] for i in members], config,
                            seeds=[targets.seed_offset + i for i in members],
                            callback=progress if progress.active else None, prepared=prepared)
        scored = scorer.score(result, [truths[i] for i in members], config,
                              scoring_context(targets.spec, state.dataset, first.seed))
        for name, values in scored.metrics.items():
            metrics.setdefault(name, np.full(len(cases), np.nan))[members] = values
        progress.group_done()
    return metrics


def load_cases(targets: TargetSet, ctx: TaskContext, knowledge: str, white_box: bool = True,
               publish: Publish | None = None):
    """(cases, truths, state) for every target: the attacker's view and the ground truth,
    built by the same provider code as the attacks stage's (theta_0 only when pretrained,
    the step size a method declares, the number of training steps).

    ``publish(i, theta, theta_u, state)``: the model the provider publishes for target i in
    place of theta_u (a defence); the case, its query access included, holds that one.
    """
    spec, core = targets.spec, targets.core
    if spec.model.family != "torch":
        raise ValueError("search objectives need a torch model (model.name)")
    cases, truths = [], []
    state = None
    providers: dict[tuple[int, int], Any] = {}
    for pair in targets.pairs:
        group = (pair.seed, pair.method_index)
        if group not in providers:
            providers[group] = load_provider_pairs(
                {"spec": spec, "seed": pair.seed, "method_index": pair.method_index,
                 "pairs": [pair], "pretrain_key": core.pretrain_keys.get(pair.seed)}, ctx)
        provider = providers[group]
        state = provider.state
        theta_u = load_torch_model(ctx, pair.unlearned_key, state)
        if publish is not None:
            theta_u = publish(len(cases), provider.theta, theta_u, state)
        case, truth = provider.case(theta_u, pair.request, knowledge, white_box=white_box)
        cases.append(case)
        truths.append(truth)
    return cases, truths, state


def _original_case(case):
    """The attacker's view of the original alone (what ``prepare`` may use)."""
    from tasks.cases import Case

    return Case(case.metadata, theta=case.theta, query_original=case.query_original,
                device=case.device)


class _Progress:
    """Adapts an attack's progress callback to Tune reports on one monotone step axis."""

    def __init__(self, report: Report | None, names: tuple[str, ...]) -> None:
        self.report, self.names = report, names
        self.active = report is not None and bool(names)
        self.offset = self.last = 0

    def __call__(self, progress: Any) -> None:
        step = int(getattr(progress, "iteration", self.last + 1))
        if step < self.last:  # a new group restarts its iteration count
            self.offset += self.last
        self.last = step
        values = {n: float(np.mean(getattr(progress, n))) for n in self.names
                  if hasattr(progress, n)}
        if self.report is not None and values:
            self.report({**values, "step": self.offset + step})

    def group_done(self) -> None:
        self.offset += self.last
        self.last = 0


@functools.cache
def attack_objective(ref: str) -> type[AttackObjective]:
    """The objective class of attack ``ref`` (a registered name or package.module:Class)."""
    attack = ATTACKS.get(ref)
    scorer = SCORERS.get(attack.scorer)
    names = tuple(getattr(attack, "progress_metrics", ()))
    return type(f"{attack.__name__}Objective", (AttackObjective,), {
        "attack": ref, "Config": attack.Config, "metrics": dict(scorer.metrics),
        "default_metric": scorer.leakage,
        "intermediate": tuple(n for n in names if n in scorer.metrics),
        "__doc__": f"Search objective of attack {ref!r} scored by {attack.scorer!r}."})
