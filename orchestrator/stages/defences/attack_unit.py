"""Sweep unit ``defence_attack``: any case-based attack against one defence at one strength.

The defence wraps the case: an ``update`` defence replaces theta_u by the model the provider
publishes; an ``outputs`` defence sits inside the case's query access, so every answer the
attacker gets (of theta and theta_u alike) is defended, and a black-box attack's prepare step
(its probes) crafts through the same defended access (planning gives it a prepare unit of its
own). The attack and its scorer are the ones of the generic ``attacks`` stage, so any
registered attack is measured here with no new code.
"""

from __future__ import annotations

import time

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.provider import load_provider_pairs, load_torch_model
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.attacks.units import scoring_context
from orchestrator.stages.defences.common import common, seed_of, test_acc, update_data, with_points
from tasks.defences import DEFENCES, output_transform
from tasks.training import accuracy, predict_logits


@UNIT_FUNCTIONS.register("defence_attack")
def defence_attack(params: dict, ctx: TaskContext) -> Rows:
    """Defend every model pair of one (entry, seed, method), attack, score: one row."""
    spec: Spec = params["spec"]
    base: Spec = params["base_spec"]
    seed, entry, name = params["seed"], params["entry"], params["name"]
    attack, scorer, config, threat = entry.resolve()
    start = time.perf_counter()
    provider = load_provider_pairs(params, ctx)
    state, theta = provider.state, provider.theta
    d = state.dataset
    defence = params["defence"]
    dobj = None if defence == "none" else DEFENCES.get(defence)()
    update = dobj is not None and dobj.acts_on == "update"
    dparams = dobj.params(params["strength"], params["defence_params"], defence) if update \
        else None
    transform = output_transform(defence, params["transform_params"])
    uctx, records = update_data(spec, state, seed, params["finetune_source"])
    cases, truths, acc_u, acc_ud, forget_acc = [], [], [], [], []
    for pair in params["pairs"]:
        theta_u = load_torch_model(ctx, pair.unlearned_key, state)
        published = dobj.apply(theta, theta_u, dparams, seed=seed_of(
            seed, pair.request.request_id, defence), context=uctx) if update else theta_u
        acc_ud.append(test_acc(theta_u, d, state.device, records))
        acc_u.append(test_acc(published, d, state.device, records))
        idx = np.asarray(pair.request.indices)
        forget_acc.append(accuracy(predict_logits(published, d.x_train[idx], state.device),
                                   d.y_train[idx]))
        case, truth = provider.case(published, pair.request, threat.knowledge,
                                    white_box=threat.white_box, output_transform=transform)
        cases.append(case)
        truths.append(truth)
    defend_wall = time.perf_counter() - start
    # Under an output defence a black-box attack's prepare unit crafted through the defended
    # access too (planning: the prepared key is the defended one).
    prepared = (ctx.store.load_arrays(params["prepared_key"]) if params.get("prepared_key")
                else None)
    # The attacks stage's seeds: every strength starts from the same randomness (paired rows).
    seeds = [seed_of(seed, p.request.request_id, name) for p in params["pairs"]]
    result = attack.run(cases, config, seeds=seeds, prepared=prepared)
    scored = scorer.score(result, truths, config, scoring_context(spec, d, seed))
    leak = np.asarray(scored.metrics[scorer.leakage], dtype=np.float64)
    row = common(base, params, params["attack_label"])
    row.update({
        "unlearning_method": provider.method, "exact": provider.exact,
        "attack_config": name, "attack_name": entry.attack, "knowledge": threat.knowledge,
        "white_box": threat.white_box,
        "attack_metric_name": scorer.leakage, "attack_metric": float(np.nanmean(leak)),
        f"{scorer.leakage}_max": float(np.nanmax(leak)),
        f"{scorer.leakage}_min": float(np.nanmin(leak)),
        f"{scorer.leakage}_per_target": [float(v) for v in leak],
        **{metric: float(np.nanmean(values)) for metric, values in scored.metrics.items()},
        "n_targets": len(cases),
        "test_acc_original": test_acc(theta, d, state.device, records),
        "test_acc_unlearned": float(np.mean(acc_u)),
        "test_acc_unlearned_undefended": float(np.mean(acc_ud)),
        "forget_acc_unlearned": float(np.mean(forget_acc)),
        "finetune_source": uctx.source if defence == "fine_tuning" else None,
        "utility_records": len(records),
        "epsilon": None, "delta": None, "defend_wall_s": defend_wall,
        "wall_s": time.perf_counter() - start, "node_id": ctx.node_id})
    row.update(base.flat_config())
    return with_points([row], utility="test_acc_unlearned")
