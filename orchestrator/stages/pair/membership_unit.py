"""``pair_membership``: membership inference against unlearning on the user's pair.

The attacker's shadow pairs (trained by the tool, stored logits) fit the attack models; the
candidates are the user's pair's posteriors: the forgotten records (members, deleted) beside
test records (never used). One pre-registered test per attack is the verdict
(:mod:`orchestrator.stages.pair.evidence`: chosen on validation shadow pairs, per-record
p-values, its false-positive rate and power measured on shadow pairs); every (feature, attack
model) fitted on all shadow pairs is kept as exploratory. With ``forget: unknown``, training
records are ranked by their membership score. Rows name the user's pair ``your pair`` and the
shadow pairs' unlearning method ``shadow_recipe`` (the attacker's guess)."""

from __future__ import annotations

import time

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.membership.attack import StoredLogits, attack_and_score, pair_rows
from orchestrator.stages.pair.evidence import preregistered_test
from orchestrator.stages.pair.params import PairAttack, PairParams, read_forget_ids
from orchestrator.stages.pair.planning import (
    candidate_records,
    load_user_pair,
    negative_records,
)
from tasks.analysis.membership import ATTACKS_TABLE, RECORDS_TABLE
from tasks.analysis.statistics import stratified_auc_ci
from tasks.attacks import ATTACKS
from tasks.attacks.membership import PairRows, posterior_case
from tasks.params import to_dict

_SPLIT_CODE = {"train": 0, "test": 1}
YOUR_PAIR = "your pair"
PREREGISTERED = "preregistered"


def _target_rows(pair, dataset, parts: list[tuple[str, np.ndarray, int]]) -> PairRows:
    """p and q logits of the pair on each (split, record ids, label) part."""
    p, q, label, record, split = [], [], [], [], []
    for name, ids, y in parts:
        if not len(ids):
            continue
        p.append(pair.original.logits(name, ids, dataset))
        q.append(pair.unlearned.logits(name, ids, dataset))
        label += [y] * len(ids)
        record += [int(i) for i in ids]
        split += [_SPLIT_CODE[name]] * len(ids)
    n = len(label)
    return PairRows(np.concatenate(p).astype(np.float64), np.concatenate(q).astype(np.float64),
                    np.asarray(label), {"set_index": np.zeros(n, int),
                                        "pair_index": np.zeros(n, int),
                                        "record": np.asarray(record), "split": np.asarray(split)})


def _supplied_shadow(pp: PairParams, dataset, seed: int) -> PairRows:
    """Rows of the supplied shadow pairs: each pair's forgotten records (members) beside test
    records (never used), drawn per pair."""
    parts = []
    for i, item in enumerate(pp.shadow):
        shadow = load_user_pair(pp, dataset, files=item)
        negatives = negative_records(pp, shadow.records("test", dataset), seed + 1 + i)
        rows = _target_rows(shadow, dataset, [("train", np.asarray(item["ids"]), 1),
                                              ("test", negatives, 0)])
        rows.meta["pair_index"][:] = i
        parts.append(rows)
    return PairRows(np.concatenate([r.p_logits for r in parts]),
                    np.concatenate([r.q_logits for r in parts]),
                    np.concatenate([r.label for r in parts]),
                    {k: np.concatenate([r.meta[k] for r in parts]) for k in parts[0].meta})


@UNIT_FUNCTIONS.register("pair_membership")
def pair_membership(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    pp: PairParams = params["params"]
    entry: PairAttack = params["entry"]
    seed, akey = params["seed"], params["attack_key"]
    settings = pp.membership_params()
    start = time.perf_counter()
    dataset = spec.dataset.load(ctx.data_root)
    pair = load_user_pair(pp, dataset)
    if params["shadow_pairs"] is None:  # the user's own shadow pairs
        method, shadow = "supplied", _supplied_shadow(pp, dataset, seed)
    else:
        method = spec.unlearning[params["method_index"]].method
        shadow = pair_rows(StoredLogits(ctx), params["shadow_pairs"])
    config = entry.typed_config(f"pair.attacks.{params['name']}.config")
    common = {"experiment": spec.experiment, "config_hash": spec.config_hash, "seed": seed,
              "paper": "chen2021", "dataset": spec.dataset.name, "model": pp.format,
              "pair_format": pp.format,
              "shadow_model": pp.format if method == "supplied" else spec.model.name,
              "unlearning_method": YOUR_PAIR, "shadow_recipe": method,
              "scenario": "single", "membership": "in_out",
              "attack_config": params["name"],
              "set_num": len(pp.shadow) if method == "supplied" else settings.set_num,
              "set_size": params["set_size"], "n_shadow_rows": len(shadow.label)}
    if not pp.forget_known:
        return _ranking(spec, pp, pair, dataset, shadow, config, settings, akey, seed, common,
                        start)
    ids = np.asarray(read_forget_ids(pp.forget))
    negatives = negative_records(pp, pair.records("test", dataset), seed)
    target = _target_rows(pair, dataset, [("train", ids, 1), ("test", negatives, 0)])
    case, truth = posterior_case(target, shadow, settings.output_defence,
                                 settings.output_defence_params)
    scored = attack_and_score([case], [truth], to_dict(config), settings.attack_seed)
    arrays = scored.arrays
    mia_rows, member_rows = [], []
    for e, scores in enumerate(scored.rows[0]):
        row = {"key": f"{akey}:{scores['feature']}:{scores['attack_model']}:"
                      f"{scores['control']}", **common, **scores, "test": "exploratory",
               "n_target_rows": len(target.label), "forget_size": len(ids)}
        # The interval over records: deleted and never-used ones resampled separately.
        _, row["auc_low"], row["auc_high"] = stratified_auc_ci(target.label,
                                                               arrays["score"][e])
        row.update(spec.flat_config())
        mia_rows.append(row)
        if scores["control"] == "none":
            member_rows += _member_rows(spec, pp, seed, target, row, arrays["score"][e],
                                        arrays["classical_score"][e])
    pre = _preregistered_row(target, shadow, config, settings, akey, common, len(ids))
    pre.update(spec.flat_config())
    mia_rows.append(pre)
    if "target_scores" in pre:
        member_rows += _member_rows(spec, pp, seed, target, pre, pre.pop("target_scores"),
                                    None)
    wall = time.perf_counter() - start
    for row in mia_rows:
        row["wall_s"] = wall
    return {ATTACKS_TABLE: mia_rows, RECORDS_TABLE: member_rows}


def _preregistered_row(target: PairRows, shadow: PairRows, config, settings, akey: str,
                       common: dict, k: int) -> dict:
    """The attack's one verdict: the pre-registered test (or why there is none)."""
    found = preregistered_test(target, shadow, config, settings.output_defence,
                               settings.output_defence_params, settings.attack_seed)
    row = {"key": f"{akey}:{PREREGISTERED}", **common, "n_target_rows": len(target.label),
           "forget_size": k}
    if found is None:
        row.update({"test": PREREGISTERED, "control": "none", "combined_p": float("nan"),
                    "auc": float("nan"), "note": "the shadow pairs cannot be split into a fit "
                                                 "and a validation half: give more of them"})
        return row
    pre, scores = found
    row.update(pre)
    row["target_scores"] = scores
    return row


def _member_rows(spec: Spec, pp: PairParams, seed: int, target: PairRows, row: dict,
                 score: np.ndarray, classical: np.ndarray | None) -> list[dict]:
    """Per-record scores of one fitted attack on the user's pair (``membership`` table)."""
    out = []
    for i in range(len(target.label)):
        out.append({
            "key": f"{row['key']}:{i}", "experiment": spec.experiment,
            "config_hash": spec.config_hash, "seed": seed, "dataset": spec.dataset.name,
            "model": pp.format, "unlearning_method": YOUR_PAIR,
            "shadow_recipe": row["shadow_recipe"], "scenario": "single",
            "feature": row["feature"], "attack_model": row["attack_model"],
            "test": row["test"], "side": "target", "set_index": 0, "pair_index": 0,
            "record": int(target.meta["record"][i]),
            "split": "train" if target.meta["split"][i] == 0 else "test",
            "label": int(target.label[i]), "score": float(score[i]),
            "classical_score": float("nan") if classical is None else float(classical[i]),
            "mia_key": row["key"], **spec.flat_config()})
    return out


def _ranking(spec, pp, pair, dataset, shadow, config, settings, akey, seed, common,
             start) -> Rows:
    """forget unknown: candidate training records ranked by P(deleted), the mean score over
    the fitted (feature, attack model) pairs."""
    records = candidate_records(pp, pair.records("train", dataset), seed)
    target = _target_rows(pair, dataset, [("train", records, 0)])
    case, _ = posterior_case(target, shadow, settings.output_defence,
                             settings.output_defence_params)
    attack = ATTACKS.get("membership")()
    result = attack.run([case], config, seeds=[settings.attack_seed])
    entries = [e for e, (_, _, control) in enumerate(config.entries()) if control == "none"
               and e < len(result.scores[0])]
    score = result.scores[0][entries].mean(axis=0)
    order = np.argsort(-score, kind="stable")
    rank = np.empty(len(order), int)
    rank[order] = np.arange(1, len(order) + 1)
    wall = time.perf_counter() - start
    rows = [{"key": f"{akey}:{int(r)}", **common, "record": int(r), "split": "train",
             "score": float(s), "rank": int(k), "entries": len(entries), "wall_s": wall,
             **spec.flat_config()} for r, s, k in zip(records, score, rank)]
    return {"membership_ranking": rows}
