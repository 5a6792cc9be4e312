"""Planning of the ``defences`` stage: one unit per (attack, defence, strength) on the model
pairs the attack's own stage plans (see the package docstring)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from orchestrator.engine.plan import CorePlan, Unit, plan_core
from orchestrator.spec.schema import Spec, UnlearningSpec, stable_hash
from orchestrator.stages.attacks.planning import AttackEntry, plan_entries
from orchestrator.stages.defences.settings import TABLE, DefencesStage, defence_points
from orchestrator.stages.membership import MembershipParams, plan_membership
from orchestrator.stages.membership.planning import GAIN_FIGURE
from orchestrator.store.artifacts import artifact_key
from orchestrator.store.tables import FIGURE_INDEX
from tasks.defences import DEFENCES, DPParams, defend_outputs
from tasks.params import to_dict

# --- planning ---------------------------------------------------------------------------------

def plan_defences(spec: Spec, core: CorePlan, stage: DefencesStage) -> list[Unit]:
    units: list[Unit] = []
    unit_keys: list[str] = []  # the sweep units, which the figure waits for
    row_keys: list[str] = []  # their rows: one figure point each
    for attack in stage.swept_attacks():
        if attack == "membership":
            new = _plan_membership(spec, core, stage)
        else:
            new = _plan_case_attack(spec, core, stage, attack, _entries(stage, attack))
        units += new
        sweep = [u for u in new if u.fn.startswith("defence_")]
        unit_keys += [u.key for u in sweep]
        row_keys += [k for u in sweep for k in u.row_keys]
    if stage.figure and unit_keys:
        fkey = "deffig-" + stable_hash([spec.config_hash, row_keys], 24)
        units.append(Unit(fkey, "attack", "defence_figure",
                          {"spec": spec, "key": fkey, "row_keys": row_keys}, FIGURE_INDEX,
                          (fkey,), deps=tuple(unit_keys), label="defences figure"))
    return units


def _entries(stage: DefencesStage, attack: str) -> dict[str, AttackEntry]:
    """The generic attack entries a sweep against ``attack`` runs."""
    if attack == "recovery":
        cfg = stage.recovery
        return {cfg.name: AttackEntry("inversion", to_dict(cfg), methods=stage.methods,
                                      max_requests=stage.max_requests, figure=False)}
    if attack == "label_inference":
        li = dataclasses.replace(stage.label_inference, figure=False)
        return li.entries()
    entry = stage.attacks[attack]
    return {attack: dataclasses.replace(entry, figure=False)}


def _plan_case_attack(spec: Spec, core: CorePlan, stage: DefencesStage, attack: str,
                      entries: dict[str, AttackEntry]) -> list[Unit]:
    """The attacks stage's model pairs (and prepare units) for ``entries``; per (entry, seed,
    method) and (defence, strength) one ``defence_attack`` unit in place of its batches."""
    # The defences stage replaces the core plan (membership needs none); rebuild it.
    rebuilt = plan_core(spec, None, dataset=core.dataset)
    planned = plan_entries(spec, rebuilt, entries, f"defences.{attack}")
    kept = [u for u in planned if u.fn not in ("attack_batch", "attack_figure")]
    prepares = {u.key: u for u in kept if u.fn == "attack_prepare"}
    defended: dict[str, Unit] = {}  # prepare units crafting through a defended access
    groups: dict[tuple[str, int, int], list[Unit]] = {}
    for u in planned:
        if u.fn == "attack_batch":
            p = u.params
            groups.setdefault((p["name"], p["seed"], p["method_index"]), []).append(u)
    units: list[Unit] = []
    for batches in groups.values():
        p = batches[0].params
        pairs = [pair for b in batches for pair in b.params["pairs"]]
        deps = tuple(dict.fromkeys(d for b in batches for d in b.deps))
        black_box = not p["entry"].resolve().threat.white_box
        for defence, strength, dparams in defence_points(spec, stage, attack):
            tparams: dict[str, Any] = {}
            prepared, unit_deps = p["prepared_key"], deps
            if defence != "none" and DEFENCES.get(defence).acts_on == "outputs":
                tparams = to_dict(DEFENCES.get(defence)().params(strength, dparams, defence))
                # Fail at planning, not in a worker: e.g. top-k needs k < C of this dataset.
                defend_outputs(np.zeros((1, core.dataset.num_classes)), defence, tparams)
                if black_box and prepared is not None:
                    # A black-box attacker crafts (probes) through the access it faces: the
                    # defended one, as it scores; not through the undefended original.
                    own = _defended_prepare(prepares[prepared], defence, tparams, defended)
                    unit_deps = tuple(own.key if d == prepared else d for d in deps)
                    prepared = own.key
            key = "defence-" + stable_hash(
                [spec.config_hash, attack, [b.key for b in batches], defence, strength,
                 dparams, stage.finetune_source], 24)
            units.append(Unit(key, "attack", "defence_attack",
                              {"spec": p["spec"], "base_spec": spec, "seed": p["seed"],
                               "method_index": p["method_index"], "pairs": pairs,
                               "entry": p["entry"], "name": p["name"],
                               "attack_label": attack, "prepared_key": prepared,
                               "pretrain_key": p["pretrain_key"], "defence": defence,
                               "strength": strength, "defence_params": dparams,
                               "transform_params": tparams,
                               "finetune_source": stage.finetune_source, "key": key},
                              TABLE, (key,), deps=unit_deps,
                              label=f"defence {defence} {strength} {attack} {p['name']}",
                              hands_on=True))
    # The undefended prepare units only where some sweep point still reads them.
    needed = {d for u in units for d in u.deps}
    kept = [u for u in kept if u.fn != "attack_prepare" or u.key in needed]
    kept += list(defended.values())
    return _with_deps(rebuilt.units + kept, kept + units)


def _defended_prepare(base: Unit, defence: str, tparams: dict[str, Any],
                      made: dict[str, Unit]) -> Unit:
    """``base`` (an ``attack_prepare`` unit) crafting through the original's query access
    under output defence ``defence``: one per (original, defence settings), in ``made``."""
    key = artifact_key("prepared", base=base.key, defence=defence, transform=tparams)
    if key not in made:
        made[key] = Unit(key, base.kind, base.fn,
                         {**base.params, "prepared_key": key, "defence": defence,
                          "transform_params": tparams},
                         base.table, (key,), deps=base.deps,
                         label=f"{base.label} under {defence}")
    return made[key]


def _with_deps(available: list[Unit], units: list[Unit]) -> list[Unit]:
    """``units`` preceded by every unit of ``available`` they need (transitively), in plan
    order: the entries may reuse the core plan's originals and theta_0."""
    by_key = {u.key: u for u in available}
    needed: set[str] = set()
    todo = [d for u in units for d in u.deps]
    while todo:
        key = todo.pop()
        if key in by_key and key not in needed:
            needed.add(key)
            todo.extend(by_key[key].deps)
    own = {u.key for u in units}
    return [u for u in available if u.key in needed and u.key not in own] + units


def _dp_spec(spec: Spec, dparams: DPParams) -> Spec:
    """The spec with every unlearning method replaced by DP-SGD retraining."""
    entry = UnlearningSpec("retrain_dp", to_dict(dparams))
    raw = dict(spec.raw)
    raw["unlearning"] = [{"method": "retrain_dp", **to_dict(dparams)}]
    return dataclasses.replace(spec, unlearning=(entry,), raw=raw)


def _membership_models(spec: Spec, core: CorePlan, mparams: MembershipParams):
    """The membership stage's model units and, per attack unit, its pairs and dependencies."""
    planned = plan_membership(spec, core, mparams)
    models = [u for u in planned if u.fn not in ("mia_attack", GAIN_FIGURE)]
    attacks = [u for u in planned if u.fn == "mia_attack"]
    return models, attacks


def _plan_membership(spec: Spec, core: CorePlan, stage: DefencesStage) -> list[Unit]:
    mparams = stage.membership
    units: list[Unit] = []
    base_models, base_attacks = _membership_models(spec, core, mparams)
    used_base = False
    for defence, strength, dparams in defence_points(spec, stage, "membership"):
        kind = "none" if defence == "none" else DEFENCES.get(defence).acts_on
        if kind == "training":
            d = DEFENCES.get(defence)()
            typed = d.params(strength, dparams, defence)
            dspec = _dp_spec(spec, typed)
            models, attacks = _membership_models(dspec, core, mparams)
            units += models
            transform, tparams, dp = "none", {}, to_dict(typed)
            run_spec = dspec
        else:
            models, attacks, run_spec = base_models, base_attacks, spec
            used_base = True
            transform = defence
            tparams = {} if defence == "none" else to_dict(
                DEFENCES.get(defence)().params(strength, dparams, defence))
            dp = None
            if defence != "none":
                # Fail at planning, not in a worker: e.g. top-k needs k < C of this dataset.
                defend_outputs(np.zeros((1, core.dataset.num_classes)), defence, tparams)
        for au in attacks:
            p = au.params
            key = "defence-" + stable_hash(
                [spec.config_hash, "membership", au.key, defence, strength, dparams,
                 stage.primary_feature], 24)
            # One row per attack model, keyed by it.
            rkeys = tuple(f"{key}:{model}" for model in mparams.attack_models)
            units.append(Unit(key, "attack", "defence_membership",
                              {"spec": run_spec, "base_spec": spec, "seed": p["seed"],
                               "method_index": p["method_index"], "scenario": p["scenario"],
                               "k": p["k"], "pairs": p["pairs"], "set_size": p["set_size"],
                               "settings": mparams, "defence": defence, "strength": strength,
                               "defence_params": dparams, "transform": transform,
                               "transform_params": tparams, "dp": dp,
                               "primary_feature": stage.primary_feature, "key": key},
                              TABLE, rkeys, deps=au.deps,
                              label=f"defence {defence} {strength} membership "
                                    f"{p['scenario']}", hands_on=True))
    if used_base:
        units = base_models + units
    return units

