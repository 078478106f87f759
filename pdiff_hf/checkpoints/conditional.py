"""Conditional checkpoint collections: p-diff's collection recipe run once per task of one network, giving one
checkpoint dataset with a ``condition`` column (the task id) and the tasks' ``condition_names``; the one check of
condition ids that every caller uses (:func:`check_conditions`, from :mod:`.condition_ids`)."""

from typing import Callable, Optional, Sequence

import datasets
from torch import nn

from ..errors import ConditionError
from ..evaluation.data import ClassificationSplits
from ..layout import ParamLayout
from .collect import collect_checkpoints
from .condition_ids import check_conditions  # noqa: F401 - the one check of condition ids, re-exported
from .dataset import CONDITION_COLUMN, set_condition_names, set_layout


def collect_conditional_checkpoints(
    model: nn.Module,
    tasks: Sequence,
    layout: ParamLayout,
    names: Optional[Sequence[str]] = None,
    reset: Optional[Callable[[nn.Module, int], None]] = None,
    seed: int = 0,
    **collect_kwargs,
) -> datasets.Dataset:
    """Collect checkpoints of ``layout`` for every task and return them as one conditional checkpoint dataset.

    For task ``t`` (``tasks[t]``, data as :func:`~pdiff_hf.checkpoints.collect.collect_checkpoints` takes it) the model is
    restored to its state at the call, ``reset(model, t)`` runs (e.g. a new initialization of a task head), and the
    collection recipe runs with seed ``seed + 1000 * t`` and ``run_id = t`` (``collect_kwargs``: ``train_epochs``
    to train the selection on the task first, ``num_checkpoints``, ``learning_rate``, …). The model ends as it was.

    Returns the concatenated dataset with a ``condition`` column (``t``) and ``condition_names`` (``names``, by
    default ``task-0``, …), the layout attached.
    """
    if len(tasks) < 1:
        raise ConditionError("expected at least one task to collect checkpoints for, found none")
    names = [f"task-{t}" for t in range(len(tasks))] if names is None else list(names)
    if len(names) != len(tasks):
        raise ConditionError(f"expected one name per task ({len(tasks)}), found {len(names)}")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    parts = []
    for t, data in enumerate(tasks):
        model.load_state_dict(start)
        if reset is not None:
            reset(model, t)
        part = collect_checkpoints(model, data, layout, seed=seed + 1000 * t, run_id=t, **collect_kwargs)
        parts.append(part.add_column(CONDITION_COLUMN, [t] * len(part)))
    model.load_state_dict(start)
    merged = datasets.concatenate_datasets(parts)
    set_layout(merged, layout)
    return set_condition_names(merged, names)



def task_data(task, condition: int, num_conditions: int, **kwargs) -> ClassificationSplits:
    """The data of condition ``condition`` of a registered task (:class:`~pdiff_hf.tasks.Task`):
    ``task.load_data(condition=condition, num_tasks=num_conditions, **kwargs)``, passing only the arguments its
    ``load_data`` takes. A task without a ``condition`` argument has one condition only; :class:`ConditionError`
    when asked for more."""
    import inspect

    params = inspect.signature(task.load_data).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "condition" not in params and not takes_all:
        if num_conditions != 1:
            raise ConditionError(
                f"expected a task whose load_data takes condition= for {num_conditions} conditions, found "
                f"{getattr(task.load_data, '__name__', task.load_data)}{inspect.signature(task.load_data)}"
            )
        return task.load_data(**{k: v for k, v in kwargs.items() if k in params})
    wanted = {"condition": condition, "num_tasks": num_conditions, **kwargs}
    return task.load_data(**{k: v for k, v in wanted.items() if takes_all or k in params})
