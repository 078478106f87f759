"""Standardization of parameter vectors before autoencoding.

A single global scale lets the autoencoder reach a low loss by outputting the mean checkpoint, so p-diff standardizes
per dimension (or per tensor) with statistics of the training checkpoints. Entries flagged by ``log_mask`` (BatchNorm
running variances) are standardized in log space so that de-normalized values stay positive.
"""

from typing import Optional, Sequence, Tuple

import torch

NORM_MODES = ("per_dimension", "per_tensor")
_LOG_FLOOR = 1e-12


def to_log_space(params: torch.Tensor, log_mask: torch.Tensor) -> torch.Tensor:
    """Replace masked entries of ``(N, D)`` or ``(D,)`` by their logarithm."""
    if not bool(log_mask.any()):
        return params
    return torch.where(log_mask, params.clamp_min(_LOG_FLOOR).log(), params)


def from_log_space(params: torch.Tensor, log_mask: torch.Tensor) -> torch.Tensor:
    if not bool(log_mask.any()):
        return params
    # exp underflows to 0 below about -104 in float32; keep variances strictly positive (>= the log floor).
    return torch.where(log_mask, params.exp().clamp_min(_LOG_FLOOR), params)


def compute_stats(
    params: torch.Tensor,
    log_mask: Optional[torch.Tensor] = None,
    mode: str = "per_dimension",
    offsets: Optional[Sequence[Tuple[int, int]]] = None,
    min_std: float = 1e-8,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and std ``(D,)`` of training checkpoints ``(N, D)``.

    ``per_dimension`` standardizes every entry on its own; ``per_tensor`` shares one mean/std across each tensor of
    the layout (``offsets`` from :meth:`ParamLayout.offsets`). Dimensions that never move get ``min_std`` so that they
    decode to their constant value.
    """
    if mode not in NORM_MODES:
        raise ValueError(f"expected norm mode in {NORM_MODES}, found {mode!r}")
    params = params.to(torch.float64)
    if log_mask is not None:
        params = to_log_space(params, log_mask)
    if mode == "per_dimension":
        mean = params.mean(0)
        std = params.std(0, unbiased=False) if params.shape[0] > 1 else torch.zeros_like(mean)
    else:
        if offsets is None:
            offsets = [(0, params.shape[1])]
        mean = torch.empty(params.shape[1], dtype=torch.float64)
        std = torch.empty_like(mean)
        for a, b in offsets:
            block = params[:, a:b]
            mean[a:b] = block.mean()
            std[a:b] = block.std(unbiased=False) if block.numel() > 1 else 0.0
    return mean.float(), std.clamp_min(min_std).float()


def normalize(params: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, log_mask: torch.Tensor) -> torch.Tensor:
    """Raw parameters ``(N, D)`` to standardized space."""
    return (to_log_space(params, log_mask) - mean) / std


def denormalize(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, log_mask: torch.Tensor) -> torch.Tensor:
    """Standardized ``(N, D)`` back to raw parameters (inverse of :func:`normalize`)."""
    return from_log_space(z * std + mean, log_mask)
