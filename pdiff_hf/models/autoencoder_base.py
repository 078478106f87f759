"""What every parameter autoencoder shares: the standardization buffers, the raw-parameter helpers, the output type.

An autoencoder of pdiff_hf maps flat parameter vectors ``(batch, D)`` to latents ``(batch, C, L)`` and back. The
pipeline, ``fit_pdiff``, the training scripts and the novelty checks call only the interface defined here plus
``encode`` / ``decode`` / ``forward`` / ``latent_shape`` of the class itself, so the conv
(:class:`~pdiff_hf.models.ParameterAutoencoder`), token (:class:`~pdiff_hf.models.TokenParameterAutoencoder`) and
linear (:class:`~pdiff_hf.models.LinearParameterAutoencoder`) autoencoders are interchangeable.

:class:`ParameterAutoencoderMixin` goes first among the bases (``class X(ParameterAutoencoderMixin, ModelMixin,
ConfigMixin)``), so its ``forward`` comes before ``torch.nn.Module``'s. It expects from the class:

* buffers ``norm_mean`` / ``norm_std`` ``(D,)`` and ``log_mask`` ``(D,)`` bool (registered by
  :meth:`ParameterAutoencoderMixin._register_normalization`), the standardization statistics of the training
  checkpoints; BatchNorm running variances (``log_mask``) are standardized in log space;
* config entries ``in_dim``, ``norm_mode``, ``param_layout`` and ``scaling_factor``;
* ``encode(normalized (B, D)) -> (B, C, L)``, ``decode((B, C, L)) -> normalized (B, D)`` and ``latent_shape``.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from diffusers.utils import BaseOutput

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


class ParameterAutoencoderMixin:
    """Standardization buffers, raw-parameter helpers (``params_to_latents`` / ``latents_to_params``), latent scaling
    and p-diff's noise-augmented ``forward``, shared by the autoencoders of pdiff_hf."""

    # latents_to_params decodes in chunks of at most this many output entries (2^24 float32 values = 64 MB)
    decode_chunk_entries: int = 2**24

    def _register_normalization(self, in_dim: int, layout: Optional[ParamLayout]) -> None:
        """Buffers ``norm_mean`` (zeros), ``norm_std`` (ones) and ``log_mask`` (the layout's log-space entries) of
        length ``in_dim``."""
        self.register_buffer("norm_mean", torch.zeros(in_dim))
        self.register_buffer("norm_std", torch.ones(in_dim))
        log_mask = layout.log_space_mask() if layout is not None else torch.zeros(in_dim)
        self.register_buffer("log_mask", log_mask.bool())

    # ----------------------------------------------------------------------------------------------- layout / norm
    @property
    def param_layout(self) -> Optional[ParamLayout]:
        return ParamLayout.from_list(self.config.param_layout) if self.config.param_layout else None

    def _check_dim(self, params: torch.Tensor, what: str) -> None:
        if params.dim() != 2 or params.shape[1] != self.config.in_dim:
            raise DimensionMismatchError(
                f"expected {what} of shape (batch, {self.config.in_dim}), found {tuple(params.shape)}"
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.dim() != 3 or tuple(latents.shape[1:]) != tuple(self.latent_shape):
            raise DimensionMismatchError(
                f"expected latents of shape (batch, {self.latent_shape[0]}, {self.latent_shape[1]}), "
                f"found {tuple(latents.shape)}"
            )

    @torch.no_grad()
    def fit_normalization(self, params, check: bool = True) -> None:
        """Compute and store standardization statistics from training checkpoints ``(N, D)``: a tensor, or
        :class:`pdiff_hf.checkpoints.rows.CheckpointRows` (a checkpoint dataset, read through its ``columns(a, b)``).

        The one implementation of the block statistics (:func:`pdiff_hf.checkpoints.rows.fit_normalization` calls
        it): the whole matrix at once when ``N * D <= decode_chunk_entries``, else blocks of columns (one tensor of
        the layout per block in ``per_tensor`` mode), so the float64 working copy is one block, not the whole matrix
        (1.6 GB for 200 x 10^6). With ``check`` every block is checked for NaN/Inf
        (:class:`~pdiff_hf.errors.NonFiniteParametersError`, naming the columns of a block) before anything is
        stored; ``check=False`` is for checkpoints already checked where they entered (``fit_pdiff``)."""
        if len(params.shape) != 2 or params.shape[1] != self.config.in_dim:
            raise DimensionMismatchError(
                f"expected training checkpoints of shape (batch, {self.config.in_dim}), found {tuple(params.shape)}"
            )
        n, dim = params.shape
        columns = params.columns if hasattr(params, "columns") else lambda a, b: params[:, a:b]
        layout = self.param_layout
        offsets = layout.offsets() if layout else [(0, dim)]
        mode = self.config.norm_mode
        if n * dim <= self.decode_chunk_entries:
            blocks = [(0, dim)]
        elif mode == "per_tensor":
            blocks = offsets
        else:
            width = max(1, self.decode_chunk_entries // n)
            blocks = [(a, min(a + width, dim)) for a in range(0, dim, width)]
        log_mask = self.log_mask.cpu()
        mean, std = torch.empty(dim), torch.empty(dim)
        for a, b in blocks:
            block = columns(a, b).cpu()
            if check:
                check_finite(block, f"training checkpoints (columns {a}:{b})")
            inside = [(max(s, a) - a, min(e, b) - a) for s, e in offsets if s < b and e > a]  # tensors in the block
            mean[a:b], std[a:b] = compute_stats(block, log_mask[a:b], mode=mode, offsets=inside)
        self.norm_mean.copy_(mean)
        self.norm_std.copy_(std)

    def normalize(self, params: torch.Tensor) -> torch.Tensor:
        """Raw parameters ``(batch, D)`` to the standardized space the autoencoder works in."""
        self._check_dim(params, "parameters")
        return normalize(params.to(self.norm_mean.dtype), self.norm_mean, self.norm_std, self.log_mask)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Standardized ``(batch, D)`` back to raw parameters."""
        return denormalize(z.float(), self.norm_mean.float(), self.norm_std.float(), self.log_mask)

    # ----------------------------------------------------------------------------------------------- training
    def forward(self, x: torch.Tensor, return_dict: bool = True):
        """Reconstruct normalized parameters ``(batch, D)``; adds p-diff's input and latent noise (config
        ``input_noise`` / ``latent_noise``) in training mode. Eval mode is deterministic."""
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
    def set_latent_scaling(self, params: torch.Tensor) -> torch.Tensor:
        """Set ``scaling_factor`` so that diffusion latents of the training checkpoints have unit std. ``params``:
        raw checkpoints ``(N, D)`` or :class:`pdiff_hf.checkpoints.rows.CheckpointRows` (encoded a chunk at a time).
        Returns the scaled latents ``(N, C, L)`` it computed, equal to ``params_to_latents(params)``, so that
        ``fit_pdiff`` encodes every checkpoint once."""
        was_training = self.training
        self.eval()
        device = self.norm_mean.device
        latents = torch.cat([self.encode(self.normalize(chunk.to(device))) for chunk in self._row_chunks(params)])
        self.train(was_training)
        factor = float(1.0 / latents.float().std().clamp_min(1e-6))
        self.register_to_config(scaling_factor=factor)
        return latents * factor

    # subclasses define these
    @property
    def latent_shape(self) -> Tuple[int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
