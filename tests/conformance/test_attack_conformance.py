"""Every registered attack subclasses the attack kit (:class:`tasks.testing.AttackConformance`).

The kit checks output shapes, seed determinism, abort on a non-finite loss, a one-iteration dry
run, the threat-model boundary, the scorer and ``prepare``; the subclasses here add what is
specific to each attack's outputs. ``test_coverage.py`` fails for a registered attack without a
subclass.
"""

from __future__ import annotations

from typing import ClassVar

from tasks.testing import AttackConformance


class TestInversion(AttackConformance):
    attack = "inversion"
    config: ClassVar[dict] = {"iterations": 4, "restarts": 2}
    request_kind = "single"

    def check_outputs(self, out, cases, truths):
        for img, truth in zip(out["images"], truths):
            assert img.shape == truth.x.shape and img.min() >= 0 and img.max() <= 1


class TestAnalytic(AttackConformance):
    attack = "analytic"
    request_kind = "single"

    def check_outputs(self, out, cases, truths):
        for img, cos, truth in zip(out["images"], out["cosine"], truths):
            assert img.shape == truth.x.shape
            assert cos > 0.999  # one record, one ascent step: rank one up to rounding


class TestProbing(AttackConformance):
    attack = "probing"
    config: ClassVar[dict] = {"probes_per_class": 1, "iterations_per_call": 3, "max_calls": 1, "box": "black"}
    request_kind = "class_share"

    def check_outputs(self, out, cases, truths):
        for case, pred, delta in zip(cases, out["predicted"], out["delta_by_class"]):
            assert pred.shape == (1,) and delta.shape == (case.metadata.num_classes,)


class TestWhiteBoxProbing(TestProbing):
    """White-box crafting: the case holds theta (the black-box case does not)."""

    config: ClassVar[dict] = {**TestProbing.config, "box": "white"}
