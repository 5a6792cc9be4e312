"""``pair_membership``: membership inference against unlearning on the user's pair.

The attacker's shadow pairs (trained by the tool, stored logits) fit the attack models; the
candidates are the user's pair's posteriors: the forgotten records (members, deleted) beside
test records (never used), scored with AUC and a bootstrap interval over records — or, with
``forget: unknown``, training records ranked by their membership score."""

from __future__ import annotations

import time

import numpy as np

from orchestrator.spec import Spec
from orchestrator.stages.membership.attack import _Logits, _side_rows, attack_and_score
from orchestrator.stages.pair.params import PairAttack, PairParams, read_forget_ids
from orchestrator.stages.pair.planning import (
    candidate_records,
    load_user_pair,
    negative_records,
)
from orchestrator.units import UNIT_FUNCTIONS, Rows, TaskContext
from orchestrator.verdicts import auc, bootstrap_ci
from tasks.attacks import ATTACKS
from tasks.attacks.membership import PairRows, posterior_case
from tasks.params import to_dict

_SPLIT_CODE = {"train": 0, "test": 1}


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
        shadow = _side_rows(_Logits(ctx), params["shadow_pairs"])
    config = entry.typed_config(f"pair.attacks.{params['name']}.config")
    common = {"experiment": spec.experiment, "config_hash": spec.config_hash, "seed": seed,
              "paper": "chen2021", "dataset": spec.dataset.name, "model": pp.format,
              "pair_format": pp.format,
              "shadow_model": pp.format if method == "supplied" else spec.model.name,
              "unlearning_method": method, "scenario": "single", "membership": "in_out",
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
                      f"{scores['control']}", **common, **scores,
               "n_target_rows": len(target.label), "forget_size": len(ids)}
        # The interval over records: resampling the candidates (seeded, as the report does).
        pairs = np.stack([target.label, arrays["score"][e]], axis=1).astype(float)
        _, row["auc_low"], row["auc_high"] = bootstrap_ci(pairs, stat=auc)
        row.update(spec.flat_config())
        mia_rows.append(row)
        if scores["control"] == "none":
            for i in range(len(target.label)):
                member_rows.append({
                    "key": f"{row['key']}:{i}", "experiment": spec.experiment,
                    "config_hash": spec.config_hash, "seed": seed,
                    "dataset": spec.dataset.name, "model": pp.format,
                    "unlearning_method": method, "scenario": "single",
                    "feature": scores["feature"], "attack_model": scores["attack_model"],
                    "side": "target", "set_index": 0, "pair_index": 0,
                    "record": int(target.meta["record"][i]),
                    "split": "train" if target.meta["split"][i] == 0 else "test",
                    "label": int(target.label[i]), "score": float(arrays["score"][e, i]),
                    "classical_score": float(arrays["classical_score"][e, i]),
                    "mia_key": row["key"], **spec.flat_config()})
    wall = time.perf_counter() - start
    for row in mia_rows:
        row["wall_s"] = wall
    return {"mia": mia_rows, "membership": member_rows}


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
