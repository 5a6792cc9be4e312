"""SimpleCNN, the image target of Chen et al. (ATTACKS.md 6.8), in the model registry as
``simple_cnn``: conv32 -> conv64 -> maxpool2 -> dropout 0.25 -> fc128 -> dropout 0.5 -> fc.

Registered from its own module (imported by the membership stage) so that the shared
``tasks/models.py`` stays untouched. About 17M multiply-adds per 32x32 image: cheap enough to
train hundreds of shadow/target models on CPU, unlike the 8-layer ``convnet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tasks.models import MODELS, ModelEntry, _input_layer


@dataclass(frozen=True)
class SimpleCNNParams:
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    dropout: tuple[float, ...] = (0.25, 0.5)


def simple_cnn(input_shape, num_classes, params: SimpleCNNParams, mean=None,
               std=None) -> nn.Module:
    c1, c2 = params.channels
    features = nn.Sequential(nn.Conv2d(input_shape[0], c1, 3), nn.ReLU(),
                             nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Dropout(params.dropout[0]), nn.Flatten())
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(_input_layer(input_shape, mean, std), features,
                         nn.Linear(flat, params.hidden), nn.ReLU(),
                         nn.Dropout(params.dropout[1]), nn.Linear(params.hidden, num_classes))


if "simple_cnn" not in MODELS:
    MODELS.register("simple_cnn")(ModelEntry("torch", SimpleCNNParams, simple_cnn))
