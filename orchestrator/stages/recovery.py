"""The ``recovery`` spec section: feature recovery (Hu et al.) on every (theta, theta_u).

Plan: per (seed, unlearning method, attack config), the core plan's forget requests are cut
into batches of ``targets_per_task``; each batch is one Ray task that recovers all its targets
(and all restarts) in one vectorised program, scores them against the ground truth (Hungarian
matching for k > 1), saves the images beside the table and returns one ``recoveries`` row per
forgotten sample. A final unit per variant draws originals above recoveries.

Baselines per target: a uniform random image (seeded) and the mean image of the attacker's
public data — the public split when the recipe has one (``dataset.pool_size``), else the test
split; the ``baseline_mean_source`` column says which.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.plan import CorePlan, Unit
from orchestrator.report import summary
from orchestrator.spec import STAGES, Spec, StageEntry, stable_hash
from orchestrator.storage import Location
from orchestrator.units import (
    UNIT_FUNCTIONS,
    TaskContext,
    load_provider_pairs,
    load_torch_model,
)
from tasks.attacks.inversion import InversionConfig, recover
from tasks.metrics import image_scores, match_reconstructions, psnr
from tasks.params import to_dict
from tasks.splits import select_training_set

TABLE = "recoveries"


@dataclass(frozen=True)
class RecoveryStage:
    """Settings of the ``recovery`` section."""

    # Attack configurations; each one attacks every selected model pair.
    configs: tuple[InversionConfig, ...] = (InversionConfig(),)
    methods: tuple[str, ...] | None = None  # unlearning methods to attack (default: all)
    targets_per_task: int = 16
    max_requests: int | None = None  # attack only the first requests of each method
    figure: bool = True

    def __post_init__(self) -> None:
        if not self.configs:
            raise ValueError("configs: give at least one attack configuration")
        names = [c.name for c in self.configs]
        if len(set(names)) != len(names):
            raise ValueError(f"configs: names must be unique, got {names}")
        if self.targets_per_task < 1:
            raise ValueError("targets_per_task must be at least 1")


def _row_key(unlearned_key: str, config: InversionConfig, sample: int) -> str:
    return "rec-" + stable_hash([unlearned_key, to_dict(config), sample], 24)


def _target_seed(seed: int, request_id: str, config: InversionConfig) -> int:
    return int(stable_hash([seed, request_id, config.name], 8), 16)


def plan_recovery(spec: Spec, core: CorePlan, params: RecoveryStage) -> list[Unit]:
    if spec.model.family != "torch":
        raise ValueError("recovery: feature recovery needs a torch model, got "
                         f"{spec.model.name!r}")
    if core.dataset.kind != "image":
        raise ValueError(f"recovery: needs an image dataset, got {core.dataset.name!r}")
    methods = params.methods or tuple(e.method for e in spec.unlearning)
    for name in methods:
        if name not in {e.method for e in spec.unlearning}:
            raise ValueError(f"recovery.methods: {name!r} is not in the spec's unlearning list")
    units: list[Unit] = []
    figure_deps: list[str] = []
    figure_rows: list[str] = []
    for config in params.configs:
        groups: dict[tuple[int, int], list] = {}
        for pair in core.pairs:
            if pair.method in methods:
                groups.setdefault((pair.seed, pair.method_index), []).append(pair)
        for (seed, m), pairs in groups.items():
            if params.max_requests is not None:
                pairs = pairs[: params.max_requests]
            for start in range(0, len(pairs), params.targets_per_task):
                batch = pairs[start: start + params.targets_per_task]
                row_keys = tuple(_row_key(p.unlearned_key, config, int(i))
                                 for p in batch for i in p.request.indices)
                key = "recover-" + stable_hash([spec.config_hash, row_keys], 24)
                deps = tuple(dict.fromkeys(p.unlearn_unit for p in batch))
                units.append(Unit(key, "attack", "recover_batch",
                                  {"spec": spec, "seed": seed, "method_index": m,
                                   "pairs": batch, "config": config,
                                   "pretrain_key": core.pretrain_keys.get(seed)},
                                  TABLE, row_keys, deps=deps,
                                  label=f"recover {spec.unlearning[m].method} "
                                        f"x{len(batch)} {config.name}"))
                figure_deps.append(key)
                figure_rows.extend(row_keys)
    if params.figure and figure_deps:
        fkey = "recfig-" + stable_hash([spec.config_hash, figure_deps], 24)
        units.append(Unit(fkey, "attack", "recovery_figure",
                          {"spec": spec, "key": fkey, "row_keys": figure_rows}, "figures",
                          (fkey,),
                          deps=tuple(figure_deps), label="recovery figure"))
    return units


def _baseline_images(spec: Spec, dataset, seed: int) -> tuple[np.ndarray, str]:
    sel = select_training_set(len(dataset.y_train), spec.dataset.pool_size,
                              spec.dataset.train_size, seed)
    if len(sel.public):
        return dataset.x_train[sel.public].mean(0), "public_split"
    return dataset.x_test.mean(0), "test_split"


@UNIT_FUNCTIONS.register("recover_batch")
def recover_batch(params: dict, ctx: TaskContext) -> dict[str, list[dict[str, Any]]]:
    spec: Spec = params["spec"]
    seed, config = params["seed"], params["config"]
    provider = load_provider_pairs(params, ctx)
    state = provider.state
    dataset = state.dataset
    cases, truths = [], []
    for pair in params["pairs"]:
        theta_u = load_torch_model(ctx, pair.unlearned_key, state)
        case, truth = provider.case(theta_u, pair.request, config.knowledge)
        cases.append(case)
        truths.append(truth)
    seeds = [_target_seed(seed, p.request.request_id, config) for p in params["pairs"]]
    start = time.perf_counter()
    result = recover(cases, config, seeds=seeds)
    wall = time.perf_counter() - start
    mean_img, mean_source = _baseline_images(spec, dataset, seed)
    rng = np.random.default_rng([seed, 31])
    rows, originals, recovered = [], [], []
    per_target_wall = wall / len(cases)
    for pair, truth, images, used, restart_losses, cos in zip(
            params["pairs"], truths, result.images, result.labels, result.restart_losses,
            result.cosine):
        rec_idx, orig_idx = match_reconstructions(images, truth.x)
        scores = image_scores(images[rec_idx], truth.x[orig_idx], dataset.std)
        random_img = rng.random(truth.x.shape, dtype=np.float32)
        base_random = psnr(random_img, truth.x)
        base_mean = psnr(np.broadcast_to(mean_img, truth.x.shape), truth.x)
        matched = dict(zip(orig_idx.tolist(), range(len(orig_idx))))
        for j, sample in enumerate(truth.indices):
            slot = matched.get(j)
            row = {
                "key": _row_key(pair.unlearned_key, config, int(sample)),
                "experiment": spec.experiment, "config_hash": spec.config_hash, "seed": seed,
                "dataset": spec.dataset.name, "model": spec.model.name,
                "unlearning_method": provider.method, "exact": provider.exact,
                "request_id": pair.request.request_id, "sample_index": int(sample),
                "k": len(truth.indices), "n_finetune": len(state.train_indices),
                "attack": "inversion", "attack_config": config.name,
                "attack_config_hash": stable_hash(to_dict(config), 12),
                "knowledge": config.knowledge, "label_mode": config.label_mode,
                "eval_model": result.eval_model[params["pairs"].index(pair)],
                "target_mode": "param",
                "true_label": int(truth.y[j]),
                "label_used": int(used[rec_idx[slot]]) if slot is not None else None,
                "mse": float(scores["mse"][slot]) if slot is not None else None,
                "psnr": float(scores["psnr"][slot]) if slot is not None else None,
                "psnr_ref": float(scores["psnr_ref"][slot]) if slot is not None else None,
                "ssim": float(scores["ssim"][slot]) if slot is not None else None,
                "psnr_random": float(base_random[j]), "psnr_mean_image": float(base_mean[j]),
                "baseline_mean_source": mean_source,
                "cos_final": float(cos), "matching_loss": float(1.0 - cos),
                "restart_losses": [float(v) for v in restart_losses],
                "iterations": int(result.iterations), "restarts": config.restarts,
                "lr": config.lr, "tv_weight": config.tv_weight, "optimizer": config.optimizer,
                "signed": config.signed, "init": config.init,
                "wall_s": per_target_wall, "batch_wall_s": wall,
                "batch_targets": len(cases), "node_id": ctx.node_id,
            }
            row.update(spec.flat_config())
            rows.append(row)
        originals.append(truth.x[orig_idx])
        recovered.append(images[rec_idx])
    path = _save_images(ctx, spec, params, originals, recovered, rows)
    for row in rows:
        row["images_path"] = path
    return {TABLE: rows}


def _image_file(params_key: str) -> str:
    return f"{params_key}.npz"


def _save_images(ctx: TaskContext, spec: Spec, params: dict, originals, recovered, rows) -> str:
    """Originals and matched recoveries of one unit, beside the table."""
    buf = io.BytesIO()
    np.savez_compressed(buf, original=np.concatenate(originals),
                        recovered=np.concatenate(recovered),
                        keys=np.asarray([r["key"] for r in rows]),
                        psnr=np.asarray([np.nan if r["psnr"] is None else r["psnr"]
                                         for r in rows]),
                        method=np.asarray([f"{r['unlearning_method']} / {r['attack_config']}"
                                           for r in rows]))
    name = "recover-" + stable_hash([r["key"] for r in rows], 24)
    return Location(ctx.results_uri).write_bytes(buf.getvalue(), spec.experiment, TABLE,
                                                 "images", _image_file(name))


@UNIT_FUNCTIONS.register("recovery_figure")
def recovery_figure(params: dict, ctx: TaskContext) -> dict[str, list[dict[str, Any]]]:
    """Originals above recoveries, one column per sample (at most 16 per method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    by_method: dict[str, tuple[list, list, list]] = {}
    wanted = set(params["row_keys"])
    for path in loc.list_files(spec.experiment, TABLE, "images", suffix=".npz"):
        with loc.fs.open_input_file(path) as fh:
            data = np.load(io.BytesIO(fh.read()), allow_pickle=False)
            keys = set(data["keys"].tolist())
            if not keys & wanted:
                continue
            for o, r, p, meth in zip(data["original"], data["recovered"], data["psnr"],
                                     data["method"]):
                entry = by_method.setdefault(str(meth), ([], [], []))
                if len(entry[0]) < 16:
                    entry[0].append(o)
                    entry[1].append(r)
                    entry[2].append(p)
    name = f"recovery-{spec.config_hash}.png"
    if by_method:
        rows = 2 * len(by_method)
        cols = max(len(v[0]) for v in by_method.values())
        # Fixed cell size and explicit spacing: tight_layout shrinks the images to make room
        # for the row labels, leaving them a fraction of the figure.
        cell = 1.0
        fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.3, 1.3 * cell * rows),
                                 squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.3})
        fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / rows, bottom=0.01)
        for ax in axes.flat:
            ax.axis("off")
        for i, (meth, (orig, rec, ps)) in enumerate(sorted(by_method.items())):
            for j in range(len(orig)):
                for r, img in ((2 * i, orig[j]), (2 * i + 1, rec[j])):
                    show = np.clip(np.transpose(img, (1, 2, 0)), 0, 1)
                    axes[r, j].imshow(show.squeeze(), cmap="gray" if show.shape[-1] == 1
                                      else None, vmin=0, vmax=1, interpolation="nearest")
                axes[2 * i + 1, j].set_title(f"{ps[j]:.1f} dB", fontsize=7, pad=2)
            axes[2 * i, 0].text(0, 1.08, f"{meth}: originals (top), recoveries (below)",
                                transform=axes[2 * i, 0].transAxes, fontsize=8,
                                ha="left", va="bottom")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        path = loc.write_bytes(buf.getvalue(), spec.experiment, "figures", name)
    else:
        path = None
    row = {"key": params["key"], "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": spec.seeds[0], "figure": "recovery", "path": path}
    row.update(spec.flat_config())
    return {"figures": [row]}


@summary(TABLE)
def _summary(df):
    cols = ["unlearning_method", "attack_config", "n_finetune", "k"]
    cols = [c for c in cols if c in df.columns]
    grouped = df.groupby(cols, sort=False, dropna=False)
    out = grouped.agg(samples=("key", "count"), psnr=("psnr", "mean"),
                      psnr_max=("psnr", "max"), ssim=("ssim", "mean"),
                      psnr_mean_image=("psnr_mean_image", "mean"),
                      psnr_random=("psnr_random", "mean"), cos=("cos_final", "mean"),
                      label_acc=("label_used", lambda s: float(np.nan)),
                      wall_s=("wall_s", "sum"))
    hits = (df["label_used"] == df["true_label"]).groupby([df[c] for c in cols],
                                                          sort=False, dropna=False).mean()
    out["label_acc"] = hits
    out["gain_db"] = out["psnr"] - out["psnr_mean_image"]
    return out.round(3)


STAGES.register("recovery")(StageEntry(RecoveryStage, plan_recovery))
