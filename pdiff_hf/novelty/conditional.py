"""Novelty within each task of a conditional pipeline: the models generated for task ``t`` against the checkpoints
of task ``t`` only."""

from typing import Dict, Sequence

import torch
from torch import nn

from ..checkpoints.conditional import check_conditions
from ..evaluation.data import ClassificationSplits
from ..layout import ParamLayout
from .metrics import analyze_novelty


def novelty_per_condition(
    model: nn.Module,
    layout: ParamLayout,
    train_params: torch.Tensor,
    train_conditions: torch.Tensor,
    generated_params: torch.Tensor,
    generated_conditions: torch.Tensor,
    tasks: Sequence[ClassificationSplits],
    names: Sequence[str],
    seed: int = 0,
    **novelty_kwargs,
) -> Dict[str, "object"]:
    """:func:`~pdiff_hf.novelty.analyze_novelty` within each task: the models generated for task ``t`` against the
    checkpoints of task ``t`` only, evaluated on task ``t``'s data, in the normalized space of those checkpoints.
    ``{name: NoveltyReport}``."""
    k = len(tasks)
    train_conditions = check_conditions(train_conditions, k, train_params.shape[0])
    generated_conditions = check_conditions(generated_conditions, k, generated_params.shape[0])
    reports = {}
    for t, name in enumerate(names):
        gen = generated_params[generated_conditions == t]
        if gen.shape[0] == 0:
            continue
        reports[name] = analyze_novelty(
            model, layout, train_params[train_conditions == t], gen, tasks[t], seed=seed, **novelty_kwargs
        )
    return reports
