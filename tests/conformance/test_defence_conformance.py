"""Every registered defence subclasses the kit (:class:`tasks.testing.DefenceConformance`).

The kit checks per defence: where it acts and its paper, finite and seed-deterministic output,
the example strength changing something, the identity strength (where declared) changing
nothing, unknown params rejected, inputs left alone. ``test_coverage.py`` fails for a defence
without a subclass.
"""

from __future__ import annotations

from tasks.testing import DefenceConformance


class _BuiltIn(DefenceConformance):
    papers = ("hu2024", "chen2021")


class TestObfuscation(_BuiltIn):
    defence = "obfuscation"


class TestPruning(_BuiltIn):
    defence = "pruning"


class TestFineTuning(_BuiltIn):
    defence = "fine_tuning"


class TestLabelOnly(_BuiltIn):
    defence = "label_only"


class TestTopK(_BuiltIn):
    defence = "top_k"


class TestTemperature(_BuiltIn):
    defence = "temperature"


class TestDPSGD(_BuiltIn):
    defence = "dp_sgd"
