"""Checkpoint rows written as they are collected: in one preallocated buffer, or streamed to an on-disk Arrow file
when the collection would not fit in memory.

A collection of ``N`` checkpoints of ``D`` values needs ``N * D * 4`` bytes, known before any training step: a whole
transformers ResNet-18 (11.2 M values) times 200 checkpoints is 8.9 GB. :class:`CheckpointWriter` decides up front
(:func:`plan_storage`): below ``max_in_memory_bytes`` the rows go into one ``(N, D)`` float32 tensor (no list of
vectors and no ``torch.stack`` copy); above it they are appended to an Arrow stream file under ``cache_dir`` one row
at a time, and the finished dataset memory-maps that file (``datasets.Dataset.from_file``), so peak memory stays at a
few rows whatever ``N * D``. Not enough free disk for the rows either is a :class:`CheckpointDatasetError` before
training starts.

The finished dataset is the same either way: a ``params`` column of fixed length ``D``, the metadata columns, the
layout in ``info.description`` and a fingerprint of the rows' bytes (sha256, computed as rows arrive).
"""

import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..errors import CheckpointDatasetError, DimensionMismatchError
from ..layout import ParamLayout, check_finite
from .dataset import _LAYOUT_KEY, PARAMS_COLUMN, checkpoint_conditions, make_checkpoint_dataset, set_condition_names

# rows kept in memory up to this many bytes by default; larger collections stream to disk
DEFAULT_MAX_IN_MEMORY_BYTES = 2 << 30


@dataclass(frozen=True)
class StoragePlan:
    """Where the rows of a collection go: ``"memory"`` or ``"disk"`` (``path`` the Arrow file), and how many bytes."""

    where: str
    nbytes: int
    path: Optional[Path] = None


def available_memory_bytes() -> Optional[int]:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux), else ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def plan_storage(
    num_rows: int,
    dim: int,
    max_in_memory_bytes: Optional[int] = None,
    cache_dir: Optional[Union[str, Path]] = None,
) -> StoragePlan:
    """Decide before any work where ``num_rows`` rows of ``dim`` float32 values go.

    ``max_in_memory_bytes``: ``None`` takes :data:`DEFAULT_MAX_IN_MEMORY_BYTES`, lowered to half the available memory
    when less is free; ``0`` always streams to disk. Raises :class:`CheckpointDatasetError` when the rows go to disk
    and ``cache_dir`` (default: the ``datasets`` cache) has less free space than they need."""
    if num_rows < 1 or dim < 1:
        raise DimensionMismatchError(f"expected at least one row of at least one value, found {num_rows} x {dim}")
    nbytes = int(num_rows) * int(dim) * 4
    budget = DEFAULT_MAX_IN_MEMORY_BYTES if max_in_memory_bytes is None else int(max_in_memory_bytes)
    if budget < 0:
        raise CheckpointDatasetError(f"expected max_in_memory_bytes >= 0, found {max_in_memory_bytes}")
    if max_in_memory_bytes is None:
        free = available_memory_bytes()
        if free is not None:
            budget = min(budget, free // 2)
    if nbytes <= budget:
        return StoragePlan("memory", nbytes)
    folder = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "pdiff_hf"
    folder.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(folder).free
    if free_disk < nbytes * 1.05:
        raise CheckpointDatasetError(
            f"expected room for {num_rows} checkpoints x D={dim} ({_gib(nbytes)}) in memory (budget "
            f"{_gib(budget)}) or on disk in {folder}, found {_gib(free_disk)} free there; pass cache_dir= on a larger "
            "disk or collect fewer checkpoints"
        )
    return StoragePlan("disk", nbytes, folder / f"collect-{uuid.uuid4().hex}.arrow")


class CheckpointWriter:
    """Rows ``(D,)`` appended one at a time; :meth:`finish` returns the checkpoint dataset.

    Args:
        layout: the selection the rows flatten (``D = layout.dim``).
        num_rows: how many rows will be appended (the plan is made from it, before any work).
        max_in_memory_bytes / cache_dir: see :func:`plan_storage`.
    """

    def __init__(
        self,
        layout: ParamLayout,
        num_rows: int,
        max_in_memory_bytes: Optional[int] = None,
        cache_dir: Optional[Union[str, Path]] = None,
    ):
        self.layout = layout
        self.num_rows = int(num_rows)
        self.plan = plan_storage(self.num_rows, layout.dim, max_in_memory_bytes, cache_dir)
        self.count = 0
        self._digest = hashlib.sha256()
        self._buffer: Optional[torch.Tensor] = None
        self._writer = None
        if self.plan.where == "memory":
            self._buffer = torch.empty(self.num_rows, layout.dim, dtype=torch.float32)
        else:
            schema = pa.schema([(PARAMS_COLUMN, pa.list_(pa.float32(), layout.dim))])
            self._sink = pa.OSFile(str(self.plan.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, schema)
            self._schema = schema

    @property
    def streamed(self) -> bool:
        return self.plan.where == "disk"

    def append(self, vector: torch.Tensor) -> None:
        """Add one flattened checkpoint ``(D,)``; :class:`NonFiniteParametersError` for NaN/Inf values."""
        if self.count >= self.num_rows or (self.streamed and self._writer is None):
            raise CheckpointDatasetError(f"expected at most {self.count} rows (rows already read back), found one more")
        row = vector.detach().reshape(-1).to("cpu", torch.float32)
        if row.numel() != self.layout.dim:
            raise DimensionMismatchError(f"expected a row of D={self.layout.dim} values, found {row.numel()}")
        check_finite(row, f"checkpoint {self.count}")
        array = row.contiguous().numpy()
        self._digest.update(array.view(np.uint8))
        if self._buffer is not None:
            self._buffer[self.count] = row
        else:
            column = pa.FixedSizeListArray.from_arrays(pa.array(array), self.layout.dim)
            self._writer.write_batch(pa.record_batch([column], schema=self._schema))
        self.count += 1

    def _close(self) -> None:
        """Close the Arrow stream (no more rows); idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def row_chunks(self, max_rows: int) -> Iterator[torch.Tensor]:
        """The rows appended so far, ``(<= max_rows, D)`` at a time (read back from the file when streamed)."""
        if self._buffer is not None:
            for start in range(0, self.count, max_rows):
                yield self._buffer[start : min(start + max_rows, self.count)]
            return
        self._close()
        with pa.memory_map(str(self.plan.path)) as source:
            table = pa.ipc.open_stream(source).read_all()
            for start in range(0, self.count, max_rows):
                part = table.column(PARAMS_COLUMN).slice(start, max_rows).combine_chunks()
                values = part.values.to_numpy(zero_copy_only=False).reshape(-1, self.layout.dim)
                yield torch.from_numpy(values.copy())

    def finish(
        self, metadata: Optional[Mapping[str, Sequence]] = None, condition_names: Optional[Sequence[str]] = None
    ) -> datasets.Dataset:
        """The checkpoint dataset of the rows appended (all ``num_rows`` of them) with ``metadata`` columns."""
        if self.count != self.num_rows:
            raise CheckpointDatasetError(f"expected {self.num_rows} rows, found {self.count}")
        if self._buffer is not None:
            return make_checkpoint_dataset(self._buffer, self.layout, metadata, condition_names=condition_names)
        self._close()
        self._digest.update(json.dumps(self.layout.to_list()).encode())
        dataset = datasets.Dataset.from_file(str(self.plan.path))
        for name, values in (metadata or {}).items():
            values = values.tolist() if isinstance(values, (torch.Tensor, np.ndarray)) else list(values)
            if len(values) != self.count:
                raise CheckpointDatasetError(f"metadata column {name!r}: expected {self.count} values, found {len(values)}")
            dataset = dataset.add_column(name, values)
            self._digest.update(json.dumps([name, values], default=str).encode())
        dataset.info.description = json.dumps({_LAYOUT_KEY: self.layout.to_list()})
        dataset._fingerprint = self._digest.hexdigest()[:32]
        if condition_names is not None:
            set_condition_names(dataset, condition_names)
            checkpoint_conditions(dataset)
        return dataset
