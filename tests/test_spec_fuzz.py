"""Property-based fuzzing of spec validation (issue 12): a valid spec with a few random
mutations — a value of another type, an out-of-range number, a dropped key, an unknown key, an
unknown component name, at any depth — either plans, or is refused with an error the CLI turns
into one line and exit 2. Never any other exception (that would be a traceback).

In process and without Ray: ``expand`` then ``plan_run``, exactly what ``run`` does before any
work. Derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrator.stages  # noqa: F401  (fills STAGES: the attack sections)
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import SpecError, available_devices, expand
from tasks.data import MissingDataError
from tasks.params import to_dict
from tasks.registry import UnknownComponentError
from tests.bad_inputs.harness import REPO, VALID

QUICKSTART = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
BASES = [VALID, QUICKSTART]

# Numbers at and past the edges of the usual ranges.
EDGES = [-(2**40), -1, -0.5, 0, 0.0, 1, 2, 2**32, 10**10, 1e10, 1e23, 1e300,
         math.inf, -math.inf, math.nan]
NAMES = ["nope", "mlp", "retrain", "sisa", "inversion", "probing", "digits", "obfuscation",
         "cuda:7", "tpu", "os:getcwd", "tasks.models:nothing", "no_such_module:thing"]
SCALARS = st.one_of(
    st.sampled_from(EDGES), st.integers(-5, 5), st.floats(allow_nan=True),
    st.text(max_size=6), st.booleans(), st.none(), st.sampled_from(NAMES))
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(["name", "method", "lr", "x", "count"]), SCALARS,
                    max_size=2))


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into the spec (mapping keys and list indices), parents first."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _parent(data: Any, path: tuple) -> Any:
    node = data
    for key in path[:-1]:
        node = node[key]
    return node


@st.composite
def mutated_specs(draw) -> dict:
    data = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths)) if paths else ()
        op = draw(st.sampled_from(["edge", "edge", "value", "name", "drop", "add"]))
        parent = _parent(data, path) if path else None
        if not path or op == "add":
            # An unknown (or misspelt) key in the section at ``path`` (or at the root).
            target = data if not path else parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.sampled_from(["colour", "lrr", "grid", "seeds", "x"]))] = \
                    draw(VALUES)
            continue
        if op == "edge":  # an out-of-range number where a number belongs
            numeric = [p for p in paths if isinstance(_parent(data, p)[p[-1]], (int, float))]
            path = draw(st.sampled_from(numeric)) if numeric else path
            parent = _parent(data, path)
        key = path[-1]
        if op == "drop":
            if isinstance(parent, dict):
                del parent[key]
            elif len(parent) > 1:
                parent.pop(key)
        elif op == "edge":
            parent[key] = draw(st.sampled_from(EDGES))
        elif op == "name":
            parent[key] = draw(st.sampled_from(NAMES))
        else:
            parent[key] = draw(VALUES)
    return data


def _numbers(obj: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _numbers(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in _numbers(v, f"{path}[{i}]")]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [(path, obj)]
    return []


def _check_planned(variant) -> None:
    """What a spec that plans must hold: every setting in range. No setting of the built-in
    components is negative or non-finite, seeds fit numpy's, the device exists."""
    typed = {"spec": to_dict(dataclasses.replace(variant, raw={})),
             "model": to_dict(variant.model.typed_params()),
             "unlearning": [to_dict(u.typed_params()) for u in variant.unlearning]}
    for path, value in _numbers(typed):
        assert math.isfinite(value) and value >= 0, f"{path} = {value!r} was accepted"
    assert all(0 <= s < 2**32 for s in variant.seeds), variant.seeds
    assert variant.runtime.device == "auto" or variant.runtime.device in available_devices()
    assert variant.runtime.requests_per_task >= 1 and variant.forget.count >= 1


def _one_line(err: BaseException) -> None:
    text = str(err)
    assert text.strip(), f"{type(err).__name__} without a message"
    assert "\n" not in text.strip(), f"a multi-line message:\n{text}"


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_specs())
def test_a_mutated_spec_plans_or_is_refused_in_one_line(data):
    try:
        variants = expand(data)
    except (SpecError, UnknownComponentError) as err:  # cmd_run: "spec error: ..."
        _one_line(err)
        return
    for variant in variants:
        _check_planned(variant)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan_run(variant, None)
        except (ValueError, UnknownComponentError, MissingDataError) as err:  # exit 2 too
            _one_line(err)
            return


def test_the_bases_are_valid():
    """The fuzz starts from specs that plan, so every refusal is the mutation's doing."""
    for data in BASES:
        for variant in expand(data):
            _check_planned(variant)
            plan_run(variant, None)
