"""A token autoencoder for long parameter vectors: ``(batch, D)`` <-> latents ``(batch, latent_channels, N_tokens)``.

For ``D`` of 10^5 to 10^6 (whole networks), :class:`~pdiff_hf.models.ParameterAutoencoder`'s full-length
convolutions and learned position tensors of length ``D`` carry the cost. Here, as in RPG (arXiv 2501.11587), the
normalized vector is cut into tokens instead:

1. every tensor of the layout is cut into ``ceil(numel / token_size)`` tokens of ``token_size`` consecutive entries;
   the last token of a tensor is zero-padded, so no token mixes two tensors (a layout-less model is one tensor);
2. one small MLP, shared by all tokens, encodes each token together with a learned code of its tensor and of its
   index, to ``latent_channels`` values;
3. a 1D convolution along the token axis (kernel ``mix_kernel_size``) mixes neighbouring tokens, in the encoder and in
   the decoder; the latent is ``(batch, latent_channels, N_tokens)``, which the 1D UNet denoiser takes as is.

Compute and memory are linear in ``D``; the parameter count does not depend on ``D`` except through the position
codes (``(N_tokens + num_tensors) * pos_dim`` values). Padding never reaches the loss: :meth:`decode` and
:meth:`forward` return only the ``D`` real entries, so ``autoencoder_loss`` (plain MSE against the input) ignores it.

The model has the interface of ``ParameterAutoencoder`` (normalization buffers, ``encode`` / ``decode`` / ``forward``,
``params_to_latents`` / ``latents_to_params`` / ``set_latent_scaling``, ``latent_shape``, ``param_layout``: what
:class:`~pdiff_hf.models.autoencoder_base.ParameterAutoencoderMixin` holds), so the pipeline, ``fit_pdiff`` and the
training scripts treat both alike.
"""

import itertools
from typing import List, Optional, Tuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import DimensionMismatchError
from ..layout import ParamLayout
from .autoencoder_base import ParameterAutoencoderMixin
from .normalization import NORM_MODES

# token sizes build_autoencoder picks (see default_token_size)
SMALL_TOKEN_SIZE, LARGE_TOKEN_SIZE, LARGE_TOKEN_MIN_DIM = 256, 1024, 50_000
HUGE_TOKEN_SIZE, HUGE_TOKEN_MIN_DIM = 4096, 500_000
# more tokens than this is refused: the per-token codes and the denoiser's latent length grow with the token count
MAX_TOKENS = 65_536


def default_token_size(in_dim: int) -> int:
    """Entries per token for ``D = in_dim``: 256 below ``5 * 10^4``, 1024 below ``5 * 10^5``, 4096 from there on,
    so the token count (the denoiser's latent length) stays at a few hundred.

    At D = 10^6 (``benchmarks/bench_scale.py`` layout, 2-core CPU, 1 thread, loaded machine) 1024-entry tokens gave
    a latent of length 978, and one denoiser forward pass over 100 latents took 3.9 s (about 100 s for 25 sampling
    steps); 4096-entry tokens give length 247 and 0.36 s, and the autoencoder's decode and training step get
    faster too (0.9 s against 3.8 s for 100 models, 4.0 against 7.1 s per step at batch 32)."""
    if in_dim < LARGE_TOKEN_MIN_DIM:
        return SMALL_TOKEN_SIZE
    return LARGE_TOKEN_SIZE if in_dim < HUGE_TOKEN_MIN_DIM else HUGE_TOKEN_SIZE


class TokenParameterAutoencoder(ParameterAutoencoderMixin, ModelMixin, ConfigMixin):
    r"""Per-tensor token autoencoder over flattened parameter vectors (for ``D`` ≳ 10^4).

    Parameters:
        in_dim (`int`): length ``D`` of the parameter vector.
        token_size (`int`): entries per token ``T`` (``>= 1``); each tensor's last token is zero-padded.
            :func:`default_token_size` gives 256 below ``D = 5 * 10^4``, 1024 below ``5 * 10^5``, 4096 above. At most
            :data:`MAX_TOKENS` tokens (ValueError otherwise).
        hidden_dim (`int`): width of the shared token MLP and of the token-mixing convolutions.
        latent_channels (`int`): latent values per token (the channels ``C`` of the latent ``(C, N_tokens)``).
        pos_dim (`int`): size of the learned tensor code and token-index code fed to encoder and decoder.
        mix_kernel_size (`int`): odd kernel size of the convolutions along the token axis.
        input_noise (`float`) / latent_noise (`float`): std of the Gaussian noise added to the normalized input and to
            the latent in training mode (p-diff's 0.001 and 0.1). Eval mode is deterministic.
        norm_mode (`str`): ``"per_dimension"`` or ``"per_tensor"`` standardization.
        param_layout (`List[dict]`, *optional*): :meth:`ParamLayout.to_list` of the generated tensors; tokens never
            cross a tensor boundary. Without it the vector is one tensor.
        scaling_factor (`float`): multiplies latents before diffusion (set by :meth:`set_latent_scaling`).
    """

    @register_to_config
    def __init__(
        self,
        in_dim: int,
        token_size: int = SMALL_TOKEN_SIZE,
        hidden_dim: int = 128,
        latent_channels: int = 8,
        pos_dim: int = 16,
        mix_kernel_size: int = 3,
        input_noise: float = 0.001,
        latent_noise: float = 0.1,
        norm_mode: str = "per_dimension",
        param_layout: Optional[List[dict]] = None,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("token_size", token_size), ("hidden_dim", hidden_dim),
                            ("latent_channels", latent_channels), ("pos_dim", pos_dim)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be an integer >= 1, found {value!r}")
        if not isinstance(mix_kernel_size, int) or mix_kernel_size < 1 or mix_kernel_size % 2 == 0:
            raise ValueError(f"expected an odd mix_kernel_size >= 1 (1 turns token mixing off), found {mix_kernel_size!r}")
        if norm_mode not in NORM_MODES:
            raise ValueError(f"expected norm_mode in {NORM_MODES}, found {norm_mode!r}")
        for name, value in (("input_noise", input_noise), ("latent_noise", latent_noise)):
            if not value >= 0:
                raise ValueError(f"expected {name} >= 0, found {value!r}")
        layout = ParamLayout.from_list(param_layout) if param_layout is not None else None
        if layout is not None and layout.dim != in_dim:
            raise DimensionMismatchError(f"param_layout describes D={layout.dim}, in_dim is {in_dim}")
        sizes = [s.numel for s in layout.specs] if layout is not None else [in_dim]

        self._register_normalization(in_dim, layout)
        # the cutting is a function of the config: recomputed on load, not saved
        counts = [-(-n // token_size) for n in sizes]
        if sum(counts) > MAX_TOKENS:
            fits = -(-in_dim // MAX_TOKENS)
            raise ValueError(
                f"expected at most {MAX_TOKENS} tokens, found {sum(counts)} for D={in_dim} with token_size="
                f"{token_size} (token_size must be at least {fits}; default_token_size(D) is "
                f"{default_token_size(in_dim)})"
            )
        self._offsets = [(a, a + n) for a, n in zip([0] + list(itertools.accumulate(sizes))[:-1], sizes)]
        self._pads = [c * token_size - n for c, n in zip(counts, sizes)]
        self._slot_starts = [0] + [token_size * c for c in itertools.accumulate(counts)][:-1]
        tensor_id = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(counts))
        self.register_buffer("token_tensor_id", tensor_id, persistent=False)
        # positions of the D real entries among the N_tokens * token_size slots: from_tokens gathers them in one
        # index_select, whose backward writes one zero-filled gradient instead of one per tensor (a slice each)
        real = [torch.arange(s, s + (b - a)) for s, (a, b) in zip(self._slot_starts, self._offsets)]
        self.register_buffer("real_index", torch.cat(real) if any(self._pads) else torch.empty(0, dtype=torch.long),
                             persistent=False)  # fmt: skip
        self.num_tokens = sum(counts)

        # learned codes: one per tensor, one per token (N_tokens + num_tensors) * pos_dim values
        self.tensor_code = nn.Parameter(torch.randn(len(sizes), pos_dim) * 0.1)
        self.token_code = nn.Parameter(torch.randn(self.num_tokens, pos_dim) * 0.1)

        pad = mix_kernel_size // 2
        act = nn.LeakyReLU(0.2)
        # the first layers take [token, code] as the sum of two linear maps, so the code part is computed once per
        # token instead of per sample
        self.enc_in = nn.Linear(token_size, hidden_dim)
        self.enc_code = nn.Linear(pos_dim, hidden_dim, bias=False)
        self.enc_mix = nn.Conv1d(hidden_dim, hidden_dim, mix_kernel_size, padding=pad)
        self.enc_out = nn.Linear(hidden_dim, latent_channels)
        self.dec_in = nn.Linear(latent_channels, hidden_dim)
        self.dec_code = nn.Linear(pos_dim, hidden_dim, bias=False)
        self.dec_mix = nn.Conv1d(hidden_dim, hidden_dim, mix_kernel_size, padding=pad)
        self.dec_out = nn.Linear(hidden_dim, token_size)
        self.act = act
        for m in self.modules():  # He init for the LeakyReLU stacks (see ParameterAutoencoder)
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def latent_shape(self) -> Tuple[int, int]:
        """``(latent_channels, N_tokens)`` of one latent."""
        return (self.config.latent_channels, self.num_tokens)

    # ----------------------------------------------------------------------------------------------- tokens
    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, D)`` to per-tensor tokens ``(batch, N_tokens, token_size)``, zero-padded."""
        self._check_dim(x, "parameters")
        pieces = []
        for (a, b), pad in zip(self._offsets, self._pads):  # one copy: slices (views) and zeros, concatenated
            pieces.append(x[:, a:b])
            if pad:
                pieces.append(x.new_zeros(x.shape[0], pad))
        return torch.cat(pieces, dim=1).view(x.shape[0], self.num_tokens, self.config.token_size)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(batch, N_tokens, token_size)`` back to ``(batch, D)``, dropping the padding."""
        flat = tokens.reshape(tokens.shape[0], -1)  # (B, N * T)
        return flat.index_select(1, self.real_index) if any(self._pads) else flat

    def _codes(self) -> torch.Tensor:
        """Position code of every token ``(N_tokens, pos_dim)``: its tensor's code plus its own."""
        return self.token_code + self.tensor_code[self.token_tensor_id]

    # ----------------------------------------------------------------------------------------------- encode/decode
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized parameters ``(batch, D)`` to latents ``(batch, latent_channels, N_tokens)``."""
        tokens = self.to_tokens(x)  # (B, N, T)
        h = self.act(self.enc_in(tokens) + self.enc_code(self._codes()).to(tokens.dtype))  # (B, N, H)
        h = h + self.act(self.enc_mix(h.transpose(1, 2))).transpose(1, 2)  # mix along tokens, (B, N, H)
        return self.enc_out(h).transpose(1, 2)  # (B, C, N)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(batch, latent_channels, N_tokens)`` to normalized parameters ``(batch, D)``."""
        self._check_latents(latents)
        z = latents.transpose(1, 2)  # (B, N, C)
        h = self.act(self.dec_in(z) + self.dec_code(self._codes()).to(z.dtype))  # (B, N, H)
        h = h + self.act(self.dec_mix(h.transpose(1, 2))).transpose(1, 2)  # (B, N, H)
        return self.from_tokens(self.dec_out(h))  # (B, N, T) -> (B, D)
