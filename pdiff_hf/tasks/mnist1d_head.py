"""The linear head of the conditional MNIST-1D tasks, a diffusers ``ModelMixin`` / ``ConfigMixin``.

The tasks of :mod:`pdiff_hf.tasks.mnist1d_tasks` share a frozen :class:`~pdiff_hf.tasks.MNIST1DCNN` backbone; their
inputs are its pooled features, and only this head differs from task to task (it is what p-diff generates). Like
:mod:`pdiff_hf.tasks.mnist1d_cnn`, this module imports only torch and diffusers, so it can be uploaded as a target's
code (``target/pdiff_target.py``).
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class MNIST1DHead(ModelMixin, ConfigMixin):
    """One linear layer from pooled backbone features to class logits.

    With the defaults (32 features of :class:`~pdiff_hf.tasks.MNIST1DCNN`, 10 classes) it has
    ``32 * 10 + 10 = 330`` parameters.
    """

    @register_to_config
    def __init__(self, in_features: int = 32, num_classes: int = 10):
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(batch, in_features)`` → logits ``(batch, num_classes)``."""
        return self.classifier(x)
