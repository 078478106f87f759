"""A linear (PCA / whitening) parameter autoencoder: ``(batch, D)`` <-> whitened principal coefficients ``(batch, C, L)``.

p-diff's conv autoencoder reconstructs checkpoints it never saw about 11x worse than PCA with the same number of
latent values (default demo, D = 128, 64 latent values: held-out RMS 0.243 against 0.021 in normalized units), so its
samples track the average checkpoint. This model is that PCA code as an autoencoder type of its own:

1. the checkpoints are standardized as in the other autoencoders (buffers ``norm_mean`` / ``norm_std`` /
   ``log_mask``, :meth:`fit_normalization`);
2. :meth:`fit_basis` computes the top ``K = latent_channels * latent_length`` principal directions of the
   standardized training checkpoints exactly, through the ``N x N`` Gram matrix (float64) accumulated a block of
   columns at a time, so ``D = 10^6`` with ``N = 200`` holds one block, the Gram matrix and the basis, never the
   whole ``(N, D)`` matrix twice;
3. :meth:`encode` projects onto the basis and divides by each component's standard deviation over the training
   checkpoints (``whiten=True``), so the latent diffusion sees unit variance in every direction; :meth:`decode` maps
   back. Slots beyond the rank of the checkpoints stay zero and are ignored on decode.

The basis ``(K, D)``, its mean ``(D,)`` and the per-component scale ``(K,)`` are buffers, saved as safetensors with
the normalization statistics; nothing is trained by gradient descent. Within the span of the training checkpoints
(mean + the principal directions kept) the round trip ``latents_to_params(params_to_latents(x))`` returns ``x`` to
float precision.
"""

from typing import List, Optional, Tuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..errors import DimensionMismatchError, PDiffConfigError
from ..layout import ParamLayout, check_finite
from .autoencoder_base import ParameterAutoencoderMixin, ParameterAutoencoderOutput
from .normalization import NORM_MODES, to_log_space

# principal components whose variance is below this fraction of the largest one are treated as absent (rank
# deficiency): float32 checkpoints carry relative rounding of ~6e-8, far below it
RANK_RTOL = 1e-12


class LinearParameterAutoencoder(ParameterAutoencoderMixin, ModelMixin, ConfigMixin):
    r"""PCA code of standardized parameter vectors, whitened, as a ``ModelMixin`` autoencoder.

    Use: ``ae.fit_normalization(params)``, ``ae.fit_basis(params)``, ``ae.set_latent_scaling(params)`` (what
    ``fit_pdiff`` does for ``PDiffConfig(autoencoder_type="linear")``), then ``params_to_latents`` /
    ``latents_to_params`` like any autoencoder of pdiff_hf.

    Parameters:
        in_dim (`int`): length ``D`` of the parameter vector.
        latent_channels (`int`) / latent_length (`int`): the latent ``(C, L)``; it holds ``K = C * L`` principal
            coefficients in order of decreasing variance (row-major). :meth:`fit_basis` needs ``K <= N - 1``
            training checkpoints.
        whiten (`bool`): divide each coefficient by its standard deviation over the training checkpoints (unit
            variance per component); ``False`` keeps the coefficients in normalized units.
        norm_mode (`str`): ``"per_dimension"`` or ``"per_tensor"`` standardization.
        param_layout (`List[dict]`, *optional*): :meth:`ParamLayout.to_list` of the generated tensors.
        scaling_factor (`float`): multiplies latents before diffusion (set by :meth:`set_latent_scaling`).
    """

    @register_to_config
    def __init__(
        self,
        in_dim: int,
        latent_channels: int = 4,
        latent_length: int = 16,
        whiten: bool = True,
        norm_mode: str = "per_dimension",
        param_layout: Optional[List[dict]] = None,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("latent_channels", latent_channels), ("latent_length", latent_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be an integer >= 1, found {value!r}")
        if not isinstance(whiten, bool):
            raise ValueError(f"expected whiten to be True or False, found {whiten!r}")
        if norm_mode not in NORM_MODES:
            raise ValueError(f"expected norm_mode in {NORM_MODES}, found {norm_mode!r}")
        layout = ParamLayout.from_list(param_layout) if param_layout else None
        if layout is not None and layout.dim != in_dim:
            raise DimensionMismatchError(f"param_layout describes D={layout.dim}, in_dim is {in_dim}")
        self._register_normalization(in_dim, layout)
        k = latent_channels * latent_length
        self.register_buffer("basis_mean", torch.zeros(in_dim))  # (D,) mean of the standardized training rows
        self.register_buffer("basis", torch.zeros(k, in_dim))  # (K, D) orthonormal rows; zero rows beyond the rank
        self.register_buffer("component_scale", torch.zeros(k))  # (K,) std of each coefficient; 0 beyond the rank

    # ----------------------------------------------------------------------------------------------- shapes
    @property
    def latent_shape(self) -> Tuple[int, int]:
        """``(latent_channels, latent_length)`` of one latent."""
        return (self.config.latent_channels, self.config.latent_length)

    @property
    def num_components(self) -> int:
        """``K = latent_channels * latent_length``, the latent values (principal coefficients) per vector."""
        return self.config.latent_channels * self.config.latent_length

    @property
    def rank(self) -> int:
        """Principal directions in use (``<= num_components``; 0 before :meth:`fit_basis`)."""
        return int((self.component_scale > 0).sum())

    # ----------------------------------------------------------------------------------------------- fitting
    def check_num_checkpoints(self, num_checkpoints: int) -> None:
        """:class:`~pdiff_hf.errors.PDiffConfigError` unless ``K = latent_channels * latent_length <= N - 1`` for
        ``N = num_checkpoints``: ``N`` checkpoints span at most ``N - 1`` directions around their mean."""
        n, k = num_checkpoints, self.num_components
        if k > n - 1:
            raise PDiffConfigError(
                f"expected a linear latent of at most N - 1 = {n - 1} values for N = {n} training checkpoints (they "
                f"span at most N - 1 directions around their mean), found latent_channels x latent_length = "
                f"{self.config.latent_channels} x {self.config.latent_length} = {k}"
            )

    def _normalized_columns(self, rows, a: int, b: int, check: bool) -> torch.Tensor:
        """Columns ``a:b`` of the raw checkpoints, standardized, float64 ``(N, b - a)`` on the model's device."""
        block = rows[:, a:b] if isinstance(rows, torch.Tensor) else rows.columns(a, b)
        block = block.to(self.norm_mean.device)
        if check:
            check_finite(block, f"training checkpoints (columns {a}:{b})")
        z = block.double()  # the one float64 copy of the block; normalized in place
        cols = self.log_mask[a:b].nonzero().squeeze(1)  # BatchNorm running variances: log space
        if cols.numel():
            z[:, cols] = to_log_space(z[:, cols], torch.ones(cols.numel(), dtype=torch.bool, device=z.device))
        return z.sub_(self.norm_mean[a:b].double()).div_(self.norm_std[a:b].double())

    @torch.no_grad()
    def fit_basis(self, rows) -> int:
        """Fit the principal directions of the standardized training checkpoints (call :meth:`fit_normalization`
        first) and return the rank kept.

        Exact PCA through the Gram matrix: with ``Z`` the standardized, centred ``(N, D)`` checkpoints,
        ``G = Z Z^T`` ``(N, N)`` is accumulated in float64 over blocks of columns (about :attr:`decode_chunk_entries`
        values each), its eigenvectors ``V`` give the principal directions ``Λ^{-1/2} V^T Z`` in a second pass over
        the blocks, and a Cholesky step makes the stored float32 rows orthonormal to float32 precision. Eigenvector
        signs are fixed (largest entry positive), so the fit is deterministic. Every input check (shape, latent size,
        finiteness of every block) happens before a buffer changes. Measured at ``D = 10^6``, ``N = 200``, ``K = 64``
        (synthetic rank-16 checkpoints plus noise, 1 torch thread, shared 2-core CPU): 11 s, peak memory 144 MiB
        above the checkpoints (763 MiB) and the model (244 MiB of basis) — one float64 block of columns.

        Args:
            rows: raw training checkpoints, a float tensor ``(N, D)`` or a
                :class:`~pdiff_hf.checkpoints.rows.CheckpointRows` (read with ``columns(a, b)``).

        Raises:
            DimensionMismatchError: ``rows`` is not ``(N, in_dim)``.
            PDiffConfigError: ``latent_channels * latent_length > N - 1`` (a linear code of N checkpoints spans at
                most ``N - 1`` directions around their mean), before any work.
            NonFiniteParametersError: NaN or Inf in a block of ``rows`` (before any buffer changes).
        """
        shape = tuple(rows.shape)
        if len(shape) != 2 or shape[1] != self.config.in_dim:
            raise DimensionMismatchError(f"expected training checkpoints of shape (N, {self.config.in_dim}), found {shape}")
        self.check_num_checkpoints(shape[0])
        n, d, k = shape[0], shape[1], self.num_components
        device = self.norm_mean.device
        width = max(1, self.decode_chunk_entries // n)
        blocks = [(a, min(a + width, d)) for a in range(0, d, width)]

        # pass 1: mean and Gram matrix of the centred, standardized rows, a block of columns at a time
        mean = torch.empty(d, dtype=torch.float64, device=device)
        gram = torch.zeros(n, n, dtype=torch.float64, device=device)
        for a, b in blocks:
            z = self._normalized_columns(rows, a, b, check=True)  # (N, w)
            mean[a:b] = z.mean(0)
            z -= mean[a:b]
            gram.addmm_(z, z.T)
            del z

        # eigenvectors of G = Z Z^T: Z = V S U^T (SVD), principal directions U^T = S^-1 V^T Z, variances S^2 / (N - 1)
        evals, evecs = torch.linalg.eigh(gram)  # ascending
        evals, evecs = evals.flip(0), evecs.flip(1)
        top = float(evals[0]) if n else 0.0
        rank = int(((evals > RANK_RTOL * top) & (evals > 0)).sum()) if top > 0 else 0
        rank = min(rank, k)
        evals, evecs = evals[:rank], evecs[:, :rank]
        peak = evecs.abs().argmax(0)  # deterministic signs: each eigenvector's largest entry positive
        evecs = evecs * torch.sign(evecs[peak, torch.arange(rank, device=device)])
        weights = evecs / evals.sqrt()  # (N, r)

        # every input check has passed: from here on the buffers are written in place (no second (K, D) copy)
        # pass 2: the directions, stored in the buffer's precision; their Gram matrix for the orthonormalization
        basis = self.basis
        basis.zero_()
        overlap = torch.zeros(rank, rank, dtype=torch.float64, device=device)
        for a, b in blocks:
            z = self._normalized_columns(rows, a, b, check=False).sub_(mean[a:b])
            part = (weights.T @ z).to(basis.dtype)  # (r, w)
            basis[:rank, a:b] = part
            overlap.addmm_(part.double(), part.double().T)
            del z
        # the rows are orthonormal up to the eigen solver's error, which grows as eval_max / eval_j for small
        # components: L^-1 rows (overlap = L L^T) are orthonormal in the precision they are stored in
        if rank:
            chol = torch.linalg.cholesky(overlap)
            for a, b in blocks:
                fixed = torch.linalg.solve_triangular(chol, basis[:rank, a:b].double(), upper=False)
                basis[:rank, a:b] = fixed.to(basis.dtype)

        scale = torch.zeros(k, dtype=torch.float64, device=device)
        scale[:rank] = (evals / max(n - 1, 1)).sqrt()
        self.basis_mean.copy_(mean.to(self.basis_mean.dtype))
        self.component_scale.copy_(scale.to(self.component_scale.dtype))
        return rank

    @torch.no_grad()
    def set_latent_scaling(self, params) -> torch.Tensor:
        """Set ``scaling_factor`` so that the diffusion latents of the training checkpoints have unit std over the
        slots in use (the zero slots beyond the rank are left out, so they do not inflate the factor; with
        ``whiten=True`` and rank ``K`` it is ``sqrt(K (N - 1) / (N K - 1))``, within 1% of 1 for N >= 50).
        ``params``: raw checkpoints ``(N, D)`` or :class:`~pdiff_hf.checkpoints.rows.CheckpointRows`. Returns the
        scaled latents ``(N, C, L)`` it computed, equal to ``params_to_latents(params)``."""
        device = self.norm_mean.device
        used = (self.component_scale > 0).view(-1)
        latents = torch.cat([self.encode(self.normalize(chunk.to(device))) for chunk in self._row_chunks(params)])
        factor = float(1.0 / latents.flatten(1)[:, used].float().std().clamp_min(1e-6)) if bool(used.any()) else 1.0
        self.register_to_config(scaling_factor=factor)
        return latents * factor

    # ----------------------------------------------------------------------------------------------- encode/decode
    def _whitening(self) -> torch.Tensor:
        """``(K,)`` factor per coefficient on encode: ``1 / scale`` (whiten) or 1, and 0 for unused slots."""
        used = self.component_scale > 0
        if not self.config.whiten:
            return used.to(self.basis.dtype)
        return torch.where(used, 1.0 / self.component_scale.clamp_min(1e-30), torch.zeros_like(self.component_scale))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized parameters ``(batch, D)`` to (whitened) principal coefficients ``(batch, C, L)``."""
        self._check_dim(x, "normalized parameters")
        coeffs = (x.to(self.basis.dtype) - self.basis_mean) @ self.basis.T  # (B, K)
        coeffs = coeffs * self._whitening()  # unit variance per component; 0 beyond the rank
        return coeffs.view(x.shape[0], *self.latent_shape)  # (B, C, L)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(batch, C, L)`` to normalized parameters ``(batch, D)``; slots beyond the rank are ignored."""
        self._check_latents(latents)
        coeffs = latents.reshape(latents.shape[0], -1).to(self.basis.dtype)  # (B, K)
        if self.config.whiten:
            coeffs = coeffs * self.component_scale  # 0 beyond the rank
        return coeffs @ self.basis + self.basis_mean  # (B, D)

    def forward(self, x: torch.Tensor, return_dict: bool = True):
        """Reconstruct normalized parameters ``(batch, D)``: the projection onto the mean + the principal directions
        (no noise augmentation: nothing is trained by gradient descent)."""
        latents = self.encode(x)
        sample = self.decode(latents)
        if not return_dict:
            return (sample, latents)
        return ParameterAutoencoderOutput(sample=sample, latents=latents)
