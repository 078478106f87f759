"""The demo's small 1D CNN for MNIST-1D, a diffusers ``ModelMixin`` / ``ConfigMixin``.

This module imports only torch and diffusers: a pipeline whose target is an :class:`MNIST1DCNN` uploads it as the
target's code (``target/pdiff_target.py``), so stock ``DiffusionPipeline.from_pretrained(repo,
trust_remote_code=True)`` builds the target without pdiff_hf.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


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
