"""``pe_score``: every member's outputs on every target record, as a Ray Data pipeline.

The (models x records) work of U-LiRA and the epsilon score is a stream of model keys through
``map_batches``: each batch loads its members' weights from the artifact store, stacks them
and computes all their logits on the targets in one vectorised call, and yields one row per
(model, record) with the logit-scaled confidence phi and the logits. The pipeline writes its
Parquet into the artifact store (``<key>.parquet.d``, published by one rename, so a reader
never sees half of it); the per-record fits of ``pe_analyse`` read from there.

The scoring unit only drives the pipeline and holds no CPU (``resources.pipeline``: 0 by
default); its map tasks ask for ``resources.attack``. A driver that held a CPU while waiting
for its own map tasks could starve them: two such units on a two-CPU node would hang.
Inline (``per_example.scoring: in_task``, or without Ray), the same batch function runs in
the unit's own process (an attack task) and writes the same files: for small runs, where
the pipeline's start-up costs more than the scoring (the CI leaderboard, every method at 12
members: 26 s in tasks against 62 s through Ray Data on 2 CPUs).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.context import TaskContext
from orchestrator.engine.provider import load_torch_model, provider_state
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.store.artifacts import missing
from orchestrator.store.location import unreadable_file
from tasks.analysis.per_example import logit_confidence
from tasks.ensemble import ensemble_logits

SUFFIX = ".parquet.d"


def score_batch(batch: dict[str, np.ndarray], *, spec: Spec, seed: int, targets: np.ndarray,
                ctx: TaskContext, threads: int) -> pa.Table:
    """Rows (model, record) for a batch of models: the ``map_batches`` function."""
    import torch

    torch.set_num_threads(max(1, threads))
    state = provider_state(spec, seed, ctx, members=targets)
    keys = [str(k) for k in batch["model_key"]]
    models = [load_torch_model(ctx, k, state) for k in keys]
    d = state.dataset
    logits = ensemble_logits(models, d.x_train[targets], state.device)  # (B, R, C)
    labels = d.y_train[targets]
    n_models, n_records, n_classes = logits.shape
    phi = logit_confidence(logits, labels)
    flat = pa.array(logits.astype(np.float32).reshape(-1))
    return pa.table({
        "model_key": pa.array(np.repeat(keys, n_records)),
        "role": pa.array(np.repeat(np.asarray(batch["role"]).astype(str), n_records)),
        "member": pa.array(np.repeat(np.asarray(batch["member"], dtype=np.int64), n_records)),
        "record": pa.array(np.tile(np.asarray(targets, dtype=np.int64), n_models)),
        "position": pa.array(np.tile(np.arange(n_records, dtype=np.int64), n_models)),
        "label": pa.array(np.tile(np.asarray(labels, dtype=np.int64), n_models)),
        "phi": pa.array(phi.reshape(-1).astype(np.float64)),
        "logits": pa.FixedSizeListArray.from_arrays(flat, n_classes)})


def scoring_items(params: dict) -> list[dict[str, Any]]:
    """The models one method's analysis reads: originals and unlearned models of every
    member, and the references of ``design: challenge``."""
    items = []
    for p in params["pairs"]:
        items.append({"model_key": p["original"], "role": "original", "member": p["index"]})
        items.append({"model_key": p["unlearned"], "role": "unlearned", "member": p["index"]})
    for r in params["references"]:
        items.append({"model_key": r["key"], "role": "reference", "member": r["index"]})
    return items


def _run_ray_data(items: list[dict], kwargs: dict, batch: int, spec: Spec, out: str) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-run chatter on the console
    blocks = max(1, -(-len(items) // batch))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    res = spec.resources.attack
    ds = ds.map_batches(score_batch, fn_kwargs=kwargs, batch_size=batch, batch_format="numpy",
                        num_cpus=res.cpus, num_gpus=res.gpus or None,
                        resources=dict(res.custom) or None)
    ds.write_parquet(out)


def _run_inline(items: list[dict], kwargs: dict, batch: int, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for i in range(0, len(items), batch):
        part = items[i: i + batch]
        cols = {k: np.asarray([it[k] for it in part]) for k in part[0]}
        pq.write_table(score_batch(cols, **kwargs), f"{out}/part-{i // batch:05d}.parquet")


def scores_path(ctx: TaskContext, key: str) -> str:
    return ctx.store.path(key, SUFFIX)


def read_scores(ctx: TaskContext, key: str) -> pa.Table:
    """The scores of ``key``: MissingArtifact where they are gone, DamagedArtifact (moved
    aside) where Parquet cannot read them, so that a rerun scores again."""
    path = scores_path(ctx, key)
    try:
        return pq.read_table(path, filesystem=ctx.store.location.fs)
    except FileNotFoundError:
        raise missing(path) from None
    except Exception as err:
        if unreadable_file(err):
            raise ctx.store.move_aside(path, err) from err
        raise


@UNIT_FUNCTIONS.register("pe_score")
def pe_score(params: dict, ctx: TaskContext) -> Rows:
    import ray

    spec: Spec = params["spec"]
    key = params["scores_key"]
    start = time.perf_counter()
    items = scoring_items(params)
    threads = max(1, int(spec.resources.attack.cpus or 1))
    kwargs = {"spec": spec, "seed": params["seed"], "targets": np.asarray(params["targets"]),
              "ctx": ctx, "threads": threads}
    final = scores_path(ctx, key)
    location = ctx.store.location
    pipeline = params["params"].scoring == "ray_data" and ray.is_initialized()
    engine = "ray.data" if pipeline else "inline"
    # Locally: written beside, published by one rename. Object stores publish each part as
    # it completes; a rerun rewrites the prefix whole.
    out = f"{final}.tmp-{uuid.uuid4().hex}" if location.local else final
    batch = params["params"].scoring_batch
    try:
        if engine == "ray.data":
            _run_ray_data(items, kwargs, batch, spec, out)
        else:
            _run_inline(items, kwargs, batch, out)
        if location.local:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(out, final)
    finally:
        if location.local and os.path.exists(out):
            shutil.rmtree(out)
    rows = read_scores(ctx, key).num_rows
    row = {"key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": params["seed"], "unlearning_method": spec.unlearning[
               params["method_index"]].method, "models": len(items),
           "records": len(params["targets"]), "rows": rows, "engine": engine,
           "path": final, "wall_s": time.perf_counter() - start}
    row.update(spec.flat_config())
    return {"per_example_scoring": [row]}
