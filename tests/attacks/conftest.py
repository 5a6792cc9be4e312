"""Small shared fixtures for attack tests: digits, a trained MLP, helpers to build cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.data import load_dataset
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, train_model
from tasks.unlearning import TrainingState


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", None)


@pytest.fixture(scope="session")
def digits_state(digits):
    """An MLP trained briefly on the digits training set, as the provider holds it."""
    torch.set_num_threads(1)
    cfg = ModelConfig("mlp", {"hidden": [32]})
    model = build_torch_model(cfg, digits.input_shape, 10, digits.mean, digits.std, seed=0)
    idx = np.arange(len(digits.y_train))
    tc = TrainConfig(epochs=5, lr=0.05, batch_size=64)
    train_model(model, digits.x_train, digits.y_train, idx, tc, 0)
    return TrainingState(digits, cfg, tc, idx, 0, original=model)
