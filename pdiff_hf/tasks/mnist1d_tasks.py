"""Conditional MNIST-1D: several classification tasks of one network, for conditional p-diff.

Task ``t`` relabels MNIST-1D by a cyclic shift of the classes, ``y -> (y + t) mod 10`` (task 0 is the original
labelling). Two different shifts disagree on every class (one is the other composed with a derangement), so a head
trained for task ``t`` scores near 0% on a task ``t' != t``, not just near chance: a generator that ignores its
condition is caught at once.

A backbone :class:`~pdiff_hf.tasks.MNIST1DCNN` is trained once on the original labels and frozen. Its last feature map,
averaged over the 40 positions, is the input of every task: ``(n, 32)`` features. Only the head
(:class:`~pdiff_hf.tasks.mnist1d_head.MNIST1DHead`, D = 330) differs between tasks; it is what p-diff generates.
A linear head on these pooled features reaches the backbone's own accuracy (measured: 96.0% test for a shifted
task against 96.5% for the backbone with its full classifier, seed 42 data, 15 backbone epochs)::

    tasks = load_mnist1d_tasks(num_tasks=4)
    tasks.names          # ['shift-0', 'shift-1', 'shift-2', 'shift-3']
    tasks.splits[2]      # ClassificationSplits of (n, 32) features, labels (y + 2) % 10
    get_task("mnist1d-shift").load_data(condition=2)   # the same splits through the task registry
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional

import torch
from torch import nn

from ..evaluation.data import ClassificationSplits
from ..errors import ConditionError
from .mnist1d_head import MNIST1DHead

__all__ = [
    "ConditionalTasks",
    "MNIST1DHead",
    "feature_splits",
    "load_mnist1d_tasks",
    "load_task_split",
    "pooled_features",
    "relabel",
    "shift_permutations",
]

_SPLITS = ("train", "val", "test")


@dataclass
class ConditionalTasks:
    """``K`` classification tasks of one network: task ``t`` is ``splits[t]``, named ``names[t]``.

    Attributes:
        names: one name per task (the ``condition_names`` of a checkpoint dataset collected over these tasks).
        splits: the tasks' data; here every task has the same inputs and its own labels.
        permutations: ``(K, C)`` int64, ``permutations[t, y]`` is the label of an original class ``y`` in task ``t``.
        backbone: the frozen network the inputs were computed with (``None`` when the inputs are raw).
    """

    names: List[str]
    splits: List[ClassificationSplits]
    permutations: torch.Tensor
    backbone: Optional[nn.Module] = None

    def __len__(self) -> int:
        return len(self.splits)

    def check_condition(self, condition: int) -> int:
        """``condition`` as an int in ``[0, K)``; :class:`ConditionError` otherwise."""
        if isinstance(condition, bool) or not isinstance(condition, int) or not 0 <= condition < len(self):
            raise ConditionError(f"expected a task id in [0, {len(self)}), found {condition!r}")
        return condition


def shift_permutations(num_tasks: int, num_classes: int = 10) -> torch.Tensor:
    """``(num_tasks, num_classes)`` int64 label maps ``y -> (y + t) mod num_classes`` for ``t = 0 … num_tasks - 1``.
    Any two rows differ in every entry, so at most ``num_classes`` tasks exist."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or not 1 <= num_tasks <= num_classes:
        raise ConditionError(
            f"expected a number of tasks in [1, {num_classes}] (one class shift per task), found {num_tasks!r}"
        )
    return (torch.arange(num_classes)[None, :] + torch.arange(num_tasks)[:, None]) % num_classes


def relabel(data: ClassificationSplits, permutation: torch.Tensor) -> ClassificationSplits:
    """The same inputs with every label ``y`` replaced by ``permutation[y]``."""
    permutation = torch.as_tensor(permutation, dtype=torch.long)
    if permutation.dim() != 1 or permutation.numel() < data.num_classes:
        raise ConditionError(
            f"expected a label permutation of length >= {data.num_classes}, found shape {tuple(permutation.shape)}"
        )
    parts = {}
    for split in _SPLITS:
        parts[f"{split}_x"] = getattr(data, f"{split}_x")
        parts[f"{split}_y"] = permutation[getattr(data, f"{split}_y")]
    return ClassificationSplits(**parts)


@torch.no_grad()
def pooled_features(backbone: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The backbone's last feature map averaged over positions: ``(n, 1, L)`` → ``(n, channels)``. ``backbone`` is
    an :class:`~pdiff_hf.tasks.MNIST1DCNN` (its ``features`` block); it is run in eval mode and left as it was."""
    was_training = backbone.training
    backbone.eval()
    try:
        out = [backbone.features(x[i : i + batch_size]).mean(-1) for i in range(0, x.shape[0], batch_size)]
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def feature_splits(backbone: nn.Module, data: ClassificationSplits) -> ClassificationSplits:
    """``data`` with every input replaced by :func:`pooled_features`, labels unchanged."""
    parts = {}
    for split in _SPLITS:
        parts[f"{split}_x"] = pooled_features(backbone, getattr(data, f"{split}_x"))
        parts[f"{split}_y"] = getattr(data, f"{split}_y")
    return ClassificationSplits(**parts)


def load_mnist1d_tasks(
    num_tasks: int = 4,
    seed: int = 42,
    backbone: Optional[nn.Module] = None,
    backbone_epochs: int = 15,
    backbone_seed: int = 0,
    progress: bool = False,
    data: Optional[ClassificationSplits] = None,
) -> ConditionalTasks:
    """``num_tasks`` class-shift tasks on the pooled features of a frozen MNIST1DCNN backbone.

    Args:
        seed: MNIST-1D generator seed (ignored when ``data`` is given).
        backbone: a trained :class:`~pdiff_hf.tasks.MNIST1DCNN`; by default one is trained on the original labels
            for ``backbone_epochs`` epochs (initialization and batch order from ``backbone_seed``; the caller's
            global RNG state is restored afterwards).
        data: MNIST-1D splits to use instead of generating them (tests pass a small stand-in).

    Returns:
        :class:`ConditionalTasks` named ``shift-0`` … with ``(n, channels)`` float32 inputs, the backbone in eval
        mode with ``requires_grad`` off.
    """
    permutations = shift_permutations(num_tasks)
    if data is None:
        from .mnist1d import load_mnist1d

        data = load_mnist1d(seed=seed)
    if backbone is None:
        from ..checkpoints.collect import train_classifier
        from .mnist1d_cnn import MNIST1DCNN

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(backbone_seed)
            backbone = MNIST1DCNN(in_length=int(data.train_x.shape[-1]), num_classes=data.num_classes)
            train_classifier(backbone, data, epochs=backbone_epochs, seed=backbone_seed, progress=progress)
    backbone.eval().requires_grad_(False)
    features = feature_splits(backbone, data)
    splits = [relabel(features, p) for p in permutations]
    return ConditionalTasks([f"shift-{t}" for t in range(num_tasks)], splits, permutations, backbone)


@lru_cache(maxsize=2)
def _cached_tasks(num_tasks: int, seed: int, backbone_epochs: int, backbone_seed: int) -> ConditionalTasks:
    return load_mnist1d_tasks(num_tasks, seed, backbone_epochs=backbone_epochs, backbone_seed=backbone_seed)


def load_task_split(
    condition: int = 0, num_tasks: int = 4, seed: int = 42, backbone_epochs: int = 15, backbone_seed: int = 0
) -> ClassificationSplits:
    """The splits of task ``condition`` of :func:`load_mnist1d_tasks` (the ``mnist1d-shift`` registry entry's
    ``load_data``). The tasks are built once per process for the same arguments (the backbone takes seconds)."""
    tasks = _cached_tasks(num_tasks, seed, backbone_epochs, backbone_seed)
    return tasks.splits[tasks.check_condition(condition)]
