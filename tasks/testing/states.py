"""Tiny real provider states for the conformance kits (scikit-learn's 8x8 digits, in memory).

Everything here is cached per process: the kits build many cases from one trained original,
and a plug-in's test module should not pay for training it more than once.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from tasks.data import Dataset, load_dataset
from tasks.models import ModelConfig, build_torch_model
from tasks.params import build
from tasks.registry import PluginError, Registry
from tasks.training import TrainConfig, train_model
from tasks.unlearning import TrainingState

# The recipe of the unlearning kit's small states: enough epochs that forgetting a class is
# measurable, few enough that a method runs in well under a second.
SMALL_TRAIN = TrainConfig(epochs=8, lr=0.05, batch_size=32)


class Kit:
    """What every kit shares (the kits subclass it; a plug-in's tests need not know it)."""

    @pytest.fixture(autouse=True)
    def _one_torch_thread(self):
        """Tiny models run fastest on one thread; on a shared machine more threads mostly wait
        for each other (seconds instead of a fraction of one). Restored after the test."""
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def digits() -> Dataset:
    """scikit-learn's digits (1797 images, 1x8x8, 10 classes); needs no data root."""
    return load_dataset("digits", None)


@functools.lru_cache(maxsize=1)
def _trained_digits_state() -> TrainingState:
    d = digits()
    cfg = ModelConfig("mlp", {"hidden": [32]})
    model = build_torch_model(cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=0)
    idx = np.arange(len(d.y_train))
    tc = TrainConfig(epochs=5, lr=0.05, batch_size=64)
    train_model(model, d.x_train, d.y_train, idx, tc, 0)
    return TrainingState(d, cfg, tc, idx, 0, original=model)


def digits_state() -> TrainingState:
    """A provider state: an MLP trained briefly on the whole digits training set.

    A shallow copy of a cached state: callers may replace fields, never mutate the model in
    place (unlearning methods and ``build_case`` copy it).
    """
    return dataclasses.replace(_trained_digits_state())


def small_state(family: str, *, pretrained: bool = False, n_train: int = 300,
                train: TrainConfig = SMALL_TRAIN, seed: int = 0) -> TrainingState:
    """An untrained state on the first ``n_train`` digits: an MLP (``torch``) or a logistic
    regression (``sklearn``). ``pretrained``: theta_0 is an MLP trained on 700 other samples
    (the recipes with a ``pretraining`` block, which ``refit`` needs)."""
    d = digits()
    cfg = ModelConfig("mlp", {"hidden": [32]}) if family == "torch" else ModelConfig("lr")
    theta0 = None
    if pretrained:
        theta0 = _pretrained(n_train, train, family)
    return TrainingState(d, cfg, train, np.arange(n_train), seed=seed, pretrained_state=theta0)


@functools.lru_cache(maxsize=4)
def _pretrained(n_train: int, train: TrainConfig, family: str) -> dict:
    d = digits()
    cfg = ModelConfig("mlp", {"hidden": [32]})
    model = build_torch_model(cfg, d.input_shape, d.num_classes, d.mean, d.std, seed=5)
    public = np.arange(n_train, min(n_train + 700, len(d.y_train)))
    return train_model(model, d.x_train, d.y_train, public,
                       dataclasses.replace(train, epochs=3), seed=5).state_dict()


def resolve(registry: Registry, ref: object) -> type:
    """A component class from a registry name, ``package.module:attr`` or the class itself;
    a class from outside is checked against the registry's interface like a spec's would be."""
    if isinstance(ref, str):
        if not ref:
            raise PluginError(f"set the {registry.kind} this conformance class tests")
        return registry.get(ref)
    lacks = registry.check(ref) if registry.check is not None else ""
    if lacks:
        raise PluginError(f"{registry.kind} {ref!r} does not fit: {lacks}")
    return ref  # type: ignore[return-value]


def typed(cls: type, data: dict, path: str) -> object:
    """``cls`` (a Params/Config dataclass) built and checked from plain settings."""
    return build(cls, dict(data), path)


def registered_name(registry: Registry, component: type) -> str | None:
    """The name under which ``component`` is registered, or None."""
    for name in registry.names():
        if registry.get(name) is component:
            return name
    return None
