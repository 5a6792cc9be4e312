"""``pair_attack``: one case-based attack (feature recovery, label inference, a plug-in) on the
user's pair. With a known forget set its scorer writes the usual table; with ``forget:
unknown`` the attack's guesses land in ``guesses`` (recovered inputs as a figure)."""

from __future__ import annotations

import copy
import json
import textwrap
import time
from typing import Any

import numpy as np
import torch

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec, flatten, stable_hash
from orchestrator.stages.attacks.units import scoring_context
from orchestrator.stages.pair.params import PairAttack, PairParams, read_forget_ids
from orchestrator.stages.pair.planning import load_user_pair
from orchestrator.store.location import Location
from orchestrator.store.tables import FIGURE_INDEX, FIGURES_DIR
from tasks.analysis import SCORERS
from tasks.attacks import ATTACKS, Attack
from tasks.cases import Case, GroundTruth, PublicMetadata, QueryAccess
from tasks.params import to_dict
from tasks.plotting import png_bytes, pyplot
from tasks.training import seed_everything


def _private(module: torch.nn.Module, device) -> torch.nn.Module:
    clone = copy.deepcopy(module).to(device).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def pair_cases(pair, dataset, white_box: bool, device) -> tuple[Case, Case]:
    """The attacker's view of the pair, and of theta alone (for ``prepare``)."""
    meta = PublicMetadata(dataset=dataset.name, kind=dataset.kind,
                          input_shape=tuple(dataset.input_shape),
                          num_classes=dataset.num_classes, mean=dataset.mean, std=dataset.std)
    if pair.white_box:
        t, tu = _private(pair.original.module, device), _private(pair.unlearned.module, device)
    else:  # query adapters: no parameters to hide, and an ONNX session cannot be copied
        t, tu = pair.original.module, pair.unlearned.module
    case = Case(meta, theta=t if white_box else None, theta_u=tu if white_box else None,
                query_original=QueryAccess(t, device), query_unlearned=QueryAccess(tu, device),
                device=device)
    alone = Case(meta, theta=t if white_box else None, query_original=QueryAccess(t, device),
                 device=device)
    return case, alone


@UNIT_FUNCTIONS.register("pair_attack")
def pair_attack(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    pp: PairParams = params["params"]
    entry: PairAttack = params["entry"]
    seed, name, key = params["seed"], params["name"], params["unit_key"]
    device = ctx.torch_device()
    dataset = spec.dataset.load(ctx.data_root)
    pair = load_user_pair(pp, dataset, str(device))
    cls = ATTACKS.get(entry.attack)
    attack = cls()
    config = entry.typed_config(f"pair.attacks.{name}.config")
    threat = attack.threat_model(config)
    case, alone = pair_cases(pair, dataset, threat.white_box, device)
    seed_everything(seed)
    start = time.perf_counter()
    prepared = None
    if type(attack).prepare is not Attack.prepare:
        prepared = attack.prepare(alone, config, seed) or None
    result = attack.run([case], config, seeds=[seed], prepared=prepared)
    wall = time.perf_counter() - start
    settings = to_dict(config)
    common = {"experiment": spec.experiment, "config_hash": spec.config_hash, "seed": seed,
              "dataset": spec.dataset.name, "model": pp.format, "unlearning_method": "your pair",
              "pair_format": pp.format, "attack": entry.attack, "attack_config": name,
              "attack_config_hash": stable_hash(settings, 12), "knowledge": threat.knowledge,
              "white_box": threat.white_box, "queries": int(case.query_original.queries
                                                             + case.query_unlearned.queries),
              "wall_s": wall, "node_id": ctx.node_id, **flatten(settings, "attack"),
              **spec.flat_config()}
    if not pp.forget_known:
        return _guesses(spec, ctx, key, name, result.per_target(), common, pp.figure)
    ids = read_forget_ids(pp.forget)
    truth = GroundTruth("pair", tuple(ids), dataset.x_train[list(ids)].copy(),
                        dataset.y_train[list(ids)].copy())
    scorer = SCORERS.get(cls.scorer)()
    scored = scorer.score(result, [truth], config, scoring_context(spec, dataset, seed))
    rows = []
    for row in scored.rows[0]:
        part = row.get("sample_index") if scorer.per_sample else None
        rows.append({"key": key if part is None else f"{key}:{part}", "request_id": "pair",
                     "forget_kind": "given", "forget_size": len(ids), **common, **row})
    out: Rows = {scorer.table: rows}
    if pp.figure and scored.arrays:
        labels = np.asarray([f"{pp.format} / {name}"] * (len(rows) if scorer.per_sample else 1))
        fig = scorer.figure([{"label": labels, **scored.arrays}],
                            f"{spec.experiment}: {scorer.table} ({name})")
        out[FIGURE_INDEX] = _figure_rows(spec, ctx, key, f"{scorer.table}-{name}", fig)
    return out


def _guesses(spec: Spec, ctx: TaskContext, key: str, name: str, guesses: dict[str, list],
             common: dict[str, Any], figure: bool) -> Rows:
    """The attack's guesses without scores: small outputs as JSON columns, recovered inputs
    (arrays) as a figure."""
    row = {"key": key, **common}
    images = None
    for field, values in guesses.items():
        value = values[0]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray) and (value.ndim >= 3 or value.size > 64):
            if field == "images":  # recovered inputs: a figure, not a cell
                images = value
            continue
        row[f"guess_{field}"] = json.dumps(_plain(value))
    out: Rows = {"guesses": [row]}
    if figure and images is not None:
        out[FIGURE_INDEX] = _figure_rows(spec, ctx, key, f"guesses-{name}",
                                         _image_grid(images, f"{spec.experiment}: {name} "
                                                             "(forget set unknown)"))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _image_grid(images: np.ndarray, title: str):
    """Recovered inputs, one panel each (images: (k, C, H, W) in [0, 1])."""
    plt = pyplot()

    images = images.reshape((-1, *images.shape[-3:])) if images.ndim >= 3 else images
    k = min(len(images), 16)
    fig, axes = plt.subplots(1, k, figsize=(max(4.0, 1.6 * k + 0.4), 2.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        img = np.clip(images[i], 0, 1)
        ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0),
                  cmap="gray" if img.shape[0] == 1 else None)
        ax.set_title(f"guess {i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(textwrap.fill(title, 60), fontsize=9)
    fig.tight_layout()
    return fig


def _figure_rows(spec: Spec, ctx: TaskContext, key: str, name: str, fig) -> list[dict]:
    if fig is None:
        return []

    path = Location(ctx.results_uri).write_bytes(png_bytes(fig, dpi=120), spec.experiment, FIGURES_DIR,
                                                 f"{name}-{spec.config_hash}.png")
    row = {"key": f"{key}:figure", "experiment": spec.experiment,
           "config_hash": spec.config_hash, "seed": spec.seeds[0], "figure": name, "path": path}
    row.update(spec.flat_config())
    return [row]
