"""The parameter autoencoder: flat parameter vectors ``(batch, D)`` <-> latents ``(batch, C, L)``.

Follows p-diff's 1D-convolution autoencoder with noise augmentation (input noise 0.001, latent noise 0.1 during
training), but downsamples with strided convolutions instead of ending in a dense layer over the whole feature map,
so compute and parameter count grow linearly with ``D``. Learned positional channels at the input and at the output
let shared convolution kernels treat every position of the vector differently.

The model also owns the standardization statistics of its training checkpoints (buffers ``norm_mean``,
``norm_std``, ``log_mask``) and the parameter layout (in its config), so it maps raw parameters to latents and back.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import DimensionMismatchError
from ..layout import ParamLayout, check_finite
from .normalization import compute_stats, denormalize, normalize


@dataclass
class ParameterAutoencoderOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch, D)`): reconstruction in normalized space.
        latents (`torch.Tensor` of shape `(batch, latent_channels, latent_length)`): (noised, in training) latents.
    """

    sample: torch.Tensor
    latents: Optional[torch.Tensor] = None


class ParameterAutoencoder(ModelMixin, ConfigMixin):
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
    """

    # latents_to_params decodes in chunks of at most this many output entries (2^24 float32 values = 64 MB)
    decode_chunk_entries: int = 2**24

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

        self.register_buffer("norm_mean", torch.zeros(in_dim))
        self.register_buffer("norm_std", torch.ones(in_dim))
        log_mask = ParamLayout.from_list(param_layout).log_space_mask() if param_layout else torch.zeros(in_dim)
        self.register_buffer("log_mask", log_mask.bool())

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

    # ----------------------------------------------------------------------------------------------- layout / norm
    @property
    def param_layout(self) -> Optional[ParamLayout]:
        return ParamLayout.from_list(self.config.param_layout) if self.config.param_layout else None

    @property
    def latent_shape(self) -> Tuple[int, int]:
        """``(latent_channels, latent_length)`` of one latent."""
        return (self.config.latent_channels, self.latent_length)

    def _check_dim(self, params: torch.Tensor, what: str) -> None:
        if params.dim() != 2 or params.shape[1] != self.config.in_dim:
            raise DimensionMismatchError(
                f"expected {what} of shape (batch, {self.config.in_dim}), found {tuple(params.shape)}"
            )

    @torch.no_grad()
    def fit_normalization(self, params: torch.Tensor) -> None:
        """Compute and store standardization statistics from training checkpoints ``(N, D)``."""
        self._check_dim(params, "training checkpoints")
        check_finite(params, "training checkpoints")
        layout = self.param_layout
        offsets = layout.offsets() if layout else [(0, self.config.in_dim)]
        params, log_mask = params.cpu(), self.log_mask.cpu()
        if params.numel() <= self.decode_chunk_entries:
            mean, std = compute_stats(params, log_mask, mode=self.config.norm_mode, offsets=offsets)
            self.norm_mean.copy_(mean)
            self.norm_std.copy_(std)
            return
        # Large inputs: statistics of column blocks (whole tensors in per_tensor mode), so the float64 working copy
        # is one block, not the whole (N, D) matrix (1.6 GB for 200 x 10^6).
        width = max(1, self.decode_chunk_entries // params.shape[0])
        if self.config.norm_mode == "per_dimension":
            blocks = [(a, min(a + width, self.config.in_dim)) for a in range(0, self.config.in_dim, width)]
        else:
            blocks = offsets
        for a, b in blocks:
            mean, std = compute_stats(params[:, a:b], log_mask[a:b], mode=self.config.norm_mode, offsets=[(0, b - a)])
            self.norm_mean[a:b] = mean
            self.norm_std[a:b] = std

    def normalize(self, params: torch.Tensor) -> torch.Tensor:
        """Raw parameters ``(batch, D)`` to the standardized space the autoencoder works in."""
        self._check_dim(params, "parameters")
        return normalize(params.to(self.norm_mean.dtype), self.norm_mean, self.norm_std, self.log_mask)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Standardized ``(batch, D)`` back to raw parameters."""
        return denormalize(z.float(), self.norm_mean.float(), self.norm_std.float(), self.log_mask)

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
        if latents.dim() != 3 or tuple(latents.shape[1:]) != self.latent_shape:
            raise DimensionMismatchError(
                f"expected latents of shape (batch, {self.latent_shape[0]}, {self.latent_shape[1]}), "
                f"found {tuple(latents.shape)}"
            )
        h = self.decoder(latents)
        h = torch.cat([h, self.pos_out.expand(h.shape[0], -1, -1).to(h.dtype)], dim=1)
        h = self.conv_out(h).transpose(1, 2).reshape(h.shape[0], self.padded_dim)
        return h[:, : self.config.in_dim]

    def forward(self, x: torch.Tensor, return_dict: bool = True):
        """Reconstruct normalized parameters ``(batch, D)``; adds p-diff's input and latent noise in training mode."""
        if self.training and self.config.input_noise > 0:
            x = x + self.config.input_noise * torch.randn_like(x)
        latents = self.encode(x)
        if self.training and self.config.latent_noise > 0:
            latents = latents + self.config.latent_noise * torch.randn_like(latents)
        sample = self.decode(latents)
        if not return_dict:
            return (sample, latents)
        return ParameterAutoencoderOutput(sample=sample, latents=latents)

    # ----------------------------------------------------------------------------------------------- raw helpers
    @torch.no_grad()
    def params_to_latents(self, params: torch.Tensor) -> torch.Tensor:
        """Raw parameters ``(batch, D)`` to scaled diffusion latents (deterministic, no noise); batches of more than
        :attr:`decode_chunk_entries` entries are encoded a chunk of rows at a time."""
        return torch.cat([self.encode(self.normalize(chunk)) * self.config.scaling_factor
                          for chunk in self._row_chunks(params)])  # fmt: skip

    def _row_chunks(self, params):
        """``params`` ``(N, D)`` whole when ``N * D <= decode_chunk_entries``, else in chunks of rows; an object
        with ``row_chunks`` (:class:`pdiff_hf.checkpoints.rows.CheckpointRows`) is read through it."""
        if hasattr(params, "row_chunks"):
            return params.row_chunks(self.decode_chunk_entries)
        self._check_dim(params, "parameters")
        if params.numel() <= self.decode_chunk_entries:
            return [params]
        return params.split(max(1, self.decode_chunk_entries // self.config.in_dim))

    @torch.no_grad()
    def latents_to_params(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled diffusion latents ``(batch, C, L)`` to raw float32 parameters ``(batch, D)``.

        Batches of more than :attr:`decode_chunk_entries` output entries are decoded a few models at a time into one
        preallocated output, so the decoder's temporaries (several times the output's size) exist for one chunk
        only: sampling 100 models at D = 10^6 holds the 400 MB result and chunks of about 64 MB. Smaller batches are
        decoded in one call."""
        per_chunk = max(1, self.decode_chunk_entries // self.config.in_dim)
        if latents.shape[0] <= per_chunk:
            return self.denormalize(self.decode(latents / self.config.scaling_factor))
        out = torch.empty(latents.shape[0], self.config.in_dim, dtype=torch.float32, device=latents.device)
        for start in range(0, latents.shape[0], per_chunk):
            chunk = latents[start : start + per_chunk] / self.config.scaling_factor
            out[start : start + per_chunk] = self.denormalize(self.decode(chunk))
        return out

    @torch.no_grad()
    def set_latent_scaling(self, params: torch.Tensor) -> float:
        """Set ``scaling_factor`` so that diffusion latents of the training checkpoints have unit std. ``params``:
        raw checkpoints ``(N, D)`` or :class:`pdiff_hf.checkpoints.rows.CheckpointRows` (encoded a chunk at a time)."""
        was_training = self.training
        self.eval()
        device = self.norm_mean.device
        latents = torch.cat([self.encode(self.normalize(chunk.to(device))) for chunk in self._row_chunks(params)])
        self.train(was_training)
        factor = float(1.0 / latents.float().std().clamp_min(1e-6))
        self.register_to_config(scaling_factor=factor)
        return factor
