"""What the plan asks of the cluster, against what the cluster has.

Ray queues a task that no node can ever run without a word, so a run asking for a GPU on a
CPU-only machine would sit at 0/N for ever. :func:`check_capacity` refuses such a plan before
anything is submitted, naming the spec key and what the nodes offer. :class:`StallWatch` covers
the other case: resources that exist but never free up (held by other jobs, a node gone).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from orchestrator.engine.plan import Unit
from orchestrator.spec.schema import ResourcesSpec

__all__ = ["CapacityError", "StallWatch", "check_capacity", "demand_of", "describe_nodes"]

# Ray's bookkeeping resources, not something a spec asks for.
_HIDDEN = ("memory", "object_store_memory")


class CapacityError(ValueError):
    """A unit kind no node can run; the message is ``resources.<kind>.<field>: ...``."""


def demand_of(resources: ResourcesSpec, kind: str) -> dict[str, float]:
    """The Ray resources one task of ``kind`` asks for (zero amounts left out)."""
    res = getattr(resources, kind)
    demand = {"CPU": float(res.cpus), "GPU": float(res.gpus),
              **{k: float(v) for k, v in res.custom.items()}}
    return {k: v for k, v in demand.items() if v > 0}


def _num(value: float) -> str:
    return f"{value:g}"


def _shown(resources: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in resources.items()
            if k not in _HIDDEN and not k.startswith(("node:", "accelerator_type:"))}


def _braces(resources: dict[str, float]) -> str:
    shown = _shown(resources)
    order = sorted(shown, key=lambda k: (k not in ("CPU", "GPU"), k != "CPU", k))
    return "{" + ", ".join(f"{k}: {_num(shown[k])}" for k in order) + "}"


def describe_nodes(nodes: list[dict[str, float]]) -> str:
    """``1 x {CPU: 2}`` or ``2 x {CPU: 8, GPU: 1}, 1 x {CPU: 4}``."""
    if not nodes:
        return "none alive"
    counts = Counter(_braces(n) for n in nodes)
    return ", ".join(f"{n} x {text}" for text, n in counts.most_common())


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of every live node of the connected Ray."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _field(kind: str, name: str) -> str:
    spec_name = {"CPU": "cpus", "GPU": "gpus"}.get(name, f"custom.{name}")
    return f"resources.{kind}.{spec_name}"


def _unit_word(name: str, amount: float) -> str:
    if name in ("CPU", "GPU"):
        return f"{_num(amount)} {name}{'' if amount == 1 else 's'}"
    return f"{_num(amount)} of {name!r}"


def check_capacity(units: Iterable[Unit], resources: ResourcesSpec,
                   nodes: list[dict[str, float]] | None = None) -> None:
    """Raise :class:`CapacityError` for the first unit kind no single node can ever run."""
    nodes = alive_nodes() if nodes is None else nodes
    where = f"(nodes: {describe_nodes(nodes)})"
    for kind in sorted({u.kind for u in units}):
        demand = demand_of(resources, kind)
        if any(all(n.get(k, 0.0) >= v for k, v in demand.items()) for n in nodes):
            continue
        for name, amount in demand.items():
            most = max((n.get(name, 0.0) for n in nodes), default=0.0)
            if most >= amount:
                continue
            article = "an" if name[0] in "AEIOU" else "a"
            has = (f"no node has {article} {name}" if name in ("CPU", "GPU") and most == 0
                   else f"no node has {name!r}" if most == 0
                   else f"the largest node has {_num(most)}")
            raise CapacityError(f"{_field(kind, name)}: {_unit_word(name, amount)} per task, "
                                f"but {has} {where}")
        raise CapacityError(f"resources.{kind}: {_braces(demand)} per task, but no single "
                            f"node has all of it {where}")


class StallWatch:
    """Notices units that are ready to run but wait for resources while none of this run's
    units is running: the queue is not moving and nothing of ours will free anything.

    Units report when they start (:meth:`started`, with the time the driver asked: the
    reports travel through an actor, so they lag); the driver reports when they finish. Waiting
    behind this run's own running units is normal queueing and never counts, and a stall is
    only called on reports asked for after the whole limit had passed.
    """

    def __init__(self, units: list[Unit], limit_s: float) -> None:
        # Only units submitted and not yet finished are held, so every check costs the size of
        # the submission window, not of the whole sweep.
        self.units = {u.key: u for u in units}
        self.limit_s = limit_s
        self.started_keys: set[str] = set()
        self.quiet_since = time.monotonic()
        self.as_of = float("-inf")  # when the latest start reports were asked for

    def track(self, unit: Unit) -> None:
        """A unit was submitted."""
        self.units[unit.key] = unit

    def started(self, keys: Iterable[str], as_of: float) -> None:
        # A report may arrive after its unit finished (reports lag): ignore it then.
        self.started_keys.update(k for k in keys if k in self.units)
        self.as_of = max(self.as_of, as_of)

    def finished(self, key: str) -> None:
        self.units.pop(key, None)
        self.started_keys.discard(key)
        self.quiet_since = time.monotonic()

    def waiting(self) -> list[Unit]:
        """Units whose dependencies (from this run) are done but that have not started."""
        return [unit for key, unit in self.units.items() if key not in self.started_keys
                and not any(d in self.units for d in unit.deps)]

    def stalled(self, now: float | None = None) -> list[Unit]:
        """The waiting units once the queue has not moved for ``limit_s``; else []."""
        now = time.monotonic() if now is None else now
        waiting = self.waiting()
        if self.started_keys or not waiting:
            self.quiet_since = now
            return []
        return waiting if self.as_of - self.quiet_since >= self.limit_s else []

    def reason(self, waiting: list[Unit], resources: ResourcesSpec,
               free: dict[str, Any] | None) -> str:
        kinds = Counter(u.kind for u in waiting)
        asks = "; ".join(f"{n} {kind} unit{'s' if n > 1 else ''} waited over "
                         f"{_num(self.limit_s)} s for {_braces(demand_of(resources, kind))} "
                         f"per task" for kind, n in sorted(kinds.items()))
        return asks + (f" (free now: {_braces(free)})" if free is not None else "")
