"""Batched evaluation of many parameter vectors on one network, without building a module per model.

``torch.func.functional_call`` under ``vmap`` runs the target network with a stack of parameter vectors at once; the
tensors outside the selection are shared. Models are processed in chunks to bound memory.
"""

from typing import Dict, Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from .errors import DimensionMismatchError
from .layout import ParamLayout, check_finite


@torch.no_grad()
def predict_with_parameters(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    inputs: torch.Tensor,
    batch_size: int = 1000,
    models_per_chunk: int = 25,
) -> torch.Tensor:
    """Predicted class of every model on every input.

    Args:
        model: the target network; its tensors outside ``layout`` are used as they are. Evaluated in eval mode.
        params: ``(N, D)`` parameter vectors.
        inputs: ``(M, ...)`` inputs.

    Returns:
        ``(N, M)`` int64 predictions.
    """
    layout.check_vector(params)
    if params.dim() == 1:
        params = params[None]
    layout.check_module(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    base = {**dict(model.named_buffers()), **{k: v.detach() for k, v in model.named_parameters()}}

    def run(selected: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**base, **selected}, (x,)).argmax(-1)

    batched = vmap(run, in_dims=(0, None))
    out = torch.empty(params.shape[0], inputs.shape[0], dtype=torch.long)
    for a in range(0, params.shape[0], models_per_chunk):
        chunk = {k: v.to(device) for k, v in layout.unflatten(params[a : a + models_per_chunk]).items()}
        for b in range(0, inputs.shape[0], batch_size):
            out[a : a + models_per_chunk, b : b + batch_size] = batched(chunk, inputs[b : b + batch_size].to(device)).cpu()
    model.train(was_training)
    return out


def accuracy_from_predictions(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` predictions and ``(M,)`` labels to ``(N,)`` accuracies in percent."""
    if predictions.shape[-1] != labels.shape[0]:
        raise DimensionMismatchError(
            f"expected {predictions.shape[-1]} labels for the predictions, found {labels.shape[0]}"
        )
    return (predictions == labels.to(predictions.device)).float().mean(-1) * 100.0


def evaluate_parameters(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
    models_per_chunk: int = 25,
) -> torch.Tensor:
    """Accuracy in percent ``(N,)`` of each parameter vector of ``params`` ``(N, D)`` on ``(inputs, labels)``."""
    preds = predict_with_parameters(model, layout, params, inputs, batch_size, models_per_chunk)
    return accuracy_from_predictions(preds, labels)


def summarize_accuracies(accuracies: torch.Tensor) -> Dict[str, float]:
    """``count``, ``best``, ``mean``, ``median``, ``min`` and ``std`` of accuracies in percent."""
    acc = torch.as_tensor(accuracies, dtype=torch.float64).flatten()
    if acc.numel() == 0:
        raise DimensionMismatchError("expected at least one accuracy to summarize, found none")
    check_finite(acc, "accuracies")
    return {
        "count": int(acc.numel()),
        "best": round(float(acc.max()), 4),
        "mean": round(float(acc.mean()), 4),
        "median": round(float(acc.quantile(0.5)), 4),
        "min": round(float(acc.min()), 4),
        "std": round(float(acc.std(unbiased=False)), 4),
    }


def select_best(val_accuracies: torch.Tensor, k: Optional[int] = None) -> torch.Tensor:
    """Indices of the top-``k`` models by *validation* accuracy (never select on the test split)."""
    k = val_accuracies.numel() if k is None else min(k, val_accuracies.numel())
    return torch.topk(val_accuracies, k).indices
