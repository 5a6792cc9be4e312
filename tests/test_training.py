import dataclasses

import numpy as np
import torch

from tasks.data import load_dataset
from tasks.models import ModelConfig, build_torch_model
from tasks.training import (
    PINNED_SEED_KEYS,
    SeedStream,
    TrainConfig,
    cross_entropy,
    epoch_order,
    make_optimizer,
    seed_key,
    steps_per_epoch,
    train_model,
)


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


def _setup(seed: int = 0, hidden: int = 16):
    d = load_dataset("digits")
    model = build_torch_model(ModelConfig("mlp", {"hidden": [hidden]}), d.input_shape, 10,
                              d.mean, d.std, seed=seed)
    return d, model


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_default_loss_is_cross_entropy():
    d, a = _setup()
    _, b = _setup()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32, lr_milestones=(1,))
    calls = []

    def loss_fn(model, x, y, batch):
        calls.append(batch.clone())
        np.testing.assert_array_equal(x.numpy(), d.x_train[batch.numpy()])
        return cross_entropy(model, x, y, batch)

    train_model(a, d.x_train, d.y_train, np.arange(100), cfg, 4)
    train_model(b, d.x_train, d.y_train, np.arange(100), cfg, 4, loss_fn=loss_fn)
    assert _same(a, b)
    assert len(calls) == 2 * steps_per_epoch(100, 32, b, "train") == 8


def test_passes_with_a_shared_optimiser_equal_one_run():
    # One epoch per call, numbered by first_epoch, with the caller's optimiser: the same
    # steps as one call of two epochs (without milestones, which the caller then owns).
    d, a = _setup()
    _, b = _setup()
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=32)
    train_model(a, d.x_train, d.y_train, np.arange(100), cfg, 4)
    one = dataclasses.replace(cfg, epochs=1)
    opt = make_optimizer(b, one)
    for epoch in range(2):
        train_model(b, d.x_train, d.y_train, np.arange(100), one, 4, optimizer=opt,
                     first_epoch=epoch)
    assert _same(a, b)


def test_before_step_sees_the_gradients():
    d, model = _setup()
    frozen = model[-1].weight.detach().clone()

    def before_step(m):
        assert m[-1].weight.grad is not None
        m[-1].weight.grad.zero_()

    train_model(model, d.x_train, d.y_train, np.arange(64), TrainConfig(epochs=1, lr=0.1), 0,
                before_step=before_step)
    assert torch.equal(model[-1].weight, frozen)


def test_steps_per_epoch_skips_lone_records_only_under_batchnorm():
    bn = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    plain = torch.nn.Linear(2, 2)
    assert steps_per_epoch(65, 32, plain, "train") == 3
    assert steps_per_epoch(65, 32, bn, "train") == 2
    assert steps_per_epoch(65, 32, bn, "eval") == 3
    assert steps_per_epoch(5, 1, bn, "train") == 0
    assert steps_per_epoch(64, 32, bn, "train") == 2


def test_seed_stream_derives_stable_unrelated_seeds():
    stream = SeedStream(5)
    assert stream.seed("l1_sparse") == 5 + 7_000_003  # a pinned purpose keeps its offset
    # a new purpose: keyed by its name, identically on every run and machine
    key = seed_key("some_method/order")
    assert key == seed_key("some_method/order") == 583726591033067849 >= 2**32
    assert key != seed_key("some_method/teacher")
    assert stream.seed("some_method/order") == 5 + key
    assert np.array_equal(stream.rng("x/y").integers(0, 2**31, 4),
                          np.random.default_rng([5, seed_key("x/y")]).integers(0, 2**31, 4))
    assert len(set(PINNED_SEED_KEYS.values())) == len(PINNED_SEED_KEYS)
