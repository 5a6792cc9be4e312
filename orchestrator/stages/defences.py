"""Stage ``defences``: every defence of both papers, swept over strengths, measured against the
attack it targets, with the utility it costs (table ``defenses``, figure leakage vs utility).

Spec section::

    defences:
      attack: recovery            # default attack of every sweep:
                                  #   recovery | label_inference | membership
      sweeps:
        - defence: pruning        # a name of tasks.defences.DEFENCES
          strengths: [0.3, 0.6, 0.8, 0.9]
          params: {scope: weights}   # fixed settings besides the swept strength
      recovery: {knowledge: reference, label_mode: known, iterations: 300, restarts: 4}
      membership: {set_num: 3, set_size: 500, unlearning_size: 20, attack_models: [dt]}

Where each defence acts (``acts_on``) decides how it is measured:

- ``update`` defences (obfuscation, pruning, fine-tuning) against **recovery**: the core plan
  trains theta and unlearns every request; per (defence, strength) one unit defends each
  theta_u (seeded per request), runs feature recovery (:func:`tasks.attacks.inversion.recover`,
  the same restart seeds for every strength, so rows are paired) on the defended pair and scores
  PSNR against the forgotten samples. Utility: test accuracy of theta and of the defended theta_u.
- ``outputs`` defences (label-only, top-k, temperature) against **membership**: the membership
  stage's shadow and target models are planned once (:func:`plan_membership`, shared with it);
  per (defence, strength) one unit applies the defence to the stored logits of shadow *and*
  target pairs (the adaptive attacker) through the membership attack's ``OUTPUT_TRANSFORMS``
  seam, before every feature including the classical baseline (ATTACKS.md 6.4), and refits the
  attack. These defences keep the argmax, so test accuracy is unchanged by construction.
- ``training`` (DP-SGD) against **membership**: per noise multiplier, every shadow and target
  model (originals and retrained) is trained with DP-SGD through the unlearning method
  ``retrain_dp``; epsilon is opacus' accountant's for the originals' training (replayed by
  :func:`tasks.defences.dp_epsilon`, equal to what training reported).

Every sweep is preceded by one undefended row per attack (``defence = "none"``) unless
``baseline: false``. One ``defenses`` row per (defence, strength, attack, seed, unlearning
method): the attack metric (mean PSNR in dB for recovery, target AUC of ``primary_feature`` for
membership, label accuracy for label inference), utility, epsilon where it applies. The figure
plots leakage against utility, one curve per defence, under ``RESULTS/<experiment>/figures/``.

- ``update`` or ``outputs`` defences against **label_inference**: the label-inference stage's
  class-share requests and probes (crafted once against the undefended theta) are planned
  once; per (defence, strength) one unit scores the probes on the published theta_u (update)
  or on defended posteriors of both models (outputs). Metric: label accuracy over requests.

Recovery under output or training defences, membership under update defences and DP-SGD
against label inference are not implemented: such a sweep is rejected at validation.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from orchestrator.plan import CorePlan, Unit, plan_core
from orchestrator.report import summary
from orchestrator.spec import STAGES, Spec, StageEntry, UnlearningSpec, stable_hash
from orchestrator.stages.label_inference import LabelInferenceStage, plan_label_inference
from orchestrator.stages.membership import MembershipParams, plan_membership
from orchestrator.storage import Location
from orchestrator.units import (
    UNIT_FUNCTIONS,
    Rows,
    TaskContext,
    load_original,
    load_provider_pairs,
    load_torch_model,
    provider_state,
)
from tasks.attacks.inversion import InversionConfig, recover
from tasks.attacks.membership import (
    CLASSICAL,
    OUTPUT_TRANSFORMS,
    UNLEARNING_FEATURES,
    PairRows,
    run_attacks,
)
from tasks.attacks.probing import ProbeConfig, Probes, infer_label
from tasks.defences import (
    DEFENCES,
    DPParams,
    UpdateContext,
    defend_outputs,
    dp_epsilon,
    register_output_transforms,
)
from tasks.metrics import image_scores, match_reconstructions, psnr
from tasks.metrics_membership import auc, degradation
from tasks.params import build, to_dict
from tasks.registry import UnknownComponentError
from tasks.splits import select_training_set
from tasks.training import accuracy, predict_logits, seed_everything
from tasks.unlearning import UNLEARNING

TABLE = "defenses"
ATTACKS = ("recovery", "label_inference", "membership")
# Which attack each kind of defence is measured against (see the module docstring).
SUPPORTED = {"update": ("recovery", "label_inference"), "outputs": ("membership", "label_inference"),
             "training": ("membership",)}

# The membership attack's posterior seam learns every output defence by name.
register_output_transforms(OUTPUT_TRANSFORMS)


@dataclass(frozen=True)
class Sweep:
    """One defence over a list of strengths (``null`` for a defence without one)."""

    defence: str
    strengths: tuple[float | None, ...] = (None,)
    params: dict[str, Any] = field(default_factory=dict)
    attack: Literal["recovery", "membership", "label_inference"] | None = None

    def __post_init__(self) -> None:
        try:
            cls = DEFENCES.get(self.defence)
        except UnknownComponentError as err:
            raise ValueError(str(err)) from None
        if not self.strengths:
            raise ValueError(f"{self.defence}: strengths must not be empty")
        d = cls()
        for s in self.strengths:
            d.params(s, self.params, self.defence)  # ParamError/DefenceError: a ValueError


@dataclass(frozen=True)
class DefencesStage:
    """Settings of the ``defences`` section."""

    attack: Literal["recovery", "membership", "label_inference"] = "recovery"
    sweeps: tuple[Sweep, ...] = ()
    baseline: bool = True  # an undefended row per attack
    # --- recovery ---
    recovery: InversionConfig = field(default_factory=lambda: InversionConfig(
        name="defended", iterations=300, restarts=4))
    methods: tuple[str, ...] | None = None  # unlearning methods attacked (default: all)
    max_requests: int | None = 8  # forget requests attacked per method and seed
    finetune_source: Literal["public", "test"] = "public"
    # --- membership ---
    membership: MembershipParams = field(default_factory=lambda: MembershipParams(
        set_num=3, set_size=500, unlearning_size=20, scenarios=("single",),
        attack_models=("dt",), shuffled_control=(), membership_rows=False, figures=False))
    primary_feature: str = "sorted_diff"
    # --- label inference (probes crafted once per theta, white box by default) ---
    label_inference: LabelInferenceStage = field(default_factory=lambda: LabelInferenceStage(
        shares=(1.0,), boxes=("white",), scores=("prob",), probes=ProbeConfig(box="white"),
        figure=False))
    figure: bool = True

    def __post_init__(self) -> None:
        if not self.sweeps:
            raise ValueError("sweeps: give at least one {defence, strengths} entry")
        for i, sw in enumerate(self.sweeps):
            attack = sw.attack or self.attack
            kind = DEFENCES.get(sw.defence).acts_on
            if attack not in SUPPORTED[kind]:
                raise ValueError(
                    f"sweeps[{i}]: defence {sw.defence!r} acts on {kind}; it is measured "
                    f"against {' or '.join(SUPPORTED[kind])} here, not {attack!r} "
                    "(DP-SGD against the Hu et al. attacks is not implemented)")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        if self.membership.output_defence != "none":
            raise ValueError("membership.output_defence: the defences stage sets it per sweep; "
                             "leave it 'none'")
        if self.primary_feature not in (*self.membership.features, CLASSICAL):
            raise ValueError(f"primary_feature {self.primary_feature!r} is not among "
                             f"membership.features {list(self.membership.features)}")

    def attacks(self) -> list[str]:
        return list(dict.fromkeys(sw.attack or self.attack for sw in self.sweeps))


def _strength(value) -> float | None:
    return None if value is None else float(value)


def _points(spec: Spec, stage: DefencesStage, attack: str):
    """(defence, strength, params) in sweep order, the baseline first."""
    out = [("none", None, {})] if stage.baseline else []
    for sw in stage.sweeps:
        if (sw.attack or stage.attack) == attack:
            out += [(sw.defence, _strength(s), dict(sw.params)) for s in sw.strengths]
    return out


# --- planning ---------------------------------------------------------------------------------

def plan_defences(spec: Spec, core: CorePlan, stage: DefencesStage) -> list[Unit]:
    units: list[Unit] = []
    unit_keys: list[str] = []
    for attack in stage.attacks():
        if attack == "recovery":
            new = _plan_recovery(spec, core, stage)
        elif attack == "label_inference":
            new = _plan_label_inference(spec, core, stage)
        else:
            new = _plan_membership(spec, core, stage)
        units += new
        unit_keys += [u.key for u in new if u.fn.startswith("defence_")]
    if stage.figure and unit_keys:
        fkey = "deffig-" + stable_hash([spec.config_hash, unit_keys], 24)
        units.append(Unit(fkey, "attack", "defence_figure",
                          {"spec": spec, "key": fkey, "unit_keys": unit_keys}, "figures",
                          (fkey,), deps=tuple(unit_keys), label="defences figure"))
    return units


def _plan_recovery(spec: Spec, core: CorePlan, stage: DefencesStage) -> list[Unit]:
    if spec.model.family != "torch":
        raise ValueError(f"defences: feature recovery needs a torch model, got "
                         f"{spec.model.name!r}")
    if core.dataset.kind != "image":
        raise ValueError(f"defences: feature recovery needs an image dataset, got "
                         f"{core.dataset.name!r}")
    # The stage replaces the core plan (membership needs none); recovery rebuilds it.
    rebuilt = plan_core(spec, None, dataset=core.dataset)
    units = list(rebuilt.units)
    methods = stage.methods or tuple(e.method for e in spec.unlearning)
    for name in methods:
        if name not in {e.method for e in spec.unlearning}:
            raise ValueError(f"defences.methods: {name!r} is not in the spec's unlearning list")
    groups: dict[tuple[int, int], list] = {}
    for pair in rebuilt.pairs:
        if pair.method in methods:
            groups.setdefault((pair.seed, pair.method_index), []).append(pair)
    for (seed, m), pairs in groups.items():
        pairs = pairs[: stage.max_requests] if stage.max_requests else pairs
        deps = tuple(dict.fromkeys(p.unlearn_unit for p in pairs))
        for defence, strength, dparams in _points(spec, stage, "recovery"):
            key = "defence-" + stable_hash(
                [spec.config_hash, "recovery", seed, m, [p.unlearned_key for p in pairs],
                 defence, strength, dparams, to_dict(stage.recovery), stage.finetune_source],
                24)
            units.append(Unit(key, "attack", "defence_recovery",
                              {"spec": spec, "seed": seed, "method_index": m, "pairs": pairs,
                               "config": stage.recovery, "defence": defence,
                               "strength": strength, "defence_params": dparams,
                               "finetune_source": stage.finetune_source,
                               "pretrain_key": rebuilt.pretrain_keys.get(seed), "key": key},
                              TABLE, (key,), deps=deps,
                              label=f"defence {defence} {strength} recovery "
                                    f"{spec.unlearning[m].method}"))
    return units


def _plan_label_inference(spec: Spec, core: CorePlan, stage: DefencesStage) -> list[Unit]:
    """The label-inference stage's originals, class-share unlearning and probes; our own
    scoring unit per (defence, strength) in place of its ``score_probes``."""
    rebuilt = plan_core(spec, None, dataset=core.dataset)
    li = dataclasses.replace(stage.label_inference, figure=False)
    planned = plan_label_inference(spec, rebuilt, li)
    units = [u for u in planned if u.fn not in ("score_probes", "label_inference_figure")]
    for su in (u for u in planned if u.fn == "score_probes"):
        p = su.params
        for score in p["scores"]:
            for defence, strength, dparams in _points(spec, stage, "label_inference"):
                tparams: dict[str, Any] = {}
                if defence != "none" and DEFENCES.get(defence).acts_on == "outputs":
                    tparams = to_dict(DEFENCES.get(defence)().params(strength, dparams,
                                                                     defence))
                    defend_outputs(np.zeros((1, core.dataset.num_classes)), defence, tparams)
                key = "defence-" + stable_hash(
                    [spec.config_hash, "label_inference", su.key, score, defence, strength,
                     dparams, stage.finetune_source], 24)
                units.append(Unit(key, "attack", "defence_label_inference",
                                  {**p, "base_spec": spec, "score": score, "defence": defence,
                                   "strength": strength, "defence_params": dparams,
                                   "transform_params": tparams,
                                   "finetune_source": stage.finetune_source, "key": key},
                                  TABLE, (key,), deps=su.deps,
                                  label=f"defence {defence} {strength} label inference"))
    return units


def _dp_spec(spec: Spec, dparams: DPParams) -> Spec:
    """The spec with every unlearning method replaced by DP-SGD retraining."""
    entry = UnlearningSpec("retrain_dp", to_dict(dparams))
    raw = dict(spec.raw)
    raw["unlearning"] = [{"method": "retrain_dp", **to_dict(dparams)}]
    return dataclasses.replace(spec, unlearning=(entry,), raw=raw)


def _membership_models(spec: Spec, core: CorePlan, mparams: MembershipParams):
    """The membership stage's model units and, per attack unit, its pairs and dependencies."""
    planned = plan_membership(spec, core, mparams)
    models = [u for u in planned if u.fn != "mia_attack"]
    attacks = [u for u in planned if u.fn == "mia_attack"]
    return models, attacks


def _plan_membership(spec: Spec, core: CorePlan, stage: DefencesStage) -> list[Unit]:
    mparams = stage.membership
    units: list[Unit] = []
    base_models, base_attacks = _membership_models(spec, core, mparams)
    used_base = False
    for defence, strength, dparams in _points(spec, stage, "membership"):
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
            units.append(Unit(key, "attack", "defence_membership",
                              {"spec": run_spec, "base_spec": spec, "seed": p["seed"],
                               "method_index": p["method_index"], "scenario": p["scenario"],
                               "k": p["k"], "pairs": p["pairs"], "set_size": p["set_size"],
                               "settings": mparams, "defence": defence, "strength": strength,
                               "defence_params": dparams, "transform": transform,
                               "transform_params": tparams, "dp": dp,
                               "primary_feature": stage.primary_feature, "key": key},
                              TABLE, (key,), deps=au.deps,
                              label=f"defence {defence} {strength} membership "
                                    f"{p['scenario']}"))
    if used_base:
        units = base_models + units
    return units


STAGES.register("defences")(StageEntry(params=DefencesStage, planner=plan_defences,
                                       replaces_core=True))


# --- worker side: recovery --------------------------------------------------------------------

def _seed_of(*parts: Any) -> int:
    return int(stable_hash(list(parts), 8), 16)


def _test_acc(model, dataset, device) -> float:
    return accuracy(predict_logits(model, dataset.x_test, device), dataset.y_test)


def _common(spec: Spec, params: dict, attack: str) -> dict[str, Any]:
    defence = params["defence"]
    cls = None if defence == "none" else DEFENCES.get(defence)
    return {"key": params["key"], "experiment": spec.experiment,
            "config_hash": spec.config_hash, "seed": params["seed"],
            "dataset": spec.dataset.name, "model": spec.model.name, "attack": attack,
            "defence": defence, "acts_on": cls.acts_on if cls else None,
            "defence_paper": cls.paper if cls else None,
            "strength_name": cls.strength_field if cls else None,
            "strength": params["strength"],
            "defence_params": json.dumps(params["defence_params"], sort_keys=True) or None}


@UNIT_FUNCTIONS.register("defence_recovery")
def defence_recovery(params: dict, ctx: TaskContext) -> Rows:
    """Defend every theta_u of one (seed, method) at one strength, recover, score."""
    spec: Spec = params["spec"]
    seed, config = params["seed"], params["config"]
    provider = load_provider_pairs(params, ctx)
    state, theta = provider.state, provider.theta
    d = state.dataset
    defence = params["defence"]
    dobj = None if defence == "none" else DEFENCES.get(defence)()
    dparams = None if dobj is None else dobj.params(params["strength"],
                                                    params["defence_params"], defence)
    sel = select_training_set(len(d.y_train), spec.dataset.pool_size, spec.dataset.train_size,
                              seed)
    if params["finetune_source"] == "public":
        uctx = UpdateContext(d.x_train, d.y_train, sel.public, spec.training, state.device,
                             "public")
    else:
        uctx = UpdateContext(d.x_test, d.y_test, np.arange(len(d.y_test)), spec.training,
                             state.device, "test")
    start = time.perf_counter()
    cases, truths, acc_u, acc_ud, forget_acc = [], [], [], [], []
    for pair in params["pairs"]:
        theta_u = load_torch_model(ctx, pair.unlearned_key, state)
        defended = theta_u if dobj is None else dobj.apply(
            theta, theta_u, dparams, seed=_seed_of(seed, pair.request.request_id, defence),
            context=uctx)
        acc_ud.append(_test_acc(theta_u, d, state.device))
        acc_u.append(_test_acc(defended, d, state.device))
        idx = np.asarray(pair.request.indices)
        forget_acc.append(accuracy(predict_logits(defended, d.x_train[idx], state.device),
                                   d.y_train[idx]))
        case, truth = provider.case(defended, pair.request, config.knowledge)
        cases.append(case)
        truths.append(truth)
    defend_wall = time.perf_counter() - start
    # The recovery stage's restart seeds: every strength starts from the same images.
    seeds = [_seed_of(seed, p.request.request_id, config.name) for p in params["pairs"]]
    result = recover(cases, config, seeds=seeds)
    mean_img = (d.x_train[sel.public].mean(0) if len(sel.public) else d.x_test.mean(0))
    psnrs, ssims, base_mean, label_hits = [], [], [], []
    for truth, images, used in zip(truths, result.images, result.labels):
        rec_idx, orig_idx = match_reconstructions(images, truth.x)
        scores = image_scores(images[rec_idx], truth.x[orig_idx], d.std)
        psnrs += [float(v) for v in scores["psnr"]]
        ssims += [float(v) for v in scores["ssim"]]
        base_mean += [float(v) for v in psnr(np.repeat(mean_img[None], len(truth.x), 0),
                                             truth.x)]
        label_hits += [float(u == t) for u, t in zip(used[rec_idx], truth.y[orig_idx])]
    row = _common(spec, params, "recovery")
    row.update({
        "unlearning_method": provider.method, "exact": provider.exact,
        "attack_metric_name": "psnr_db", "attack_metric": float(np.mean(psnrs)),
        "psnr_max": float(np.max(psnrs)), "psnr_min": float(np.min(psnrs)),
        "psnr_per_target": psnrs, "ssim": float(np.mean(ssims)),
        "psnr_mean_image": float(np.mean(base_mean)),
        "gain_db": float(np.mean(psnrs) - np.mean(base_mean)),
        "cos_final": float(np.mean(result.cosine)), "label_acc": float(np.mean(label_hits)),
        "n_targets": len(psnrs), "attack_config": config.name, "knowledge": config.knowledge,
        "label_mode": config.label_mode, "iterations": int(result.iterations),
        "restarts": config.restarts,
        "test_acc_original": _test_acc(theta, d, state.device),
        "test_acc_unlearned": float(np.mean(acc_u)),
        "test_acc_unlearned_undefended": float(np.mean(acc_ud)),
        "forget_acc_unlearned": float(np.mean(forget_acc)),
        "finetune_source": uctx.source if defence == "fine_tuning" else None,
        "epsilon": None, "delta": None, "defend_wall_s": defend_wall,
        "wall_s": time.perf_counter() - start, "node_id": ctx.node_id})
    row.update(spec.flat_config())
    _write_point(ctx, spec, row, utility="test_acc_unlearned")
    return {TABLE: [row]}


def _update_context(spec: Spec, state, seed: int, source: str) -> UpdateContext:
    d = state.dataset
    if source == "public":
        sel = select_training_set(len(d.y_train), spec.dataset.pool_size,
                                  spec.dataset.train_size, seed)
        return UpdateContext(d.x_train, d.y_train, sel.public, spec.training, state.device,
                             "public")
    return UpdateContext(d.x_test, d.y_test, np.arange(len(d.y_test)), spec.training,
                         state.device, "test")


@UNIT_FUNCTIONS.register("defence_label_inference")
def defence_label_inference(params: dict, ctx: TaskContext) -> Rows:
    """Label inference (probing) on every class-share request under one defence.

    Probes were crafted once against the undefended theta (the label-inference stage's
    ``craft_probes``); the defence acts on what the attacker scores them with: the published
    (defended) theta_u for update defences, the posteriors of both models for output defences.
    """
    spec: Spec = params["spec"]
    base: Spec = params["base_spec"]
    seed, m, cfg = params["seed"], params["method_index"], params["config"]
    entry = spec.unlearning[m]
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    d = state.dataset
    seed_everything(seed)
    start = time.perf_counter()
    theta = load_original(spec, seed, m, params["original_key"], ctx, state)
    probes = Probes.from_arrays(ctx.store.load_arrays(params["probe_key"]), cfg.box, cfg.loss)
    defence = params["defence"]
    dobj = None if defence == "none" else DEFENCES.get(defence)()
    update = dobj is not None and dobj.acts_on == "update"
    dparams = dobj.params(params["strength"], params["defence_params"], defence) if update \
        else None
    uctx = _update_context(spec, state, seed, params["finetune_source"]) if update else None

    def posterior(logits: np.ndarray) -> np.ndarray:
        if dobj is not None and dobj.acts_on == "outputs":
            return defend_outputs(logits, defence, params["transform_params"])
        return defend_outputs(logits)

    p0 = posterior(predict_logits(theta, probes.x, state.device))
    hits, own, acc_u, acc_ud = [], [], [], []
    for request, ukey in zip(params["requests"], params["model_keys"]):
        theta_u = load_torch_model(ctx, ukey, state)
        published = dobj.apply(theta, theta_u, dparams, seed=_seed_of(
            seed, request.request_id, defence), context=uctx) if update else theta_u
        acc_ud.append(_test_acc(theta_u, d, state.device))
        acc_u.append(_test_acc(published, d, state.device))
        p1 = posterior(predict_logits(published, probes.x, state.device))
        pred, delta = infer_label(p0, p1, d.num_classes, cfg.probes_per_class, cfg.top_k,
                                  params["score"])
        hits.append(float(int(request.forgotten_class) in pred[: cfg.top_k]))
        own.append(float(delta[int(request.forgotten_class)]))
    row = _common(base, params, "label_inference")
    row.update({
        "unlearning_method": entry.method, "exact": UNLEARNING.get(entry.method).exact,
        "attack_metric_name": "label_acc", "attack_metric": float(np.mean(hits)),
        "n_requests": len(hits), "shares": sorted({float(r.share) for r in params["requests"]}),
        "delta_own_mean": float(np.nanmean(own)), "box": cfg.box, "score": params["score"],
        "top_k": cfg.top_k, "probes_failed": int((~probes.accepted).sum()),
        "test_acc_original": _test_acc(theta, d, state.device),
        "test_acc_unlearned": float(np.mean(acc_u)),
        "test_acc_unlearned_undefended": float(np.mean(acc_ud)),
        "finetune_source": uctx.source if defence == "fine_tuning" else None,
        "epsilon": None, "delta": None, "wall_s": time.perf_counter() - start,
        "node_id": ctx.node_id})
    row.update(base.flat_config())
    _write_point(ctx, base, row, utility="test_acc_unlearned")
    return {TABLE: [row]}


# --- worker side: membership ------------------------------------------------------------------

class _StoredLogits:
    """Logits the membership stage stored per model: arrays ``indices`` and ``logits``."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx, self.cache = ctx, {}

    def arrays(self, key: str) -> dict[str, np.ndarray]:
        if key not in self.cache:
            self.cache[key] = self.ctx.store.load_arrays(key)
        return self.cache[key]

    def rows(self, key: str, records) -> np.ndarray:
        a = self.arrays(key)
        where = {int(r): i for i, r in enumerate(a["indices"])}
        return a["logits"][[where[int(r)] for r in records]]


def _side(store: _StoredLogits, pairs: list[dict]) -> PairRows:
    p, q, label = [], [], []
    for pair in pairs:
        for records, y in ((pair["positives"], 1), (pair["negatives"], 0)):
            p.append(store.rows(pair["p_key"], records))
            q.append(store.rows(pair["q_key"], records))
            label += [y] * len(records)
    return PairRows(np.concatenate(p), np.concatenate(q), np.asarray(label), {})


def _mean_acc(store: _StoredLogits, keys, name: str) -> float:
    return float(np.mean([float(store.arrays(k)[name]) for k in dict.fromkeys(keys)]))


@UNIT_FUNCTIONS.register("defence_membership")
def defence_membership(params: dict, ctx: TaskContext) -> Rows:
    """Membership inference on one scenario's shadow/target pairs under one defence."""
    spec: Spec = params["spec"]
    base: Spec = params["base_spec"]
    settings: MembershipParams = params["settings"]
    start = time.perf_counter()
    store = _StoredLogits(ctx)
    shadow = _side(store, params["pairs"]["shadow"])
    target = _side(store, params["pairs"]["target"])
    features = tuple(dict.fromkeys((*settings.features, CLASSICAL)))
    model = settings.attack_models[0]
    results = run_attacks(shadow, target, features, (model,), params["transform"],
                          params["transform_params"], settings.attack_seed)
    by_feature = {r.feature: r for r in results if r.control == "none"}
    primary = by_feature[params["primary_feature"]]
    classical = by_feature[CLASSICAL]
    tpairs = params["pairs"]["target"]
    row = _common(base, params, "membership")
    entry = spec.unlearning[params["method_index"]]
    row.update({
        "unlearning_method": entry.method, "scenario": params["scenario"],
        "attack_model": model, "primary_feature": params["primary_feature"],
        "attack_metric_name": "auc", "attack_metric": auc(target.label, primary.test_scores),
        "classical_auc": auc(target.label, classical.test_scores),
        "n_shadow_rows": len(shadow.label), "n_target_rows": len(target.label),
        "set_num": settings.set_num, "set_size": params["set_size"],
        "unlearning_size": settings.unlearning_size,
        "test_acc_original": _mean_acc(store, [p["original_key"] for p in tpairs], "test_acc"),
        "train_acc_original": _mean_acc(store, [p["original_key"] for p in tpairs],
                                        "train_acc"),
        "test_acc_unlearned": _mean_acc(store, [p["q_key"] for p in tpairs], "test_acc"),
    })
    row["generalisation_gap"] = row["train_acc_original"] - row["test_acc_original"]
    for f in features:
        row[f"auc_{f}"] = auc(target.label, by_feature[f].test_scores)
    row["auc_max_unlearning_feature"] = max(row[f"auc_{f}"] for f in features
                                            if f in UNLEARNING_FEATURES)
    if params["primary_feature"] != CLASSICAL:
        row["deg_count"], row["deg_rate"] = degradation(target.label, primary.test_scores,
                                                        classical.test_scores)
    if params["dp"] is not None:
        dpp = build(DPParams, params["dp"], "dp")
        orig = dp_epsilon(params["set_size"], spec.training, dpp)
        unl = dp_epsilon(params["set_size"] - params["k"], spec.training, dpp)
        row.update({"epsilon": orig["epsilon"], "epsilon_unlearned": unl["epsilon"],
                    "delta": dpp.delta, "dp_steps": orig["steps"],
                    "dp_sample_rate": orig["sample_rate"], "dp_sampling": dpp.sampling,
                    "dp_accountant": dpp.accountant, "max_grad_norm": dpp.max_grad_norm})
    else:
        row.update({"epsilon": None, "delta": None})
    row.update({"wall_s": time.perf_counter() - start, "node_id": ctx.node_id})
    row.update(base.flat_config())
    _write_point(ctx, base, row, utility="test_acc_unlearned")
    return {TABLE: [row]}


# --- figure -----------------------------------------------------------------------------------

def _write_point(ctx: TaskContext, spec: Spec, row: dict, utility: str) -> None:
    """A small JSON beside the table, so the figure unit never waits for buffered rows."""
    point = {k: row.get(k) for k in ("key", "attack", "defence", "strength", "strength_name",
                                     "attack_metric", "attack_metric_name", "epsilon",
                                     "unlearning_method", "seed", "classical_auc")}
    point["utility"] = row[utility]
    point["utility_name"] = utility
    point["epsilon"] = None if point["epsilon"] is None or not math.isfinite(
        point["epsilon"]) else point["epsilon"]
    Location(ctx.results_uri).write_bytes(json.dumps(point).encode(), spec.experiment, TABLE,
                                          "points", f"{row['key']}.json")


def draw_figure(points: list[dict], title: str):
    """Leakage (y) against utility (x): one curve per defence, strengths annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(p["attack"] for p in points))
    fig, axes = plt.subplots(1, len(attacks), figsize=(6.0 * len(attacks), 4.6),
                             squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        pts = [p for p in points if p["attack"] == attack]
        for group in sorted({(p["unlearning_method"]) for p in pts}):
            sub = [p for p in pts if p["unlearning_method"] == group]
            base = [p for p in sub if p["defence"] == "none"]
            suffix = f" ({group})" if len({p['unlearning_method'] for p in pts}) > 1 else ""
            for b in base:
                ax.scatter([b["utility"]], [b["attack_metric"]], marker="*", s=140,
                           color="black", zorder=5, label=f"undefended{suffix}")
            for defence in dict.fromkeys(p["defence"] for p in sub if p["defence"] != "none"):
                curve = sorted((p for p in sub if p["defence"] == defence),
                               key=lambda p: (p["strength"] is None, p["strength"] or 0))
                xs = [p["utility"] for p in curve]
                ys = [p["attack_metric"] for p in curve]
                (line,) = ax.plot(xs, ys, marker="o", label=f"{defence}{suffix}")
                for p in curve:
                    if p["strength"] is not None:
                        ax.annotate(f"{p['strength']:g}", (p["utility"], p["attack_metric"]),
                                    fontsize=6, xytext=(3, 3), textcoords="offset points",
                                    color=line.get_color())
        name = pts[0]["attack_metric_name"]
        ax.set_xlabel("utility: test accuracy of the (defended) unlearned model")
        ax.set_ylabel({"auc": "leakage: membership AUC (target)",
                       "psnr_db": "leakage: recovery PSNR (dB)",
                       "label_acc": "leakage: label-inference accuracy"}.get(name, name))
        if name == "auc":
            ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"{title}: {attack}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


@UNIT_FUNCTIONS.register("defence_figure")
def defence_figure(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    points = []
    for key in params["unit_keys"]:
        try:
            points.append(json.loads(loc.read_bytes(spec.experiment, TABLE, "points",
                                                    f"{key}.json")))
        except FileNotFoundError:
            continue  # a failed unit: its row is in the errors table
    path = None
    if points:
        png = draw_figure(points, spec.experiment)
        path = loc.write_bytes(png, spec.experiment, "figures",
                               f"defences-{spec.config_hash}.png")
    row = {"key": params["key"], "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": spec.seeds[0], "figure": "defences", "path": path, "points": len(points)}
    row.update(spec.flat_config())
    return {"figures": [row]}


@summary(TABLE)
def _summary(df):
    cols = [c for c in ("attack", "unlearning_method", "defence", "strength") if c in df]
    agg = {"rows": ("key", "count"), "leakage": ("attack_metric", "mean"),
           "test_acc_orig": ("test_acc_original", "mean"),
           "test_acc_unl": ("test_acc_unlearned", "mean")}
    if "classical_auc" in df:
        agg["classical_auc"] = ("classical_auc", "mean")
    if "epsilon" in df:
        agg["epsilon"] = ("epsilon", "mean")
    return df.groupby(cols, sort=True, dropna=False).agg(**agg).round(4)

