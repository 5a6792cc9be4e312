"""What a search trial measures: objectives over a fixed list of forget requests.

An objective takes the experiment's model pairs (theta, theta_u per forget request, produced by
the core plan and kept in the artifact store), one configuration of its ``Config`` class, and
returns per-target metric arrays; the trial averages them. Objectives that run long report an
intermediate metric through ``report`` so that ASHA can stop poor trials early.

Registered objectives (:data:`OBJECTIVES`):

* ``inversion`` -- feature recovery (:func:`tasks.attacks.inversion.recover`): PSNR and SSIM of
  the Hungarian-matched reconstructions (higher = stronger attack), matching loss; reports the
  matching loss every ``callback_every`` iterations.
* ``probing``   -- label inference (:mod:`tasks.attacks.probing`): accuracy of the top-1 guess.
* ``defence``   -- an update defence (``tasks.defences``) at a strength, attacked by feature
  recovery: leakage (PSNR of the recovery on the defended theta_u) and utility (test accuracy
  of the defended theta_u); a two-objective search gives the Pareto front.
* ``membership`` -- membership inference against unlearning (Chen et al.): attack model, its
  hyperparameters and the feature; validation AUC on the shadow side, held-out AUC on the
  target side (:mod:`orchestrator.search.membership`, an ``own_models`` objective).
* ``unlearning`` -- an unlearning method's own settings (``unlearning.0.*`` key paths) tuned
  to a utility target: forget accuracy close to retraining's, test accuracy kept
  (:mod:`orchestrator.search.unlearning_objective`).

Adding an objective: subclass :class:`orchestrator.search.base.Objective`, declare ``Config``,
``metrics`` (name -> natural direction) and ``evaluate``, and decorate with
``@OBJECTIVES.register("name")``. Importing this module registers every built-in objective.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.plan import CorePlan, plan_core

# The membership objective lives in its own module and registers itself on import; importing
# it here makes OBJECTIVES (imported from this module) hold every built-in objective.
from orchestrator.search import membership as _membership  # noqa: F401
from orchestrator.search import unlearning_objective as _unlearning  # noqa: F401
from orchestrator.search.attack_objective import (
    attack_objective,
    check_attack_config,
    evaluate_attack,
    load_cases,
)
from orchestrator.search.base import OBJECTIVES, Objective, TargetSet
from orchestrator.spec.schema import Spec

__all__ = [
    "OBJECTIVES",
    "DefenceConfig",
    "DefenceObjective",
    "Objective",
    "TargetSet",
    "ensure_models",
    "load_cases",
    "objective_class",
    "prepare_targets",
]



def ensure_models(spec: Spec, ctx: TaskContext, data_root: str | None,
                  results=None) -> CorePlan:
    """Plan the core (originals, unlearned models) and train what the store lacks, in this
    process. The artifact store is content-addressed, so equal settings train once."""
    from orchestrator.engine.execute import execute_inline
    from orchestrator.store.tables import Results

    core = plan_core(spec, data_root)
    missing = [u for u in core.units
               if not all(ctx.store.has(k) for k in u.row_keys)]
    if missing:
        results = results or Results(ctx.results_uri, ctx.experiment)
        report = execute_inline(missing, results, ctx, remake_lost=True)
        if report.failed:
            raise RuntimeError(f"training the models of this trial failed: "
                               f"{report.errors[0]['error']}")
    return core


def prepare_targets(core: CorePlan, start: int, count: int, seed_offset: int = 0) -> TargetSet:
    """Requests [start, start + count) of the first seed and the first unlearning method."""
    spec = core.spec
    pairs = [p for p in core.pairs if p.seed == spec.seeds[0] and p.method_index == 0]
    chosen = pairs[start: start + count]
    if len(chosen) < count:
        raise ValueError(f"the spec makes {len(pairs)} forget requests; the search needs "
                         f"{start + count}")
    return TargetSet(spec, core, chosen, seed_offset)


def objective_class(name: str) -> type[Objective]:
    """A registered objective, else the objective of attack ``name`` (a registered attack
    or package.module:Class): any attack is searchable by its scorer's metrics."""
    from tasks.attacks import ATTACKS

    if name in OBJECTIVES:
        return OBJECTIVES.get(name)
    if name in ATTACKS:
        return attack_objective(name)
    return OBJECTIVES.get(name)  # the error lists what exists


# Feature recovery and label inference are their attacks plus their scorers' metrics.
OBJECTIVES.register("inversion")(attack_objective("inversion"))
OBJECTIVES.register("probing")(attack_objective("probing"))


@dataclass(frozen=True)
class DefenceConfig:
    """Update defences applied in order to every theta_u, then attacked by ``attacker``.

    ``strengths`` maps a defence to its swept strength (``attack.strengths.pruning`` in a search
    space); a defence listed in ``defences`` without a strength runs with its ``params`` only.
    """

    defences: tuple[str, ...] = ("obfuscation",)
    strengths: dict[str, float] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The attacker: a registered attack (or package.module:Class) and its settings.
    attacker: str = "inversion"
    attack: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def __post_init__(self) -> None:
        from tasks.attacks import ATTACKS
        from tasks.defences import DEFENCES
        from tasks.params import ParamError, build
        from tasks.registry import UnknownComponentError

        try:
            attacker = ATTACKS.get(self.attacker)
        except UnknownComponentError as err:
            raise ParamError("attacker", str(err)) from None
        build(attacker.Config, self.attack, "attack")
        for i, name in enumerate(self.defences):
            try:
                defence = DEFENCES.get(name)
            except UnknownComponentError as err:
                raise ParamError(f"defences[{i}]", str(err)) from None
            if defence.acts_on != "update":
                raise ParamError(f"defences[{i}]", f"{name!r} acts on {defence.acts_on}; "
                                                   "this objective composes update defences")
        for name in list(self.strengths) + list(self.params):
            if name not in self.defences:
                raise ParamError(f"strengths.{name}", f"{name!r} is not in defences")

    def typed(self) -> list[tuple[Any, Any]]:
        from tasks.defences import DEFENCES

        out = []
        for name in self.defences:
            defence = DEFENCES.get(name)()
            out.append((defence, defence.params(self.strengths.get(name),
                                                self.params.get(name), name)))
        return out

    def attack_config(self) -> Any:
        from tasks.attacks import ATTACKS
        from tasks.params import build

        config = build(ATTACKS.get(self.attacker).Config, self.attack, "attack")
        return dataclasses.replace(config, dry_run=True) if self.dry_run else config


@OBJECTIVES.register("defence")
class DefenceObjective(Objective):
    """Leakage (the attacker's scorer metrics on the defended theta_u; ``leakage`` is its
    scorer's leakage metric) against utility (the defended theta_u's test accuracy, or its
    test cross-entropy, which keeps resolving costs that accuracy's 1/n_test steps hide)."""

    Config = DefenceConfig
    metrics: ClassVar[dict[str, str]] = {"leakage": "minimize", "psnr": "minimize",
                                         "ssim": "minimize", "matching_loss": "maximize",
                                         "accuracy": "minimize", "test_acc": "maximize",
                                         "test_loss": "minimize"}
    default_metric = "leakage"
    intermediate = ("matching_loss",)

    def check_config(self, spec, config, data_root=None):
        check_attack_config(spec, config.attacker, config.attack_config(), "search.attack.attack",
                            data_root)

    def evaluate(self, targets, ctx, config, report=None):
        from tasks.analysis import SCORERS
        from tasks.attacks import ATTACKS
        from tasks.training import accuracy, mean_loss, predict_logits

        chain = config.typed()
        utility: dict[str, list[float]] = {"test_acc": [], "test_loss": []}
        contexts: dict[int, Any] = {}

        def publish(i, theta, theta_u, state):
            if state.seed not in contexts:
                contexts[state.seed] = _update_context(state, targets)
            defended = theta_u
            for defence, params in chain:
                defended = defence.apply(theta, defended, params,
                                         seed=targets.seed_offset + i,
                                         context=contexts[state.seed])
            defended = defended.to(state.device).eval()
            logits = predict_logits(defended, state.dataset.x_test, state.device)
            utility["test_acc"].append(accuracy(logits, state.dataset.y_test))
            utility["test_loss"].append(mean_loss(logits, state.dataset.y_test))
            return defended

        out = evaluate_attack(config.attacker, config.attack_config(), targets, ctx, report,
                              publish=publish)
        out["leakage"] = out[SCORERS.get(ATTACKS.get(config.attacker).scorer).leakage]
        out.update({k: np.asarray(v, dtype=np.float64) for k, v in utility.items()})
        return out


def _update_context(state, targets: TargetSet):
    """Samples never in theta's training set (the public split) for training defences."""
    from tasks.defences.base import UpdateContext

    sel = targets.core.selections.get(state.seed)
    heldout = sel.public if sel is not None else np.arange(0)
    d = state.dataset
    return UpdateContext(x=d.x_train, y=d.y_train, heldout=np.asarray(heldout),
                         train_cfg=state.train_cfg, device=state.device, source="public")
