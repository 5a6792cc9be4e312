"""Which training samples a recipe uses: private pool, fine-tune/training set, public set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Selection:
    train: np.ndarray  # the provider's training set D (or D_ft when pretrained)
    public: np.ndarray  # public data: pretraining theta_0, held-out fine-tuning for defences
    pool: np.ndarray  # the private pool D is drawn from


def select_training_set(n_train: int, pool_size: int | None, train_size: int | None,
                        seed: int) -> Selection:
    """The first ``pool_size`` training samples are the private pool (fixed, not shuffled, as in
    Hu et al.); the rest are public. ``train_size`` samples are drawn from the pool, seeded."""
    pool_size = n_train if pool_size is None else pool_size
    if not 0 < pool_size <= n_train:
        raise ValueError(f"dataset.pool_size: must be in 1..{n_train} (the dataset's training "
                         f"samples), got {pool_size}")
    pool = np.arange(pool_size)
    public = np.arange(pool_size, n_train)
    if train_size is None or train_size == pool_size:
        train = pool
    else:
        if not 0 < train_size <= pool_size:
            raise ValueError(f"dataset.train_size: must be in 1..{pool_size} (the private pool), "
                             f"got {train_size}")
        train = np.sort(np.random.default_rng([seed, 3]).choice(pool, train_size, replace=False))
    return Selection(train=train, public=public, pool=pool)
