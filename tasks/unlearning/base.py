"""Shared types of the unlearning registry: training state, forget requests, the method base."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from tasks.data import Dataset
from tasks.models import ModelConfig, SklearnModel, build_sklearn_model, build_torch_model
from tasks.registry import Registry, lacks_members
from tasks.training import SeedStream, TrainConfig, seed_everything, train_model

Model = Any  # nn.Module or SklearnModel (or an ensemble of either)


@dataclass(frozen=True)
class ForgetConfig:
    """How forget requests are drawn from the training set (deterministic from the seed)."""

    kind: Literal["single", "group", "class_share"] = "single"
    count: int = 8  # requests of kind single or group
    size: int = 1  # samples per group request
    classes: tuple[int, ...] | None = None  # class_share: which classes (None: all)
    shares: tuple[float, ...] = (1.0,)  # class_share: fraction p of the class forgotten
    # Online learning: every deleted sample is replaced by a fresh one from a replace pool.
    replace: bool = False

    def __post_init__(self) -> None:
        from tasks.params import FieldError, check, check_each

        check("count", self.count, low=1, integer=True)
        check("size", self.size, low=1, integer=True)
        if not self.shares:
            raise FieldError("shares", "must hold at least one share")
        check_each("shares", self.shares, low=0, low_open=True, high=1)
        check_each("classes", self.classes, low=0, integer=True)


@dataclass(frozen=True)
class ForgetRequest:
    """A deletion request. ``indices`` point into the dataset's training arrays.

    This is ground truth held by the provider and by analysis; attacks never receive it.
    """

    request_id: str
    kind: str
    indices: tuple[int, ...]
    replacement: tuple[int, ...] = ()
    forgotten_class: int | None = None
    share: float | None = None


def make_requests(cfg: ForgetConfig, train_indices: np.ndarray, y: np.ndarray, seed: int,
                  replace_pool: np.ndarray | None = None) -> list[ForgetRequest]:
    """Draw forget requests from ``train_indices``.

    single/group: ``count`` requests of ``size`` samples each, disjoint across requests.
    class_share: for every class c and share p, the first floor(n_c * p) class-c samples
    of the training set (in its order), as the reference experiment does.
    """
    rng = np.random.default_rng([seed, 7])
    train_indices = np.asarray(train_indices)
    requests: list[ForgetRequest] = []
    if cfg.kind in ("single", "group"):
        size = 1 if cfg.kind == "single" else cfg.size
        need = cfg.count * size
        if need > len(train_indices):
            raise ValueError(f"forget.count: {cfg.count} requests of {size} sample(s) need "
                             f"{need} samples, the training set has {len(train_indices)}; "
                             f"at most {len(train_indices) // size} requests fit")
        chosen = rng.choice(train_indices, size=need, replace=False)
        repl = None
        if cfg.replace:
            if replace_pool is None or len(replace_pool) < need:
                raise ValueError("forget.replace needs a replace pool of at least "
                                 f"{need} samples")
            repl = np.random.default_rng([seed, 8]).choice(replace_pool, size=need, replace=False)
        for r in range(cfg.count):
            part = slice(r * size, (r + 1) * size)
            requests.append(ForgetRequest(
                f"{cfg.kind}-{r}", cfg.kind, tuple(int(i) for i in chosen[part]),
                tuple(int(i) for i in repl[part]) if repl is not None else ()))
        return requests
    classes = cfg.classes if cfg.classes is not None else sorted(set(y[train_indices].tolist()))
    # A class the dataset lacks is a typo; one a small training set lacks yields no request.
    labels = sorted(set(np.asarray(y).tolist()))
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise ValueError(f"forget.classes: the dataset has no class {unknown[0]} (its labels: "
                         f"{labels[0]}..{labels[-1]})")
    for c in classes:
        members = train_indices[y[train_indices] == c]
        for share in cfg.shares:
            n = int(np.floor(len(members) * share))
            if n == 0:
                continue
            requests.append(ForgetRequest(f"class{c}-p{share:g}", "class_share",
                                          tuple(int(i) for i in members[:n]),
                                          forgotten_class=int(c), share=float(share)))
    if not requests:
        raise ValueError(f"forget.shares: no share of any class holds a whole sample "
                         f"(shares {list(cfg.shares)})")
    return requests


@dataclass
class TrainingState:
    """What the provider holds after training theta: enough to replay its recipe without U."""

    dataset: Dataset
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    train_indices: np.ndarray  # into dataset.x_train
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    original: Model | None = None
    pretrained_state: dict[str, torch.Tensor] | None = None  # theta_0, when the recipe has one
    removed: tuple[int, ...] = ()  # samples already unlearned (successive versions)
    extras: dict[str, Any] = field(default_factory=dict)  # method-specific (e.g. SISA)

    @property
    def family(self) -> str:
        return self.model_cfg.family

    @property
    def seeds(self) -> SeedStream:
        """This member's seed stream: ``state.seeds.seed("<method>/<what>")``."""
        return SeedStream(self.seed)

    def initial_model(self, seed: int | None = None) -> nn.Module:
        """theta_0 when pretrained, else the random initialisation drawn from ``seed``."""
        d = self.dataset
        model = build_torch_model(self.model_cfg, d.input_shape, d.num_classes, d.mean, d.std,
                                  seed=self.seed if seed is None else seed)
        if self.pretrained_state is not None:
            model.load_state_dict(self.pretrained_state)
        return model.to(self.device)


def retained_indices(state: TrainingState, request: ForgetRequest) -> np.ndarray:
    """The training records still held: neither in the request nor removed before."""
    gone = np.asarray(tuple(state.removed) + tuple(request.indices), dtype=np.int64)
    keep = np.asarray(state.train_indices, dtype=np.int64)
    return keep[~np.isin(keep, gone)]


def finetune_config(cfg: TrainConfig, epochs: int, lr: float | None = None,
                    batch_size: int | None = None) -> TrainConfig:
    """The recipe ``cfg`` continued for ``epochs`` more: ``lr``/``batch_size`` default (None)
    to the recipe's, and its learning-rate milestones are dropped (these epochs follow the
    original's at a constant rate). Optimiser, momentum, weight decay and BatchNorm mode stay
    the recipe's."""
    return dataclasses.replace(cfg, epochs=epochs, lr=lr or cfg.lr,
                               batch_size=batch_size or cfg.batch_size, lr_milestones=())


def fit_standard(state: TrainingState, indices: np.ndarray | None = None,
                 exclude: tuple[int, ...] = (), extra: tuple[int, ...] = (),
                 seed: int | None = None) -> Model:
    """Run the original recipe on ``indices`` (default: the training set) minus ``exclude``."""
    indices = state.train_indices if indices is None else indices
    seed = state.seed if seed is None else seed
    d = state.dataset
    if state.family == "sklearn":
        keep = indices[~np.isin(indices, np.asarray(exclude, dtype=np.int64))]
        if len(extra):
            keep = np.concatenate([keep, np.asarray(extra, dtype=np.int64)])
        model = build_sklearn_model(state.model_cfg, d.num_classes, seed)
        return model.fit(d.x_train[keep], d.y_train[keep])
    model = state.initial_model(seed)
    return train_model(model, d.x_train, d.y_train, indices, state.train_cfg, seed,
                       state.device, exclude=exclude, extra=np.asarray(extra, dtype=np.int64))


class UnlearningMethod:
    """Base class: override :meth:`unlearn`; methods that change how theta itself is trained
    (SISA) also override :meth:`train_original` and :meth:`original_recipe`."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    families: ClassVar[tuple[str, ...]] = ("torch", "sklearn")
    # Capabilities the orchestrator plans by (it never tests a method's name):
    # unlearn() replays the recipe and never reads ``state.original``, so an unlearning unit
    # needs no trained original (and does not wait for one).
    retrains_from_scratch: ClassVar[bool] = False
    # unlearn() trains on ``request.replacement`` too (online deletion with replacement).
    supports_replacement: ClassVar[bool] = False
    # theta and theta_u are shard ensembles; Params then has an int field ``shards``.
    returns_ensemble: ClassVar[bool] = False
    # The Params field holding the step size the reference attacker knows (approximate
    # unlearning's eta); None for exact methods.
    step_size_param: ClassVar[str | None] = None
    # Unlearning needs theta_0 from the spec's ``pretraining`` recipe.
    requires_pretraining: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Params:
        pass

    def original_recipe(self, params: Any) -> dict[str, Any]:
        """Settings of this method that change theta (part of the original's cache key)."""
        return {}

    def train_original(self, state: TrainingState, params: Any) -> Model:
        return fit_standard(state)

    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Any) -> Model:
        raise NotImplementedError

    def unlearn_members(self, states: Sequence[TrainingState],
                        requests: Sequence[ForgetRequest], params: Any) -> list[Model]:
        """One request per member of a group of models (state i: member i's original, data
        and seed). This default unlearns member by member; methods whose maths vectorises
        across members override it with one stacked program (:mod:`tasks.unlearning.stacked`)
        that returns the same models up to float tolerance."""
        out = []
        for state, request in zip(states, requests, strict=True):
            seed_everything(state.seed)
            out.append(self.unlearn(state, request, params))
        return out

    def step_size(self, params: Any) -> float | None:
        """The value of :attr:`step_size_param` in ``params`` (None when there is none)."""
        return None if self.step_size_param is None else getattr(params, self.step_size_param)

    def pair_privacy(self, params: Any, train_cfg: TrainConfig, n_theta: int,
                     n_theta_u: int) -> dict[str, Any] | None:
        """Differential-privacy accounting of a released pair (theta trained on ``n_theta``
        records, theta_u on ``n_theta_u``); None for methods that train without DP. Keys:
        ``epsilon`` (theta), ``epsilon_unlearned``, ``epsilon_pair``, ``delta``, ``note``."""
        return None

    def check_family(self, state: TrainingState) -> None:
        if state.family not in self.families:
            raise ValueError(f"unlearning method {self.name!r} needs a "
                             f"{' or '.join(self.families)} model, got {state.model_cfg.name!r}")


def _check_method(obj: object) -> str:
    lacks = lacks_members(obj, UnlearningMethod, ("Params", "unlearn"))
    if not lacks and obj.unlearn is UnlearningMethod.unlearn:  # type: ignore[attr-defined]
        lacks = "implement unlearn(state, request, params)"
    return lacks


UNLEARNING: Registry[type[UnlearningMethod]] = Registry(
    "unlearning method", group="unlearn_audit.unlearning", check=_check_method)


def copy_model(model: Model) -> Model:
    return copy.deepcopy(model)


__all__ = ["SklearnModel"]
