"""One configuration scored over the search targets (a trial) or the held-out ones."""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.search.base import TargetSet
from orchestrator.search.objectives import ensure_models, objective_class, prepare_targets
from orchestrator.search.spec import SearchPlan

__all__ = ["HELDOUT_SEED_OFFSET", "evaluate_config", "rescore_heldout"]

# Attack randomness of held-out target i is HELDOUT_SEED_OFFSET + i (search target i: i).
HELDOUT_SEED_OFFSET = 100_000


def evaluate_config(plan: SearchPlan, params: dict[str, Any], ctx: TaskContext,
                    data_root: str | None, *, heldout: bool, report=None, cpus: float = 1,
                    attack_cpus: float = 1) -> dict[str, float]:
    """Mean metrics of one configuration over the search targets (or the held-out ones).

    With ``search.fanout > 1`` and no intermediate reports wanted, the targets are split into
    that many Ray tasks; otherwise they run here as one (vectorised) program.
    """
    import torch

    from tasks.training import seed_everything

    torch.set_num_threads(max(1, int(cpus)))
    search = plan.search
    spec = plan.trial_spec(params)
    objective = objective_class(search.objective)()
    config = objective.config(plan.attack_settings(params))
    if objective.own_models:
        # The objective builds its own models and splits (membership: shadow vs target side).
        split = objective.evaluate_split(spec, config, ctx, data_root, heldout=heldout)
        return {k: float(np.mean(v)) for k, v in split.items()}
    core = ensure_models(spec, ctx, data_root)
    if heldout:
        targets = prepare_targets(core, search.targets, search.heldout, HELDOUT_SEED_OFFSET)
    else:
        targets = prepare_targets(core, 0, search.targets, 0)
    seed_everything(spec.seeds[0])
    fan = min(search.fanout, len(targets.pairs))
    if fan > 1 and (report is None or search.scheduler is None):
        import ray

        chunks = np.array_split(np.arange(len(targets.pairs)), fan)
        remote = ray.remote(_evaluate_chunk).options(num_cpus=attack_cpus)
        refs = [remote.remote(plan, params, ctx, data_root, heldout,
                              [int(i) for i in c], attack_cpus) for c in chunks if len(c)]
        parts = ray.get(refs)
        per_target = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        per_target = objective.evaluate(targets, ctx, config, report)
    out = {k: float(np.mean(v)) for k, v in per_target.items()}
    out["targets"] = float(len(targets.pairs))
    return out


def _evaluate_chunk(plan: SearchPlan, params: dict, ctx: TaskContext, data_root: str | None,
                    heldout: bool, indices: list[int], cpus: float) -> dict[str, np.ndarray]:
    """A Ray task: one slice of a trial's targets (seeds as in the whole trial)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    search = plan.search
    spec = plan.trial_spec(params)
    objective = objective_class(search.objective)()
    config = objective.config(plan.attack_settings(params))
    core = ensure_models(spec, ctx, data_root)
    start, count, offset = ((search.targets, search.heldout, HELDOUT_SEED_OFFSET) if heldout
                            else (0, search.targets, 0))
    full = prepare_targets(core, start, count, offset)
    out: dict[str, list[np.ndarray]] = {}
    for i in indices:  # one target at a time keeps each target's seed (offset + i)
        one = TargetSet(spec, core, [full.pairs[i]], offset + i)
        for k, v in objective.evaluate(one, ctx, config, None).items():
            out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


def _heldout(plan: SearchPlan, params: dict, ctx: TaskContext) -> dict[str, float]:
    res = plan.base.resources.trial
    return evaluate_config(plan, params, ctx, ctx.data_root, heldout=True, cpus=res.cpus,
                           attack_cpus=plan.base.resources.attack.cpus)


def rescore_heldout(plan: SearchPlan, configs: list[dict], ctx: TaskContext) -> list[dict]:
    """Held-out scores of the chosen configurations, one Ray task each (inline when Ray is
    not running, or for a single configuration whose targets already fan out)."""
    import ray

    if not ray.is_initialized() or len(configs) == 1 and plan.search.fanout > 1:
        return [_heldout(plan, c, ctx) for c in configs]
    res = plan.base.resources.trial
    remote = ray.remote(_heldout).options(num_cpus=res.cpus, num_gpus=res.gpus or None)
    return ray.get([remote.remote(plan, c, ctx) for c in configs])
