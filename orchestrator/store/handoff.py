"""What a unit hands to the units that depend on it, besides its table rows: the one way a
stage's results reach the stage's later units (issue 27).

A unit function returns its rows by table and, under :data:`HANDOFF`, one :class:`Handoff`:
JSON-able values (the points of a figure, a summary) and numpy arrays (the images a figure
shows). The engine keeps it under the unit's key beside the tables,
``RESULTS/<experiment>/_arrays/units/<unit key>.json`` (and ``.npz``), and gives every unit
function that takes ``inputs`` a :class:`UnitInputs` over the handoffs of the units it depends
on: the same whether they ran a moment ago on another node or in an earlier run. A unit the
planner marks ``hands_on`` always leaves one (empty when it had nothing to hand on), so a
missing one means lost: the engine runs its unit again where a unit still to run needs it. A
dependency that failed has none; its row is in the ``errors`` table.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.store.location import Location
from orchestrator.store.tables import ARRAYS_DIR

if TYPE_CHECKING:
    from orchestrator.context import TaskContext

__all__ = ["HANDOFF", "Handoff", "UnitInputs", "handed_on", "handoff_path", "save_handoff"]

HANDOFF = "_handoff"  # the key of a unit's returned rows under which it hands on its Handoff
FOLDER = "units"  # RESULTS/<experiment>/_arrays/units/


@dataclass
class Handoff:
    """One unit's output for its dependants: JSON-able ``values`` and numpy ``arrays``."""

    values: dict[str, Any] = field(default_factory=dict)  # JSON-able
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _name(unit_key: str, suffix: str) -> str:
    return unit_key.replace(":", "_").replace("/", "_") + suffix


def handoff_path(ctx: TaskContext, unit_key: str, suffix: str = ".npz") -> str:
    """Where a unit's handoff is kept (``.json`` values, ``.npz`` arrays)."""
    return Location(ctx.results_uri).path(ctx.experiment, ARRAYS_DIR, FOLDER,
                                          _name(unit_key, suffix))


def save_handoff(ctx: TaskContext, unit_key: str, handoff: Handoff) -> None:
    loc = Location(ctx.results_uri)
    if handoff.arrays:  # the arrays first: the values file says the handoff is whole
        buf = io.BytesIO()
        np.savez_compressed(buf, **handoff.arrays)
        loc.write_bytes(buf.getvalue(), ctx.experiment, ARRAYS_DIR, FOLDER,
                        _name(unit_key, ".npz"))
    document = {"values": handoff.values, "arrays": bool(handoff.arrays)}
    loc.write_bytes(json.dumps(document).encode(), ctx.experiment, ARRAYS_DIR, FOLDER,
                    _name(unit_key, ".json"))


def handed_on(loc: Location, experiment: str, unit_keys: list[str]) -> set[str]:
    """Which of ``unit_keys`` left a handoff (one listing of the folder)."""
    names = {path.rsplit("/", 1)[-1]
             for path in loc.list_files(experiment, ARRAYS_DIR, FOLDER, suffix=".json")}
    return {k for k in unit_keys if _name(k, ".json") in names}


class UnitInputs:
    """The handoffs of a unit's dependencies, read when asked for (in the worker)."""

    def __init__(self, ctx: TaskContext, keys: tuple[str, ...]) -> None:
        self.ctx, self.keys = ctx, tuple(keys)
        self._loc = Location(ctx.results_uri)
        self._cache: dict[str, Handoff | None] = {}

    def get(self, key: str) -> Handoff | None:
        """The handoff of dependency ``key``; None when it left none (it failed)."""
        if key not in self._cache:
            self._cache[key] = self._read(key)
        return self._cache[key]

    def _read(self, key: str) -> Handoff | None:
        try:
            document = json.loads(self._loc.read_bytes(self.ctx.experiment, ARRAYS_DIR, FOLDER,
                                                       _name(key, ".json")))
        except FileNotFoundError:
            return None
        arrays: dict[str, np.ndarray] = {}
        if document.get("arrays"):
            data = np.load(io.BytesIO(self._loc.read_bytes(
                self.ctx.experiment, ARRAYS_DIR, FOLDER, _name(key, ".npz"))),
                allow_pickle=False)
            arrays = {name: data[name] for name in data.files}
        return Handoff(document.get("values", {}), arrays)

    def handoffs(self, keys: list[str] | None = None) -> list[Handoff]:
        """The handoffs of ``keys`` (default: every dependency), in that order, skipping
        those that left none."""
        found = (self.get(k) for k in (self.keys if keys is None else keys))
        return [h for h in found if h is not None]

    def values(self, name: str, keys: list[str] | None = None) -> list[Any]:
        """Value ``name`` of each handoff that has it (see :meth:`handoffs`)."""
        return [h.values[name] for h in self.handoffs(keys) if name in h.values]
