"""Planning of the ``per_example`` stage: who trains on what, artifact keys, units.

Every trained member (an original, or a reference of ``design: challenge``) is keyed by its
data, seed and training recipe. The recipe is the method's where its ``original_recipe`` is
not empty (it trains theta its own way: ``retrain_dp``'s DP-SGD, ``newton``'s perturbed
objective), the plain one otherwise. The challenge design's references are the method's
exact retraining on the base set, so they follow the same rule: a method with a recipe of its
own gets references of its own, trained by its ``train_original`` (role ``reference`` with its
method index); every method with an empty recipe shares one set of plain references (method
index None), planned once per seed. References of another recipe would make U-LiRA measure
the difference between the recipes (exact DP retraining read as AUC ~1), not membership.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from orchestrator.engine.plan import CorePlan, Unit
from orchestrator.spec.schema import Spec, stable_hash
from orchestrator.stages.attacks.planning import plan_entries
from orchestrator.stages.per_example.params import PerExampleParams
from orchestrator.store.artifacts import artifact_key
from orchestrator.store.tables import FIGURE_INDEX
from tasks.params import to_dict
from tasks.splits import select_training_set
from tasks.unlearning import UNLEARNING

MODELS_TABLE = "per_example_models"
SCORING_TABLE = "per_example_scoring"
ATTACK_FN = "pe_attack_batch"  # an attack batch that also leaves its points for the board


@dataclass(frozen=True)
class Records:
    """The stage's records (indices into the training split): targets and the base set."""

    targets: np.ndarray
    base: np.ndarray


@dataclass(frozen=True)
class Member:
    """One model to train: its training indices and seed; ``forget`` for unlearned members."""

    index: int
    members: np.ndarray
    seed: int
    key: str
    forget: tuple[int, ...] = ()


def draw_records(n_train: int, params: PerExampleParams, seed: int) -> Records:
    need = params.targets + params.base_size
    if need > n_train:
        raise ValueError(f"per_example.targets + per_example.base_size: {need} records "
                         f"needed, the dataset's training split has {n_train}")
    order = np.random.default_rng([params.sample_seed, seed, 37]).permutation(n_train)
    return Records(np.sort(order[:params.targets]), np.sort(order[params.targets:need]))


def member_seed(seed: int, j: int) -> int:
    return int(np.random.default_rng([seed, 29, j]).integers(2**31))


def forget_half(records: Records, params: PerExampleParams, seed: int, j: int) -> np.ndarray:
    """Member j's half of the targets (``design: ulira``): it trains on them, then forgets."""
    rng = np.random.default_rng([params.sample_seed, seed, 31, j])
    return np.sort(rng.choice(records.targets, len(records.targets) // 2, replace=False))


def _recipe(spec: Spec, method_index: int | None) -> dict:
    """The method's ``original_recipe``: how it trains theta where that is not the plain
    recipe ({} for the plain recipe, ``method_index`` None)."""
    if method_index is None:
        return {}
    entry = spec.unlearning[method_index]
    return UNLEARNING.get(entry.method)().original_recipe(entry.typed_params())


def _trained_key(spec: Spec, method_index: int | None, members: np.ndarray, seed: int) -> str:
    """A trained member's artifact: its data, seed and the recipe that trained it (the plain
    one, or the method's own); methods with the same recipe share it."""
    recipe = _recipe(spec, method_index)
    return artifact_key("pe-trained", dataset=spec.dataset.identity(), model=to_dict(spec.model),
                        training=to_dict(spec.training), recipe=recipe,
                        members=stable_hash([int(v) for v in members], 24),
                        n_members=len(members), train_seed=seed)


def unlearned_key(spec: Spec, method_index: int, original: str, forget: tuple[int, ...]) -> str:
    entry = spec.unlearning[method_index]
    return artifact_key("pe-unlearned", original=original, method=entry.method,
                        params=to_dict(entry.typed_params()),
                        forget=stable_hash(list(forget), 24))


def originals(spec: Spec, m: int, records: Records, params: PerExampleParams,
              seed: int) -> list[Member]:
    out = []
    for j in range(params.models):
        if params.design == "ulira":
            forget = forget_half(records, params, seed, j)
        else:
            forget = records.targets
        members = np.sort(np.concatenate([records.base, forget]))
        s = member_seed(seed, j)
        out.append(Member(j, members, s, _trained_key(spec, m, members, s),
                          tuple(int(v) for v in forget)))
    return out


def reference_recipe(spec: Spec, m: int) -> int | None:
    """Whose recipe retrains method m's references: m's own where its ``original_recipe`` is
    not empty (it trains theta its own way, e.g. ``retrain_dp``'s DP-SGD, ``newton``'s
    perturbed objective), so that U-LiRA compares unlearned models with the method's own
    exact retraining and not with another recipe; None (the plain recipe) otherwise, one
    set of references shared by every such method."""
    return m if _recipe(spec, m) else None


def references(spec: Spec, records: Records, params: PerExampleParams, seed: int,
               recipe: int | None = None) -> list[Member]:
    """``design: challenge``: models retrained on the base set alone, with seeds no member
    uses (the OUT side of every target), by the recipe of method ``recipe`` (see
    :func:`reference_recipe`; None: the plain recipe)."""
    if params.design != "challenge":
        return []
    return [Member(j, records.base, s, _trained_key(spec, recipe, records.base, s))
            for j in range(params.models) for s in [member_seed(seed, params.models + j)]]


def check_method(spec: Spec, m: int, params: PerExampleParams) -> None:
    """Refuse, before any work, a method whose models this stage cannot train: theta from a
    pretrained theta_0 or a shard ensemble, for its members and (``design: challenge``) for
    its references, which retrain the method's theta on the base set (one line each)."""
    entry = spec.unlearning[m]
    method = UNLEARNING.get(entry.method)
    also = " (nor the challenge design's references)" if params.design == "challenge" else ""
    if method.requires_pretraining:
        raise ValueError(f"per_example: unlearning {entry.method!r} needs a pretrained "
                         f"theta_0, which this stage does not train{also}")
    if method.returns_ensemble:
        raise ValueError(f"per_example: unlearning {entry.method!r} returns a shard "
                         "ensemble, which the scoring pipeline does not stack")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def _train_units(spec: Spec, members: list[Member], m: int | None, role: str, seed: int,
                 params: PerExampleParams) -> list[Unit]:
    units = []
    # References of a method's own recipe say whose; plain ones are every method's.
    whose = f" ({spec.unlearning[m].method})" if role == "reference" and m is not None else ""
    for chunk in _chunks(members, params.members_per_task):
        keys = tuple(x.key for x in chunk)
        ukey = "pe-train-" + stable_hash(keys, 24)
        units.append(Unit(ukey, "train", "pe_train",
                          {"spec": spec, "method_index": m, "role": role, "seed": seed,
                           "members": chunk, "unit_key": ukey}, MODELS_TABLE, keys,
                          label=f"per_example {role}s{whose} x{len(chunk)} seed {seed}"))
    return units


def plan_per_example(spec: Spec, core: CorePlan, params: PerExampleParams) -> list[Unit]:
    if spec.model.family != "torch":
        raise ValueError(f"per_example: scores torch models (their weights are scored by the "
                         f"pipeline), not {spec.model.name!r}")
    if spec.pretraining is not None:
        raise ValueError("per_example: trains every member from scratch; remove the "
                         "'pretraining' block")
    for m in range(len(spec.unlearning)):
        check_method(spec, m, params)
    units: list[Unit] = []
    analyses: list[str] = []
    for seed in spec.seeds:
        records = draw_records(len(core.dataset.y_train), params, seed)
        planned: set[str] = set()  # train units shared by methods of one recipe: once
        for m, entry in enumerate(spec.unlearning):
            method = UNLEARNING.get(entry.method)
            recipe = reference_recipe(spec, m)
            refs = references(spec, records, params, seed, recipe)
            ref_units = _train_units(spec, refs, recipe, "reference", seed, params)
            units.extend(u for u in ref_units if u.key not in planned)
            planned.update(u.key for u in ref_units)
            origs = originals(spec, m, records, params, seed)
            train_units = _train_units(spec, origs, m, "original", seed, params)
            units.extend(u for u in train_units if u.key not in planned)
            planned.update(u.key for u in train_units)
            unlearn_keys = []
            for chunk, train in zip(_chunks(origs, params.members_per_task), train_units):
                ukeys = tuple(unlearned_key(spec, m, x.key, x.forget) for x in chunk)
                ukey = "pe-unlearn-" + stable_hash(ukeys, 24)
                deps = () if method.retrains_from_scratch else (train.key,)
                units.append(Unit(ukey, "unlearn", "pe_unlearn",
                                  {"spec": spec, "method_index": m, "seed": seed,
                                   "members": chunk, "keys": ukeys, "unit_key": ukey},
                                  MODELS_TABLE, ukeys,
                                  deps=deps, label=f"per_example {entry.method} x{len(chunk)} "
                                                   f"seed {seed}"))
                unlearn_keys.append(ukey)
            all_keys = [u.key for u in train_units] + unlearn_keys + [u.key for u in ref_units]
            pairs = [{"index": x.index, "original": x.key, "forget": x.forget,
                      "unlearned": unlearned_key(spec, m, x.key, x.forget)} for x in origs]
            refs_keys = [{"index": x.index, "key": x.key} for x in refs]
            # The models and records scored, not the analysis settings: a new variant or
            # figure setting reads the same scores.
            determinant = {"pairs": [p["unlearned"] for p in pairs],
                           "refs": [r["key"] for r in refs_keys],
                           "targets": stable_hash(records.targets.tolist(), 24)}
            skey = artifact_key("pe-scores", **determinant)
            common = {"spec": spec, "method_index": m, "seed": seed, "params": params,
                      "model_units": {"original": [u.key for u in train_units],
                                      "unlearned": unlearn_keys},
                      "targets": records.targets, "pairs": pairs, "references": refs_keys,
                      "scores_key": skey}
            kind = "pipeline" if params.scoring == "ray_data" else "attack"
            units.append(Unit(skey, kind, "pe_score", common, SCORING_TABLE, (skey,),
                              deps=tuple(dict.fromkeys(all_keys)),
                              label=f"per_example scoring {entry.method} seed {seed}"))
            akey = "pe-analysis-" + stable_hash([skey, _analysis_settings(params)], 24)
            row_keys = tuple(f"{akey}:{v}:{s}" for v in params.variants
                             for s in params.variances)
            units.append(Unit(akey, "attack", "pe_analyse", {**common, "key": akey}, "ulira",
                              row_keys, deps=(skey,),
                              label=f"per_example analysis {entry.method} seed {seed}",
                              hands_on=True))
            analyses.append(akey)
    attack_units = attack_plan(spec, core, params)
    units.extend(attack_units)
    batches = [u for u in attack_units if u.fn == ATTACK_FN]
    if params.leaderboard and analyses:
        lkey = "pe-leaderboard-" + stable_hash([spec.config_hash, analyses], 24)
        units.append(Unit(lkey, "attack", "pe_leaderboard",
                          {"spec": spec, "key": lkey, "analyses": analyses,
                           "data_kind": core.dataset.kind,
                           "attack_units": [{"key": u.key, "table": u.table,
                                             "row_keys": u.row_keys} for u in batches]},
                          "leaderboard", tuple(f"{lkey}:{a}" for a in analyses),
                          deps=tuple(analyses) + tuple(u.key for u in batches),
                          label="per_example leaderboard"))
    if params.figures and analyses:
        fkey = "pe-figures-" + stable_hash([spec.config_hash, analyses], 24)
        units.append(Unit(fkey, "attack", "pe_figures",
                          {"spec": spec, "key": fkey, "analyses": analyses, "params": params},
                          FIGURE_INDEX, (fkey,), deps=tuple(analyses),
                          label="per_example figures"))
    return units


def _analysis_settings(params: PerExampleParams) -> dict:
    """What the analyses depend on: every setting but the attacks beside them."""
    settings = to_dict(params)
    settings.pop("attacks", None)
    return settings


def attack_plan(spec: Spec, core: CorePlan, params: PerExampleParams) -> list[Unit]:
    """``per_example.attacks``: the generic attacks stage's units for the entries, on their own
    forget requests (original and unlearning units planned like the core plan's, from the
    spec's training split); every attack batch runs as :data:`ATTACK_FN`."""
    if not params.attacks:
        return []
    names = [e.method for e in spec.unlearning]
    if len(set(names)) != len(names):
        raise ValueError("per_example.attacks: the leaderboard joins attack results by method "
                         f"name; list each unlearning method once (got {names})")
    sub = CorePlan(spec, core.dataset)
    for seed in spec.seeds:
        sub.selections[seed] = select_training_set(len(core.dataset.y_train),
                                                   spec.dataset.pool_size,
                                                   spec.dataset.train_size, seed)
    planned = plan_entries(spec, sub, params.attacks, "per_example.attacks")
    return [dataclasses.replace(u, fn=ATTACK_FN) if u.fn == "attack_batch" else u
            for u in planned]
