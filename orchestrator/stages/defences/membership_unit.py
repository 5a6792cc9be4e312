"""Sweep unit ``defence_membership``: the registered ``membership`` attack and its scorer on
one scenario's shadow/target pairs under one defence, one row per configured attack model."""

from __future__ import annotations

import time

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.defences.common import common, with_points
from orchestrator.stages.membership import (
    MembershipParams,
    StoredLogits,
    attack_and_score,
    pair_privacy,
    pair_rows,
    scenario,
    side_accuracy,
)
from tasks.attacks.membership import CLASSICAL, UNLEARNING_FEATURES, posterior_case
from tasks.defences import DPParams
from tasks.params import build


@UNIT_FUNCTIONS.register("defence_membership")
def defence_membership(params: dict, ctx: TaskContext) -> Rows:
    """Every attack model of ``membership.attack_models`` on the defended features."""
    spec: Spec = params["spec"]
    base: Spec = params["base_spec"]
    settings: MembershipParams = params["settings"]
    start = time.perf_counter()
    store = StoredLogits(ctx)
    shadow = pair_rows(store, params["pairs"]["shadow"])
    target = pair_rows(store, params["pairs"]["target"])
    features = tuple(dict.fromkeys((*settings.features, CLASSICAL)))
    # The defended case: both sides answer through the output defence (the adaptive attacker
    # defends its shadow models alike).
    case, truth = posterior_case(target, shadow, params["transform"], params["transform_params"])
    scored = attack_and_score([case], [truth], {"features": features,
                                                "attack_models": settings.attack_models},
                              settings.attack_seed)
    tpairs = params["pairs"]["target"]
    acc = side_accuracy(store, tpairs, params["seed"], settings.unlearned_eval_size)
    entry = spec.unlearning[params["method_index"]]
    shared = {
        "unlearning_method": entry.method, "scenario": params["scenario"],
        "primary_feature": params["primary_feature"], "attack_metric_name": "auc",
        "n_shadow_rows": len(shadow.label), "n_target_rows": len(target.label),
        "set_num": settings.set_num, "set_size": params["set_size"],
        "unlearning_size": settings.unlearning_size,
        # originals and unlearned models on the same test records (see side_accuracy)
        "test_acc_original": acc["test_acc"], "train_acc_original": acc["train_acc"],
        "test_acc_unlearned": acc["test_acc_unlearned"], "generalisation_gap": acc["gap"]}
    if params["dp"] is not None:
        dpp = build(DPParams, params["dp"], "dp")
        privacy = pair_privacy(spec, params["method_index"],
                               scenario(params["scenario"], settings), params["set_size"],
                               tpairs)
        shared.update({"epsilon": privacy["epsilon"],
                       "epsilon_unlearned": privacy["epsilon_unlearned"],
                       "epsilon_pair": privacy["epsilon_pair"], "delta": dpp.delta,
                       "delta_pair": privacy["delta_pair"],
                       "pair_composition": privacy["pair_composition"],
                       "dp_note": privacy["note"], "dp_noise": dpp.noise,
                       "dp_steps": privacy["steps"], "dp_sample_rate": privacy["sample_rate"],
                       "dp_sampling": dpp.sampling, "dp_accountant": dpp.accountant,
                       "max_grad_norm": dpp.max_grad_norm})
    else:
        shared.update({"epsilon": None, "delta": None})
    rows = []
    for model in settings.attack_models:
        by_feature = {r["feature"]: r for r in scored.rows[0]
                      if r["control"] == "none" and r["attack_model"] == model}
        primary = by_feature[params["primary_feature"]]
        row = common(base, params, "membership")
        row.update(shared)
        row.update({"key": f"{params['key']}:{model}", "attack_model": model,
                    "attack_metric": primary["auc"],
                    "classical_auc": by_feature[CLASSICAL]["auc"]})
        for f in features:
            row[f"auc_{f}"] = by_feature[f]["auc"]
        row["auc_max_unlearning_feature"] = max(row[f"auc_{f}"] for f in features
                                                if f in UNLEARNING_FEATURES)
        if params["primary_feature"] != CLASSICAL:
            row["deg_count"], row["deg_rate"] = primary["deg_count"], primary["deg_rate"]
        rows.append(row)
    wall = time.perf_counter() - start
    for row in rows:
        row.update({"wall_s": wall, "node_id": ctx.node_id})
        row.update(base.flat_config())
    return with_points(rows, utility="test_acc_unlearned")
