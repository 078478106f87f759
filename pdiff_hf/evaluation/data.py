"""Data for collection and evaluation: tensor splits, and batches from whatever a user has.

A *source* of examples is any of:

* a tensor of inputs ``(M, ...)`` (with labels given separately), or a pair ``(inputs, labels)``;
* a mapping of columns ``{"input_ids": (M, T), "attention_mask": (M, T), "labels": (M,)}`` (a tokenizer's output
  with labels added);
* a ``datasets.Dataset`` (numeric columns; text columns are dropped);
* a ``torch.utils.data.DataLoader`` or any iterable of batches: dicts, ``(inputs, labels)`` pairs or tensors.

:func:`iter_batches` turns a source into :class:`Batch` es: the positional and keyword arguments of one model call
and the labels. Dict batches are called as ``model(**batch)`` without their labels (``labels``, or ``label`` as in
``datasets``, the key transformers' data collators rename), tensors as ``model(x)``. Entries the model's ``forward``
does not accept are dropped, as ``transformers.Trainer`` does.
"""

import inspect
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..errors import DimensionMismatchError, MissingLabelsError

LABEL_KEYS = ("labels", "label")


@dataclass
class ClassificationSplits:
    """Inputs ``(n, ...)`` and int64 labels ``(n,)`` of each split. Select models on ``val``, report on ``test``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self):
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.shape[0] != y.shape[0]:
                raise DimensionMismatchError(f"{split}: expected as many labels as inputs ({x.shape[0]}), found {y.shape[0]}")
            if x.shape[0] == 0:
                raise DimensionMismatchError(f"{split}: expected at least one example, found none")

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.train_y, self.val_y, self.test_y]).max()) + 1


class Batch(NamedTuple):
    """One model call: ``model(*args, **kwargs)``; ``labels`` ``(B, ...)`` or ``None``."""

    args: Tuple[torch.Tensor, ...]
    kwargs: Dict[str, torch.Tensor]
    labels: Optional[torch.Tensor]

    def to(self, device) -> "Batch":
        return Batch(
            tuple(a.to(device) for a in self.args),
            {k: v.to(device) for k, v in self.kwargs.items()},
            None if self.labels is None else self.labels.to(device),
        )

    def require_labels(self) -> torch.Tensor:
        if self.labels is None:
            found = f"keys {sorted(self.kwargs)}" if self.kwargs else f"{len(self.args)} tensor(s) without labels"
            raise MissingLabelsError(
                "expected every batch to carry labels (a 'labels' entry of a dict batch, the second element of an "
                f"(inputs, labels) batch, or labels= with tensor inputs), found a batch with {found}"
            )
        return self.labels


def split_sources(data: Any) -> Dict[str, Any]:
    """``{"train", "val", "test"}`` sources of ``data``: a :class:`ClassificationSplits`, or a mapping of splits such
    as a ``datasets.DatasetDict`` (``"train"``, ``"validation"`` or ``"val"``, ``"test"``; only ``"train"`` is
    required)."""
    if isinstance(data, ClassificationSplits):
        return {s: (getattr(data, f"{s}_x"), getattr(data, f"{s}_y")) for s in ("train", "val", "test")}
    if isinstance(data, Mapping) and "train" in data:
        val = data["validation"] if "validation" in data else data.get("val")
        return {"train": data["train"], "val": val, "test": data.get("test")}
    found = f"a mapping with keys {sorted(data)}" if isinstance(data, Mapping) else type(data).__name__
    raise DimensionMismatchError(
        f"expected ClassificationSplits or a mapping of splits with 'train' (and 'validation', 'test'), found {found}"
    )


def _is_hf_dataset(source: Any) -> bool:
    return type(source).__module__.startswith("datasets.") and hasattr(source, "with_format")


def _accepted_keys(model: Optional[nn.Module]) -> Optional[set]:
    """Keyword names ``model.forward`` accepts (``None``: any, or no model to ask)."""
    if model is None:
        return None
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def batch_from_dict(batch: Mapping[str, Any], model: Optional[nn.Module] = None) -> Batch:
    """A dict batch as keyword arguments (tensors the model accepts) and labels."""
    labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    accepted = _accepted_keys(model)
    kwargs = {
        k: v
        for k, v in batch.items()
        if k not in LABEL_KEYS and isinstance(v, torch.Tensor) and (accepted is None or k in accepted)
    }
    if labels is not None and not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    return Batch((), kwargs, labels)


def _as_batch(item: Any, model: Optional[nn.Module]) -> Batch:
    if isinstance(item, Mapping):
        return batch_from_dict(item, model)
    if isinstance(item, torch.Tensor):
        return Batch((item,), {}, None)
    if isinstance(item, (tuple, list)) and len(item) in (1, 2) and isinstance(item[0], torch.Tensor):
        return Batch((item[0],), {}, item[1] if len(item) == 2 else None)
    raise DimensionMismatchError(
        f"expected batches that are dicts, tensors or (inputs, labels) pairs, found {type(item).__name__}"
    )


def _columns(source: Any, labels: Optional[torch.Tensor]) -> Optional[Dict[str, Any]]:
    """The columns of an indexable source (tensor, pair, mapping of columns, ``datasets.Dataset``), else ``None``."""
    if isinstance(source, torch.Tensor):
        return {"_x": source, **({} if labels is None else {"labels": labels})}
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(t, torch.Tensor) for t in source):
        return {"_x": source[0], "labels": source[1]}
    if isinstance(source, Mapping) and source and all(isinstance(v, torch.Tensor) for v in source.values()):
        return dict(source)
    return None


def num_examples(source: Any, labels: Optional[torch.Tensor] = None) -> Optional[int]:
    """Number of examples of an indexable source (``None`` for a DataLoader or another iterable)."""
    if _is_hf_dataset(source):
        return len(source)
    columns = _columns(source, labels)
    if columns is None:
        return None
    sizes = {k: v.shape[0] for k, v in columns.items()}
    if len(set(sizes.values())) != 1:
        raise DimensionMismatchError(f"expected columns with as many rows each, found {sizes}")
    return next(iter(sizes.values()))


def _select(source: Any, columns: Optional[Dict[str, Any]], index, model: Optional[nn.Module]) -> Batch:
    """Rows ``index`` (a slice or an index tensor) of an indexable source as a :class:`Batch`."""
    if columns is None:  # a datasets.Dataset
        rows = source.with_format("torch")[index if isinstance(index, slice) else index.tolist()]
        return batch_from_dict(rows, model)
    rows = {k: v[index] for k, v in columns.items()}
    if "_x" in rows:
        return Batch((rows["_x"],), {}, rows.get("labels"))
    return batch_from_dict(rows, model)


def iter_batches(
    source: Any, labels: Optional[torch.Tensor] = None, batch_size: int = 1000, model: Optional[nn.Module] = None
) -> Iterator[Batch]:
    """The batches of ``source`` in order (see the module docstring); indexable sources are cut into batches of
    ``batch_size``, DataLoaders and other iterables keep their own batches. ``model`` filters dict entries."""
    if _is_hf_dataset(source) or _columns(source, labels) is not None:
        n, columns = num_examples(source, labels), None if _is_hf_dataset(source) else _columns(source, labels)
        for start in range(0, n, batch_size):
            yield _select(source, columns, slice(start, start + batch_size), model)
        return
    if isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
        raise DimensionMismatchError(
            f"expected a tensor, an (inputs, labels) pair, a mapping of columns, a datasets.Dataset or a DataLoader, "
            f"found {type(source).__name__}"
        )
    for item in source:
        yield _as_batch(item, model)


def training_batches(
    source: Any, batch_size: int, generator: torch.Generator, model: Optional[nn.Module] = None
) -> Iterator[Batch]:
    """Endless training batches. Indexable sources: ``(batch_size,)`` index batches reshuffled every epoch by
    ``generator``, the last incomplete batch of each epoch dropped (BatchNorm statistics of a tiny batch are noise).
    DataLoaders and iterables: their own batches, epoch after epoch."""
    n = num_examples(source)
    if n is None:
        while True:
            empty = True
            for batch in iter_batches(source, model=model):
                empty = False
                yield batch
            if empty:
                raise DimensionMismatchError("expected a training source with at least one batch, found none")
    columns = None if _is_hf_dataset(source) else _columns(source, None)
    for idx in shuffled_batches(n, batch_size, generator):
        yield _select(source, columns, idx, model)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches ``(batch_size,)`` over ``range(n)``, reshuffled every epoch by ``generator``;
    the last incomplete batch of each epoch is dropped."""
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i : i + batch_size]
