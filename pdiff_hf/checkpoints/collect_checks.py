"""Checks of a checkpoint collection (:func:`pdiff_hf.checkpoints.collect.collect_checkpoints`): its settings and
data before any training, and every SGD step while it trains.

Before training (:func:`check_collection_args`): learning rates finite and > 0, momentum in ``[0, 1)``, batch size
a positive int, a non-empty training split, labels integer class ids (``-100`` ignored), and one forward pass of two
training examples in eval mode without gradients, so that inputs of the wrong shape and labels beyond the network's
classes are a :class:`~pdiff_hf.errors.CollectionError` before the first step, not an error (or a silent 0%) after.

While training (:func:`check_finite_step`): a non-finite loss or selected parameter stops the collection at that
step, naming it.
"""

import math
from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..errors import CollectionError, PDiffError, first_line

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
IGNORE_INDEX = -100  # cross-entropy's ignored label


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_collection_settings(learning_rate: Any, momentum: Any, batch_size: Any,
                              train_learning_rate: Any = None) -> None:  # fmt: skip
    """The SGD settings of a collection (and the full-training learning rate, when training first)."""
    rates = [("learning_rate", learning_rate)] + ([("train_learning_rate", train_learning_rate)]
                                                  if train_learning_rate is not None else [])  # fmt: skip
    for name, value in rates:
        if not _number(value) or not math.isfinite(value) or value <= 0:
            raise CollectionError(f"expected {name} to be a finite number > 0, found {value!r}")
    if not _number(momentum) or not math.isfinite(momentum) or not 0 <= momentum < 1:
        raise CollectionError(f"expected momentum in [0, 1), found {momentum!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise CollectionError(f"expected batch_size to be an int >= 1, found {batch_size!r}")


def check_labels(labels: Any, split: str, num_classes: Optional[int] = None) -> None:
    """``labels``: an integer tensor of class ids in ``[0, num_classes)`` (``-100`` ignored)."""
    if not isinstance(labels, torch.Tensor):
        raise CollectionError(f"{split}: expected labels as an integer tensor of class ids, found {type(labels).__name__}")
    if labels.dtype not in _INTEGER_DTYPES:
        raise CollectionError(f"{split}: expected integer class ids as labels, found {labels.dtype} labels")
    kept = labels[labels != IGNORE_INDEX]
    if kept.numel() == 0:
        return
    low, high = int(kept.min()), int(kept.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        wanted = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        raise CollectionError(f"{split}: expected class ids in {wanted} (or {IGNORE_INDEX}), found ids in [{low}, {high}]")


def check_collection_data(model: nn.Module, sources: dict, check_classes: bool = True) -> None:
    """Every split is not empty and has labels; two training examples pass through ``model`` (eval mode, no
    gradients, its training mode restored). With ``check_classes`` (the default cross-entropy loss) the labels of
    every split are integer class ids within the logits' classes."""
    from ..evaluation.data import iter_batches, num_examples
    from ..evaluation.scoring import get_logits

    for split in ("train", "val", "test"):
        source = sources.get(split)
        if source is None:
            continue
        try:
            n = num_examples(source)
        except PDiffError as err:
            raise CollectionError(f"{split}: {err}") from None
        if n == 0:
            raise CollectionError(f"{split}: expected at least one example, found none")
        if n is None:  # a DataLoader or another iterable: checked when its batches come
            continue
        try:
            batch = next(iter(iter_batches(source, batch_size=2, model=model)))
        except StopIteration:
            raise CollectionError(f"{split}: expected at least one example, found none") from None
        except (PDiffError, TypeError, ValueError, RuntimeError) as err:
            raise CollectionError(f"{split}: expected examples that make tensor batches, found {err}") from None
        if batch.labels is None:
            raise CollectionError(f"{split}: expected labels (class ids) with the examples, found none")
        if check_classes:  # class ids for the default loss and accuracy; a custom loss_fn may take other labels
            check_labels(batch.labels, split)
            if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], torch.Tensor):
                check_labels(source[1], split)  # all labels of a tensor split, not only the first two
        if split != "train":
            continue
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = get_logits(model(*batch.args, **batch.kwargs))
        except (RuntimeError, TypeError, ValueError, IndexError) as err:
            shapes = [tuple(a.shape) for a in batch.args if isinstance(a, torch.Tensor)]
            raise CollectionError(
                f"train: expected inputs the network takes, found inputs of shape {shapes or 'see kwargs'} that it "
                f"rejects ({type(err).__name__}: {first_line(err)})"
            ) from None
        finally:
            model.train(was_training)
        if check_classes and isinstance(logits, torch.Tensor) and logits.dim() >= 2:
            num_classes = logits.shape[-1]
            for name in ("train", "val", "test"):
                part = sources.get(name)
                if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], torch.Tensor):
                    check_labels(part[1], name, num_classes)
            check_labels(batch.labels, "train", num_classes)


def check_collection_args(model: nn.Module, data: Any, learning_rate: Any, momentum: Any, batch_size: Any,
                          train_learning_rate: Any = None, check_classes: bool = True) -> None:  # fmt: skip
    """:func:`check_collection_settings` and :func:`check_collection_data`, before anything is trained."""
    from ..evaluation.data import split_sources

    check_collection_settings(learning_rate, momentum, batch_size, train_learning_rate)
    check_collection_data(model, split_sources(data), check_classes)


def check_finite_step(loss: Optional[torch.Tensor], parameters: Iterable[torch.Tensor], step: int) -> None:
    """Stop the collection at SGD step ``step`` if its loss or a trained parameter is NaN or infinite."""
    if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
        raise CollectionError(
            f"expected finite training losses, found {float(loss.detach().float().reshape(-1)[0])} at SGD step "
            f"{step}: the collection diverged (lower learning_rate)"
        )
    for p in parameters:
        if not bool(torch.isfinite(p.detach()).all()):
            raise CollectionError(
                f"expected finite parameters, found NaN or Inf after SGD step {step}: the collection diverged "
                "(lower learning_rate)"
            )
