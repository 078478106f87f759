"""The parameter autoencoder: flat parameter vectors ``(batch, D)`` <-> latents ``(batch, C, L)``.

Follows p-diff's 1D-convolution autoencoder with noise augmentation (input noise 0.001, latent noise 0.1 during
training), but downsamples with strided convolutions instead of ending in a dense layer over the whole feature map,
so compute and parameter count grow linearly with ``D``. Learned positional channels at the input and at the output
let shared convolution kernels treat every position of the vector differently.

The model also owns the standardization statistics of its training checkpoints (buffers ``norm_mean``,
``norm_std``, ``log_mask``) and the parameter layout (in its config), so it maps raw parameters to latents and back.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import DimensionMismatchError
from ..layout import ParamLayout
from .autoencoder_base import ParameterAutoencoderMixin, ParameterAutoencoderOutput  # noqa: F401 (re-exported)


class ParameterAutoencoder(ParameterAutoencoderMixin, ModelMixin, ConfigMixin):
    r"""1D-convolution autoencoder over flattened parameter vectors.

    Parameters:
        in_dim (`int`): length ``D`` of the parameter vector; padded inside to a multiple of ``2 ** len(block_out_channels)``.
        block_out_channels (`Tuple[int]`): channels of the strided encoder stages (each halves the length); the decoder
            mirrors them.
        latent_channels (`int`): channels of the latent ``(batch, latent_channels, padded_D / 2 ** num_stages)``.
        pos_channels (`int`): learned positional channels concatenated at input and output resolution.
        patch_size (`int`): the vector is cut into patches of this many consecutive entries, which become the channels
            of the first convolution (a free reshape, like a ViT patch embedding). Long vectors (D ≳ 10^4) then run
            the convolutions over ``D / patch_size`` positions with more channels, which CPUs and GPUs do far faster
            than few-channel convolutions over ``D`` positions.
        input_noise (`float`) / latent_noise (`float`): std of the Gaussian noise added to the normalized input and to
            the latent in training mode (p-diff's defaults 0.001 and 0.1). Eval mode is deterministic.
        norm_mode (`str`): ``"per_dimension"`` or ``"per_tensor"`` standardization.
        param_layout (`List[dict]`, *optional*): :meth:`ParamLayout.to_list` of the generated tensors.
        scaling_factor (`float`): multiplies latents before diffusion (set by :meth:`set_latent_scaling`).

    Normalization, ``params_to_latents`` / ``latents_to_params``, ``set_latent_scaling`` and the noise-augmented
    ``forward`` come from :class:`~pdiff_hf.models.autoencoder_base.ParameterAutoencoderMixin`.
    """

    @register_to_config
    def __init__(
        self,
        in_dim: int,
        block_out_channels: Tuple[int, ...] = (16, 32, 32),
        latent_channels: int = 4,
        pos_channels: int = 4,
        kernel_size: int = 4,
        patch_size: int = 1,
        input_noise: float = 0.001,
        latent_noise: float = 0.1,
        norm_mode: str = "per_dimension",
        param_layout: Optional[List[dict]] = None,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        if param_layout is not None and ParamLayout.from_list(param_layout).dim != in_dim:
            raise DimensionMismatchError(
                f"param_layout describes D={ParamLayout.from_list(param_layout).dim}, in_dim is {in_dim}"
            )
        if kernel_size < 2 or kernel_size % 2:
            # padding (k - 2) // 2 halves / doubles the length exactly only for even kernels
            raise ValueError(f"expected an even kernel_size >= 2, found {kernel_size}")
        if patch_size < 1:
            raise ValueError(f"expected patch_size >= 1, found {patch_size}")
        factor = 2 ** len(block_out_channels) * patch_size
        self.padded_dim = -(-in_dim // factor) * factor
        self.patch_length = self.padded_dim // patch_size
        self.latent_length = self.padded_dim // factor
        pad = (kernel_size - 2) // 2

        self._register_normalization(in_dim, ParamLayout.from_list(param_layout) if param_layout else None)

        self.pos_in = nn.Parameter(torch.randn(1, pos_channels, self.patch_length) * 0.1)
        self.pos_out = nn.Parameter(torch.randn(1, pos_channels, self.patch_length) * 0.1)

        enc: List[nn.Module] = []
        ch = patch_size + pos_channels
        for out_ch in block_out_channels:
            enc += [nn.Conv1d(ch, out_ch, kernel_size, stride=2, padding=pad), nn.LeakyReLU(0.2)]
            enc += [nn.Conv1d(out_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2)]
            ch = out_ch
        enc.append(nn.Conv1d(ch, latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*enc)

        dec: List[nn.Module] = [nn.Conv1d(latent_channels, ch, 3, padding=1), nn.LeakyReLU(0.2)]
        for out_ch in list(reversed(block_out_channels))[1:] + [block_out_channels[0]]:
            dec += [nn.ConvTranspose1d(ch, out_ch, kernel_size, stride=2, padding=pad), nn.LeakyReLU(0.2)]
            dec += [nn.Conv1d(out_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2)]
            ch = out_ch
        self.decoder = nn.Sequential(*dec)
        self.conv_out = nn.Sequential(
            nn.Conv1d(ch + pos_channels, ch, 1), nn.LeakyReLU(0.2), nn.Conv1d(ch, patch_size, 1)
        )
        # He initialization for the LeakyReLU stacks: with PyTorch's default init every layer shrinks activations by
        # ~0.6, so a deep encoder starts with latents far below the 0.1 latent noise, and the decoder then learns
        # only the mean checkpoint (seen at D = 12,810 with 9 layers).
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    @property
    def latent_shape(self) -> Tuple[int, int]:
        """``(latent_channels, latent_length)`` of one latent."""
        return (self.config.latent_channels, self.latent_length)

    # ----------------------------------------------------------------------------------------------- encode/decode
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized parameters ``(batch, D)`` to latents ``(batch, latent_channels, latent_length)``."""
        self._check_dim(x, "normalized parameters")
        h = F.pad(x, (0, self.padded_dim - x.shape[1]))
        h = h.view(h.shape[0], self.patch_length, self.config.patch_size).transpose(1, 2)
        h = torch.cat([h, self.pos_in.expand(h.shape[0], -1, -1).to(h.dtype)], dim=1)
        return self.encoder(h)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(batch, latent_channels, latent_length)`` to normalized parameters ``(batch, D)``."""
        self._check_latents(latents)
        h = self.decoder(latents)
        h = torch.cat([h, self.pos_out.expand(h.shape[0], -1, -1).to(h.dtype)], dim=1)
        h = self.conv_out(h).transpose(1, 2).reshape(h.shape[0], self.padded_dim)
        return h[:, : self.config.in_dim]
