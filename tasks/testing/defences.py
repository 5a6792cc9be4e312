"""The defence conformance kit: subclass :class:`DefenceConformance`.

The harness per ``acts_on`` kind is small and real: a 2-layer MLP pair for update defences,
random logits for output defences, a few DP-SGD-style training steps for training defences.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from tasks.defences import DEFENCES, Defence, UpdateContext
from tasks.params import ParamError
from tasks.testing.states import Kit, resolve
from tasks.training import TrainConfig

ACTS_ON = ("update", "outputs", "training")


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def model_pair() -> tuple[nn.Module, nn.Module]:
    """theta and a theta_u that differs from it by a small update."""
    theta, theta_u = _model(0), _model(0)
    with torch.no_grad():
        for p in theta_u.parameters():
            p.add_(0.01)
    return theta, theta_u


def toy_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)


def toy_logits() -> np.ndarray:
    return np.random.default_rng(1).normal(scale=2.0, size=(50, 4))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _flat(model: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).double().numpy()


class DefenceConformance(Kit):
    """Base class of a defence's conformance tests.

    Declare in the subclass::

        class TestPruning(DefenceConformance):
            defence = "pruning"               # registry name, "pkg.mod:Cls" or the class

    Optional: ``strength`` (default: the defence's ``example_strength``), ``fixed`` (other
    Params settings), ``papers`` (the papers ``paper`` may name; default: any non-empty name).
    """

    defence: ClassVar[str | type] = ""
    strength: ClassVar[float | None] = None
    fixed: ClassVar[dict[str, Any]] = {}
    papers: ClassVar[tuple[str, ...] | None] = None

    # --- helpers ----------------------------------------------------------------------------------

    def defence_class(self) -> type[Defence]:
        return resolve(DEFENCES, self.defence)

    def example(self) -> float | None:
        return self.strength if self.strength is not None else \
            self.defence_class().example_strength

    def apply(self, strength: float | None, seed: int = 0) -> np.ndarray:
        """Apply the defence once; a flat float64 array of what it produced."""
        d = self.defence_class()()
        params = d.params(strength, self.fixed)
        x, y = toy_data()
        if d.acts_on == "update":
            theta, theta_u = model_pair()
            ctx = UpdateContext(x, y, np.arange(60, 120),
                                TrainConfig(epochs=1, lr=0.05, batch_size=16))
            out = d.apply(theta, theta_u, params, seed=seed, context=ctx)
            assert [p.shape for p in out.parameters()] == \
                [p.shape for p in theta_u.parameters()]
            return _flat(out)
        if d.acts_on == "outputs":
            z = toy_logits()
            out = d.apply(z, params)
            assert out.shape == z.shape
            np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-9)
            assert (out >= 0).all()
            return np.asarray(out, dtype=np.float64).ravel()
        assert d.acts_on == "training"
        cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16, momentum=0.0)
        result = d.train(_model(0).train(), x, y, np.arange(64), cfg, params, seed=seed)
        assert np.isfinite(result.epsilon) and result.epsilon > 0
        return _flat(result.model)

    def undefended(self) -> np.ndarray | None:
        """What the defence acts on, flat, before it acts (None for training defences)."""
        acts_on = self.defence_class().acts_on
        if acts_on == "update":
            return _flat(model_pair()[1])
        if acts_on == "outputs":
            return softmax(toy_logits()).ravel()
        return None

    # --- the suite -------------------------------------------------------------------------------

    def test_declares_where_it_acts_and_a_paper(self) -> None:
        cls = self.defence_class()
        lacks = DEFENCES.check(cls) if DEFENCES.check is not None else ""
        assert not lacks, lacks
        assert cls.acts_on in ACTS_ON
        assert isinstance(cls.paper, str) and cls.paper, "name the paper that proposed it"
        if self.papers is not None:
            assert cls.paper in self.papers
        if cls.strength_field is not None:
            assert cls.strength_field in cls.Params.__dataclass_fields__
            assert self.example() is not None, "set example_strength"

    def test_finite_and_seed_deterministic(self) -> None:
        a, b = self.apply(self.example(), seed=0), self.apply(self.example(), seed=0)
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)

    def test_example_strength_changes_something(self) -> None:
        base = self.undefended()
        if base is None:
            pytest.skip("a training defence has no undefended output to compare with here")
        assert not np.allclose(self.apply(self.example()), base)

    def test_identity_strength_changes_nothing(self) -> None:
        identity = self.defence_class().identity_strength
        if identity is None:
            pytest.skip("the defence declares no identity strength")
        out, base = self.apply(identity), self.undefended()
        assert base is not None, "a training defence cannot declare an identity strength"
        if self.defence_class().acts_on == "update":
            np.testing.assert_array_equal(out, base)
        else:
            np.testing.assert_allclose(out, base, atol=1e-12)

    def test_unknown_params_rejected(self) -> None:
        with pytest.raises(ParamError, match="unknown key"):
            self.defence_class()().params(None, {"no_such_setting": 1})

    def test_leaves_its_inputs_alone(self) -> None:
        d = self.defence_class()()
        params = d.params(self.example(), self.fixed)
        if d.acts_on == "outputs":
            z = toy_logits()
            d.apply(z, params)
            np.testing.assert_array_equal(z, toy_logits())
            return
        if d.acts_on != "update":
            pytest.skip("a training defence trains the model it is given")
        theta, theta_u = model_pair()
        before = [p.detach().clone() for p in (*theta.parameters(), *theta_u.parameters())]
        x, y = toy_data()
        ctx = UpdateContext(x, y, np.arange(60, 120), TrainConfig(epochs=1, batch_size=16))
        d.apply(theta, theta_u, params, seed=0, context=ctx)
        after = [p.detach() for p in (*theta.parameters(), *theta_u.parameters())]
        assert all(torch.equal(a, b) for a, b in zip(before, after))
