"""Model registry: plain-torch networks (MLP, ConvNet, ResNet-18) and scikit-learn estimators.

Torch models take inputs in the dataset's raw space ([0, 1] images) and begin with a
:class:`Normalize` layer, so attacks optimise in image space and metrics compare like with like.
Scikit-learn models (tabular targets) expose the same ``logits`` view through
:class:`SklearnModel`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tasks.params import FieldError, build, check, check_each
from tasks.registry import Registry
from tasks.sklearn_forest import FittedForest, fit_forest


@dataclass(frozen=True)
class ModelEntry:
    family: Literal["torch", "sklearn"]
    params: type
    builder: Callable[..., Any]


MODELS: Registry[ModelEntry] = Registry(
    "model", group="unlearn_audit.models",
    check=lambda obj: "" if isinstance(obj, ModelEntry) else "expected a tasks.models.ModelEntry")


def _register(name: str, family: str, params: type):
    def decorate(builder):
        MODELS.register(name)(ModelEntry(family, params, builder))
        return builder

    return decorate


class Normalize(nn.Module):
    """(x - mean_c) / std_c, as the first layer of every image model."""

    def __init__(self, mean, std, channels: int) -> None:
        super().__init__()
        shape = (1, channels, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _input_layer(input_shape, mean, std) -> nn.Module:
    if mean is None or len(input_shape) != 3:
        return nn.Identity()
    return Normalize(mean, std, input_shape[0])


# --- MLP -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MLPParams:
    hidden: tuple[int, ...] = (128,)
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"

    def __post_init__(self) -> None:
        check_each("hidden", self.hidden, low=1, integer=True)


@_register("mlp", "torch", MLPParams)
def mlp(input_shape, num_classes, params: MLPParams, mean=None, std=None) -> nn.Module:
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[params.activation]
    layers: list[nn.Module] = [_input_layer(input_shape, mean, std), nn.Flatten()]
    width = int(np.prod(input_shape))
    for h in params.hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# --- a user's own architecture -------------------------------------------------------------

@dataclass(frozen=True)
class FactoryParams:
    factory: str = ""  # "package.module:function" returning a torch.nn.Module
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the function

    def __post_init__(self) -> None:
        module, _, attr = self.factory.partition(":")
        if not module or not attr:
            raise FieldError("factory", f"expected package.module:function, got "
                                        f"{self.factory!r}")


@_register("factory", "torch", FactoryParams)
def factory_model(input_shape, num_classes, params: FactoryParams, mean=None,
                  std=None) -> nn.Module:
    """The user's architecture: ``function(**kwargs)``, also given ``input_shape`` and
    ``num_classes`` when its signature names them. No normalisation layer is added: the
    function builds exactly the module whose weights the user brings."""
    import importlib
    import inspect

    module_name, _, attr = params.factory.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise FieldError("factory", f"cannot import {params.factory!r} ({err})") from None
    kwargs = dict(params.kwargs)
    names = inspect.signature(fn).parameters
    for key, value in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)):
        if key in names and key not in kwargs:
            kwargs[key] = value
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise FieldError("factory", f"{params.factory!r} returned a {type(model).__name__}, "
                                    "not a torch.nn.Module")
    return model


# --- ConvNet of the gradient-inversion literature ---------------------------------------------

@dataclass(frozen=True)
class ConvNetParams:
    width: int = 64
    # Parity with the reference definition, whose repeated conv6 name leaves 8 effective layers.
    batchnorm: bool = True

    def __post_init__(self) -> None:
        check("width", self.width, low=1, integer=True)


def _conv_block(c_in: int, c_out: int, bn: bool) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out) if bn else nn.Identity(),
            nn.ReLU()]


@_register("convnet", "torch", ConvNetParams)
def convnet(input_shape, num_classes, params: ConvNetParams, mean=None, std=None) -> nn.Module:
    """conv0-conv5 (3 -> w -> 2w -> 2w -> 4w -> 4w -> 4w), MaxPool(3), conv6, conv7, MaxPool(3),
    Linear. On 32x32 inputs the flattened size is 4w*3*3 (2304 at w = 64). Inputs smaller than
    about 9x9 vanish under the pools; use the MLP for 8x8 digits."""
    w, bn = params.width, params.batchnorm
    c = input_shape[0]
    chans = [c, w, 2 * w, 2 * w, 4 * w, 4 * w, 4 * w]
    body: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(chans):
        body += _conv_block(c_in, c_out, bn)
    body.append(nn.MaxPool2d(3))
    body += _conv_block(4 * w, 4 * w, bn) + _conv_block(4 * w, 4 * w, bn)
    body.append(nn.MaxPool2d(3))
    features = nn.Sequential(*body)
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).numel()
    if flat == 0:
        raise ValueError(f"convnet needs inputs of at least 9x9, got {input_shape}")
    return nn.Sequential(_input_layer(input_shape, mean, std), features, nn.Flatten(),
                         nn.Linear(flat, num_classes))


# --- SimpleCNN, the image target of Chen et al. -----------------------------------------------

@dataclass(frozen=True)
class SimpleCNNParams:
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    dropout: tuple[float, ...] = (0.25, 0.5)

    def __post_init__(self) -> None:
        if len(self.channels) != 2 or len(self.dropout) != 2:
            raise FieldError("channels" if len(self.channels) != 2 else "dropout",
                             "must hold exactly two values (one per convolution / dropout)")
        check_each("channels", self.channels, low=1, integer=True)
        check("hidden", self.hidden, low=1, integer=True)
        check_each("dropout", self.dropout, low=0, high=1, high_open=True)


@_register("simple_cnn", "torch", SimpleCNNParams)
def simple_cnn(input_shape, num_classes, params: SimpleCNNParams, mean=None,
               std=None) -> nn.Module:
    """conv32 -> conv64 -> maxpool2 -> dropout 0.25 -> fc128 -> dropout 0.5 -> fc (ATTACKS.md
    6.8). About 17M multiply-adds per 32x32 image: cheap enough to train hundreds of shadow and
    target models on CPU, unlike the 8-layer ``convnet``."""
    c1, c2 = params.channels
    features = nn.Sequential(nn.Conv2d(input_shape[0], c1, 3), nn.ReLU(),
                             nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Dropout(params.dropout[0]), nn.Flatten())
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(_input_layer(input_shape, mean, std), features,
                         nn.Linear(flat, params.hidden), nn.ReLU(),
                         nn.Dropout(params.dropout[1]), nn.Linear(params.hidden, num_classes))


# --- CIFAR-style ResNet-18 -------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@dataclass(frozen=True)
class ResNetParams:
    width: int = 64
    blocks: tuple[int, ...] = (2, 2, 2, 2)

    def __post_init__(self) -> None:
        check("width", self.width, low=1, integer=True)
        if not self.blocks:
            raise FieldError("blocks", "must hold at least one stage")
        check_each("blocks", self.blocks, low=1, integer=True)


@_register("resnet18", "torch", ResNetParams)
def resnet18(input_shape, num_classes, params: ResNetParams, mean=None, std=None) -> nn.Module:
    """BasicBlock [2,2,2,2], 3x3 stem, no max-pool, adaptive average pool (CIFAR style)."""
    w = params.width
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], w, 3, 1, 1, bias=False),
                               nn.BatchNorm2d(w), nn.ReLU()]
    c_in = w
    for stage, n_blocks in enumerate(params.blocks):
        c_out = w * 2**stage
        for b in range(n_blocks):
            layers.append(BasicBlock(c_in, c_out, 2 if (b == 0 and stage > 0) else 1))
            c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(_input_layer(input_shape, mean, std), *layers)


# --- scikit-learn targets --------------------------------------------------------------------

class SklearnModel:
    """A fitted scikit-learn classifier with a logits view shaped (n, num_classes).

    Classes absent from a small training set get probability 0 (logit log(1e-12)), so
    posteriors of different models always line up column by column. A random forest is grown
    by :func:`fit_forest` (the same trees as ``estimator.fit``, without its per-tree Python
    set-up); ``estimator`` then answers with the same forest fitted by scikit-learn itself,
    refitted on first use.
    """

    def __init__(self, estimator: Any, num_classes: int) -> None:
        self._estimator = estimator
        self.num_classes = num_classes
        self._forest: FittedForest | None = None
        self._fit_data: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def estimator(self) -> Any:
        if self._fit_data is not None:  # grown by fit_forest: fit scikit-learn's own copy
            x, y = self._fit_data
            self._fit_data = None
            self._estimator.fit(x, y)
        return self._estimator

    def fit(self, x: np.ndarray, y: np.ndarray) -> SklearnModel:
        rows = x.reshape(len(x), -1)  # images are flattened
        self._forest = fit_forest(self._estimator, rows, y)
        if self._forest is None:
            self._estimator.fit(rows, y)
        else:
            self._fit_data = (rows, np.asarray(y))
        return self

    @property
    def batch_invariant(self) -> bool:
        """Whether a record's logits are the same in any batch (a forest's trees: yes; a
        matrix product's summation order may depend on the batch size, so others: no)."""
        return self._forest is not None

    def proba(self, x: np.ndarray) -> np.ndarray:
        rows = x.reshape(len(x), -1)
        p = np.zeros((len(x), self.num_classes))
        if self._forest is not None:
            p[:, self._forest.classes_] = self._forest.predict_proba(rows)
        else:
            p[:, self.estimator.classes_] = self.estimator.predict_proba(rows)
        return p

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.clip(self.proba(x), 1e-12, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class DecisionTreeParams:
    max_depth: int | None = None
    min_samples_leaf: int = 1

    def __post_init__(self) -> None:
        check("max_depth", self.max_depth, low=1, integer=True, optional=True)
        check("min_samples_leaf", self.min_samples_leaf, low=1, integer=True)


@dataclass(frozen=True)
class RandomForestParams:
    n_estimators: int = 100
    min_samples_leaf: int = 1
    max_depth: int | None = None

    def __post_init__(self) -> None:
        check("n_estimators", self.n_estimators, low=1, integer=True)
        check("min_samples_leaf", self.min_samples_leaf, low=1, integer=True)
        check("max_depth", self.max_depth, low=1, integer=True, optional=True)


@dataclass(frozen=True)
class LogisticParams:
    C: float = 1.0
    max_iter: int = 400

    def __post_init__(self) -> None:
        check("C", self.C, low=0, low_open=True)
        check("max_iter", self.max_iter, low=1, integer=True)


@dataclass(frozen=True)
class SkMLPParams:
    hidden: tuple[int, ...] = (64,)
    max_iter: int = 200
    learning_rate_init: float = 1e-3

    def __post_init__(self) -> None:
        check_each("hidden", self.hidden, low=1, integer=True)
        check("max_iter", self.max_iter, low=1, integer=True)
        check("learning_rate_init", self.learning_rate_init, low=0, low_open=True)


@_register("dt", "sklearn", DecisionTreeParams)
def decision_tree(params: DecisionTreeParams, seed: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=params.max_depth,
                                  min_samples_leaf=params.min_samples_leaf, random_state=seed)


@_register("rf", "sklearn", RandomForestParams)
def random_forest(params: RandomForestParams, seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=params.n_estimators, max_depth=params.max_depth,
                                  min_samples_leaf=params.min_samples_leaf, random_state=seed,
                                  n_jobs=1)


@_register("lr", "sklearn", LogisticParams)
def logistic_regression(params: LogisticParams, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler is part of the fitted pipeline, so queries reuse the training statistics.
    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=params.C, max_iter=params.max_iter,
                                            random_state=seed))


@_register("sk_mlp", "sklearn", SkMLPParams)
def sklearn_mlp(params: SkMLPParams, seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=params.hidden, max_iter=params.max_iter,
                         learning_rate_init=params.learning_rate_init, random_state=seed)


@dataclass(frozen=True)
class ModelConfig:
    """A model choice from the spec: a registry name and that entry's parameters."""

    name: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return MODELS.get(self.name).family

    def typed_params(self, path: str = "model"):
        return build(MODELS.get(self.name).params, self.params, path)


def build_torch_model(cfg: ModelConfig, input_shape, num_classes, mean=None, std=None,
                      seed: int | None = None) -> nn.Module:
    """A freshly initialised torch model; ``seed`` fixes the initial weights."""
    entry = MODELS.get(cfg.name)
    if entry.family != "torch":
        raise ValueError(f"model {cfg.name!r} is a scikit-learn model, not a torch network")
    if seed is not None:
        torch.manual_seed(seed)
    return entry.builder(tuple(input_shape), num_classes, cfg.typed_params(), mean, std)


def build_sklearn_model(cfg: ModelConfig, num_classes: int, seed: int) -> SklearnModel:
    entry = MODELS.get(cfg.name)
    if entry.family != "sklearn":
        raise ValueError(f"model {cfg.name!r} is a torch network, not a scikit-learn model")
    return SklearnModel(entry.builder(cfg.typed_params(), seed), num_classes)
