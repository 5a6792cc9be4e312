"""Planning of the ``membership`` stage: artifact keys and units (see the package doc)."""

from __future__ import annotations

import numpy as np

from orchestrator.engine.plan import CorePlan, Unit
from orchestrator.spec.schema import Spec, stable_hash
from orchestrator.stages.membership.params import MembershipParams, Scenario, scenario
from orchestrator.store.artifacts import artifact_key
from orchestrator.store.tables import FIGURE_INDEX
from tasks.analysis.membership import ATTACKS_TABLE
from tasks.attacks.membership import CLASSICAL
from tasks.mia_splits import SIDES, SetPlan, effective_set_size, paper_split, sample_sets
from tasks.params import to_dict
from tasks.unlearning import UNLEARNING

GAIN_FIGURE = "mia_gain_figure"  # the unit drawing every attack's gain in one figure


def _members_hash(members: np.ndarray) -> str:
    return stable_hash([int(v) for v in members], 24)


def mia_original_key(spec: Spec, method_index: int, plan: SetPlan) -> str:
    entry = spec.unlearning[method_index]
    method = UNLEARNING.get(entry.method)()
    torch_recipe = to_dict(spec.training) if spec.model.family == "torch" else None
    return artifact_key("mia-original", dataset=spec.dataset.identity(), model=to_dict(spec.model),
                        training=torch_recipe, recipe=method.original_recipe(
                            entry.typed_params()), members=_members_hash(plan.members),
                        n_members=len(plan.members), train_seed=plan.train_seed)


def mia_unlearned_key(spec: Spec, method_index: int, okey: str, forget: tuple[int, ...],
                      replacement: tuple[int, ...], removed: tuple[int, ...],
                      query: tuple[int, ...]) -> str:
    """The artifact holds the model's logits on ``query``, so the query is a determinant too
    (chain version 1 is the same model as a single deletion but scores more records)."""
    entry = spec.unlearning[method_index]
    return artifact_key("mia-unlearned", original=okey, method=entry.method,
                        params=to_dict(entry.typed_params()), forget=list(forget),
                        replacement=list(replacement), removed=list(removed),
                        query=stable_hash(list(query), 24))


def _pair_records(pair) -> tuple[int, ...]:
    return tuple(dict.fromkeys(pair.deleted + pair.negatives + pair.remaining))


def plan_membership(spec: Spec, core: CorePlan, params: MembershipParams) -> list[Unit]:
    dataset = core.dataset
    split = paper_split(len(dataset.y_train), params.split_seed, params.replace_seed)
    units: list[Unit] = []
    for seed in spec.seeds:
        for m, entry in enumerate(spec.unlearning):
            method = UNLEARNING.get(entry.method)
            if spec.model.family not in method.families:
                raise ValueError(f"unlearning {entry.method!r} cannot unlearn a "
                                 f"{spec.model.family} model ({spec.model.name})")
            if method.requires_pretraining:
                raise ValueError(f"membership: {entry.method!r} needs a pretrained theta_0, "
                                 "which the membership stage does not train; use retrain or "
                                 "sisa")
            originals: dict[tuple[str, int], str] = {}
            for name in params.scenarios:
                sc = scenario(name, params)
                if sc.online and not method.supports_replacement:
                    raise ValueError("membership scenario 'online' retrains on the replaced "
                                     "set: it needs an unlearning method that supports "
                                     f"replacement records (e.g. 'retrain'), not "
                                     f"{entry.method!r}")
                model_units: list[str] = []
                pairs_by_side: dict[str, list[dict]] = {}
                # The smaller pool of the two sides bounds set_size for both.
                size = effective_set_size(params.set_size, min(
                    len(split.side(s).positive) for s in SIDES), params.max_set_fraction,
                    cap=params.cap_set_size)
                for side in SIDES:
                    side_units, keys, pairs = plan_side(spec, m, split, side, params, sc, seed,
                                                        size, originals)
                    units.extend(side_units)
                    model_units.extend(keys)
                    pairs_by_side[side] = pairs
                attack_params = {
                    "spec": spec, "seed": seed, "method_index": m, "scenario": name,
                    "k": sc.k, "pairs": pairs_by_side, "features": tuple(params.features),
                    "attack_models": tuple(params.attack_models), "params": params,
                    "set_size": size}
                akey = "mia-attack-" + stable_hash(
                    {"pairs": pairs_by_side, "scenario": name, "settings": to_dict(params),
                     "seed": seed, "method": entry.method, "dataset": spec.dataset.identity(),
                     "model": to_dict(spec.model), "code": code_version()}, 24)
                attack_params["attack_key"] = akey
                row_keys = tuple(mia_row_key(akey, f, a, "none")
                                 for f in dict.fromkeys((*params.features, CLASSICAL))
                                 for a in params.attack_models)
                units.append(Unit(akey, "attack", "mia_attack", attack_params, ATTACKS_TABLE,
                                  row_keys, deps=tuple(dict.fromkeys(model_units)),
                                  label=f"mia attack {name} {entry.method} seed {seed}",
                                  hands_on=params.figures))
    attacks = [u.key for u in units if u.fn == "mia_attack"]
    if params.figures and attacks:  # one figure of every attack's gain over classical MIA
        fkey = "mia-gain-figure-" + stable_hash([spec.config_hash, attacks], 24)
        units.append(Unit(fkey, "attack", GAIN_FIGURE, {"spec": spec, "key": fkey,
                                                        "attacks": attacks},
                          FIGURE_INDEX, (fkey,), deps=tuple(attacks),
                          label="membership gain figure"))
    return units


def plan_side(spec: Spec, m: int, split, side: str, params: MembershipParams, sc: Scenario,
              seed: int, size: int, originals: dict[tuple[str, int], str]
              ) -> tuple[list[Unit], list[str], list[dict]]:
    """The model units of one side (originals not yet in ``originals``, then the unlearned
    models), the keys its attack depends on, and its pairs."""
    half = split.side(side)
    plans = sample_sets(split, side, params.set_num, size, params.unlearning_size, sc.k, seed,
                        params.deletion_sampling)
    units: list[Unit] = []
    keys: list[str] = []
    side_pairs: list[dict] = []
    for plan in plans:
        okey = mia_original_key(spec, m, plan)
        if (side, plan.index) not in originals:
            originals[(side, plan.index)] = okey
            query = np.unique(np.concatenate([plan.members, half.negative]))
            units.append(Unit(
                okey, "train", "mia_original",
                {"spec": spec, "method_index": m, "side": side, "set_index": plan.index,
                 "members": plan.members, "train_seed": plan.train_seed, "model_key": okey,
                 "query": query, "seed": seed},
                "models", (okey,), label=f"mia original {side} {plan.index}"))
        keys.append(okey)
        units_for_set, pairs = _unlearn_units(spec, m, plan, okey, sc, params, seed, side, size)
        units.extend(units_for_set)
        keys.extend(u.key for u in units_for_set)
        side_pairs.extend(pairs)
    return units, keys, side_pairs


def code_version() -> str:
    from tasks import CODE_VERSION

    return CODE_VERSION


def _unlearn_units(spec: Spec, m: int, plan: SetPlan, okey: str, sc: Scenario,
                   params: MembershipParams, seed: int, side: str,
                   set_size: int) -> tuple[list[Unit], list[dict]]:
    entry = spec.unlearning[m]
    jobs, pairs = [], []
    removed: tuple[int, ...] = ()
    prev_key = okey
    chain_records = tuple(dict.fromkeys(r for p in plan.pairs for r in _pair_records(p)))
    for pair in plan.pairs:
        replacement = pair.replacement if sc.online else ()
        if sc.online and len(replacement) < sc.k:
            raise ValueError(f"online learning: the {side} replace pool is too small for "
                             f"{sc.k} replacements")
        query = chain_records if sc.chain else _pair_records(pair)
        ukey = mia_unlearned_key(spec, m, okey, pair.deleted, replacement,
                                 removed if sc.chain else (), query)
        jobs.append({"pair_index": pair.index, "forget": pair.deleted,
                     "replacement": replacement, "removed": removed if sc.chain else (),
                     "model_key": ukey, "query": query})
        positives = pair.remaining if sc.positive == "remaining" else pair.deleted
        p_key = prev_key if (sc.chain and params.chain_reference == "previous") else okey
        pairs.append({"set_index": plan.index, "pair_index": pair.index, "p_key": p_key,
                      "q_key": ukey, "original_key": okey, "positives": positives,
                      "negatives": pair.negatives})
        if sc.chain:
            removed = removed + pair.deleted
            prev_key = ukey
    # A chain is one sequential task; independent deletions go in batches.
    size = len(jobs) if sc.chain else params.deletions_per_task
    units = []
    needs_original = not UNLEARNING.get(entry.method).retrains_from_scratch
    for start in range(0, len(jobs), size):
        batch = jobs[start: start + size]
        keys = tuple(j["model_key"] for j in batch)
        ukey = "mia-unlearn-" + stable_hash(keys, 24)
        deps = (okey,) if needs_original else ()
        units.append(Unit(ukey, "unlearn", "mia_unlearn",
                          {"spec": spec, "method_index": m, "side": side,
                           "set_index": plan.index, "members": plan.members,
                           "train_seed": plan.train_seed, "original_key": okey,
                           "jobs": batch, "chain": sc.chain, "scenario_family": sc.family,
                           "seed": seed, "eval_size": params.unlearned_eval_size},
                          "models", keys, deps=deps,
                          label=f"mia {entry.method} {sc.family} {side} {plan.index} "
                                f"x{len(batch)}"))
    return units, pairs


def mia_row_key(akey: str, feature: str, model: str, control: str) -> str:
    return f"{akey}:{feature}:{model}:{control}"

