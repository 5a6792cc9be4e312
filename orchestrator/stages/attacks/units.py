"""Worker side of the generic ``attacks`` stage: prepare, attack a batch, draw the figure.

A batch builds exactly the cases its attack's threat model asks for (white-box modules or
only counted query access; paper or reference knowledge), runs the attack, and hands guesses
and ground truth to the attack's scorer; the attack itself never sees the truth.
"""

from __future__ import annotations

import copy
import time
from functools import partial

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.provider import (
    load_original,
    load_provider_pairs,
    load_torch_model,
    provider_state,
)
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec, flatten, stable_hash
from orchestrator.stages.attacks.planning import PREPARED_TABLE, row_key
from orchestrator.store.artifacts import reuse
from orchestrator.store.handoff import HANDOFF, Handoff, UnitInputs, handoff_path
from orchestrator.store.location import Location
from orchestrator.store.tables import FIGURE_INDEX, FIGURES_DIR
from tasks.analysis import SCORERS, ScoringContext
from tasks.cases import Case, PublicMetadata, QueryAccess
from tasks.params import key_settings, to_dict
from tasks.plotting import png_bytes
from tasks.splits import select_training_set
from tasks.training import seed_everything


def _private(model):
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _target_seed(seed: int, request_id: str, name: str) -> int:
    return int(stable_hash([seed, request_id, name], 8), 16)


def scoring_context(spec: Spec, dataset, seed: int) -> ScoringContext:
    """The attacker's public baselines for scoring: the mean image of its public data (the
    public split when the recipe has one, else the test split)."""
    mean_image, source = None, None
    if dataset.kind == "image":
        sel = select_training_set(len(dataset.y_train), spec.dataset.pool_size,
                                  spec.dataset.train_size, seed)
        if len(sel.public):
            mean_image, source = dataset.x_train[sel.public].mean(0), "public_split"
        else:
            mean_image, source = dataset.x_test.mean(0), "test_split"
    return ScoringContext(num_classes=dataset.num_classes, std=dataset.std,
                          mean_image=mean_image, mean_source=source, seed=seed)


@UNIT_FUNCTIONS.register("attack_prepare")
def attack_prepare(params: dict, ctx: TaskContext) -> Rows:
    """The attack's work against the original alone (e.g. probes), stored as arrays.

    ``params["defence"]`` (the defences stage): an output defence the original's query access
    answers through, so a black-box attacker crafts against the defended outputs it scores
    with (``transform_params``: its typed settings)."""
    spec: Spec = params["spec"]
    entry, seed, key = params["entry"], params["seed"], params["prepared_key"]
    attack = entry.attack_class()()
    config = entry.typed_config()
    threat = attack.threat_model(config)
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    seed_everything(seed)
    theta = load_original(spec, seed, params["method_index"], params["original_key"], ctx,
                          state)
    private = _private(theta)
    d = state.dataset
    meta = PublicMetadata(dataset=d.name, kind=d.kind, input_shape=tuple(d.input_shape),
                          num_classes=d.num_classes, mean=d.mean, std=d.std)
    transform = None
    if params.get("defence", "none") != "none":
        from tasks.defences import output_transform

        transform = output_transform(params["defence"], params.get("transform_params"))
    case = Case(meta, theta=private if threat.white_box else None,
                query_original=QueryAccess(private, state.device, transform),
                device=state.device)
    start = time.perf_counter()
    arrays = reuse(partial(ctx.store.load_arrays, key)) if ctx.store.has(key, ".npz") else None
    if arrays is None:
        arrays = attack.prepare(case, config, seed) or {}
        ctx.store.save_arrays(key, **arrays)
    row = {"key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": seed, "attack": entry.attack, "attack_config": params["name"],
           "original_key": params["original_key"], "queries": int(case.query_original.queries),
           "arrays": sorted(arrays), "wall_s": time.perf_counter() - start,
           "node_id": ctx.node_id}
    row.update(spec.flat_config())
    return {PREPARED_TABLE: [row]}


@UNIT_FUNCTIONS.register("attack_batch")
def attack_batch(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    entry, name, seed = params["entry"], params["name"], params["seed"]
    attack, scorer, config, threat = entry.resolve()
    provider = load_provider_pairs(params, ctx)
    state = provider.state
    cases, truths = [], []
    for pair in params["pairs"]:
        theta_u = load_torch_model(ctx, pair.unlearned_key, state)
        case, truth = provider.case(theta_u, pair.request, threat.knowledge,
                                    white_box=threat.white_box)
        cases.append(case)
        truths.append(truth)
    prepared = (ctx.store.load_arrays(params["prepared_key"]) if params.get("prepared_key")
                else None)
    seeds = [_target_seed(seed, p.request.request_id, name) for p in params["pairs"]]
    start = time.perf_counter()
    result = attack.run(cases, config, seeds=seeds, prepared=prepared)
    wall = time.perf_counter() - start
    scored = scorer.score(result, truths, config, scoring_context(spec, state.dataset, seed))
    settings = key_settings(config)
    config_cols = flatten(to_dict(config), "attack")
    common = {"experiment": spec.experiment, "config_hash": spec.config_hash, "seed": seed,
              "dataset": spec.dataset.name, "model": spec.model.name,
              "unlearning_method": provider.method, "exact": provider.exact,
              "n_finetune": len(state.train_indices), "attack": entry.attack,
              "attack_config": name, "attack_config_hash": stable_hash(settings, 12),
              "knowledge": threat.knowledge, "white_box": threat.white_box,
              "wall_s": wall / len(cases), "batch_wall_s": wall,
              "batch_targets": len(cases), "node_id": ctx.node_id}
    rows, labels = [], []
    for pair, case_rows in zip(params["pairs"], scored.rows):
        for row in case_rows:
            part = row.get("sample_index") if scorer.per_sample else None
            full = {"key": row_key(pair.unlearned_key, entry, settings, name, part),
                    "request_id": pair.request.request_id, "forget_kind": pair.request.kind,
                    **common, **row, **config_cols}
            full.update(spec.flat_config())
            rows.append(full)
            labels.append(f"{provider.method} / {name}")
    out: Rows = {scorer.table: rows}
    if scored.arrays:  # the figure's arrays, handed on to the figure unit
        if not scorer.per_sample:
            labels = labels[:len(cases)]
        out[HANDOFF] = Handoff(arrays={"label": np.asarray(labels), **scored.arrays})
        path = handoff_path(ctx, params["unit_key"])
        for row in rows:
            row["arrays_path"] = path
    return out


@UNIT_FUNCTIONS.register("attack_figure")
def attack_figure(params: dict, ctx: TaskContext, inputs: UnitInputs) -> Rows:
    spec: Spec = params["spec"]
    table = params["table"]
    loc = Location(ctx.results_uri)
    arrays = [h.arrays for h in inputs.handoffs(params["units"]) if h.arrays]
    fig = SCORERS.get(params["scorer"])().figure(arrays, f"{spec.experiment}: {table}")
    path = None
    if fig is not None:
        path = loc.write_bytes(png_bytes(fig, dpi=120), spec.experiment, FIGURES_DIR,
                               f"{table}-{spec.config_hash}.png")
    row = {"key": params["key"], "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": spec.seeds[0], "figure": table, "path": path}
    row.update(spec.flat_config())
    return {FIGURE_INDEX: [row]}
