"""The ``label_inference`` spec section: which class was forgotten (Hu et al., probing).

Plan, per seed:
* forget requests of kind ``class_share`` (for every class c and share p: the first
  floor(n_c p) class-c training samples), unlearned with the section's ``unlearning`` list
  (default: the spec's) by ordinary ``unlearn_batch`` units;
* one ``craft_probes`` unit per (original, box): probes generated once per victim theta and
  reused for every unlearning setting; rows in ``probes`` (one per class);
* one ``score_probes`` unit per (method, box): queries theta and every theta_u on the probes and
  writes one ``label_inference`` row per (request, decision score);
* a figure of per-class confidence changes.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from orchestrator.plan import CorePlan, Unit, original_key, recipe_id, unlearned_key
from orchestrator.report import summary
from orchestrator.spec import STAGES, Spec, StageEntry, UnlearningSpec, stable_hash
from orchestrator.storage import Location
from orchestrator.store import artifact_key
from orchestrator.units import (
    UNIT_FUNCTIONS,
    TaskContext,
    load_original,
    load_torch_model,
    provider_state,
)
from tasks.attacks.probing import ProbeConfig, Probes, craft_probes, original_case, score_probes
from tasks.cases import PublicMetadata, QueryAccess, build_case
from tasks.params import ParamError, to_dict
from tasks.training import seed_everything
from tasks.unlearning import UNLEARNING, ForgetConfig, make_requests

TABLE = "label_inference"


@dataclass(frozen=True)
class LabelInferenceStage:
    shares: tuple[float, ...] = (0.1, 0.5, 1.0)
    classes: tuple[int, ...] | None = None  # default: every class
    boxes: tuple[Literal["white", "black"], ...] = ("white", "black")
    scores: tuple[Literal["prob", "logodds"], ...] = ("prob", "logodds")
    # Unlearning methods for these requests, written like the spec's ``unlearning`` list;
    # default: the spec's list.
    unlearning: tuple[dict[str, Any], ...] | None = None
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    requests_per_task: int = 10
    figure: bool = True

    def __post_init__(self) -> None:
        if not self.shares or any(not 0 < s <= 1 for s in self.shares):
            raise ValueError("shares must be a non-empty list of values in (0, 1]")
        if not self.boxes or not self.scores:
            raise ValueError("boxes and scores must not be empty")

    def methods(self, spec: Spec) -> tuple[UnlearningSpec, ...]:
        if self.unlearning is None:
            return spec.unlearning
        out = []
        for i, item in enumerate(self.unlearning):
            item = dict(item)
            if "method" not in item:
                raise ParamError(f"label_inference.unlearning[{i}].method",
                                 "required key is missing")
            name = str(item.pop("method"))
            UNLEARNING.get(name)
            entry = UnlearningSpec(name, item)
            entry.typed_params(f"label_inference.unlearning[{i}]")
            out.append(entry)
        return tuple(out)


def _probe_key(okey: str, cfg: ProbeConfig, seed: int) -> str:
    return artifact_key("probes", original=okey, config=to_dict(cfg), seed=seed)


def _row_key(ukey: str, box: str, score: str, cfg: ProbeConfig) -> str:
    return "li-" + stable_hash([ukey, box, score, to_dict(cfg)], 24)


def plan_label_inference(spec: Spec, core: CorePlan, params: LabelInferenceStage) -> list[Unit]:
    if spec.model.family != "torch":
        raise ValueError("label_inference: probing needs a torch model (gradients or ZOO "
                         f"on inputs), got {spec.model.name!r}")
    try:
        methods = params.methods(spec)
    except ParamError as err:
        raise ValueError(str(err)) from None
    lspec = dataclasses.replace(spec, unlearning=methods)
    cfg_forget = ForgetConfig(kind="class_share", classes=params.classes, shares=params.shares)
    units: list[Unit] = []
    fig_deps: list[str] = []
    fig_rows: list[str] = []
    for seed in spec.seeds:
        sel = core.selections[seed]
        pkey = core.pretrain_keys.get(seed)
        requests = make_requests(cfg_forget, sel.train, core.dataset.y_train, seed)
        probe_units: dict[tuple[str, str], str] = {}
        for m, entry in enumerate(methods):
            okey = original_key(lspec, seed, m)
            if (seed, recipe_id(lspec, m)) not in core.original_keys:
                units.append(Unit(okey, "train", "train_original",
                                  {"spec": lspec, "seed": seed, "method_index": m,
                                   "model_key": okey, "pretrain_key": pkey},
                                  "models", (okey,), deps=(pkey,) if pkey else (),
                                  label=f"train original seed {seed}"))
            unlearn_units, ukeys_all = [], []
            for start in range(0, len(requests), params.requests_per_task):
                batch = requests[start: start + params.requests_per_task]
                ukeys = tuple(unlearned_key(lspec, seed, m, r) for r in batch)
                ukey = "unlearn-" + stable_hash(ukeys, 24)
                units.append(Unit(ukey, "unlearn", "unlearn_batch",
                                  {"spec": lspec, "seed": seed, "method_index": m,
                                   "requests": batch, "model_keys": ukeys,
                                   "original_key": okey, "pretrain_key": pkey},
                                  "models", ukeys, deps=(okey,),
                                  label=f"{entry.method} x{len(batch)} class shares"))
                unlearn_units.append(ukey)
                ukeys_all.extend(ukeys)
            for box in params.boxes:
                probe_cfg = dataclasses.replace(params.probes, box=box)
                prkey = _probe_key(okey, probe_cfg, seed)
                if (okey, box) not in probe_units:
                    probe_units[(okey, box)] = prkey
                    n_cls = core.dataset.num_classes
                    units.append(Unit(prkey, "attack", "craft_probes",
                                      {"spec": lspec, "seed": seed, "method_index": m,
                                       "original_key": okey, "pretrain_key": pkey,
                                       "config": probe_cfg, "probe_key": prkey},
                                      "probes", tuple(f"{prkey}-c{t}" for t in range(n_cls)),
                                      deps=(okey,), label=f"craft {box}-box probes"))
                row_keys = tuple(_row_key(k, box, s, probe_cfg)
                                 for k in ukeys_all for s in params.scores)
                skey = "liscore-" + stable_hash([spec.config_hash, row_keys], 24)
                units.append(Unit(skey, "attack", "score_probes",
                                  {"spec": lspec, "seed": seed, "method_index": m,
                                   "requests": requests, "model_keys": ukeys_all,
                                   "original_key": okey, "pretrain_key": pkey,
                                   "config": probe_cfg, "probe_key": prkey,
                                   "scores": params.scores, "unit_key": skey},
                                  TABLE, row_keys, deps=(prkey, *unlearn_units),
                                  label=f"score {entry.method} {box}-box"))
                fig_deps.append(skey)
                fig_rows.extend(row_keys)
    if params.figure and fig_deps:
        fkey = "lifig-" + stable_hash([spec.config_hash, fig_deps], 24)
        units.append(Unit(fkey, "attack", "label_inference_figure",
                          {"spec": spec, "key": fkey, "units": fig_deps}, "figures", (fkey,),
                          deps=tuple(fig_deps), label="label inference figure"))
    return units


def _metadata(dataset) -> PublicMetadata:
    return PublicMetadata(dataset=dataset.name, kind=dataset.kind,
                          input_shape=tuple(dataset.input_shape),
                          num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std,
                          knowledge="paper")


@UNIT_FUNCTIONS.register("craft_probes")
def craft_probes_unit(params: dict, ctx: TaskContext) -> dict[str, list[dict[str, Any]]]:
    spec: Spec = params["spec"]
    seed, cfg, prkey = params["seed"], params["config"], params["probe_key"]
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    seed_everything(seed)
    theta = load_original(spec, seed, params["method_index"], params["original_key"], ctx,
                          state)
    private = copy.deepcopy(theta).eval()
    for p in private.parameters():
        p.requires_grad_(False)
    case = original_case(_metadata(state.dataset), private if cfg.box == "white" else None,
                         QueryAccess(private, state.device), state.device)
    if ctx.store.has(prkey, ".npz"):
        probes = Probes.from_arrays(ctx.store.load_arrays(prkey), cfg.box, cfg.loss)
    else:
        probes = craft_probes(case, cfg, seed)
        ctx.store.save_arrays(prkey, wall_s=np.asarray(probes.wall_s), **probes.as_arrays())
    rows = []
    for t in range(state.dataset.num_classes):
        sel = probes.target == t
        row = {"key": f"{prkey}-c{t}", "experiment": spec.experiment,
               "config_hash": spec.config_hash, "seed": seed, "probe_key": prkey,
               "original_key": params["original_key"], "class": t, "box": cfg.box,
               "probe_loss": cfg.loss, "n_probes": int(sel.sum()),
               "accepted": int(probes.accepted[sel].sum()),
               "confidence_min": float(probes.confidence[sel].min()),
               "confidence_mean": float(probes.confidence[sel].mean()),
               "queries": int(probes.queries[sel].sum()),
               "calls_max": int(probes.calls[sel].max()), "wall_s": probes.wall_s}
        row.update(spec.flat_config())
        rows.append(row)
    return {"probes": rows}


@UNIT_FUNCTIONS.register("score_probes")
def score_probes_unit(params: dict, ctx: TaskContext) -> dict[str, list[dict[str, Any]]]:
    spec: Spec = params["spec"]
    seed, m, cfg = params["seed"], params["method_index"], params["config"]
    entry = spec.unlearning[m]
    method_cls = UNLEARNING.get(entry.method)
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    dataset = state.dataset
    seed_everything(seed)
    theta = load_original(spec, seed, m, params["original_key"], ctx, state)
    probes = Probes.from_arrays(ctx.store.load_arrays(params["probe_key"]), cfg.box, cfg.loss)
    rows, deltas, meta_rows = [], [], []
    for request, ukey in zip(params["requests"], params["model_keys"]):
        theta_u = load_torch_model(ctx, ukey, state)
        for score in params["scores"]:
            scfg = dataclasses.replace(cfg, score=score)
            case, _truth = build_case(dataset=dataset, theta=theta, theta_u=theta_u,
                                     request=request, knowledge="paper",
                                     white_box=cfg.box == "white", device=state.device)
            pred, delta, spent = score_probes(case, probes, scfg)
            true_class = int(request.forgotten_class)
            row = {"key": _row_key(ukey, cfg.box, score, cfg), "experiment": spec.experiment,
                   "config_hash": spec.config_hash, "seed": seed,
                   "dataset": spec.dataset.name, "model": spec.model.name,
                   "unlearning_method": entry.method, "exact": method_cls.exact,
                   "request_id": request.request_id, "p": float(request.share),
                   "forget_size": len(request.indices),
                   "n_finetune": len(state.train_indices),
                   "true_class": true_class, "predicted_class": int(pred[0]),
                   "predicted": [int(v) for v in pred], "top_k": cfg.top_k,
                   "correct": bool(true_class in pred[: cfg.top_k]),
                   "box": cfg.box, "score": score, "probe_loss": cfg.loss,
                   "n_probes": len(probes.target),
                   "probes_failed": int((~probes.accepted).sum()),
                   "crafting_queries": probes.total_queries, "scoring_queries": int(spent),
                   "queries": probes.total_queries + int(spent),
                   "delta_by_class": [float(v) for v in delta],
                   "delta_own": float(delta[true_class]), "node_id": ctx.node_id}
            row.update(spec.flat_config())
            rows.append(row)
            deltas.append(delta)
            meta_rows.append((entry.method, cfg.box, score, float(request.share), true_class))
    buf = io.BytesIO()
    np.savez_compressed(buf, delta=np.asarray(deltas),
                        method=np.asarray([r[0] for r in meta_rows]),
                        box=np.asarray([r[1] for r in meta_rows]),
                        score=np.asarray([r[2] for r in meta_rows]),
                        share=np.asarray([r[3] for r in meta_rows]),
                        true_class=np.asarray([r[4] for r in meta_rows]))
    Location(ctx.results_uri).write_bytes(buf.getvalue(), spec.experiment, TABLE, "deltas",
                                          f"{params['unit_key']}.npz")
    return {TABLE: rows}


@UNIT_FUNCTIONS.register("label_inference_figure")
def label_inference_figure(params: dict, ctx: TaskContext) -> dict[str, list[dict[str, Any]]]:
    """Per (method, box, score) at the largest share: the forgotten class's own-confidence
    change next to the largest drop among the other classes, for every forgotten class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    panels: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
    top_share = 0.0
    loaded = []
    for unit in params["units"]:
        data = np.load(io.BytesIO(loc.read_bytes(spec.experiment, TABLE, "deltas",
                                                 f"{unit}.npz")), allow_pickle=False)
        loaded.append({k: data[k] for k in data.files})
        top_share = max(top_share, float(data["share"].max()))
    for data in loaded:
        for d, meth, box, score, share, c in zip(data["delta"], data["method"], data["box"],
                                                  data["score"], data["share"],
                                                  data["true_class"]):
            if float(share) == top_share:
                panels.setdefault((str(meth), str(box), str(score)), {})[int(c)] = d
    keys = sorted(panels)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        classes = sorted(panels[key])
        own = [panels[key][c][c] for c in classes]
        other = [np.nanmin(np.delete(panels[key][c], c)) for c in classes]
        pos = np.arange(len(classes))
        ax.bar(pos - 0.2, own, 0.4, label="forgotten class")
        ax.bar(pos + 0.2, other, 0.4, label="largest other drop")
        ax.set_xticks(pos, [str(c) for c in classes], fontsize=7)
        ax.set_title(f"{key[0]}, {key[1]}-box, {key[2]} (p={top_share:g})", fontsize=8)
        ax.set_xlabel("forgotten class", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("mean own-class change", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    path = loc.write_bytes(buf.getvalue(), spec.experiment, "figures",
                           f"label-inference-{spec.config_hash}.png")
    row = {"key": params["key"], "experiment": spec.experiment,
           "config_hash": spec.config_hash, "seed": spec.seeds[0],
           "figure": "label_inference", "path": path}
    row.update(spec.flat_config())
    return {"figures": [row]}


@summary(TABLE)
def _summary(df):
    grouped = df.groupby(["unlearning_method", "box", "score", "p"], sort=True)
    return grouped.agg(settings=("key", "count"), accuracy=("correct", "mean"),
                       queries=("queries", "mean"),
                       probes_failed=("probes_failed", "mean")).round(3)


@summary("probes")
def _probe_summary(df):
    grouped = df.groupby(["box"], sort=True)
    return grouped.agg(classes=("key", "count"), accepted=("accepted", "sum"),
                       probes=("n_probes", "sum"), queries=("queries", "sum"),
                       confidence_min=("confidence_min", "min"), wall_s=("wall_s", "max"))


STAGES.register("label_inference")(StageEntry(LabelInferenceStage, plan_label_inference))
