"""The one check of condition ids: a condition id per checkpoint (or per generated model) names the task it belongs
to, an integer in ``[0, num_conditions)``. Used by ``fit_pdiff``, checkpoint datasets
(:func:`~pdiff_hf.checkpoints.dataset.checkpoint_conditions`), the pipeline's ``condition=`` argument, per-task scoring
and the novelty checks; re-exported by :mod:`pdiff_hf.checkpoints.conditional`.

Imports only torch and :mod:`pdiff_hf.errors`, so the pipeline's self-contained remote code can bundle it."""

from typing import Optional

import torch

from ..errors import ConditionError


def check_conditions(conditions, num_conditions: int, num_rows: Optional[int] = None, where: str = "") -> torch.Tensor:
    """``conditions`` (a tensor, list or array of integers ``(N,)``) as an int64 tensor of ids in
    ``[0, num_conditions)``; :class:`ConditionError` otherwise, or when it does not have ``num_rows`` entries.
    ``where`` is added to the range message (e.g. ``" in column 'task'"``)."""
    ids = torch.as_tensor(conditions)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.dim() != 1:
        raise ConditionError(
            f"expected integer condition ids (a 1-d integer tensor), found {ids.dtype} of shape {tuple(ids.shape)}"
        )
    ids = ids.long()
    if num_rows is not None and ids.numel() != num_rows:
        raise ConditionError(f"expected one condition id per row ({num_rows}), found {ids.numel()}")
    bad = (ids < 0) | (ids >= num_conditions)
    if bool(bad.any()):
        raise ConditionError(
            f"expected condition ids in [0, {num_conditions}){where}, found {sorted(set(ids[bad].tolist()))[:5]}"
        )
    return ids
