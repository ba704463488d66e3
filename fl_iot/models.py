"""Small models that fit IoT devices, built from a dataset's input shape and class count.

Scenario configs name a model with Hydra's ``_target_`` and ``_partial_: true``; fl-iot completes
the call with ``input_shape`` and ``num_classes`` from the dataset. Every model here avoids batch
normalisation so that Opacus can compute per-sample gradients without replacing layers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


class Mlp(nn.Module):
    """Fully connected network on flattened inputs.

    Parameters
    ----------
    input_shape : sequence of int
        Shape of one sample; it is flattened.
    num_classes : int
        Number of output logits.
    hidden : sequence of int
        Widths of the hidden layers.
    dropout : float
        Dropout after each hidden layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.net(x)


class Cnn1d(nn.Module):
    """1-D convolutional network for multichannel time series of shape ``(channels, length)``.

    Parameters
    ----------
    input_shape : sequence of int
        ``(channels, length)`` of one sample.
    num_classes : int
        Number of output logits.
    channels : sequence of int
        Output channels of each conv block (conv, ReLU, max-pool by 2).
    kernel_size : int
        Convolution kernel width.
    hidden : int
        Width of the dense layer after global average pooling.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 5,
        hidden: int = 32,
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(
                f"Cnn1d needs inputs shaped (channels, length), got shape {tuple(input_shape)}"
            )
        in_channels = int(input_shape[0])
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [
                nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                nn.ReLU(),
                nn.MaxPool1d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(in_channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.head(self.features(x))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_factory(model_cfg: object) -> Callable[..., nn.Module]:
    """Instantiate a scenario's model config as a factory of ``(input_shape, num_classes)``.

    ``model_cfg`` is a Hydra node with ``_target_`` (and usually ``_partial_: true``).
    """
    from hydra.utils import instantiate

    factory = instantiate(model_cfg, _partial_=True)
    if not callable(factory):
        raise TypeError(f"model config built {type(factory).__name__}, which is not callable")
    if type(factory) is not functools.partial and isinstance(factory, functools.partial):
        # Hydra's deferred partial checks its target policy again on every call (~0.2 ms, a
        # fifth of a small model's local round); the target was checked when instantiated.
        return functools.partial(factory.func, *factory.args, **factory.keywords)
    return factory


def build_model(model_cfg: object, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Instantiate a scenario's model config for a dataset's input shape and class count."""
    model = model_factory(model_cfg)(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model config built {type(model).__name__}, not a torch.nn.Module")
    return model
