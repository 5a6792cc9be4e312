"""Record splits and sampling plans for membership inference against unlearning (Chen et al.).

ATTACKS.md section 6.2/6.3. Every sampling step is seeded; the reference implementation's
unseeded draws cannot be repeated. The "records" are the dataset's training split; its test
split stays a genuinely held-out set for the original models' generalisation gap (section 6.8).

Split (reference seeds in brackets)::

    all records   -> shadow 50% | target 50%                 [split_seed 100]
    each half     -> positive pool 80% | negative pool 20%   [split_seed 100]
    negative pool -> negatives 85% | replace pool 15%        [replace_seed 0]

Per side and original i: S_i drawn from the positive pool without replacement; per pair j the
deleted records U_ij (k of them), k negatives drawn with replacement from the negatives (as in
the reference), one "remaining" record of S_i minus U_ij (the ``in_in`` positive) and k fresh
replacement records (online learning). ``deletion_sampling="without_replacement"`` (default)
draws the U_ij of one S_i disjoint across j; ``"independent"`` draws each U_ij on its own, as
the reference does, and may repeat records.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

SIDES = ("shadow", "target")
DeletionSampling = Literal["without_replacement", "independent"]

# Stream ids keep every draw of one (seed, side, set) independent of the others.
_S_SET, _S_DELETE, _S_NEGATIVE, _S_REMAIN, _S_REPLACE = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class HalfSplit:
    positive: np.ndarray  # pool the originals' training sets are drawn from
    negative: np.ndarray  # non-member records (never trained on by this side)
    replace: np.ndarray  # fresh records for online learning


@dataclass(frozen=True)
class MiaSplit:
    shadow: HalfSplit
    target: HalfSplit

    def side(self, name: str) -> HalfSplit:
        if name not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {name!r}")
        return getattr(self, name)


def _cut(idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = idx[np.random.default_rng(seed).permutation(len(idx))]
    n_first = round(len(idx) * fraction)
    return order[:n_first], order[n_first:]


def paper_split(n_records: int, split_seed: int = 100, replace_seed: int = 0,
                shadow_fraction: float = 0.5, positive_fraction: float = 0.8,
                negative_fraction: float = 0.85) -> MiaSplit:
    """Disjoint shadow/target halves of ``range(n_records)``, each with its pools."""
    for name, f in (("shadow_fraction", shadow_fraction),
                    ("positive_fraction", positive_fraction),
                    ("negative_fraction", negative_fraction)):
        if not 0 < f < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {f}")
    shadow, target = _cut(np.arange(n_records), shadow_fraction, split_seed)
    halves = []
    for half in (shadow, target):
        pos, neg = _cut(half, positive_fraction, split_seed)
        negatives, replace = _cut(neg, negative_fraction, replace_seed)
        halves.append(HalfSplit(pos, negatives, replace))
    return MiaSplit(*halves)


def max_set_size(pool_size: int, max_fraction: float) -> int:
    """The largest S_i a positive pool of ``pool_size`` records allows: ``max_fraction`` of it.

    A set as large as its pool makes every "different" original train on the same records
    (ATTACKS.md 6.3, the STL-10 pitfall); the bound keeps the S_i distinct.
    """
    return int(np.floor(pool_size * max_fraction))


def effective_set_size(set_size: int, pool_size: int, max_fraction: float,
                       key: str = "membership.set_size", cap: bool = False) -> int:
    """``set_size``, checked against :func:`max_set_size` of the positive pool.

    A larger request is an error naming ``key`` and the largest allowed value, never silently
    capped; ``cap=True`` (the spec's ``cap_set_size: true``, asked for explicitly: a grid over
    datasets of different sizes) reduces it to that value instead.
    """
    largest = max_set_size(pool_size, max_fraction)
    if largest < 2:
        raise ValueError(f"{key}: the positive pool holds {pool_size} records, too few for a "
                         f"training set (max_set_fraction {max_fraction}); use more data")
    if set_size > largest and not cap:
        raise ValueError(f"{key}: at most {largest} for this dataset (max_set_fraction "
                         f"{max_fraction} of the {pool_size}-record positive pool), "
                         f"got {set_size}; or set cap_set_size: true")
    if min(set_size, largest) >= pool_size:
        warnings.warn(f"set_size {set_size} equals the positive pool: every original trains on "
                      "the same records", stacklevel=2)
    return min(set_size, largest)


@dataclass(frozen=True)
class PairPlan:
    """One (M_i, M_ij) pair: what was deleted and which records the attack scores."""

    index: int
    deleted: tuple[int, ...]  # U_ij: the in_out positives
    negatives: tuple[int, ...]  # k records never in either model
    remaining: tuple[int, ...]  # one record of S_i left in M_ij: the in_in positive
    replacement: tuple[int, ...]  # k fresh records (online learning)


@dataclass(frozen=True)
class SetPlan:
    """One original's training set S_i and its deletion pairs."""

    side: str
    index: int
    members: np.ndarray  # S_i in sampled order (the training order derives from it)
    train_seed: int
    pairs: tuple[PairPlan, ...]


def _rng(seed: int, side: str, set_index: int, stream: int, *extra: int):
    return np.random.default_rng([seed, SIDES.index(side), set_index, stream, *extra])


def sample_sets(split: MiaSplit, side: str, set_num: int, set_size: int, unlearning_size: int,
                unlearning_num: int, seed: int,
                deletion_sampling: DeletionSampling = "without_replacement") -> list[SetPlan]:
    """The ``set_num`` originals of one side, each with ``unlearning_size`` deletion pairs of
    ``unlearning_num`` records. Identical arguments give identical plans."""
    half = split.side(side)
    if set_size > len(half.positive):
        raise ValueError(f"membership.set_size: at most the {side} positive pool "
                         f"({len(half.positive)} records), got {set_size}")
    need = unlearning_size * unlearning_num
    if deletion_sampling == "without_replacement" and need > set_size - 1:
        raise ValueError(f"membership.unlearning_size: {unlearning_size} deletions of "
                         f"{unlearning_num} need {need} distinct records plus one remaining, "
                         f"S_i holds {set_size}; at most {(set_size - 1) // unlearning_num} "
                         f"deletions fit")
    if len(half.negative) == 0:
        raise ValueError(f"the {side} negative pool is empty")
    plans = []
    for i in range(set_num):
        members = _rng(seed, side, i, _S_SET).choice(half.positive, set_size, replace=False)
        if deletion_sampling == "without_replacement":
            flat = _rng(seed, side, i, _S_DELETE, unlearning_num).choice(
                members, need, replace=False)
            deletions = [flat[j * unlearning_num:(j + 1) * unlearning_num]
                         for j in range(unlearning_size)]
        elif deletion_sampling == "independent":
            deletions = [_rng(seed, side, i, _S_DELETE, unlearning_num, j).choice(
                members, unlearning_num, replace=False) for j in range(unlearning_size)]
        else:
            raise ValueError(f"deletion_sampling must be 'without_replacement' or "
                             f"'independent', got {deletion_sampling!r}")
        neg_rng = _rng(seed, side, i, _S_NEGATIVE, unlearning_num)
        rem_rng = _rng(seed, side, i, _S_REMAIN, unlearning_num)
        rep_rng = _rng(seed, side, i, _S_REPLACE, unlearning_num)
        all_deleted = np.concatenate(deletions)
        pairs = []
        for j, u in enumerate(deletions):
            negatives = neg_rng.choice(half.negative, unlearning_num, replace=True)
            # The in_in positive stays in every model of this set's pairs (and chain).
            rest = members[~np.isin(members, all_deleted)]
            remaining = rem_rng.choice(rest, 1)
            replacement = (rep_rng.choice(half.replace, unlearning_num, replace=False)
                           if len(half.replace) >= unlearning_num else np.array([], int))
            pairs.append(PairPlan(j, _ints(u), _ints(negatives), _ints(remaining),
                                  _ints(replacement)))
        plans.append(SetPlan(side, i, members, train_seed=_train_seed(seed, side, i),
                             pairs=tuple(pairs)))
    return plans


def _ints(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(a).ravel())


def _train_seed(seed: int, side: str, set_index: int) -> int:
    # Every original (and its unlearned versions) trains from its own seed.
    return 1_000 * seed + 100 * SIDES.index(side) + set_index + 1
