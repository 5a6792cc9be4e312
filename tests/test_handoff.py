"""The one way a unit's output reaches the units that depend on it (issue 27, item 2): the
engine keeps what a unit hands on and gives its dependants an ``inputs`` view of it, in this
run or a later one; a handoff that is gone is made again where a unit still needs it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.context import TaskContext
from orchestrator.engine.execute import execute_inline, pending_units
from orchestrator.engine.plan import Unit
from orchestrator.engine.units import UNIT_FUNCTIONS, run_unit_inline
from orchestrator.store.handoff import HANDOFF, Handoff, UnitInputs, handoff_path
from orchestrator.store.tables import Results

CALLS: list[str] = []


@UNIT_FUNCTIONS.register("test_handoff_producer")
def _producer(params: dict, ctx: TaskContext):
    CALLS.append(params["key"])
    out = {"produced": [{"key": params["key"], "value": params["value"]}]}
    if params["value"] is not None:
        out[HANDOFF] = Handoff({"value": params["value"]},
                               {"square": np.full((2, 2), params["value"] ** 2)})
    return out


@UNIT_FUNCTIONS.register("test_handoff_consumer")
def _consumer(params: dict, ctx: TaskContext, inputs: UnitInputs):
    CALLS.append(params["key"])
    squares = [float(h.arrays["square"][0, 0]) for h in inputs.handoffs() if h.arrays]
    return {"consumed": [{"key": params["key"], "values": json.dumps(inputs.values("value")),
                          "squares": json.dumps(squares),
                          "missing": inputs.get("nothing") is None}]}


def _ctx(tmp_path) -> TaskContext:
    return TaskContext("exp", str(tmp_path / "R"), str(tmp_path / "A"), None)


def _plan() -> list[Unit]:
    producers = [Unit(f"p{i}", "attack", "test_handoff_producer", {"key": f"p{i}", "value": v},
                      "produced", (f"p{i}",), hands_on=True)
                 for i, v in enumerate((2.0, 3.0, None))]
    consumer = Unit("c", "attack", "test_handoff_consumer", {"key": "c"}, "consumed", ("c",),
                    deps=("p0", "p1", "p2", "nothing"))
    return [*producers, consumer]


def test_a_dependant_gets_what_its_dependencies_handed_on(tmp_path):
    ctx = _ctx(tmp_path)
    results = Results(ctx.results_uri, "exp")
    CALLS.clear()
    report = execute_inline(_plan(), results, ctx)
    assert report.failed == 0 and CALLS == ["p0", "p1", "p2", "c"]
    row = results.read("consumed").iloc[0]
    # p2 handed nothing on (an empty handoff, kept all the same), "nothing" never ran.
    assert json.loads(row["values"]) == [2.0, 3.0] and json.loads(row["squares"]) == [4.0, 9.0]
    assert row["missing"]
    assert handoff_path(ctx, "p0").endswith("_arrays/units/p0.npz")


def test_a_lost_handoff_is_made_again_only_where_a_unit_still_needs_it(tmp_path):
    ctx = _ctx(tmp_path)
    results = Results(ctx.results_uri, "exp")
    execute_inline(_plan(), results, ctx)
    (tmp_path / "R" / "exp" / "_arrays" / "units" / "p1.json").unlink()
    assert pending_units(_plan(), results, ctx.store) == []  # nothing still needs it
    results.clear("consumed")
    again = [u.key for u in pending_units(_plan(), results, ctx.store)]
    assert again == ["p1", "c"]  # p0 and p2 kept theirs (p2's is empty, not missing)
    CALLS.clear()
    execute_inline(_plan(), results, ctx)
    assert CALLS == ["p1", "c"]
    assert json.loads(results.read("consumed").iloc[0]["values"]) == [2.0, 3.0]


def test_a_unit_that_hands_on_without_a_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a key"):
        run_unit_inline("test_handoff_producer", {"key": "x", "value": 1.0}, _ctx(tmp_path))
