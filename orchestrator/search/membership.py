"""The ``membership`` search objective: the strongest membership-inference attack against
unlearning (Chen et al., CCS 2021; ``orchestrator/stages/membership/``).

What a trial is. The spec's ``membership:`` section fixes the shadow and target model pairs
(set_num originals per side, unlearning_size unlearned models each). They are built once,
before the search, by the membership stage's own ``mia_original`` / ``mia_unlearn`` units (on
Ray, content-keyed in the artifact store: a run of the same ``membership:`` settings, or an
earlier search, trains nothing). A trial is one attack configuration
(:class:`MembershipAttackConfig`): the attack model (dt, rf, lr, mlp), that model's
hyperparameters, and the feature of (p, q); it runs the registered ``membership`` attack
(``tasks.attacks.ATTACKS``) with those settings and reads its scorer's metrics, as the stage
and the defence sweep do.

What the search sees (``heldout=False``): the **shadow** side only. Its originals are split
into ``folds`` groups (grouped k-fold: an original and all its unlearned models fall in one
fold); each fold is one posterior case whose shadow pairs are the other folds' rows, scored
on this fold's rows (rows whose record also occurs among the fitting rows are dropped, so no
record is both fitted and validated). Objective: the mean validation AUC over the folds.

What the ``best`` table reports (``heldout=True``): the configuration fitted on *all* shadow
rows and scored on the **target** pairs -- the same protocol as the stage's ``mia`` table, on
models and records the search never saw. The unsearched configuration (the ``baseline`` row)
is the paper's default: DT with max_leaf_nodes 10 on the spec's first ``membership.features``
entry (set ``search.attack`` to change it).

Hyperparameters are conditional on the attack model: declare them with ``when:`` in the
space (``attack.dt_max_leaf_nodes: {int: [5, 100], when: {attack.model: dt}}``); an unsampled
hyperparameter keeps its default here, which equals the stage's attack-model registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.search.base import OBJECTIVES, Objective
from orchestrator.spec.schema import Spec, stable_hash

__all__ = ["MembershipAttackConfig", "MembershipObjective", "attack_classifier",
           "membership_layout", "model_params", "shadow_folds"]


@dataclass(frozen=True)
class MembershipAttackConfig:
    """One attack: model, its hyperparameters (only the chosen model's are used), feature.

    Defaults equal ``tasks.attacks.membership.ATTACK_MODELS`` (the stage's attack models).
    """

    model: Literal["dt", "rf", "lr", "mlp"] = "dt"
    feature: str | None = None  # None: the spec's membership.features[0]
    dt_max_leaf_nodes: int = 10
    dt_min_samples_leaf: int = 1
    rf_n_estimators: int = 500
    rf_min_samples_leaf: int = 30
    rf_max_features: Literal["sqrt", "log2", "all"] = "sqrt"
    lr_C: float = 1.0
    mlp_hidden: int = 100
    mlp_lr: float = 0.01
    mlp_alpha: float = 1.0e-4
    scenario: str = "single"  # one of the spec's membership.scenarios
    folds: int = 3  # validation: grouped k-fold over the shadow originals
    seed: int | None = None  # attack randomness; None: the spec's membership.attack_seed

    def __post_init__(self) -> None:
        from tasks.attacks.membership import FEATURES
        from tasks.registry import UnknownComponentError

        if self.feature is not None:
            try:
                FEATURES.get(self.feature)
            except UnknownComponentError as err:
                raise ValueError(str(err)) from None
        if self.dt_max_leaf_nodes < 2:
            raise ValueError("dt_max_leaf_nodes must be at least 2")
        if min(self.dt_min_samples_leaf, self.rf_n_estimators, self.rf_min_samples_leaf,
               self.mlp_hidden) < 1:
            raise ValueError("dt_min_samples_leaf, rf_n_estimators, rf_min_samples_leaf and "
                             "mlp_hidden must be at least 1")
        if self.lr_C <= 0 or self.mlp_lr <= 0 or self.mlp_alpha < 0:
            raise ValueError("lr_C > 0, mlp_lr > 0 and mlp_alpha >= 0 are required")
        if self.folds < 2:
            raise ValueError("folds must be at least 2")


def model_params(config: MembershipAttackConfig) -> dict[str, Any]:
    """The chosen attack model's hyperparameters as scikit-learn ``set_params`` overrides."""
    return {
        "dt": {"max_leaf_nodes": config.dt_max_leaf_nodes,
               "min_samples_leaf": config.dt_min_samples_leaf},
        "rf": {"n_estimators": config.rf_n_estimators,
               "min_samples_leaf": config.rf_min_samples_leaf,
               "max_features": None if config.rf_max_features == "all"
               else config.rf_max_features},
        "lr": {"logisticregression__C": config.lr_C},
        "mlp": {"hidden_layer_sizes": (config.mlp_hidden,),
                "learning_rate_init": config.mlp_lr, "alpha": config.mlp_alpha},
    }[config.model]


def attack_classifier(config: MembershipAttackConfig, seed: int):
    """The stage's attack model ``config.model`` with the configuration's hyperparameters."""
    from tasks.attacks.membership import attack_model

    return attack_model(config.model, seed, model_params(config))


# --- the model pairs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """The membership stage's plan for one spec: model units and the pairs of each scenario."""

    params: Any  # MembershipParams
    model_units: tuple  # mia_original / mia_unlearn units (seed 0, method 0, every scenario)
    pairs: dict[str, dict[str, list[dict]]]  # scenario -> side -> pair dicts

    def keys(self, scenario: str, side: str) -> list[str]:
        return list(dict.fromkeys(k for p in self.pairs[scenario][side]
                                  for k in (p["p_key"], p["q_key"])))


_LAYOUTS: dict[tuple, Layout] = {}
_ROWS: dict[tuple, Any] = {}


def clear_caches() -> None:
    """Forget the per-process caches of plans and loaded logits (tests)."""
    _LAYOUTS.clear()
    _ROWS.clear()


def membership_layout(spec: Spec, data_root: str | None) -> Layout:
    """Plan the membership stage for the spec's first seed and unlearning method (cached)."""
    from orchestrator.engine.plan import CorePlan
    from orchestrator.stages.membership import plan_membership

    cache_key = (spec.config_hash, data_root)
    if cache_key not in _LAYOUTS:
        params = spec.stages["membership"]
        core = CorePlan(spec, spec.dataset.load(data_root))
        units = plan_membership(spec, core, params)
        seed = spec.seeds[0]
        attacks = [u for u in units if u.fn == "mia_attack" and u.params["seed"] == seed
                   and u.params["method_index"] == 0]
        deps = {d for u in attacks for d in u.deps}
        model_units = tuple(u for u in units if u.fn != "mia_attack" and u.key in deps)
        pairs = {u.params["scenario"]: u.params["pairs"] for u in attacks}
        _LAYOUTS[cache_key] = Layout(params, model_units, pairs)
    return _LAYOUTS[cache_key]


def _missing(layout: Layout, ctx: TaskContext) -> list:
    return [u for u in layout.model_units
            if not all(ctx.store.has(k, ".npz") for k in u.row_keys)]


def side_rows(layout: Layout, scenario: str, side: str, ctx: TaskContext):
    """PairRows of one side (loaded once per process). Reads only that side's models."""
    from orchestrator.stages.membership.attack import StoredLogits, pair_rows

    key = (ctx.artifacts_uri, stable_hash(layout.keys(scenario, side), 24))
    if key not in _ROWS:  # the store is checked once per process, not on every trial
        _build_missing(layout, ctx)
        _ROWS[key] = pair_rows(StoredLogits(ctx), layout.pairs[scenario][side])
    return _ROWS[key]


def _build_missing(layout: Layout, ctx: TaskContext) -> None:
    """Build, in this process, whatever model the store lacks (a trial without prepare)."""
    from orchestrator.engine.execute import execute_inline
    from orchestrator.store.tables import Results

    todo = _missing(layout, ctx)
    if todo:
        report = execute_inline(todo, Results(ctx.results_uri, ctx.experiment), ctx,
                                remake_lost=True)
        if report.failed:
            raise RuntimeError(f"building the membership model pairs failed: "
                               f"{report.errors[0]['error']}")


def shadow_folds(set_index: np.ndarray, folds: int) -> list[np.ndarray]:
    """Grouped folds: the shadow originals (set indices, sorted) dealt into ``folds`` groups;
    returns, per fold, the boolean mask of its rows."""
    sets = np.unique(set_index)
    if len(sets) < folds:
        raise ValueError(f"{folds} validation folds need at least {folds} shadow originals; "
                         f"membership.set_num is {len(sets)}")
    groups = [sets[i::folds] for i in range(folds)]
    return [np.isin(set_index, g) for g in groups]


# --- the objective ----------------------------------------------------------------------------

@OBJECTIVES.register("membership")
class MembershipObjective(Objective):
    """Attack AUC: validation folds of the shadow side (search), the target side (held-out)."""

    Config = MembershipAttackConfig
    metrics: ClassVar[dict[str, str]] = {"auc": "maximize", "acc": "maximize",
                                         "tpr_at_1pct": "maximize", "fit_auc": "maximize"}
    default_metric = "auc"
    own_models = True

    def check_spec(self, spec: Spec) -> None:
        if "membership" not in spec.stages:
            raise ValueError("membership: the membership objective needs the spec's "
                             "membership: section (the shadow and target model pairs)")

    def prepare(self, spec: Spec, results, ctx: TaskContext, progress: bool) -> None:
        """Build the shadow and target pairs on Ray (the artifact store skips what exists)."""
        from orchestrator.engine.execute import execute

        layout = membership_layout(spec, ctx.data_root)
        todo = _missing(layout, ctx)
        if todo:
            report = execute(list(layout.model_units), results, ctx, spec.resources,
                             progress=progress)
            if report.failed:
                raise RuntimeError(f"building the membership model pairs failed: "
                                   f"{report.errors[0]['error']}")

    def evaluate_split(self, spec, config, ctx, data_root, *, heldout):
        """The registered ``membership`` attack (one feature, one attack model with the
        trial's hyperparameters) and its scorer: a case per validation fold, whose shadow
        pairs are the other folds' rows, or the target side against all shadow rows."""
        from orchestrator.stages.membership import attack_and_score
        from tasks.attacks.membership import PairRows, posterior_case

        layout = membership_layout(spec, data_root)
        settings = layout.params
        if config.scenario not in layout.pairs:
            raise ValueError(f"scenario {config.scenario!r} is not in membership.scenarios "
                             f"{list(layout.pairs)}")
        feature = config.feature or settings.features[0]
        seed = settings.attack_seed if config.seed is None else config.seed
        defence = (settings.output_defence, settings.output_defence_params)
        shadow = side_rows(layout, config.scenario, "shadow", ctx)
        if heldout:
            target = side_rows(layout, config.scenario, "target", ctx)
            split = [posterior_case(target, shadow, *defence)]
        else:
            split = []
            records = shadow.meta["record"]
            for mask in shadow_folds(shadow.meta["set_index"], config.folds):
                keep = mask & ~np.isin(records, records[~mask])
                fit = PairRows(shadow.p_logits[~mask], shadow.q_logits[~mask],
                               shadow.label[~mask], {})
                split.append(posterior_case(shadow, fit, *defence, rows=keep))
        scored = attack_and_score(
            [case for case, _ in split], [truth for _, truth in split],
            {"features": (feature,), "attack_models": (config.model,),
             "model_params": {config.model: model_params(config)}, "classical": False},
            seed)
        m = scored.metrics
        return {"auc": m["auc"], "acc": m["acc"], "tpr_at_1pct": m["tpr_at_1pct"],
                "fit_auc": m["train_auc"],
                "rows": np.asarray([len(truth.label) for _, truth in split], dtype=np.float64)}
