"""BatchNorm recalibration: re-estimate the running statistics of a (generated) network on a few training batches.

A generated whole network carries BatchNorm running means and variances decoded by the autoencoder together with
the weights. They may not match the activations its own generated weights produce; recalibration replaces them by
the statistics measured on data, as is done after weight averaging (``torch.optim.swa_utils.update_bn``)::

    net = out.models[0]                                      # a generated network
    recalibrate_batchnorm(net, data.train_x, num_batches=8)  # 8 batches of 128 training inputs

    params = recalibrate_parameters(model, layout, out.params, data.train_x)   # (N, D), the same for N vectors

How: every BatchNorm layer that tracks running statistics is reset, switched to a cumulative average
(``momentum=None``) and to train mode, while every other module stays in eval mode (dropout off), so the statistics
are those of the inputs the layer sees at inference. Forward passes run without gradients; afterwards each module's
train/eval mode and each BatchNorm's momentum are restored. The result depends only on the batches (no randomness).
"""

import copy
from itertools import chain, islice
from typing import Any, Dict, Iterable, Iterator, List, Optional

import torch
from torch import nn

from ..errors import RecalibrationError
from ..layout import ParamLayout
from .data import Batch, iter_batches

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """``{module name: module}`` of the BatchNorm layers of ``model`` that track running statistics."""
    return {
        name: m for name, m in model.named_modules() if isinstance(m, BatchNorm) and m.track_running_stats
    }


def _check_num_batches(num_batches: Optional[int]) -> None:
    bad_type = isinstance(num_batches, bool) or not isinstance(num_batches, int)
    if num_batches is not None and (bad_type or num_batches < 1):
        raise RecalibrationError(
            f"expected num_batches to be a positive int or None (every batch), found {num_batches!r}"
        )


def _batch_stream(model: nn.Module, batches: Any, num_batches: Optional[int], batch_size: int) -> Iterator[Batch]:
    """The first ``num_batches`` batches of ``batches``; :class:`RecalibrationError` if there is none (checked by
    reading the first one, before any statistic changes)."""
    _check_num_batches(num_batches)
    if isinstance(batches, list) and batches and all(isinstance(b, Batch) for b in batches):
        stream = iter(batches)  # already prepared (prepare_batches)
    else:
        stream = iter_batches(batches, batch_size=batch_size, model=model)
    if num_batches is not None:
        stream = islice(stream, num_batches)
    first = next(stream, None)
    if first is None:
        raise RecalibrationError("expected at least one batch to recalibrate BatchNorm statistics on, found none")
    return chain([first], stream)


def prepare_batches(
    model: nn.Module, batches: Any, num_batches: Optional[int] = 8, batch_size: int = 128
) -> List[Batch]:
    """The first ``num_batches`` batches of ``batches`` as a list of :class:`~pdiff_hf.evaluation.data.Batch` (read once), to
    recalibrate many networks on exactly the same inputs (a shuffling DataLoader would give each its own). Checks
    that ``model`` has BatchNorm statistics and that there is a batch (:class:`RecalibrationError`)."""
    _layers_or_error(model)
    return list(_batch_stream(model, batches, num_batches, batch_size))


def _recalibrate(model: nn.Module, layers: Dict[str, nn.Module], stream: Iterable[Batch]) -> None:
    """Reset ``layers``, average their statistics over ``stream`` (only they in train mode), restore the modes."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in layers.items()}
    try:
        model.eval()
        for m in layers.values():
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches
            m.train()
        for batch in stream:
            batch = batch.to(device)
            model(*batch.args, **batch.kwargs)
    finally:
        for name, m in layers.items():
            m.momentum = momenta[name]
        for name, m in model.named_modules():
            m.train(modes[name])


def _layers_or_error(model: nn.Module) -> Dict[str, nn.Module]:
    layers = batchnorm_layers(model)
    if not layers:
        raise RecalibrationError(
            f"expected a model with BatchNorm layers that track running statistics, found none in "
            f"{type(model).__name__}"
        )
    return layers


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Any, num_batches: Optional[int] = 8, batch_size: int = 128
) -> nn.Module:
    """Reset and re-estimate the running mean and variance of every BatchNorm layer of ``model`` (in place).

    Args:
        model: a network with BatchNorm layers that track running statistics.
        batches: inputs in any form of :mod:`pdiff_hf.evaluation.data` — a tensor of inputs ``(M, ...)``, an ``(inputs,
            labels)`` pair, a mapping of columns, a ``datasets.Dataset`` (cut into batches of ``batch_size``), or a
            DataLoader / iterable of batches (dicts called as ``model(**batch)``, tensors, pairs), or the list
            returned by :func:`prepare_batches`. Labels are ignored.
        num_batches: use the first ``num_batches`` batches (default 8); ``None``: every batch.
        batch_size: batch size for indexable sources (a DataLoader keeps its own).

    Returns:
        ``model``, with the statistics of the cumulative average over the batches (``num_batches_tracked`` counts
        them) and every module back in the train/eval mode it was in.

    Raises:
        RecalibrationError: ``model`` has no BatchNorm layer with running statistics, ``num_batches`` is not a
            positive int, or ``batches`` yields no batch. Raised before any statistic is changed.
    """
    layers = _layers_or_error(model)
    _recalibrate(model, layers, _batch_stream(model, batches, num_batches, batch_size))
    return model


def check_recalibration_layout(model: nn.Module, layout: ParamLayout) -> List[str]:
    """The running-statistic tensors of ``model``'s BatchNorm layers; :class:`RecalibrationError` unless ``layout``
    selects all of them (otherwise recalibrated statistics could not be written back into parameter vectors)."""
    layers = _layers_or_error(model)
    stats = [f"{n}.{s}" for n in layers for s in ("running_mean", "running_var")]
    missing = [s for s in stats if s not in set(layout.names)]
    if missing:
        raise RecalibrationError(
            f"expected a layout that selects every BatchNorm running statistic (e.g. include_buffers=True) to write "
            f"recalibrated statistics into parameter vectors, found {missing} unselected"
        )
    return stats


@torch.no_grad()
def recalibrate_parameters(
    model: nn.Module,
    layout: ParamLayout,
    params: torch.Tensor,
    batches: Any,
    num_batches: Optional[int] = 8,
    batch_size: int = 128,
) -> torch.Tensor:
    """Recalibrate the BatchNorm statistics of ``N`` parameter vectors: each is loaded into a copy of ``model``,
    recalibrated with :func:`recalibrate_batchnorm` on the same batches, and flattened again.

    Args:
        model: the target network (not modified); its tensors outside ``layout`` are shared by every vector.
        layout: must select every BatchNorm running mean and variance (e.g. the demo's ``whole`` selection).
        params: ``(N, D)`` parameter vectors.
        batches, num_batches, batch_size: as for :func:`recalibrate_batchnorm`; the batches are materialized once
            and reused for every vector.

    Returns:
        ``(N, D)`` float32: ``params`` with the running statistics replaced (every other entry unchanged).
    """
    check_recalibration_layout(model, layout)
    params = torch.as_tensor(params)
    layout.check_vector(params)
    params = params if params.dim() == 2 else params[None]
    fixed = prepare_batches(model, batches, num_batches, batch_size)
    work = copy.deepcopy(model)
    layers = batchnorm_layers(work)
    out = torch.empty(params.shape, dtype=torch.float32)
    for i, vector in enumerate(params):
        layout.load_into(work, vector)
        _recalibrate(work, layers, fixed)
        out[i] = layout.flatten(work)
    return out
