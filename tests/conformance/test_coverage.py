"""Every registered built-in component has a conformance class somewhere under tests/.

The test modules that mention a kit are imported and their ``Test...`` classes walked: a
built-in attack, unlearning method or defence that no such class names fails here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import tasks.attacks
import tasks.defences
import tasks.unlearning
from tasks.registry import Registry
from tasks.testing import (
    AttackConformance,
    DefenceConformance,
    UnlearningConformance,
    registered_name,
    resolve,
)

TESTS = Path(__file__).resolve().parents[1]
KITS: dict[type, tuple[Registry, str]] = {
    AttackConformance: (tasks.attacks.ATTACKS, "attack"),
    UnlearningConformance: (tasks.unlearning.UNLEARNING, "method"),
    DefenceConformance: (tasks.defences.DEFENCES, "defence"),
}


def conformance_classes(kit: type) -> Iterator[type]:
    """The collected (``Test...``) subclasses of ``kit`` in the test modules under tests/."""
    for path in sorted(TESTS.rglob("test_*.py")):
        if kit.__name__ not in path.read_text(encoding="utf-8"):
            continue
        module = importlib.import_module(
            ".".join(("tests", *path.relative_to(TESTS).with_suffix("").parts)))
        for name, obj in vars(module).items():
            if (name.startswith("Test") and inspect.isclass(obj) and issubclass(obj, kit)
                    and getattr(obj, "__test__", True)):
                yield obj


def uncovered(kit: type) -> list[str]:
    """Built-in components (defined under ``tasks``) of the kit's registry without a class."""
    registry, attr = KITS[kit]
    covered = {registered_name(registry, resolve(registry, getattr(cls, attr)))
               for cls in conformance_classes(kit)}
    return [name for name in registry.names()
            if registry.get(name).__module__.split(".")[0] == "tasks" and name not in covered]


@pytest.mark.parametrize("kit", list(KITS), ids=lambda k: k.__name__)
def test_every_registered_component_has_a_conformance_class(kit):
    missing = uncovered(kit)
    assert not missing, f"add a Test... class subclassing tasks.testing.{kit.__name__} " \
                        f"under tests/ for {missing}"


def test_a_new_built_in_without_tests_is_reported():
    registry = tasks.defences.DEFENCES
    base = registry.get("temperature")
    newcomer = type("Newcomer", (base,), {"__module__": "tasks.defences.newcomer"})
    registry.register("newcomer")(newcomer)
    try:
        assert uncovered(DefenceConformance) == ["newcomer"]
    finally:
        registry._items.pop("newcomer")
