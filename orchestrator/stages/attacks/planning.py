"""The ``attacks`` spec section: the one stage that plans and runs any registered attack.

Spec section — a mapping of configuration names to entries::

    attacks:
      reference:                       # the configuration's name (a column of every row)
        attack: inversion              # a name in tasks.attacks.ATTACKS, or package.module:Class
        config: {knowledge: reference, iterations: 300}
        methods: [gradient_ascent]     # unlearning methods to attack (default: all)
      forgotten-class:
        attack: probing
        config: {box: black}
        forget: {kind: class_share, shares: [0.5, 1.0]}  # own forget requests
        unlearning: [{method: retrain}]                   # and own methods (default: spec's)

Plan, per entry: the model pairs of the core plan (or the entry's own forget requests and
unlearning, planned like the core's), cut into batches of ``targets_per_task`` per (seed,
method); when the attack has a ``prepare`` step (probes crafted against theta), one unit per
original does it once and every batch reuses its arrays. Each batch builds the cases its
attack's threat model asks for (:mod:`orchestrator.stages.attacks.units`), runs the attack, and its
scorer (:mod:`tasks.analysis`) writes rows to the scorer's table. The ``recovery`` and
``label_inference`` sections are shorthands that expand into entries of this stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from orchestrator.engine.plan import (
    CorePlan,
    ModelPair,
    Unit,
    original_key,
    recipe_id,
    training_set_size,
    unlearned_key,
)
from orchestrator.spec.schema import Spec, UnlearningSpec, stable_hash
from orchestrator.spec.stage_registry import STAGES, StageEntry
from orchestrator.store.artifacts import artifact_key
from orchestrator.store.tables import FIGURE_INDEX
from tasks.analysis import SCORERS, Scorer
from tasks.attacks import ATTACKS, Attack, ThreatModel
from tasks.params import FieldError, ParamError, build, check, key_settings
from tasks.registry import UnknownComponentError
from tasks.unlearning import UNLEARNING, ForgetConfig, make_requests

PREPARED_TABLE = "prepared"  # one row per (attack, original): its prepare step's arrays


class ResolvedEntry(NamedTuple):
    attack: Attack
    scorer: Scorer
    config: Any
    threat: ThreatModel


@dataclass(frozen=True)
class AttackEntry:
    """One attack configuration of the ``attacks`` section."""

    attack: str
    config: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] | None = None  # unlearning methods to attack (default: all)
    forget: dict[str, Any] | None = None  # own forget requests (default: the core plan's)
    unlearning: tuple[dict[str, Any], ...] | None = None  # own methods, with ``forget``
    targets_per_task: int = 16
    max_requests: int | None = None  # attack only the first requests of each method
    figure: bool = True

    def __post_init__(self) -> None:
        # Errors name the field below the entry (FieldError, or a ParamError of a nested
        # build); tasks.params.build prefixes the entry's own key path.
        check("targets_per_task", self.targets_per_task, low=1, integer=True)
        check("max_requests", self.max_requests, low=1, integer=True, optional=True)
        if self.unlearning is not None and self.forget is None:
            raise FieldError("unlearning", "give the entry's own forget requests too (forget:)")
        try:
            attack = ATTACKS.get(self.attack)
        except UnknownComponentError as err:
            raise FieldError("attack", str(err)) from None
        try:
            SCORERS.get(attack.scorer)
        except UnknownComponentError as err:
            raise FieldError("attack", f"{self.attack!r} names scorer {attack.scorer!r}: "
                                       f"{err}") from None
        build(attack.Config, self.config, "config")
        if self.forget is not None:
            build(ForgetConfig, self.forget, "forget")
        if self.unlearning is not None:
            if not self.unlearning:
                raise FieldError("unlearning", "expected a non-empty list of methods")
            for i, item in enumerate(self.unlearning):
                own_method(item, f"unlearning[{i}]")

    def attack_class(self) -> type[Attack]:
        return ATTACKS.get(self.attack)

    def typed_config(self) -> Any:
        return build(self.attack_class().Config, self.config, "config")

    def resolve(self) -> ResolvedEntry:
        """The attack, its scorer, the typed configuration and its threat model."""
        attack = self.attack_class()()
        config = self.typed_config()
        return ResolvedEntry(attack, SCORERS.get(attack.scorer)(), config,
                             attack.threat_model(config))

    def own_methods(self, spec: Spec, path: str) -> tuple[UnlearningSpec, ...]:
        if self.unlearning is None:
            return spec.unlearning
        return tuple(own_method(item, f"{path}.unlearning[{i}]")
                     for i, item in enumerate(self.unlearning))


def own_method(item: dict[str, Any], path: str) -> UnlearningSpec:
    """An entry's own unlearning method, checked like the spec's (ParamError naming ``path``)."""
    item = dict(item)
    if "method" not in item:
        raise ParamError(f"{path}.method", "required key is missing")
    name = str(item.pop("method"))
    try:
        UNLEARNING.get(name)
    except UnknownComponentError as err:
        raise ParamError(f"{path}.method", str(err)) from None
    entry = UnlearningSpec(name, item)
    entry.typed_params(path)
    return entry


AttacksSection = dict[str, AttackEntry]


def check_entry(spec: Spec, name: str, entry: AttackEntry, core: CorePlan,
                methods: tuple[UnlearningSpec, ...], section: str = "attacks") -> None:
    """Refuse, before any work, an entry whose threat model the experiment cannot meet."""
    path = f"{section}.{name}"
    threat = entry.attack_class()().threat_model(entry.typed_config())
    dataset_kind = core.dataset.kind
    if threat.shadow_pairs:
        raise ValueError(f"{path}: attack {entry.attack!r} learns from shadow model pairs; "
                         "run it from the membership: section, which trains them")
    if threat.model_family == "torch" and spec.model.family != "torch":
        raise ValueError(f"{path}: attack {entry.attack!r} needs a torch model, got "
                         f"{spec.model.name!r}")
    if threat.data_kind != "any" and threat.data_kind != dataset_kind:
        raise ValueError(f"{path}: attack {entry.attack!r} needs {threat.data_kind} data, "
                         f"dataset {spec.dataset.name!r} is {dataset_kind}")
    attack = entry.attack_class()()
    # Only an attack that says which architectures it cannot attack needs a model to look at.
    if spec.model.family == "torch" and type(attack).unfit_model is not Attack.unfit_model:
        from tasks.models import build_torch_model

        data = core.dataset
        untrained = build_torch_model(spec.model, data.input_shape, data.num_classes, data.mean,
                                      data.std, seed=0)
        why = attack.unfit_model(entry.typed_config(), untrained.eval(), tuple(data.input_shape))
        if why:
            raise ValueError(f"{path}: attack {entry.attack!r} cannot attack model "
                             f"{spec.model.name!r}: {why}")
    kind = spec.forget.kind if entry.forget is None else entry.forget.get("kind", "single")
    if threat.forget_kind is not None and kind != threat.forget_kind:
        raise ValueError(f"{path}: attack {entry.attack!r} is scored on "
                         f"{threat.forget_kind!r} forget requests; give the entry "
                         f"forget: {{kind: {threat.forget_kind}, ...}}")
    names = {m.method for m in methods}
    for method in entry.methods or ():
        if method not in names:
            raise ValueError(f"{path}.methods: {method!r} is not among the unlearning methods "
                             f"({', '.join(sorted(names))})")
    if threat.knowledge == "reference" and core.selections:
        n_train = training_set_size(spec, core.dataset)  # what every seed's selection holds
        for m in methods:
            if entry.methods and m.method not in entry.methods:
                continue
            check_reference_target(spec, m.method, path, n_train)


def check_reference_target(spec: Spec, method: str, path: str,
                           n_train: int | Callable[[], int]) -> None:
    """The exact reference target -(N(theta - theta0) - (N - k)(theta_u - theta0)) holds only
    for one full-batch training step from a pretrained theta0; refuse it otherwise (the stage
    and the search alike). ``n_train``: N (:func:`orchestrator.engine.plan.training_set_size`), or a
    function giving it, called only when the step count decides (the search loads no data
    for a spec refused before)."""
    if not UNLEARNING.get(method).exact:
        return
    if spec.pretraining is None:
        raise ValueError(f"{path}: reference knowledge against exact unlearning ({method!r}) "
                         "needs a pretrained theta0 (a pretraining: section); attack only "
                         "approximate methods (methods:) or use knowledge: paper")
    if callable(n_train):
        n_train = n_train()
    steps = spec.training.epochs * -(-n_train // spec.training.batch_size)
    if steps > 1:
        raise ValueError(f"{path}: reference knowledge against exact unlearning ({method!r}) "
                         f"assumes one training step from theta0; the recipe takes {steps} "
                         "(training.epochs: 1 and batch_size >= the training set)")


def _own_pairs(spec: Spec, core: CorePlan, entry: AttackEntry, methods, units: list[Unit],
               seen: set[str]) -> tuple[Spec, list[ModelPair]]:
    """Forget requests and unlearning of the entry's own, planned like the core plan's."""
    lspec = dataclasses.replace(spec, unlearning=methods)
    forget = build(ForgetConfig, entry.forget, "forget")
    pairs: list[ModelPair] = []
    per_task = max(1, spec.runtime.requests_per_task)

    def add(unit: Unit) -> None:
        if unit.key not in seen:
            seen.add(unit.key)
            units.append(unit)

    for seed in spec.seeds:
        sel = core.selections[seed]
        pkey = core.pretrain_keys.get(seed)
        requests = make_requests(forget, sel.train, core.dataset.y_train, seed,
                                 replace_pool=sel.public)
        for m, method in enumerate(methods):
            okey = original_key(lspec, seed, m)
            if (seed, recipe_id(lspec, m)) not in core.original_keys:
                add(Unit(okey, "train", "train_original",
                         {"spec": lspec, "seed": seed, "method_index": m, "model_key": okey,
                          "pretrain_key": pkey}, "models", (okey,),
                         deps=(pkey,) if pkey else (), label=f"train original seed {seed}"))
            exact = UNLEARNING.get(method.method).exact
            for start in range(0, len(requests), per_task):
                batch = requests[start: start + per_task]
                ukeys = tuple(unlearned_key(lspec, seed, m, r) for r in batch)
                ukey = "unlearn-" + stable_hash(ukeys, 24)
                add(Unit(ukey, "unlearn", "unlearn_batch",
                         {"spec": lspec, "seed": seed, "method_index": m, "requests": batch,
                          "model_keys": ukeys, "original_key": okey, "pretrain_key": pkey},
                         "models", ukeys, deps=(okey,),
                         label=f"{method.method} x{len(batch)} {forget.kind}"))
                pairs.extend(ModelPair(seed, method.method, m, exact, r, okey, k, ukey)
                             for r, k in zip(batch, ukeys))
    return lspec, pairs


def row_key(unlearned: str, entry: AttackEntry, settings: dict, name: str,
            part: int | None) -> str:
    """``settings``: ``key_settings`` of the entry's typed config (computed once per entry)."""
    return "atk-" + stable_hash([unlearned, entry.attack, settings, name, part], 24)


def plan_entries(spec: Spec, core: CorePlan, section: AttacksSection,
                 path: str = "attacks") -> list[Unit]:
    units: list[Unit] = []
    seen: set[str] = set()
    figures: dict[str, list[str]] = {}  # scorer -> the batch units whose arrays it draws
    for name, entry in section.items():
        methods = entry.own_methods(spec, f"{path}.{name}")
        check_entry(spec, name, entry, core, methods, path)
        attack_cls = entry.attack_class()
        scorer = SCORERS.get(attack_cls.scorer)
        config = entry.typed_config()
        settings = key_settings(config)
        if entry.forget is not None:
            aspec, pairs = _own_pairs(spec, core, entry, methods, units, seen)
        else:
            aspec, pairs = spec, list(core.pairs)
        if entry.methods:
            pairs = [p for p in pairs if p.method in entry.methods]
        prepares = attack_cls.prepare is not Attack.prepare
        groups: dict[tuple[int, int], list[ModelPair]] = {}
        for pair in pairs:
            groups.setdefault((pair.seed, pair.method_index), []).append(pair)
        for (seed, m), group in groups.items():
            if entry.max_requests is not None:
                group = group[: entry.max_requests]
            pkey = core.pretrain_keys.get(seed)
            prep = None
            if prepares:
                prep = artifact_key("prepared", attack=entry.attack,
                                    settings=attack_cls().prepare_settings(config),
                                    original=group[0].original_key, seed=seed)
                if prep not in seen:
                    seen.add(prep)
                    units.append(Unit(prep, "attack", "attack_prepare",
                                      {"spec": aspec, "seed": seed, "method_index": m,
                                       "original_key": group[0].original_key,
                                       "pretrain_key": pkey, "entry": entry, "name": name,
                                       "prepared_key": prep},
                                      PREPARED_TABLE, (prep,), deps=(group[0].original_key,),
                                      label=f"prepare {name}"))
            for start in range(0, len(group), entry.targets_per_task):
                batch = group[start: start + entry.targets_per_task]
                if scorer.per_sample:
                    row_keys = tuple(row_key(p.unlearned_key, entry, settings, name, int(i))
                                     for p in batch for i in p.request.indices)
                else:
                    row_keys = tuple(row_key(p.unlearned_key, entry, settings, name, None)
                                     for p in batch)
                key = "attack-" + stable_hash([spec.config_hash, row_keys], 24)
                deps = tuple(dict.fromkeys(p.unlearn_unit for p in batch)) + (
                    (prep,) if prep else ())
                units.append(Unit(key, "attack", "attack_batch",
                                  {"spec": aspec, "seed": seed, "method_index": m,
                                   "pairs": batch, "entry": entry, "name": name,
                                   "pretrain_key": pkey, "prepared_key": prep,
                                   "unit_key": key},
                                  scorer.table, row_keys, deps=deps,
                                  label=f"{name} {aspec.unlearning[m].method} x{len(batch)}",
                                  hands_on=True))
                if entry.figure and scorer.figure is not Scorer.figure:  # it draws one
                    figures.setdefault(attack_cls.scorer, []).append(key)
    for scorer_name, deps in figures.items():
        table = SCORERS.get(scorer_name).table
        fkey = "attackfig-" + stable_hash([spec.config_hash, scorer_name, deps], 24)
        units.append(Unit(fkey, "attack", "attack_figure",
                          {"spec": spec, "key": fkey, "table": table, "scorer": scorer_name,
                           "units": deps},
                          FIGURE_INDEX, (fkey,), deps=tuple(deps), label=f"{table} figure"))
    return units


def plan_attacks(spec: Spec, core: CorePlan, section: AttacksSection) -> list[Unit]:
    return plan_entries(spec, core, section)


STAGES.register("attacks")(StageEntry(AttacksSection, plan_attacks,
                                      artifact_tables=(PREPARED_TABLE,)))
