"""MNIST-1D (Greydanus 2020), generated locally with the ``mnist1d`` package, and the demo's small 1D CNN."""

from typing import Tuple

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..data import ClassificationSplits


def load_mnist1d(seed: int = 42, num_val: int = 500) -> ClassificationSplits:
    """MNIST-1D with the package defaults (4000 train, 1000 test, length 40); the last ``num_val`` training
    examples form the validation split. Inputs are ``(n, 1, 40)`` float32, labels ``(n,)`` int64."""
    import contextlib
    import io

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    with contextlib.redirect_stdout(io.StringIO()):
        data = make_dataset(args)
    x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32))[:, None, :]
    y = torch.from_numpy(np.asarray(data["y"], dtype=np.int64))
    xt = torch.from_numpy(np.asarray(data["x_test"], dtype=np.float32))[:, None, :]
    yt = torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64))
    n = x.shape[0] - num_val
    return ClassificationSplits(x[:n], y[:n], x[n:], y[n:], xt, yt)


class MNIST1DCNN(ModelMixin, ConfigMixin):
    """Three Conv1d(k=5, same padding) + BatchNorm + ReLU layers, then a linear classifier over the flattened map.

    With the defaults the final linear layer has ``32 * 40 * 10 + 10 = 12,810`` parameters and the last two BatchNorm
    layers ``4 * 32 = 128``.
    """

    @register_to_config
    def __init__(self, in_length: int = 40, channels: int = 32, num_layers: int = 3, num_classes: int = 10, kernel_size: int = 5):
        super().__init__()
        layers = []
        ch = 1
        for _ in range(num_layers):
            layers += [nn.Conv1d(ch, channels, kernel_size, padding=kernel_size // 2), nn.BatchNorm1d(channels), nn.ReLU()]
            ch = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * in_length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, in_length)`` → logits ``(batch, num_classes)``."""
        return self.classifier(self.features(x).flatten(1))
