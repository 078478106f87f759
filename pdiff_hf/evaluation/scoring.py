"""From a model's output to logits, per-example scores and a training loss.

Any network's output is read the same way: a tensor is the logits, a ``ModelOutput`` or dict gives its ``logits``, a
tuple its first element. The default metric is accuracy (``argmax(-1) == labels``, positions labelled ``-100``
ignored, as in transformers); a ``score_fn(logits, labels) -> (B,)`` replaces it for regression, language models or
any other target (for example negative loss or exact match). A ``score_fn`` also receives outputs without logits,
as they are.
"""

from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..errors import DimensionMismatchError, ModelOutputError

IGNORE_INDEX = -100
ScoreFn = Callable[[Any, torch.Tensor], torch.Tensor]


def get_logits(output: Any, allow_raw: bool = False) -> Any:
    """The logits in ``output``: itself if a tensor, ``output.logits`` / ``output["logits"]``, or the first element
    of a tuple. With ``allow_raw`` (a ``score_fn`` will read it) an output without logits is returned as it is;
    otherwise :class:`ModelOutputError`."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if allow_raw:
        return output
    keys = f" with keys {list(output.keys())}" if isinstance(output, Mapping) else ""
    raise ModelOutputError(
        "expected the model to return logits (a tensor, a ModelOutput or dict with 'logits', or a tuple whose first "
        f"element is the logits), found {type(output).__name__}{keys}; pass score_fn(output, labels) -> (B,) scores "
        "to score such outputs"
    )


def accuracy_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example accuracy in ``[0, 1]``, ``(B,)``: logits ``(B, C)`` with labels ``(B,)``, or ``(B, T, C)`` with
    ``(B, T)`` (the share of correct positions; positions labelled ``-100`` are ignored)."""
    predictions = logits.argmax(-1)
    labels = labels.to(predictions.device)
    if predictions.shape != labels.shape:
        raise DimensionMismatchError(
            f"expected labels of shape {tuple(predictions.shape)} for logits of shape {tuple(logits.shape)}, found "
            f"{tuple(labels.shape)}"
        )
    valid = labels != IGNORE_INDEX
    outside = valid & ((labels < 0) | (labels >= logits.shape[-1]))
    if bool(outside.any()):
        raise DimensionMismatchError(
            f"expected labels in [0, {logits.shape[-1]}) for a model with {logits.shape[-1]} classes (or {IGNORE_INDEX} "
            f"to ignore a position), found {int(labels[outside][0])}"
        )
    correct = (predictions == labels) & valid
    if predictions.dim() == 1:
        return correct.float()
    return correct.flatten(1).sum(1).float() / valid.flatten(1).sum(1).clamp_min(1).float()


def score_examples(output: Any, labels: torch.Tensor, score_fn: Optional[ScoreFn] = None) -> torch.Tensor:
    """``(B,)`` per-example scores of one model's output: ``score_fn(output, labels)``, else accuracy."""
    if score_fn is None:
        return accuracy_scores(get_logits(output), labels)
    scores = torch.as_tensor(score_fn(output, labels))
    batch = labels.shape[0]
    if scores.shape != (batch,):
        raise DimensionMismatchError(
            f"expected score_fn to return one score per example, shape ({batch},), found {tuple(scores.shape)}"
        )
    return scores.float()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``(B, ..., C)`` against labels ``(B, ...)`` (``-100`` ignored): the default
    training loss of collection."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX
    )
