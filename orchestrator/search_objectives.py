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
  target side (:mod:`orchestrator.search_membership`, an ``own_models`` objective).

Adding an objective: subclass :class:`Objective`, declare ``Config``, ``metrics`` (name ->
natural direction) and ``evaluate``, and decorate with ``@OBJECTIVES.register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from orchestrator.plan import CorePlan, ModelPair, plan_core
from orchestrator.spec import Spec
from orchestrator.units import TaskContext, load_original, load_torch_model, provider_state
from tasks.registry import Registry

Report = Callable[[dict[str, float]], None]

__all__ = [
    "OBJECTIVES",
    "Objective",
    "TargetSet",
    "ensure_models",
    "load_cases",
    "prepare_targets",
]


@dataclass
class TargetSet:
    """The forget requests a trial (or the held-out evaluation) scores on."""

    spec: Spec
    core: CorePlan
    pairs: list[ModelPair]
    seed_offset: int = 0  # attack randomness of target i is seed_offset + i


def ensure_models(spec: Spec, ctx: TaskContext, data_root: str | None,
                  results=None) -> CorePlan:
    """Plan the core (originals, unlearned models) and train what the store lacks, in this
    process. The artifact store is content-addressed, so equal settings train once."""
    from orchestrator.execute import execute_inline
    from orchestrator.tables import Results

    core = plan_core(spec, data_root)
    missing = [u for u in core.units
               if not all(ctx.store.has(k) for k in u.row_keys)]
    if missing:
        results = results or Results(ctx.results_uri, ctx.experiment)
        report = execute_inline(missing, results, ctx)
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


def load_cases(targets: TargetSet, ctx: TaskContext, knowledge: str, white_box: bool = True):
    """(cases, truths, state) for every target: the attacker's view and the ground truth."""
    from tasks.cases import build_case
    from tasks.unlearning import UNLEARNING

    spec, core = targets.spec, targets.core
    if spec.model.family != "torch":
        raise ValueError("search objectives need a torch model (model.name)")
    cases, truths = [], []
    state = None
    originals: dict[str, torch.nn.Module] = {}
    for pair in targets.pairs:
        pkey = core.pretrain_keys.get(pair.seed)
        if state is None or state.seed != pair.seed:
            state = provider_state(spec, pair.seed, ctx, pkey)
        if pair.original_key not in originals:
            originals[pair.original_key] = load_original(spec, pair.seed, pair.method_index,
                                                         pair.original_key, ctx, state)
        theta = originals[pair.original_key]
        theta_u = load_torch_model(ctx, pair.unlearned_key, state)
        theta0 = None
        if pkey is not None and knowledge == "reference":
            theta0 = load_torch_model(ctx, pkey, state)
        entry = spec.unlearning[pair.method_index]
        eta = getattr(entry.typed_params(), "lr", None)
        case, truth = build_case(
            dataset=state.dataset, theta=theta, theta_u=theta_u, request=pair.request,
            knowledge=knowledge, white_box=white_box, theta0=theta0,
            n_finetune=len(state.train_indices), unlearn_lr=eta,
            exact=UNLEARNING.get(entry.method).exact, device=ctx.torch_device())
        cases.append(case)
        truths.append(truth)
    return cases, truths, state


class Objective:
    """One kind of trial. ``evaluate`` returns per-target arrays, one per metric name."""

    Config: ClassVar[type]
    metrics: ClassVar[dict[str, str]]  # metric -> "maximize" | "minimize"
    default_metric: ClassVar[str]
    intermediate: ClassVar[tuple[str, ...]] = ()
    # True: the objective builds its own models instead of the core plan's forget requests
    # (search.targets / search.heldout / search.fanout do not apply). search.py then calls
    # check_spec when loading the spec, prepare before the trials (on Ray) and evaluate_split
    # for a trial (heldout=False) or the held-out re-score (heldout=True).
    own_models: ClassVar[bool] = False

    def check_spec(self, spec: Spec) -> None:
        """Raise ValueError when the experiment cannot feed this objective."""

    def prepare(self, spec: Spec, results, ctx: TaskContext, progress: bool) -> None:
        raise NotImplementedError

    def evaluate_split(self, spec: Spec, config: Any, ctx: TaskContext, data_root: str | None,
                       *, heldout: bool) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def config(self, settings: dict[str, Any], path: str = "search.attack") -> Any:
        from tasks.params import build

        return build(self.Config, settings, path)

    def evaluate(self, targets: TargetSet, ctx: TaskContext, config: Any,
                 report: Report | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("search objective")


def _image_scores(images: Sequence[np.ndarray], truths) -> dict[str, np.ndarray]:
    from tasks.metrics import image_scores, match_reconstructions

    psnr, ssim = [], []
    for x_hat, truth in zip(images, truths):
        rows, cols = match_reconstructions(x_hat, truth.x)
        s = image_scores(x_hat[rows], truth.x[cols])
        psnr.append(float(np.mean(np.minimum(s["psnr"], 100.0))))  # identical images: cap
        ssim.append(float(np.mean(s["ssim"])))
    return {"psnr": np.asarray(psnr), "ssim": np.asarray(ssim)}


def _recover(cases, config, targets: TargetSet, report: Report | None):
    from tasks.attacks.inversion import recover

    seeds = [targets.seed_offset + i for i in range(len(cases))]
    state = {"groups": 0, "last": 0, "offset": 0}

    def callback(progress) -> None:
        # Groups (targets sharing an evaluation model) run one after another; the step keeps
        # counting across them so that ASHA sees one monotone time axis.
        if progress.iteration < state["last"]:
            state["offset"] += state["last"]
        state["last"] = progress.iteration
        if report is not None:
            report({"matching_loss": float(np.mean(progress.matching_loss)),
                    "step": state["offset"] + progress.iteration})

    return recover(cases, config, seeds=seeds, callback=callback if report else None)


@OBJECTIVES.register("inversion")
class InversionObjective(Objective):
    """Feature recovery over a fixed set of targets; the config is an InversionConfig."""

    from tasks.attacks.inversion import InversionConfig as Config

    metrics: ClassVar[dict[str, str]] = {"psnr": "maximize", "ssim": "maximize",
                                         "matching_loss": "minimize"}
    default_metric = "psnr"
    intermediate = ("matching_loss",)

    def evaluate(self, targets, ctx, config, report=None):
        cases, truths, _ = load_cases(targets, ctx, config.knowledge)
        result = _recover(cases, config, targets, report)
        out = _image_scores(result.images, truths)
        out["matching_loss"] = np.asarray(result.matching_loss, dtype=np.float64)
        out["iterations"] = np.full(len(cases), float(result.iterations))
        return out


@OBJECTIVES.register("probing")
class ProbingObjective(Objective):
    """Label inference by probing samples (black or white box); the config is a ProbeConfig."""

    from tasks.attacks.probing import ProbeConfig as Config

    metrics: ClassVar[dict[str, str]] = {"accuracy": "maximize", "queries": "minimize"}
    default_metric = "accuracy"

    def evaluate(self, targets, ctx, config, report=None):
        from tasks.attacks.probing import ProbingLabelInference, craft_probes

        cases, truths, _ = load_cases(targets, ctx, "paper", white_box=config.box == "white")
        # Probes are crafted against theta only: once per original, shared by its targets.
        by_original: dict[str, Any] = {}
        acc, queries = [], []
        attack = ProbingLabelInference()
        for i, (pair, case, truth) in enumerate(zip(targets.pairs, cases, truths)):
            if pair.original_key not in by_original:
                by_original[pair.original_key] = craft_probes(case, config,
                                                              targets.seed_offset)
            res = attack.run([case], config, seeds=[targets.seed_offset + i],
                             probes=by_original[pair.original_key])
            guessed = {int(c) for c in np.asarray(res.predicted[0]).ravel()}
            acc.append(float({int(v) for v in truth.y} <= guessed))
            queries.append(float(res.queries[0]))
            if report is not None:
                report({"accuracy": float(np.mean(acc)), "step": i + 1})
        return {"accuracy": np.asarray(acc), "queries": np.asarray(queries)}


@dataclass(frozen=True)
class DefenceConfig:
    """Update defences applied in order to every theta_u, then attacked by feature recovery.

    ``strengths`` maps a defence to its swept strength (``attack.strengths.pruning`` in a search
    space); a defence listed in ``defences`` without a strength runs with its ``params`` only.
    """

    defences: tuple[str, ...] = ("obfuscation",)
    strengths: dict[str, float] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The attacker: settings of tasks.attacks.inversion.InversionConfig.
    attack: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def __post_init__(self) -> None:
        from tasks.attacks.inversion import InversionConfig
        from tasks.defences import DEFENCES
        from tasks.params import ParamError, build
        from tasks.registry import UnknownComponentError

        build(InversionConfig, self.attack, "attack")
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


@OBJECTIVES.register("defence")
class DefenceObjective(Objective):
    """Leakage (inversion PSNR on the defended theta_u) against utility (its test accuracy, or
    its test cross-entropy, which keeps resolving costs that accuracy's 1/n_test steps hide)."""

    Config = DefenceConfig
    metrics: ClassVar[dict[str, str]] = {"psnr": "minimize", "test_acc": "maximize",
                                         "test_loss": "minimize", "ssim": "minimize",
                                         "matching_loss": "maximize"}
    default_metric = "psnr"
    intermediate = ("matching_loss",)

    def evaluate(self, targets, ctx, config, report=None):
        from tasks.attacks.inversion import InversionConfig
        from tasks.params import build
        from tasks.training import accuracy, mean_loss, predict_logits

        attack_cfg = build(InversionConfig, {**config.attack, "dry_run": config.dry_run},
                           "attack")
        chain = config.typed()
        cases, truths, state = load_cases(targets, ctx, attack_cfg.knowledge)
        context = _update_context(state, targets)
        test_acc, test_loss = [], []
        for i, case in enumerate(cases):
            defended = case.theta_u
            for defence, params in chain:
                defended = defence.apply(case.theta, defended, params,
                                         seed=targets.seed_offset + i, context=context)
            defended = defended.to(case.device).eval()
            for p in defended.parameters():
                p.requires_grad_(False)
            case.theta_u = defended  # what the provider publishes
            logits = predict_logits(defended, state.dataset.x_test, case.device)
            test_acc.append(accuracy(logits, state.dataset.y_test))
            test_loss.append(mean_loss(logits, state.dataset.y_test))
        result = _recover(cases, attack_cfg, targets, report)
        out = _image_scores(result.images, truths)
        out["matching_loss"] = np.asarray(result.matching_loss, dtype=np.float64)
        out["test_acc"] = np.asarray(test_acc, dtype=np.float64)
        out["test_loss"] = np.asarray(test_loss, dtype=np.float64)
        return out


def _update_context(state, targets: TargetSet):
    """Samples never in theta's training set (the public split) for training defences."""
    from tasks.defences.base import UpdateContext

    sel = targets.core.selections.get(state.seed)
    heldout = sel.public if sel is not None else np.arange(0)
    d = state.dataset
    return UpdateContext(x=d.x_train, y=d.y_train, heldout=np.asarray(heldout),
                         train_cfg=state.train_cfg, device=state.device, source="public")


# Objectives defined in their own modules register on import.
from orchestrator import search_membership as _search_membership  # noqa: F401
