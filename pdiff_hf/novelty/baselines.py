"""The normalized space and the simple baselines built in it from the training checkpoints.

Zeng et al. (2025, arXiv 2506.07998) found that p-diff samples sit close to the average of the training checkpoints
and behave like simple baselines. The baselines here are made from the same checkpoints as the generated models are
compared with:

* ``noise_<a>``: training checkpoints plus Gaussian noise of std ``a`` in normalized space (``a`` in
  :data:`NOISE_LEVELS`);
* ``average_k<k>``: means of ``k`` distinct, randomly chosen training checkpoints;
* ``gaussian``: samples of a per-dimension Gaussian fitted to the training checkpoints;
* ``pca_gaussian``: samples of a full-covariance Gaussian in the training checkpoints' PCA subspace (their sample
  covariance within their principal directions, nothing outside their span; :func:`pca_gaussian_samples`);
* ``resampled``: training checkpoints drawn with replacement, the perfect memorizer.

**Normalized space**: the per-dimension standardization of the pipeline's autoencoder (BatchNorm running variances
in log space), or statistics of the training checkpoints when no pipeline is given (:class:`StatsNormalizer`,
:func:`resolve_normalizer`). Noise amplitudes and distances are measured there.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..errors import DimensionMismatchError, PDiffError
from ..layout import ParamLayout
from ..models.normalization import compute_stats, denormalize, normalize

NOISE_LEVELS: Tuple[float, ...] = (0.01, 0.05, 0.1, 0.15)
AVERAGE_K = 16


# ------------------------------------------------------------------------------------------------- normalization
class StatsNormalizer:
    """Per-dimension standardization ``(x - mean) / std`` (log space where ``log_mask``), as in
    :mod:`pdiff_hf.models.normalization`."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, log_mask: torch.Tensor, source: str = "statistics"):
        self.mean = mean.detach().to("cpu", torch.float32)
        self.std = std.detach().to("cpu", torch.float32)
        self.log_mask = log_mask.detach().to("cpu", torch.bool)
        self.source = source

    @classmethod
    def from_checkpoints(cls, params: torch.Tensor, layout: ParamLayout) -> "StatsNormalizer":
        mask = layout.log_space_mask()
        mean, std = compute_stats(params, mask)
        return cls(mean, std, mask, source="training checkpoint statistics")

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def normalize(self, params: torch.Tensor) -> torch.Tensor:
        return normalize(params.float(), self.mean, self.std, self.log_mask)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return denormalize(z.float(), self.mean, self.std, self.log_mask)


def resolve_normalizer(normalizer, layout: ParamLayout, train_params: torch.Tensor) -> StatsNormalizer:
    """A :class:`StatsNormalizer` from ``None`` (statistics of ``train_params``), a ``PDiffPipeline`` or a
    ``ParameterAutoencoder`` (its ``norm_mean`` / ``norm_std`` / ``log_mask``), or a :class:`StatsNormalizer`."""
    if normalizer is None:
        return StatsNormalizer.from_checkpoints(train_params, layout)
    source = "pipeline autoencoder"
    if hasattr(normalizer, "autoencoder"):
        normalizer = normalizer.autoencoder
    if isinstance(normalizer, StatsNormalizer):
        found = normalizer
    elif all(hasattr(normalizer, a) for a in ("norm_mean", "norm_std", "log_mask")):
        found = StatsNormalizer(normalizer.norm_mean, normalizer.norm_std, normalizer.log_mask, source=source)
    else:
        raise PDiffError(
            "expected normalizer to be None, a PDiffPipeline, a ParameterAutoencoder or a StatsNormalizer, "
            f"found {type(normalizer).__name__}"
        )
    if found.dim != layout.dim:
        raise DimensionMismatchError(
            f"the normalizer standardizes D={found.dim} entries, the parameter layout has D={layout.dim} "
            f"[{layout.describe()}]"
        )
    return found


# ------------------------------------------------------------------------------------------------------ baselines
def make_baselines(
    z_train: torch.Tensor,
    num: int,
    noise_levels: Sequence[float] = NOISE_LEVELS,
    average_k: Optional[int] = AVERAGE_K,
    gaussian: bool = True,
    generator: Optional[torch.Generator] = None,
    *,
    pca_gaussian: bool = False,
    resampled: bool = False,
    pca_components: Optional[int] = None,
) -> Dict[str, Tuple[torch.Tensor, Dict]]:
    """Baselines in normalized space from normalized training checkpoints ``(T, D)``: ``{name: (z (num, D),
    settings)}`` in the order noise levels, average, gaussian, pca_gaussian, resampled. Seeded by ``generator``;
    ``pca_gaussian`` and ``resampled`` are drawn last, so the others do not change when they are added.
    ``pca_components``: principal directions of ``pca_gaussian`` (``None``: all, the rank of the centred
    checkpoints)."""
    if pca_components is not None and int(pca_components) < 1:
        raise PDiffError(f"expected pca_components >= 1 or None, found {pca_components}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    t, d = z_train.shape
    out: Dict[str, Tuple[torch.Tensor, Dict]] = {}
    if num < 1:
        return out
    for amp in noise_levels:
        amp = float(amp)
        if not (amp >= 0 and math.isfinite(amp)):
            raise PDiffError(f"expected non-negative noise levels, found {amp}")
        src = torch.randint(0, t, (num,), generator=gen)
        z = z_train[src] + amp * torch.randn(num, d, generator=gen)
        out[f"noise_{amp:g}"] = (z, {"kind": "noise", "amplitude": amp})
    if average_k is not None:
        if average_k < 1:
            raise PDiffError(f"expected average_k >= 1, found {average_k}")
        k = min(int(average_k), t)
        idx = torch.rand(num, t, generator=gen).argsort(dim=1)[:, :k]
        out[f"average_k{k}"] = (z_train[idx].mean(dim=1), {"kind": "average", "k": k})
    if gaussian:
        mu = z_train.mean(0)
        sd = z_train.std(0, unbiased=False)
        out["gaussian"] = (mu + sd * torch.randn(num, d, generator=gen), {"kind": "gaussian"})
    if pca_gaussian:
        z = pca_gaussian_samples(z_train, num, pca_components, gen)
        out["pca_gaussian"] = (z, {"kind": "pca_gaussian", "components": pca_components})
    if resampled:
        out["resampled"] = (z_train[torch.randint(0, t, (num,), generator=gen)], {"kind": "resampled"})
    return out


def principal_components(
    z: torch.Tensor, num_components: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean (D,), basis (k, D), singular values (k,))`` of the rows of ``z`` ``(T, D)``: the top
    ``k = min(num_components, rank)`` principal directions (the whole rank, at most ``T - 1``, with ``None``), from the
    SVD of the centred matrix (no ``D x D`` covariance), in the dtype of ``z``; directions with singular values below
    ``1e-6`` of the largest count as outside the rank."""
    mean = z.mean(0)
    _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
    rank = int((s > s[0] * 1e-6).sum()) if s.numel() and float(s[0]) > 0 else 0
    k = rank if num_components is None else min(int(num_components), rank)
    return mean, vh[:k], s[:k]


def pca_gaussian_samples(
    z_train: torch.Tensor,
    num: int,
    num_components: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``(num, D)`` draws of a full-covariance Gaussian in the PCA subspace of ``z_train`` ``(T, D)``: the mean plus
    ``sum_k s_k / sqrt(T - 1) * e_k * v_k`` with ``e_k ~ N(0, 1)``, i.e. the rows' sample covariance within their top
    ``num_components`` principal directions (all with ``None``) and nothing outside them. Computed in float64."""
    mean, basis, s = principal_components(z_train.double(), num_components)
    scale = s / math.sqrt(max(z_train.shape[0] - 1, 1))
    coeff = torch.randn(num, basis.shape[0], generator=generator, dtype=torch.float64) * scale
    return (mean + coeff @ basis).to(z_train.dtype)
