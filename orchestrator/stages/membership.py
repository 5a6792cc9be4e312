"""Stage ``membership``: membership inference against unlearning (Chen et al.; ATTACKS.md B).

The stage builds all its own models (``replaces_core``): for every seed and unlearning method,
``set_num`` shadow and ``set_num`` target originals on sampled sets S_i, and per original
``unlearning_size`` unlearned models. Units:

- ``mia_original`` (kind train): one original M_i; saves its logits on S_i and the side's
  negatives, its train/test accuracy, and for torch models the weights.
- ``mia_unlearn`` (kind unlearn): a batch of deletions of one original (a whole chain for the
  ``chain`` scenario, in order); saves each M_ij's logits on the records its pair scores.
- ``mia_attack`` (kind attack): one scenario; builds every feature from the stored logits
  (through the output-defence transform), fits every attack model on shadow pairs, tests on
  target pairs, and writes the ``mia`` and ``membership`` tables and the figures.

Every model is an artifact keyed by what determines it (data, recipe, S_i, deletions, seed),
so scenarios share models (``single`` and ``in_in`` use the same pairs) and reruns train
nothing twice. Scenarios::

    single   1 deleted record per pair is the positive (in_out)
    in_in    the same pairs; the positive is a record still in both models
    group    group_size records deleted per pair, all positives (k negatives per pair)
    online   retrain on (S_i minus U_ij) plus fresh replace-pool records
    chain    M_i -> M_i1 -> ... : version t deletes one more record; the attack compares
             version t with version t-1 (chain_reference: previous) or with M_i (original)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from orchestrator.plan import CorePlan, Unit
from orchestrator.report import summary
from orchestrator.spec import STAGES, Spec, StageEntry, stable_hash
from orchestrator.store import artifact_key
from orchestrator.units import UNIT_FUNCTIONS, Rows, TaskContext, load_torch_model, model_logits
from tasks.attacks.membership import (
    ATTACK_MODELS,
    CLASSICAL,
    FEATURES,
    OUTPUT_TRANSFORMS,
    UNLEARNING_FEATURES,
    PairRows,
    run_attacks,
)
from tasks.data import load_dataset
from tasks.metrics_membership import (
    accuracy as attack_accuracy,
)
from tasks.metrics_membership import (
    auc,
    degradation,
    roc,
    tpr_at_fpr,
)
from tasks.mia_splits import SIDES, SetPlan, effective_set_size, paper_split, sample_sets
from tasks.params import to_dict
from tasks.registry import UnknownComponentError
from tasks.training import accuracy, deterministic_mode, seed_everything
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState

SCENARIOS = ("single", "in_in", "group", "online", "chain")
# Methods that never look at the original model (its unlearn units need no original).
RETRAIN_FROM_SCRATCH = ("retrain", "retrain_dp")


@dataclass(frozen=True)
class MembershipParams:
    """Settings of the ``membership`` section (reference values of ATTACKS.md 6.2-6.5)."""

    set_num: int = 10  # originals per side
    set_size: int = 2000  # |S_i|, capped at max_set_fraction of the positive pool
    max_set_fraction: float = 0.5
    unlearning_size: int = 20  # unlearned models (pairs) per original
    scenarios: tuple[str, ...] = ("single",)
    group_size: int = 10  # records per deletion in the group scenario
    features: tuple[str, ...] = UNLEARNING_FEATURES
    attack_models: tuple[str, ...] = ("dt", "rf", "lr", "mlp")
    split_seed: int = 100
    replace_seed: int = 0
    deletion_sampling: Literal["without_replacement", "independent"] = "without_replacement"
    chain_reference: Literal["previous", "original"] = "previous"
    deletions_per_task: int = 20  # unlearned models per Ray task
    unlearned_eval_size: int = 1000  # test records scoring each unlearned model's accuracy
    # Applied to shadow and target logits alike before every feature (defences plug in here).
    output_defence: str = "none"
    output_defence_params: dict[str, Any] = field(default_factory=dict)
    attack_seed: int = 0
    shuffled_control: tuple[str, ...] = ("dt",)  # attack models also fitted on shuffled labels
    membership_rows: bool = True  # per-target-sample scores in the ``membership`` table
    figures: bool = True

    def __post_init__(self) -> None:
        if self.set_num < 1 or self.set_size < 2 or self.unlearning_size < 1:
            raise ValueError("set_num >= 1, set_size >= 2 and unlearning_size >= 1 are required")
        if self.group_size < 1 or self.deletions_per_task < 1:
            raise ValueError("group_size and deletions_per_task must be at least 1")
        if not 0 < self.max_set_fraction <= 1:
            raise ValueError("max_set_fraction must lie in (0, 1]")
        for s in self.scenarios:
            if s not in SCENARIOS:
                raise ValueError(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
        try:  # unknown names raise with the list of known ones
            for f in self.features:
                FEATURES.get(f)
            for m in (*self.attack_models, *self.shuffled_control):
                ATTACK_MODELS.get(m)
            OUTPUT_TRANSFORMS.get(self.output_defence)
        except UnknownComponentError as err:
            raise ValueError(str(err)) from None


@dataclass(frozen=True)
class Scenario:
    name: str
    k: int
    positive: Literal["deleted", "remaining"] = "deleted"
    online: bool = False
    chain: bool = False

    @property
    def family(self) -> str:
        """Scenarios with the same family share their unlearned models."""
        return f"k{self.k}" + ("-online" if self.online else "") + ("-chain" if self.chain
                                                                      else "")


def scenario(name: str, params: MembershipParams) -> Scenario:
    return {"single": Scenario("single", 1), "in_in": Scenario("in_in", 1, "remaining"),
            "group": Scenario("group", params.group_size),
            "online": Scenario("online", 1, online=True),
            "chain": Scenario("chain", 1, chain=True)}[name]


# --- planning ---------------------------------------------------------------------------------

def _members_hash(members: np.ndarray) -> str:
    return stable_hash([int(v) for v in members], 24)


def mia_original_key(spec: Spec, method_index: int, plan: SetPlan) -> str:
    entry = spec.unlearning[method_index]
    method = UNLEARNING.get(entry.method)()
    torch_recipe = to_dict(spec.training) if spec.model.family == "torch" else None
    return artifact_key("mia-original", dataset=spec.dataset.name, model=to_dict(spec.model),
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
            if entry.method == "refit":
                raise ValueError("membership: 'refit' needs a pretrained theta_0, which the "
                                 "membership stage does not train; use retrain or sisa")
            originals: dict[tuple[str, int], str] = {}
            for name in params.scenarios:
                sc = scenario(name, params)
                if sc.online and entry.method != "retrain":
                    raise ValueError("membership scenario 'online' retrains on the replaced "
                                     f"set: it needs unlearning method 'retrain', not "
                                     f"{entry.method!r}")
                model_units: list[str] = []
                pairs_by_side: dict[str, list[dict]] = {}
                for side in SIDES:
                    half = split.side(side)
                    size = effective_set_size(params.set_size, len(half.positive),
                                              params.max_set_fraction)
                    plans = sample_sets(split, side, params.set_num, size,
                                        params.unlearning_size, sc.k, seed,
                                        params.deletion_sampling)
                    side_pairs = pairs_by_side.setdefault(side, [])
                    for plan in plans:
                        okey = mia_original_key(spec, m, plan)
                        if (side, plan.index) not in originals:
                            originals[(side, plan.index)] = okey
                            query = np.unique(np.concatenate([plan.members, half.negative]))
                            units.append(Unit(
                                okey, "train", "mia_original",
                                {"spec": spec, "method_index": m, "side": side,
                                 "set_index": plan.index, "members": plan.members,
                                 "train_seed": plan.train_seed, "model_key": okey,
                                 "query": query, "seed": seed},
                                "models", (okey,), label=f"mia original {side} {plan.index}"))
                        model_units.append(okey)
                        units_for_set, pairs = _unlearn_units(spec, m, plan, okey, sc, params,
                                                              seed, side, size)
                        units.extend(units_for_set)
                        model_units.extend(u.key for u in units_for_set)
                        side_pairs.extend(pairs)
                attack_params = {
                    "spec": spec, "seed": seed, "method_index": m, "scenario": name,
                    "k": sc.k, "pairs": pairs_by_side, "features": tuple(params.features),
                    "attack_models": tuple(params.attack_models), "params": params,
                    "set_size": size}
                akey = "mia-attack-" + stable_hash(
                    {"pairs": pairs_by_side, "scenario": name, "settings": to_dict(params),
                     "seed": seed, "method": entry.method, "dataset": spec.dataset.name,
                     "model": to_dict(spec.model), "code": _code_version()}, 24)
                attack_params["attack_key"] = akey
                row_keys = tuple(_mia_row_key(akey, f, a, "none")
                                 for f in dict.fromkeys((*params.features, CLASSICAL))
                                 for a in params.attack_models)
                units.append(Unit(akey, "attack", "mia_attack", attack_params, "mia", row_keys,
                                  deps=tuple(dict.fromkeys(model_units)),
                                  label=f"mia attack {name} {entry.method} seed {seed}"))
    return units


def _code_version() -> str:
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
    needs_original = entry.method not in RETRAIN_FROM_SCRATCH
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


def _mia_row_key(akey: str, feature: str, model: str, control: str) -> str:
    return f"{akey}:{feature}:{model}:{control}"


STAGES.register("membership")(StageEntry(params=MembershipParams, planner=plan_membership,
                                         replaces_core=True))


# --- worker side ------------------------------------------------------------------------------

def _state(spec: Spec, params: dict, ctx: TaskContext) -> TrainingState:
    device = ctx.torch_device()
    if spec.runtime.deterministic and spec.model.family == "torch":
        deterministic_mode(device)
    dataset = load_dataset(spec.dataset.name, ctx.data_root)
    return TrainingState(dataset, spec.model, spec.training, np.asarray(params["members"]),
                         params["train_seed"], device)


def _suffix_ok(ctx: TaskContext, key: str, need_weights: bool) -> bool:
    return ctx.store.has(key, ".npz") and (not need_weights or ctx.store.has(key, ".pt"))


def _save_torch(ctx: TaskContext, key: str, model) -> None:
    payload: dict[str, Any] = {"state_dict": model.state_dict()}
    if hasattr(model, "shards"):
        payload["sisa_shards"] = len(model.shards)
        payload["checkpoints"] = getattr(model, "checkpoints", {})
    ctx.store.save_torch(key, payload)


def _base_row(spec: Spec, params: dict, key: str, role: str, wall: float,
              ctx: TaskContext) -> dict[str, Any]:
    entry = spec.unlearning[params["method_index"]]
    row = {"key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": params["seed"], "role": role, "stage": "membership",
           "unlearning_method": entry.method if role != "original" else None,
           "dataset": spec.dataset.name, "model": spec.model.name, "side": params["side"],
           "set_index": params["set_index"], "train_size": len(params["members"]),
           "wall_s": wall, "node_id": ctx.node_id, "forget_acc": None, "forget_loss": None,
           "forget_loss_original": None,
           "artifact": ctx.store.path(key, ".npz")}
    row.update(spec.flat_config())
    return row


@UNIT_FUNCTIONS.register("mia_original")
def mia_original(params: dict, ctx: TaskContext) -> Rows:
    """Train M_i on S_i (or find it in the store); keep its logits and accuracies."""
    spec: Spec = params["spec"]
    entry = spec.unlearning[params["method_index"]]
    method = UNLEARNING.get(entry.method)()
    key = params["model_key"]
    start = time.perf_counter()
    trained = False
    torch_model = spec.model.family == "torch"
    if _suffix_ok(ctx, key, torch_model):
        arrays = ctx.store.load_arrays(key)
    else:
        state = _state(spec, params, ctx)
        d = state.dataset
        seed_everything(state.seed)
        model = method.train_original(state, entry.typed_params())
        trained = True
        query = np.asarray(params["query"])
        members = np.asarray(params["members"])
        arrays = {"indices": query, "logits": model_logits(model, d.x_train[query],
                                                           state.device),
                  "train_acc": np.float64(accuracy(
                      model_logits(model, d.x_train[members], state.device), d.y_train[members])),
                  "test_acc": np.float64(accuracy(model_logits(model, d.x_test, state.device),
                                                  d.y_test))}
        if torch_model:
            _save_torch(ctx, key, model)
        ctx.store.save_arrays(key, **arrays)
    row = _base_row(spec, params, key, "original", time.perf_counter() - start, ctx)
    row.update(train_acc=float(arrays["train_acc"]), test_acc=float(arrays["test_acc"]),
               generalisation_gap=float(arrays["train_acc"] - arrays["test_acc"]),
               trained=trained, parent=None)
    return {"models": [row]}


def _load_original(spec: Spec, params: dict, ctx: TaskContext, state: TrainingState, method,
                   method_params):
    if spec.model.family == "torch":
        return load_torch_model(ctx, params["original_key"], state)
    # Scikit-learn models are not pickled; refitting from the same seed gives the same model.
    seed_everything(state.seed)
    return method.train_original(state, method_params)


@UNIT_FUNCTIONS.register("mia_unlearn")
def mia_unlearn(params: dict, ctx: TaskContext) -> Rows:
    """Unlearn a batch of deletions from one original (in order, for a chain)."""
    spec: Spec = params["spec"]
    entry = spec.unlearning[params["method_index"]]
    method = UNLEARNING.get(entry.method)()
    method_params = entry.typed_params()
    torch_model = spec.model.family == "torch"
    needs_model = entry.method not in RETRAIN_FROM_SCRATCH
    state = _state(spec, params, ctx)
    d = state.dataset
    eval_idx = np.sort(np.random.default_rng([params["seed"], 17]).permutation(len(d.y_test))[
        :params["eval_size"]])
    rows = []
    previous = None  # the model of the previous chain version
    for job in params["jobs"]:
        key = job["model_key"]
        start = time.perf_counter()
        trained = False
        cached = _suffix_ok(ctx, key, torch_model and params["chain"])
        model = None
        if cached:
            arrays = ctx.store.load_arrays(key)
            if params["chain"] and needs_model:
                model = load_torch_model(ctx, key, state) if torch_model else None
        if not cached or (params["chain"] and needs_model and model is None):
            first_of_chain = previous is None or not params["chain"]
            if needs_model and first_of_chain and state.original is None:
                state.original = _load_original(spec, params, ctx, state, method,
                                                method_params)
            if params["chain"]:
                state.removed = tuple(job["removed"])
                if previous is not None:
                    state.original = previous
            request = ForgetRequest(f"{params['scenario_family']}-{job['pair_index']}",
                                    "group" if len(job["forget"]) > 1 else "single",
                                    tuple(job["forget"]), tuple(job["replacement"]))
            seed_everything(state.seed)
            model = method.unlearn(state, request, method_params)
            trained = True
            if not cached:
                query = np.asarray(job["query"], dtype=np.int64)
                arrays = {"indices": query,
                          "logits": model_logits(model, d.x_train[query], state.device),
                          "test_acc": np.float64(accuracy(
                              model_logits(model, d.x_test[eval_idx], state.device),
                              d.y_test[eval_idx])),
                          "retrained": np.asarray(getattr(model, "retrained", ()),
                                                  dtype=np.int64)}
                if torch_model and params["chain"]:
                    _save_torch(ctx, key, model)
                ctx.store.save_arrays(key, **arrays)
        if params["chain"]:
            previous = model
        row = _base_row(spec, params, key, "unlearned", time.perf_counter() - start, ctx)
        row.update(test_acc=float(arrays["test_acc"]), train_acc=None,
                   trained=trained, parent=params["original_key"],
                   scenario_family=params["scenario_family"], pair_index=job["pair_index"],
                   forget_size=len(job["forget"]), replaced=len(job["replacement"]),
                   chain_position=len(job["removed"]) if params["chain"] else None,
                   shards_retrained=[int(s) for s in arrays["retrained"]] or None)
        rows.append(row)
    return {"models": rows}


class _Logits:
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


def _side_rows(store: _Logits, pairs: list[dict]) -> PairRows:
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


def _side_accuracy(store: _Logits, pairs: list[dict]) -> dict[str, float]:
    originals = list(dict.fromkeys(p["original_key"] for p in pairs))
    tr = [float(store.get(k)[2]["train_acc"]) for k in originals]
    te = [float(store.get(k)[2]["test_acc"]) for k in originals]
    unl = [float(store.get(k)[2]["test_acc"]) for k in dict.fromkeys(p["q_key"] for p in pairs)]
    return {"train_acc": float(np.mean(tr)), "test_acc": float(np.mean(te)),
            "gap": float(np.mean(tr) - np.mean(te)), "test_acc_unlearned": float(np.mean(unl))}


@UNIT_FUNCTIONS.register("mia_attack")
def mia_attack(params: dict, ctx: TaskContext) -> Rows:
    """Features, attack models, metrics and figures of one scenario."""
    spec: Spec = params["spec"]
    settings: MembershipParams = params["params"]
    entry = spec.unlearning[params["method_index"]]
    start = time.perf_counter()
    store = _Logits(ctx)
    shadow = _side_rows(store, params["pairs"]["shadow"])
    target = _side_rows(store, params["pairs"]["target"])
    acc_s = _side_accuracy(store, params["pairs"]["shadow"])
    acc_t = _side_accuracy(store, params["pairs"]["target"])
    results = run_attacks(shadow, target, params["features"], params["attack_models"],
                          settings.output_defence, settings.output_defence_params,
                          settings.attack_seed, settings.shuffled_control)
    classical = {r.attack_model: r for r in results
                 if r.feature == CLASSICAL and r.control == "none"}
    akey = params["attack_key"]
    num_shard = entry.params.get("shards", 5) if entry.method == "sisa" else None
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
              "test_acc_unlearned": acc_t["test_acc_unlearned"], "dp_epsilon": None,
              "code_version": _code_version()}
    mia_rows, member_rows = [], []
    for r in results:
        base = classical[r.attack_model]
        c_auc = auc(target.label, base.test_scores)
        row = {"key": _mia_row_key(akey, r.feature, r.attack_model, r.control), **common,
               "feature": r.feature, "attack_model": r.attack_model, "control": r.control,
               "auc": auc(target.label, r.test_scores),
               "acc": attack_accuracy(target.label, r.test_scores),
               "train_auc": auc(shadow.label, r.train_scores),
               "train_acc": attack_accuracy(shadow.label, r.train_scores),
               "tpr_at_1pct": tpr_at_fpr(target.label, r.test_scores, 0.01),
               "tpr_at_0_1pct": tpr_at_fpr(target.label, r.test_scores, 0.001),
               "classical_auc": c_auc,
               "classical_acc": attack_accuracy(target.label, base.test_scores),
               "classical_tpr_at_1pct": tpr_at_fpr(target.label, base.test_scores, 0.01)}
        row["auc_gain"] = row["auc"] - c_auc
        if r.feature == CLASSICAL or r.control != "none":
            row["deg_count"] = row["deg_rate"] = None
        else:
            row["deg_count"], row["deg_rate"] = degradation(target.label, r.test_scores,
                                                            base.test_scores)
        row.update(spec.flat_config())
        mia_rows.append(row)
        if settings.membership_rows and r.control == "none":
            for i in range(len(target.label)):
                member_rows.append({
                    "key": f"{row['key']}:{i}", "experiment": spec.experiment,
                    "config_hash": spec.config_hash, "seed": params["seed"],
                    "dataset": spec.dataset.name, "model": spec.model.name,
                    "unlearning_method": entry.method, "scenario": params["scenario"],
                    "feature": r.feature, "attack_model": r.attack_model, "side": "target",
                    "set_index": int(target.meta["set_index"][i]),
                    "pair_index": int(target.meta["pair_index"][i]),
                    "record": int(target.meta["record"][i]), "label": int(target.label[i]),
                    "score": float(r.test_scores[i]),
                    "classical_score": float(base.test_scores[i]), "mia_key": row["key"]})
    wall = time.perf_counter() - start
    for row in mia_rows:
        row["wall_s"] = wall
    if member_rows:
        flat = spec.flat_config()
        for row in member_rows:
            row.update(flat)
    if settings.figures:
        from orchestrator import membership_figures as figs

        curves = {(r.feature, r.attack_model): roc(target.label, r.test_scores)
                  for r in results if r.control == "none"}
        figs.write_scenario_figures(ctx, spec, params["scenario"], entry.method, akey, curves,
                                    mia_rows)
    return {"mia": mia_rows, "membership": member_rows}


# --- summaries --------------------------------------------------------------------------------

@summary("mia")
def _mia_summary(df):
    df = df[df["control"] == "none"] if "control" in df else df
    cols = ["dataset", "model", "unlearning_method", "scenario", "feature"]
    pivot = df.pivot_table(index=cols, columns="attack_model", values="auc", aggfunc="mean")
    extra = df.groupby(cols).agg(classical_auc=("classical_auc", "mean"),
                                 deg_count=("deg_count", "mean"), deg_rate=("deg_rate", "mean"),
                                 gap=("generalisation_gap", "mean"))
    return pivot.join(extra).round(3)


@summary("membership")
def _membership_summary(df):
    return df.groupby(["scenario", "feature", "attack_model"]).agg(
        rows=("key", "count"), members=("label", "sum"), mean_score=("score", "mean")).head(12)
