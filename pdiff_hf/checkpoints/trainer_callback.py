"""Checkpoints while training with ``transformers.Trainer``: record the layout's selection every ``save_steps`` steps.

::

    layout = ParamLayout.from_module(model, include="classifier.*")
    callback = PDiffCheckpointCallback(layout, save_steps=10, run_id=0)
    Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[callback]).train()
    ds = callback.dataset()        # a checkpoint dataset: params, step, epoch, run_id, seed[, eval_<metric>]
    pipe = fit_pdiff(checkpoint_params(ds), layout, target=model)

On a ``peft.PeftModel`` (LoRA …) the callback records the adapter: without a layout it selects
``peft_layout(model)`` (the tensors of ``get_peft_model_state_dict``, named as there), and a layout with those names
is read from the adapter's state dict; a layout of the PeftModel's own parameter names works as for any module.

Only the selected tensors are copied (to CPU float32), so a run of a large model keeps ``N x D`` values, not ``N``
models. Several runs can share one callback (set ``callback.run_id`` between ``trainer.train()`` calls, or use one
callback per run and concatenate their datasets).

The eval metric column (``eval_loss``, ``eval_accuracy``, … as ``Trainer.evaluate`` names it) holds the latest value
known when the row was recorded; an evaluation at the same step as a recorded row (``eval_steps == save_steps``),
which ``Trainer`` runs right after the step's callbacks, fills that row with its own value, because it evaluated
exactly those parameters. Rows recorded before the first evaluation hold ``None``.
"""

import math
from typing import Any, Dict, List, Optional

import datasets
import torch
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from ..errors import CheckpointDatasetError, PDiffError
from ..layout import ParamLayout
from ..peft_adapters import is_peft_model, peft_layout, peft_state_dict
from .dataset import make_checkpoint_dataset
from .writer import available_memory_bytes


class PDiffCheckpointCallback(TrainerCallback):
    """A ``transformers.TrainerCallback`` that records the selected tensors of the trained model as checkpoints.

    Args:
        layout: the tensors to record; ``None`` selects them from the model when training starts with
            ``ParamLayout.from_module(model, **layout_kwargs)`` (for example ``include="classifier.*"`` or
            ``last_norm_layers=2``); on a ``peft.PeftModel`` without options, its adapter
            (:func:`~pdiff_hf.peft_adapters.peft_layout`). A model without a selected tensor raises
            :class:`~pdiff_hf.errors.LayoutMismatchError` at the start of training.
        save_steps: record every ``save_steps`` optimizer steps (``state.global_step % save_steps == 0``). ``None``:
            ``args.save_steps`` (a fraction < 1 is a share of the run's total steps, as in ``TrainingArguments``).
        run_id: the value of the ``run_id`` column (keep checkpoints of one run together with ``split_by_runs``).
        metric: the eval metric column, as ``Trainer.evaluate`` names it (``"eval_accuracy"``; ``"accuracy"`` is
            read as ``"eval_accuracy"``). ``None``: ``args.metric_for_best_model`` if set, else the first evaluation's
            ``eval_loss``. Without any evaluation the column is left out (unless ``metric`` is given).
        record_first: also record the model before its first step (``step`` 0).
    """

    def __init__(
        self,
        layout: Optional[ParamLayout] = None,
        save_steps: Optional[float] = None,
        run_id: Any = 0,
        metric: Optional[str] = None,
        record_first: bool = False,
        **layout_kwargs,
    ):
        if layout is not None and not isinstance(layout, ParamLayout):
            raise PDiffError(f"expected layout to be a ParamLayout or None, found {type(layout).__name__}")
        if layout is not None and layout_kwargs:
            raise PDiffError(f"expected either a layout or selection options, found both (options {sorted(layout_kwargs)})")
        if save_steps is not None and (isinstance(save_steps, bool) or not save_steps > 0):
            raise PDiffError(f"expected save_steps to be a positive number or None, found {save_steps!r}")
        self.layout = layout
        self.layout_kwargs = layout_kwargs
        self.save_steps = save_steps
        self.run_id = run_id
        self.metric = _metric_key(metric) if metric else None
        self.record_first = record_first
        self._every: Optional[int] = None
        self._vectors: List[torch.Tensor] = []
        self._rows: List[Dict[str, Any]] = []
        self._latest_metric: Optional[float] = None
        self._from_adapter = False  # record from get_peft_model_state_dict (a PeftModel with an adapter layout)

    # ------------------------------------------------------------------------------------------------ Trainer hooks
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if model is None:
            raise PDiffError("expected the Trainer to pass its model to callbacks, found model=None")
        if self.layout is None:
            use_adapter = is_peft_model(model) and not self.layout_kwargs
            self.layout = peft_layout(model) if use_adapter else ParamLayout.from_module(model, **self.layout_kwargs)
        # a PeftModel's adapter is read by get_peft_model_state_dict names, unless the layout names its parameters
        self._from_adapter = is_peft_model(model) and set(self.layout.names) <= set(peft_state_dict(model))
        if not self._from_adapter:
            self.layout.check_module(model)  # LayoutMismatchError naming the missing / misshapen tensors
        else:
            self.layout.check_state_dict(peft_state_dict(model), what=f"the adapter of {type(model).__name__}")
        if self.metric is None and args.metric_for_best_model:
            self.metric = _metric_key(args.metric_for_best_model)
        every = self.save_steps if self.save_steps is not None else args.save_steps
        if every < 1:  # a share of the run, as TrainingArguments reads save_steps < 1
            every = math.ceil(every * max(state.max_steps, 1))
        self._every = max(1, int(every))
        self._check_memory(state.max_steps // self._every + int(self.record_first))
        if self.record_first and state.global_step == 0:
            self._record(model, args, state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if self._every and state.global_step % self._every == 0:
            self._record(model, args, state)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None, **kwargs):
        metrics = metrics or {}
        if self.metric is None and "eval_loss" in metrics:
            self.metric = "eval_loss"
        if self.metric is None or self.metric not in metrics:
            return
        self._latest_metric = float(metrics[self.metric])
        # Trainer evaluates after the step's callbacks: a row of this very step gets the value of its own parameters
        if self._rows and self._rows[-1]["step"] == state.global_step and self._rows[-1]["run_id"] == self.run_id:
            self._rows[-1]["metric"] = self._latest_metric

    def _check_memory(self, new_rows: int) -> None:
        """The rows this run will record (``new_rows * D * 4`` bytes, twice while :meth:`dataset` stacks them) must
        fit in the available memory: :class:`CheckpointDatasetError` before the first training step otherwise."""
        need = 2 * (len(self._vectors) + new_rows) * self.layout.dim * 4
        free = available_memory_bytes()
        if free is not None and need > free:
            raise CheckpointDatasetError(
                f"expected the {len(self._vectors) + new_rows} checkpoints of D={self.layout.dim} this callback will "
                f"record ({need / 2**30:.2f} GiB with the final stack) to fit in the {free / 2**30:.2f} GiB of free "
                "memory, found they do not; raise save_steps, select fewer tensors, or save the checkpoints as files "
                "and read them with checkpoints_from_files (which streams to disk)"
            )

    # ---------------------------------------------------------------------------------------------------- results
    def _record(self, model, args: TrainingArguments, state: TrainerState) -> None:
        self._vectors.append(self.layout.flatten(peft_state_dict(model) if self._from_adapter else model))
        self._rows.append(
            {
                "step": int(state.global_step),
                "epoch": float(state.epoch or 0.0),
                "run_id": self.run_id,
                "seed": int(args.seed),
                "metric": self._latest_metric,
            }
        )

    def __len__(self) -> int:
        return len(self._vectors)

    def dataset(self) -> datasets.Dataset:
        """The recorded checkpoints as a checkpoint dataset (:func:`~pdiff_hf.make_checkpoint_dataset`): ``params``
        ``(N, D)`` plus the columns ``step``, ``epoch``, ``run_id``, ``seed`` and the eval metric (named as
        ``Trainer.evaluate`` names it) when there is one."""
        if not self._vectors:
            raise CheckpointDatasetError(
                "expected at least one recorded checkpoint, found none (did the Trainer run at least "
                f"save_steps={self._every or self.save_steps} steps with this callback?)"
            )
        metadata: Dict[str, list] = {key: [row[key] for row in self._rows] for key in ("step", "epoch", "run_id", "seed")}
        if self.metric is not None:
            metadata[self.metric] = [row["metric"] for row in self._rows]
        return make_checkpoint_dataset(torch.stack(self._vectors), self.layout, metadata)


def _metric_key(name: str) -> str:
    return name if name.startswith("eval_") else f"eval_{name}"
