"""Is averaging a checkpoint collection in weight space meaningful? A cheap check and the warning it raises.

p-diff learns a distribution over parameter vectors and its samples sit near averages of the training checkpoints.
That only makes sense when the checkpoints lie in one basin of the loss: checkpoints of one run, or branches of one
early checkpoint (:func:`pdiff_hf.checkpoints.collect_runs.collect_branches`). Independent runs of a whole network differ by
permutations of their hidden units; their weight-space average is a broken network (measured on MNIST-1D: branches
of one early checkpoint averaged keep 96.5% test accuracy, independent seeds averaged without weight matching fall to
10%, chance).

The symptom is what :func:`check_weight_averaging` measures: the accuracy of averaged checkpoints against the
accuracy of the checkpoints themselves, on a few hundred validation examples (a handful of batched evaluations)::

    check = check_weight_averaging(model, layout, params, (data.val_x, data.val_y), run_ids=ds["run_id"])
    # warns MixedRunsWarning when an average scores more than max_drop_pp below the checkpoints' median
"""

import warnings
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import DimensionMismatchError
from ..layout import ParamLayout

# An average of checkpoints that scores this many percentage points below the checkpoints' median marks a collection
# that mixes basins. Branches of one basin lose ~0 pp (their average is often better); mixed runs lose tens of pp.
MAX_AVERAGE_DROP_PP = 10.0


class MixedRunsWarning(UserWarning):
    """A checkpoint collection mixes independent runs of a whole network: averaging it in weight space is
    meaningless, so the distribution p-diff learns from it is a mixture of basins."""


@torch.no_grad()
def check_weight_averaging(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    data: Any,
    labels: Optional[torch.Tensor] = None,
    run_ids: Optional[Sequence[int]] = None,
    max_drop_pp: float = MAX_AVERAGE_DROP_PP,
    max_checkpoints: int = 16,
    warn: bool = True,
) -> Dict:
    """Compare the accuracy of weight-space averages of ``params`` with that of the checkpoints themselves.

    Args:
        model: the target network (tensors outside ``layout`` are shared by every checkpoint).
        params: ``(N, D)`` checkpoints, ``N >= 2``.
        data / labels: evaluation examples in any form of :func:`~pdiff_hf.evaluation.batched.evaluate_parameters` (e.g. the
            validation split ``(val_x, val_y)``).
        run_ids: the run of each checkpoint (e.g. a checkpoint dataset's ``run_id`` column). With two or more runs
            the average of each pair of run means is checked too (at most ``max_checkpoints`` pairs): that is where
            mixed runs break.
        max_drop_pp: warn when an average scores more than this below the checkpoints' median accuracy.
        max_checkpoints: how many checkpoints (evenly spaced) are evaluated for the median.
        warn: emit :class:`MixedRunsWarning` (else only report).

    Returns:
        ``{"checkpoint_median_accuracy", "average_accuracy" (all checkpoints), "run_pair_average_accuracy" (min over
        pairs, or None), "drop_pp" (worst average vs median), "mixed" (bool), "threshold_pp"}``.
    """
    params = torch.as_tensor(params, dtype=torch.float32)
    if params.dim() != 2 or params.shape[0] < 2:
        raise DimensionMismatchError(f"expected checkpoints of shape (N >= 2, D), found {tuple(params.shape)}")
    layout.check_vector(params)
    from ..evaluation.batched import evaluate_parameters

    n = params.shape[0]
    picked = torch.linspace(0, n - 1, min(max_checkpoints, n)).round().long().unique()
    candidates = [params.mean(0)]
    pair_count = 0
    if run_ids is not None:
        ids = torch.as_tensor(list(run_ids))
        if ids.numel() != n:
            raise DimensionMismatchError(f"expected one run id per checkpoint ({n}), found {ids.numel()}")
        runs = ids.unique()
        means = [params[ids == r].mean(0) for r in runs]
        pairs = [(a, b) for a in range(len(means)) for b in range(a + 1, len(means))][:max_checkpoints]
        candidates += [(means[a] + means[b]) / 2 for a, b in pairs]
        pair_count = len(pairs)
    models = torch.cat([params[picked], torch.stack(candidates)])
    acc = evaluate_parameters(model, layout, models, data, labels, batch_size=100, models_per_chunk=10)
    ckpt_acc, avg_acc = acc[: len(picked)], acc[len(picked):]
    median = float(ckpt_acc.median())
    worst = float(avg_acc.min())
    result = {
        "checkpoint_median_accuracy": round(median, 4),
        "average_accuracy": round(float(avg_acc[0]), 4),
        "run_pair_average_accuracy": round(float(avg_acc[1:].min()), 4) if pair_count else None,
        "drop_pp": round(median - worst, 4),
        "mixed": median - worst > max_drop_pp,
        "threshold_pp": max_drop_pp,
    }
    if result["mixed"] and warn:
        warnings.warn(
            f"expected weight-space averages of the checkpoints to score near the checkpoints (median "
            f"{median:.2f}%), found an average at {worst:.2f}% ({median - worst:.1f} pp lower, threshold "
            f"{max_drop_pp:g} pp): the collection mixes independent runs (different basins), so averaging it in "
            "weight space is meaningless; collect branches of one early checkpoint instead "
            "(pdiff_hf.collect_branches)",
            MixedRunsWarning,
            stacklevel=2,
        )
    return result
