"""The attack unit of the ``membership`` stage (``mia_attack``), what the defences stage and the
membership search share with it (the stored-logits reader, :func:`attack_and_score`: the
registered ``membership`` attack and its scorer). Its tables' summaries are in
:mod:`orchestrator.reporting.summaries`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.membership.params import (
    MembershipParams,
    Scenario,
    eval_records,
    scenario,
)
from orchestrator.stages.membership.planning import GAIN_FIGURE, code_version, mia_row_key
from orchestrator.store.handoff import HANDOFF, Handoff, UnitInputs
from orchestrator.store.tables import FIGURE_INDEX
from tasks.analysis import SCORERS, ScoredBatch, ScoringContext
from tasks.analysis.membership import ATTACKS_TABLE, RECORDS_TABLE, roc_curves
from tasks.attacks import ATTACKS
from tasks.attacks.membership import MembershipTruth, PairRows, PosteriorCase, posterior_case
from tasks.unlearning import UNLEARNING


class StoredLogits:
    """Stored logits of many models, looked up by (model key, record id)."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.cache: dict[str, tuple[dict[int, int], np.ndarray, dict]] = {}

    def get(self, key: str) -> tuple[dict[int, int], np.ndarray, dict]:
        if key not in self.cache:
            arrays = self.ctx.store.load_arrays(key)
            where = {int(r): i for i, r in enumerate(arrays["indices"])}
            self.cache[key] = (where, arrays["logits"], arrays)
        return self.cache[key]

    def rows(self, key: str, records) -> np.ndarray:
        where, logits, _ = self.get(key)
        missing = [r for r in records if int(r) not in where]
        if missing:
            raise KeyError(f"model {key} has no stored logits for records {missing[:5]}")
        return logits[[where[int(r)] for r in records]]


def pair_rows(store: StoredLogits, pairs: list[dict]) -> PairRows:
    p, q, label, meta = [], [], [], {"set_index": [], "pair_index": [], "record": []}
    for pair in pairs:
        for records, y in ((pair["positives"], 1), (pair["negatives"], 0)):
            p.append(store.rows(pair["p_key"], records))
            q.append(store.rows(pair["q_key"], records))
            label += [y] * len(records)
            meta["set_index"] += [pair["set_index"]] * len(records)
            meta["pair_index"] += [pair["pair_index"]] * len(records)
            meta["record"] += list(records)
    return PairRows(np.concatenate(p), np.concatenate(q), np.asarray(label),
                    {k: np.asarray(v) for k, v in meta.items()})


def attack_and_score(cases: list[PosteriorCase], truths: list[MembershipTruth],
                     config: dict[str, Any], seed: int) -> ScoredBatch:
    """The registered ``membership`` attack on ``cases`` (every case with ``seed``) and its
    scorer's rows: the one path of the stage, the defence sweep and the search."""
    attack = ATTACKS.get("membership")()
    typed = attack.Config(**config)
    result = attack.run(cases, typed, seeds=[seed] * len(cases))
    context = ScoringContext(num_classes=int(cases[0].p.shape[1]) if cases else 0, seed=seed)
    return SCORERS.get(attack.scorer)().score(result, truths, typed, context)



def side_accuracy(store: StoredLogits, pairs: list[dict], seed: int,
                   eval_size: int) -> dict[str, float]:
    """Mean accuracies of a side's originals and unlearned models. ``test_acc`` and
    ``test_acc_unlearned`` are read on the same test records (the unlearned models' eval
    records); ``gap`` is the originals' train accuracy minus their accuracy on the whole
    test split."""
    originals = list(dict.fromkeys(p["original_key"] for p in pairs))
    tr = [float(store.get(k)[2]["train_acc"]) for k in originals]
    full = [float(store.get(k)[2]["test_acc"]) for k in originals]
    te = []
    for k in originals:
        correct = store.get(k)[2]["test_correct"]
        te.append(float(correct[eval_records(seed, len(correct), eval_size)].mean()))
    unl = [float(store.get(k)[2]["test_acc"]) for k in dict.fromkeys(p["q_key"] for p in pairs)]
    return {"train_acc": float(np.mean(tr)), "test_acc": float(np.mean(te)),
            "gap": float(np.mean(tr) - np.mean(full)), "test_acc_unlearned": float(np.mean(unl))}


def pair_privacy(spec: Spec, method_index: int, sc: Scenario, set_size: int,
                 pairs: list[dict]) -> dict[str, Any] | None:
    """The unlearning method's DP accounting of the side's pairs (None without DP): the
    largest ``epsilon_pair`` over the pairs' training-set sizes (theta on |S_i| records;
    theta_u on |S_i| - k, plus k replacements online; chain versions lose k per step)."""
    entry = spec.unlearning[method_index]
    method = UNLEARNING.get(entry.method)()
    sizes = set()
    for p in pairs:
        if sc.chain:
            n_q = set_size - (p["pair_index"] + 1) * sc.k
            sizes.add((set_size if p["p_key"] == p["original_key"] else n_q + sc.k, n_q))
        else:
            sizes.add((set_size, set_size - sc.k + (sc.k if sc.online else 0)))
    found = [method.pair_privacy(entry.typed_params(), spec.training, a, b)
             for a, b in sorted(sizes)]
    found = [f for f in found if f is not None]
    return max(found, key=lambda f: f["epsilon_pair"]) if found else None


def privacy_columns(privacy: dict[str, Any] | None) -> dict[str, Any]:
    if privacy is None:
        return {"dp_epsilon": None, "epsilon_pair": None, "dp_delta": None,
                "dp_pair_composition": None, "dp_note": None}
    return {"dp_epsilon": privacy["epsilon"], "epsilon_pair": privacy["epsilon_pair"],
            "dp_delta": privacy["delta_pair"],
            "dp_pair_composition": privacy["pair_composition"], "dp_note": privacy["note"]}

@UNIT_FUNCTIONS.register("mia_attack")
def mia_attack(params: dict, ctx: TaskContext) -> Rows:
    """One scenario: the registered ``membership`` attack (shadow pairs fit, target pairs'
    records are the candidates), its scorer's rows, and the figures."""
    spec: Spec = params["spec"]
    settings: MembershipParams = params["params"]
    entry = spec.unlearning[params["method_index"]]
    start = time.perf_counter()
    store = StoredLogits(ctx)
    shadow = pair_rows(store, params["pairs"]["shadow"])
    target = pair_rows(store, params["pairs"]["target"])
    acc_s = side_accuracy(store, params["pairs"]["shadow"], params["seed"],
                           settings.unlearned_eval_size)
    acc_t = side_accuracy(store, params["pairs"]["target"], params["seed"],
                           settings.unlearned_eval_size)
    case, truth = posterior_case(target, shadow, settings.output_defence,
                                 settings.output_defence_params)
    scored = attack_and_score(
        [case], [truth], {"features": tuple(params["features"]),
                          "attack_models": tuple(params["attack_models"]),
                          "shuffled_control": tuple(settings.shuffled_control)},
        settings.attack_seed)
    akey = params["attack_key"]
    method = UNLEARNING.get(entry.method)
    num_shard = entry.typed_params().shards if method.returns_ensemble else None
    privacy = pair_privacy(spec, params["method_index"],
                           scenario(params["scenario"], settings), params["set_size"],
                           params["pairs"]["target"])
    common = {"experiment": spec.experiment, "config_hash": spec.config_hash,
              "seed": params["seed"], "paper": "chen2021", "dataset": spec.dataset.name,
              "model": spec.model.name, "original_model": spec.model.name,
              "unlearning_method": entry.method, "scenario": params["scenario"],
              "membership": "in_in" if params["scenario"] == "in_in" else "in_out",
              "defence": settings.output_defence,
              "defence_param": str(settings.output_defence_params or "") or None,
              "set_num": settings.set_num, "set_size": params["set_size"],
              "unlearning_size": settings.unlearning_size, "unlearning_num": params["k"],
              "num_shard": num_shard, "deletion_sampling": settings.deletion_sampling,
              "chain_reference": settings.chain_reference if params["scenario"] == "chain"
              else None,
              "n_shadow_rows": len(shadow.label), "n_target_rows": len(target.label),
              "train_acc_original": acc_t["train_acc"], "test_acc_original": acc_t["test_acc"],
              "generalisation_gap": acc_t["gap"], "shadow_generalisation_gap": acc_s["gap"],
              "test_acc_unlearned": acc_t["test_acc_unlearned"], **privacy_columns(privacy),
              "code_version": code_version()}
    mia_rows, member_rows = [], []
    arrays = scored.arrays
    for e, scores in enumerate(scored.rows[0]):
        row = {"key": mia_row_key(akey, scores["feature"], scores["attack_model"],
                                   scores["control"]), **common, **scores}
        row.update(spec.flat_config())
        mia_rows.append(row)
        if settings.membership_rows and scores["control"] == "none":
            for i in range(len(truth.label)):
                member_rows.append({
                    "key": f"{row['key']}:{i}", "experiment": spec.experiment,
                    "config_hash": spec.config_hash, "seed": params["seed"],
                    "dataset": spec.dataset.name, "model": spec.model.name,
                    "unlearning_method": entry.method, "scenario": params["scenario"],
                    "feature": scores["feature"], "attack_model": scores["attack_model"],
                    "side": "target", "set_index": int(case.meta["set_index"][i]),
                    "pair_index": int(case.meta["pair_index"][i]),
                    "record": int(case.meta["record"][i]), "label": int(arrays["label"][i]),
                    "score": float(arrays["score"][e, i]),
                    "classical_score": float(arrays["classical_score"][e, i]),
                    "mia_key": row["key"]})
    wall = time.perf_counter() - start
    for row in mia_rows:
        row["wall_s"] = wall
    if member_rows:
        flat = spec.flat_config()
        for row in member_rows:
            row.update(flat)
    out: Rows = {ATTACKS_TABLE: mia_rows, RECORDS_TABLE: member_rows}
    if settings.figures:
        from orchestrator.reporting import membership_figures as figs

        figs.write_roc_figure(ctx, spec, params["scenario"], entry.method, akey,
                              roc_curves(arrays))
        out[HANDOFF] = Handoff({"gain_points": figs.gain_points(mia_rows)})
    return out


@UNIT_FUNCTIONS.register(GAIN_FIGURE)
def mia_gain_figure(params: dict, ctx: TaskContext, inputs: UnitInputs) -> Rows:
    """Every attack's gain over classical MIA against the originals' generalisation gap."""
    from orchestrator.reporting import membership_figures as figs

    spec: Spec = params["spec"]
    points = [p for found in inputs.values("gain_points", params["attacks"]) for p in found]
    path = figs.write_gain_figure(ctx, points) if points else None
    return {FIGURE_INDEX: [{"key": params["key"], "experiment": spec.experiment,
                            "config_hash": spec.config_hash, "seed": spec.seeds[0],
                            "figure": "gain_vs_gap", "path": path, "points": len(points),
                            **spec.flat_config()}]}


# --- summaries --------------------------------------------------------------------------------
