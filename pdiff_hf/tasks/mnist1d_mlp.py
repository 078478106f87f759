"""A plain MLP for MNIST-1D, a diffusers ``ModelMixin`` / ``ConfigMixin``: the whole-network target at
``D ~ 10^5`` (``hidden_sizes=(512, 128)``, 87,946 parameters) and ``D ~ 10^6`` (``(1024, 1024)``, 1,101,834).

Like :mod:`pdiff_hf.tasks.mnist1d_cnn`, this module imports only torch and diffusers, so a pipeline whose target is
an :class:`MNIST1DMLP` can upload it as the target's code.
"""

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def mlp_num_parameters(in_length: int, hidden_sizes: Sequence[int], num_classes: int) -> int:
    """Parameter count of ``MNIST1DMLP(in_length, hidden_sizes, num_classes)`` (weights and biases)."""
    sizes = [in_length, *hidden_sizes, num_classes]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


class MNIST1DMLP(ModelMixin, ConfigMixin):
    """``Linear -> ReLU`` for every hidden size, then a linear classifier; inputs ``(batch, 1, in_length)`` or
    ``(batch, in_length)`` are flattened.

    Parameters:
        in_length (`int`): input length (40 for MNIST-1D).
        hidden_sizes (`Sequence[int]`): widths of the hidden layers, each ``>= 1``; empty gives a linear classifier.
        num_classes (`int`): number of classes.

    Parameter names are ``layers.{i}.weight`` / ``layers.{i}.bias`` for ``i = 0, 2, 4, …`` (``nn.Sequential``
    indices; the odd indices are the ReLUs).
    """

    @register_to_config
    def __init__(self, in_length: int = 40, hidden_sizes: Sequence[int] = (512, 128), num_classes: int = 10):
        super().__init__()
        for name, value in (("in_length", in_length), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be an integer >= 1, found {value!r}")
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden_sizes):
            raise ValueError(f"expected hidden_sizes to be integers >= 1, found {list(hidden_sizes)}")
        layers = []
        width = in_length
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, in_length)`` or ``(batch, in_length)`` → logits ``(batch, num_classes)``."""
        if x.shape[-1] != self.config.in_length:
            raise ValueError(f"expected inputs of length {self.config.in_length}, found shape {tuple(x.shape)}")
        return self.layers(x.reshape(x.shape[0], -1))
