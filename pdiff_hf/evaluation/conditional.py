"""Conditional p-diff, scored: each generated model on its task.

1. :func:`generate_per_condition` asks the pipeline for the same number of models for every task.
2. :func:`task_accuracies` scores every model on every task ``(N, K)``; :func:`per_condition_summary` keeps the
   score on the task a model was made for (originals and generated alike), :func:`cross_task_matrix` the median
   score of the models for task ``t`` on task ``t'``.

Collection lives in :mod:`pdiff_hf.checkpoints.conditional`, the shuffled-condition control in
:mod:`pdiff_hf.training.shuffled_control`, novelty within each task in :mod:`pdiff_hf.novelty.conditional`.
Validation accuracy selects (``best_by_val``, the guidance scale in the demo); test accuracy is what is reported.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checkpoints.conditional import check_conditions
from ..errors import ConditionError, DimensionMismatchError
from ..layout import ParamLayout
from .batched import (
    accuracy_from_predictions,
    predict_with_parameters,
    summarize_accuracies,
)
from .data import ClassificationSplits


def generate_per_condition(
    pipe, num_per_condition: int, num_conditions: Optional[int] = None, seed: int = 0, **call_kwargs
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``num_per_condition`` models for each of the pipeline's conditions, from one pipeline call.

    ``call_kwargs`` go to ``pipe(...)`` (``guidance_scale``, ``num_inference_steps``, …); the noise comes from a
    ``torch.Generator`` seeded with ``seed``. Returns ``params`` ``(K * num_per_condition, D)`` and their condition
    ids ``(K * num_per_condition,)`` (``0, 0, …, 1, 1, …``)."""
    k = pipe.denoiser.config.get("num_conditions", 0) if num_conditions is None else num_conditions
    if not k:
        raise ConditionError("expected a conditional pipeline (denoiser.config.num_conditions > 0), found an unconditional one")
    if num_per_condition < 1:
        raise ConditionError(f"expected at least one model per condition, found {num_per_condition}")
    conditions = torch.arange(k).repeat_interleave(num_per_condition)
    out = pipe(
        num_models=conditions.numel(), condition=conditions, generator=torch.Generator().manual_seed(seed),
        **call_kwargs,
    )  # fmt: skip
    return out.params, conditions


def _task_inputs(tasks: Sequence[ClassificationSplits], split: str) -> List[Tuple[int, torch.Tensor, torch.Tensor]]:
    """``(task, inputs, labels)`` of ``split`` for every task."""
    if split not in ("val", "test", "train"):
        raise ConditionError(f"expected split 'val', 'test' or 'train', found {split!r}")
    return [(t, getattr(d, f"{split}_x"), getattr(d, f"{split}_y")) for t, d in enumerate(tasks)]


def task_accuracies(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    tasks: Sequence[ClassificationSplits],
    split: str = "test",
    **predict_kwargs,
) -> torch.Tensor:
    """Accuracy (%) of every model on every task: ``(N, K)``, entry ``[i, t]`` for model ``i`` on ``tasks[t]``'s
    ``split``. Tasks with the same inputs (label permutations of one data set) share one batched prediction."""
    if params.dim() != 2 or params.shape[1] != layout.dim:
        raise DimensionMismatchError(f"expected parameters of shape (N, {layout.dim}), found {tuple(params.shape)}")
    columns, cached = [], []  # cached: (inputs, predictions)
    for _, x, y in _task_inputs(tasks, split):
        preds = next((p for cx, p in cached if cx is x or (cx.shape == x.shape and torch.equal(cx, x))), None)
        if preds is None:
            preds = predict_with_parameters(model, layout, params, x, **predict_kwargs)
            cached.append((x, preds))
        columns.append(accuracy_from_predictions(preds, y))
    return torch.stack(columns, dim=1)


def _requested(accuracies: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """``(N,)``: each model's accuracy on the task it was made (or collected) for."""
    conditions = check_conditions(conditions, accuracies.shape[1], accuracies.shape[0])
    return accuracies.gather(1, conditions[:, None])[:, 0]


def per_condition_summary(
    test_accuracies: torch.Tensor,
    conditions: torch.Tensor,
    names: Sequence[str],
    val_accuracies: Optional[torch.Tensor] = None,
) -> Dict[str, Dict]:
    """Per task: :func:`~pdiff_hf.evaluation.batched.summarize_accuracies` of the test accuracies ``(N, K)`` of the models
    made for it on it, and with ``val_accuracies`` ``(N, K)`` the test accuracy of the one with the best validation
    accuracy (``best_by_val``). ``{name: summary}``; a task without models is left out."""
    if len(names) != test_accuracies.shape[1]:
        raise ConditionError(f"expected {test_accuracies.shape[1]} task names, found {len(names)}")
    test = _requested(test_accuracies, conditions)
    val = _requested(val_accuracies, conditions) if val_accuracies is not None else None
    out = {}
    for t, name in enumerate(names):
        mask = conditions == t
        if not bool(mask.any()):
            continue
        out[name] = summarize_accuracies(test[mask])
        if val is not None:
            out[name]["best_by_val"] = round(float(test[mask][val[mask].argmax()]), 4)
    return out


def cross_task_matrix(accuracies: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """``(K, K)``: entry ``[t, t']`` is the median accuracy on task ``t'`` of the models made for task ``t`` (NaN
    for a task without models). A pipeline that follows its condition has a high diagonal and a low rest."""
    k = accuracies.shape[1]
    conditions = check_conditions(conditions, k, accuracies.shape[0])
    out = torch.full((k, k), float("nan"))
    for t in range(k):
        rows = accuracies[conditions == t]
        if rows.shape[0]:
            out[t] = rows.quantile(0.5, dim=0)
    return out


def solved_shares(accuracies: torch.Tensor, conditions: torch.Tensor, threshold: float = 50.0) -> Dict[str, float]:
    """Which task each model solves (accuracy above ``threshold`` %, far above chance): the share of models that solve
    the task they were made for (``requested``), and that solve some task (``any``). A pipeline ignoring its
    condition samples a mixture of the tasks: ``any`` stays high while ``requested`` falls to about ``1 / K``, and
    per-task medians fall to the off-task accuracy, so the medians alone cannot tell a mixture from broken models."""
    solved = accuracies > threshold  # (N, K)
    requested = solved.gather(1, check_conditions(conditions, accuracies.shape[1], accuracies.shape[0])[:, None])[:, 0]
    return {
        "threshold": threshold,
        "requested": round(float(requested.float().mean()), 4),
        "any": round(float(solved.any(1).float().mean()), 4),
    }


