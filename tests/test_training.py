import numpy as np
import torch

from tasks.data import load_dataset
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, epoch_order, train_model


def _train(seed: int):
    d = load_dataset("digits")
    model = build_torch_model(ModelConfig("mlp", {"hidden": [32]}), d.input_shape, 10, d.mean,
                              d.std, seed=seed)
    return train_model(model, d.x_train, d.y_train, np.arange(400),
                       TrainConfig(epochs=3, lr=0.05, batch_size=32), seed)


def test_same_seed_gives_identical_models_on_cpu():
    a, b = _train(0).state_dict(), _train(0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_another_model():
    a, b = _train(0).state_dict(), _train(1).state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_removal_keeps_the_order_of_the_remaining_samples():
    idx = np.arange(50)
    full = epoch_order(idx, seed=3, epoch=2)
    without = epoch_order(idx, seed=3, epoch=2, exclude=[7, 11])
    np.testing.assert_array_equal(without, full[~np.isin(full, [7, 11])])
