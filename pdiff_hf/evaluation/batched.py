"""Batched evaluation of many parameter vectors on one network, without building a module per model.

``torch.func.functional_call`` under ``vmap`` runs the target network with a stack of parameter vectors at once; the
tensors outside the selection are shared. Models are processed in chunks of ``models_per_chunk`` to bound memory.
Where a network cannot be vmapped (data-dependent control flow on the parameters, in-place updates), the same chunks
run one model after the other with ``functional_call`` (logged once per network class): same results, slower.

Inputs are any source of :mod:`pdiff_hf.evaluation.data` (tensors with labels, a mapping of columns, a ``datasets.Dataset``, a
``DataLoader`` of dict or ``(inputs, labels)`` batches); outputs are read by :mod:`pdiff_hf.evaluation.scoring`.
"""

import logging
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils import _pytree as pytree

from ..errors import DimensionMismatchError, PDiffError, first_line
from ..layout import ParamLayout, check_finite
from .data import Batch, iter_batches
from .scoring import ScoreFn, get_logits, score_examples

logger = logging.getLogger(__name__)
_SEQUENTIAL_LOGGED = set()  # network classes already reported as not vmappable


def _model_index(tree: Any, i: int) -> Any:
    """Model ``i`` of a stacked output (a tensor or a pytree of tensors with a leading model dimension)."""
    return pytree.tree_map(lambda t: t[i] if isinstance(t, torch.Tensor) else t, tree)


def _forward_chunks(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    inputs: Any,
    labels: Optional[torch.Tensor],
    batch_size: int,
    models_per_chunk: int,
    raw: bool,
    use_vmap: bool,
) -> Iterator[Tuple[int, int, Batch, Any]]:
    """Yield ``(first, last, batch, outputs)`` for every chunk of models ``params[first:last]`` and batch of
    ``inputs``: ``outputs`` are the stacked logits ``(n, B, ...)`` (or, with ``raw``, outputs without logits as they
    are). ``model`` runs in eval mode and is restored afterwards."""
    layout.check_vector(params)
    if params.dim() == 1:
        params = params[None]
    layout.check_module(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    base = {**dict(model.named_buffers()), **{k: v.detach() for k, v in model.named_parameters()}}

    def run(selected: Dict[str, torch.Tensor], args, kwargs):
        return get_logits(functional_call(model, {**base, **selected}, args, kwargs), allow_raw=raw)

    batched = vmap(run, in_dims=(0, None, None))
    vectorize = use_vmap
    try:
        with torch.no_grad():
            for first in range(0, params.shape[0], models_per_chunk):
                last = min(first + models_per_chunk, params.shape[0])
                chunk = {k: v.to(device) for k, v in layout.unflatten(params[first:last]).items()}
                for batch in iter_batches(inputs, labels, batch_size, model):
                    batch = batch.to(device)
                    if vectorize:
                        try:
                            yield first, last, batch, batched(chunk, batch.args, batch.kwargs)
                            continue
                        except PDiffError:
                            raise
                        except Exception as err:  # vmap cannot run this network: fall back for the whole call
                            vectorize = False
                            name = type(model).__name__
                            if name not in _SEQUENTIAL_LOGGED:
                                _SEQUENTIAL_LOGGED.add(name)
                                logger.warning(
                                    "%s cannot be evaluated under torch.func.vmap (%s: %s); evaluating one model at "
                                    "a time instead (same results, slower)", name, type(err).__name__,
                                    first_line(err),
                                )  # fmt: skip
                    outs = [
                        run({k: v[i] for k, v in chunk.items()}, batch.args, batch.kwargs) for i in range(last - first)
                    ]
                    yield first, last, batch, pytree.tree_map(lambda *xs: torch.stack(xs), *outs)
    finally:
        model.train(was_training)


def _distinct_rows(params: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(distinct, inverse)``: the distinct rows of ``params`` ``(N, D)`` in order of first appearance and the index
    in ``distinct`` of every row (``distinct[inverse]`` equals ``params``); ``(params, None)`` when no row repeats."""
    if params.dim() != 2 or params.shape[0] < 2:
        return params, None
    values, inverse = torch.unique(params, dim=0, return_inverse=True)
    if values.shape[0] == params.shape[0]:
        return params, None
    n = params.shape[0]
    first = torch.full((values.shape[0],), n, dtype=torch.long).scatter_reduce_(0, inverse, torch.arange(n), "amin")
    order = first.argsort()  # the distinct rows in order of first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return params[first[order]], rank[inverse]


@torch.no_grad()
def predict_with_parameters(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    inputs: Any,
    batch_size: int = 1000,
    models_per_chunk: int = 25,
    *,
    use_vmap: bool = True,
) -> torch.Tensor:
    """Predicted class of every model on every input.

    Args:
        model: the target network; its tensors outside ``layout`` are used as they are. Evaluated in eval mode.
        params: ``(N, D)`` parameter vectors.
        inputs: ``(M, ...)`` inputs, or any source of :func:`pdiff_hf.evaluation.data.iter_batches` (dict batches are called as
            ``model(**batch)``).
        use_vmap: ``False`` runs one model after the other (the fallback, for comparison).

    Returns:
        ``(N, M)`` int64 predictions (``(N, M, ...)`` for per-position logits). A parameter vector that appears more
        than once (e.g. resampled training checkpoints among baselines) is run once.
    """
    distinct, inverse = _distinct_rows(params)
    n = distinct.shape[0] if distinct.dim() == 2 else 1
    rows: Dict[int, list] = {}
    for first, _, _, logits in _forward_chunks(
        model, layout, distinct, inputs, None, batch_size, models_per_chunk, raw=False, use_vmap=use_vmap
    ):
        rows.setdefault(first, []).append(logits.argmax(-1).cpu())
    out = torch.cat([torch.cat(rows[first], dim=1) for first in sorted(rows)], dim=0)
    if out.shape[0] != n:
        raise DimensionMismatchError(f"expected predictions of {n} models, found {out.shape[0]} (an empty source?)")
    return out if inverse is None else out[inverse]


def accuracy_from_predictions(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` predictions and ``(M,)`` labels to ``(N,)`` accuracies in percent."""
    if predictions.shape[-1] != labels.shape[0]:
        raise DimensionMismatchError(
            f"expected {predictions.shape[-1]} labels for the predictions, found {labels.shape[0]}"
        )
    return (predictions == labels.to(predictions.device)).float().mean(-1) * 100.0


@torch.no_grad()
def evaluate_parameters(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    inputs: Any,
    labels: Optional[torch.Tensor] = None,
    batch_size: int = 1000,
    models_per_chunk: int = 25,
    *,
    score_fn: Optional[ScoreFn] = None,
    use_vmap: bool = True,
) -> torch.Tensor:
    """Score ``(N,)`` of each parameter vector of ``params`` ``(N, D)`` on a data source.

    Args:
        inputs / labels: input tensor ``(M, ...)`` and labels ``(M,)``, or a source with its own labels (an
            ``(inputs, labels)`` pair, a mapping of columns or a ``datasets.Dataset`` with ``labels``, a DataLoader
            of dict or pair batches); see :mod:`pdiff_hf.evaluation.data`. A batch without labels raises
            :class:`~pdiff_hf.errors.MissingLabelsError`.
        score_fn: ``score_fn(logits, labels) -> (B,)`` per-example scores (e.g. negative loss, exact match); it
            receives the whole output when the model returns no logits. Default: accuracy.
        use_vmap: ``False`` runs one model after the other (the fallback, for comparison).

    Returns:
        ``(N,)`` float32: accuracy in percent by default, else the mean of ``score_fn`` over all examples.
    """
    n = params.shape[0] if params.dim() == 2 else 1
    rows: Dict[int, list] = {}  # first model of a chunk -> per-batch scores (n, B)
    for first, last, batch, outputs in _forward_chunks(
        model, layout, params, inputs, labels, batch_size, models_per_chunk, raw=score_fn is not None,
        use_vmap=use_vmap,
    ):  # fmt: skip
        batch_labels = batch.require_labels()
        scores = [score_examples(_model_index(outputs, i), batch_labels, score_fn) for i in range(last - first)]
        rows.setdefault(first, []).append(torch.stack(scores).cpu())
    if not rows:
        raise DimensionMismatchError("expected at least one example to evaluate on, found none")
    per_example = torch.cat([torch.cat(rows[first], dim=1) for first in sorted(rows)], dim=0)  # (N, M)
    if per_example.shape[0] != n:
        raise DimensionMismatchError(f"expected scores of {n} models, found {per_example.shape[0]}")
    return per_example.mean(-1) * 100.0 if score_fn is None else per_example.mean(-1)


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
