"""Conditional p-diff: checkpoints of several tasks of one network, and each generated model scored on its task.

1. :func:`collect_conditional_checkpoints` runs p-diff's collection recipe once per task and returns one checkpoint
   dataset with a ``condition`` column (the task id) and the tasks' ``condition_names``;
   ``fit_pdiff(params, layout, conditions=checkpoint_conditions(ds))`` then learns ``p(parameters | task)``.
2. :func:`generate_per_condition` asks the pipeline for the same number of models for every task.
3. :func:`task_accuracies` scores every model on every task ``(N, K)``; :func:`per_condition_summary` keeps the
   score on the task a model was made for (originals and generated alike), :func:`cross_task_matrix` the median
   score of the models for task ``t`` on task ``t'``.
4. :func:`shuffle_conditions` permutes the condition ids across rows: fitting again on them is the control that
   catches a pipeline ignoring its condition (its models should score far lower on the task they were asked for).
5. :func:`novelty_per_condition` measures novelty within each task's checkpoints (generated models for task ``t``
   against the checkpoints of task ``t`` only).

Validation accuracy selects (``best_by_val``, the guidance scale in the demo); test accuracy is what is reported.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import datasets
import torch
from torch import nn

from .checkpoints import CONDITION_COLUMN, set_condition_names, set_layout
from .collect import collect_checkpoints
from .data import ClassificationSplits
from .errors import ConditionError, DimensionMismatchError
from .evaluation import accuracy_from_predictions, predict_with_parameters, summarize_accuracies
from .layout import ParamLayout

__all__ = [
    "check_conditions",
    "collect_conditional_checkpoints",
    "cross_task_matrix",
    "fit_shuffled_control",
    "generate_per_condition",
    "novelty_per_condition",
    "per_condition_summary",
    "shuffle_conditions",
    "solved_shares",
    "task_accuracies",
    "task_data",
]


def check_conditions(conditions, num_conditions: int, num_rows: Optional[int] = None) -> torch.Tensor:
    """``conditions`` as an int64 tensor ``(N,)`` of ids in ``[0, num_conditions)``; :class:`ConditionError`
    otherwise (or when it does not have ``num_rows`` entries)."""
    ids = torch.as_tensor(conditions)
    if ids.is_floating_point() or ids.is_complex() or ids.dim() != 1:
        raise ConditionError(f"expected a 1-d tensor of integer condition ids, found {ids.dtype} of shape {tuple(ids.shape)}")
    ids = ids.long()
    if num_rows is not None and ids.numel() != num_rows:
        raise ConditionError(f"expected one condition id per row ({num_rows}), found {ids.numel()}")
    bad = (ids < 0) | (ids >= num_conditions)
    if bool(bad.any()):
        raise ConditionError(
            f"expected condition ids in [0, {num_conditions}), found {sorted(set(ids[bad].tolist()))[:5]}"
        )
    return ids


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

    For task ``t`` (``tasks[t]``, data as :func:`~pdiff_hf.collect.collect_checkpoints` takes it) the model is
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
    """Per task: :func:`~pdiff_hf.evaluation.summarize_accuracies` of the test accuracies ``(N, K)`` of the models
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


def shuffle_conditions(conditions: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The same condition ids, permuted across rows by a seeded random permutation: each task keeps its number of
    rows, but a row's id no longer says which task its parameters solve (the shuffled-condition control)."""
    conditions = torch.as_tensor(conditions).long()
    perm = torch.randperm(conditions.numel(), generator=torch.Generator().manual_seed(seed))
    return conditions[perm]


def fit_shuffled_control(pipe, params: torch.Tensor, conditions: torch.Tensor, config=None, seed: int = 0, progress: bool = True):
    """The shuffled-condition control of a pipeline made by ``fit_pdiff(params, layout, config, conditions=...)``:
    the same training with the condition ids permuted across rows (:func:`shuffle_conditions` with ``seed``).

    ``fit_pdiff`` trains the autoencoder without looking at the conditions, so it would train ``pipe``'s
    autoencoder again bit for bit; the control reuses it and trains only a new denoiser, exactly as ``fit_pdiff``
    does (same seed, same settings, same condition names), on the shuffled ids. Returns ``(control pipeline,
    shuffled ids)``. A pipeline that follows its condition should score far higher on the requested task than its
    control; one that ignores it scores the same."""
    import dataclasses

    from .fit import train_denoiser
    from .training_utils import PDiffConfig, build_denoiser, sampling_scheduler_for

    config = config or PDiffConfig()
    k = pipe.denoiser.config.get("num_conditions", 0)
    if not k:
        raise ConditionError("expected a conditional pipeline (denoiser.config.num_conditions > 0), found an unconditional one")
    conditions = check_conditions(conditions, k, params.shape[0])
    shuffled = shuffle_conditions(conditions, seed)
    config = dataclasses.replace(config, num_conditions=k)
    with torch.no_grad():
        latents = pipe.autoencoder.params_to_latents(params).float()
    torch.manual_seed(config.seed)
    denoiser = build_denoiser(pipe.autoencoder, config, condition_names=pipe.denoiser.config.get("condition_names"))
    train_denoiser(denoiser, latents, config, progress=progress, conditions=shuffled)
    control = type(pipe)(autoencoder=pipe.autoencoder, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    return control, shuffled


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
    from .novelty import analyze_novelty

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
