"""Training data for large ``D`` without copies of the whole checkpoint matrix: rows read a batch at a time from a
tensor or from the Arrow column of a checkpoint dataset (memory-mapped when it was loaded from disk), normalized per
batch.

At ``D = 10^6`` one float32 copy of 200 checkpoints is 800 MB. Reading the matrix out of the dataset
(:func:`~pdiff_hf.checkpoints.dataset.checkpoint_params`), normalizing it whole, and computing float64 statistics over it
would hold three to four such copies. Here:

* :class:`CheckpointRows` reads rows ``(B, D)`` or column blocks ``(N, b - a)`` of the checkpoints, from a tensor or
  zero-copy from the dataset's Arrow buffers (a dataset from ``datasets.load_from_disk`` is memory-mapped, so only
  the pages read are loaded, and the OS may drop them again);
* :func:`fit_normalization` computes the autoencoder's statistics block by block of columns (the one
  implementation of the block statistics);
* :class:`NormalizedRows` is the autoencoder's training data: a map-style dataset whose batches are normalized when
  read (``DataLoader`` fetches a batch with one ``__getitems__`` call). Normalization is elementwise, so a batch
  equals the same rows of ``autoencoder.normalize(all_params)`` exactly;
* :func:`encode_rows` gives the diffusion latents ``(N, C, L)`` a chunk of rows at a time.
"""

from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import CheckpointDatasetError, DimensionMismatchError

# rows / columns read at once: about 2^24 float32 values (64 MB) per block
BLOCK_ENTRIES = 2**24


class CheckpointRows:
    """Raw checkpoints ``(N, D)`` from a float tensor or a checkpoint dataset (``params`` column of fixed-size float32
    lists, as :func:`~pdiff_hf.checkpoints.dataset.make_checkpoint_dataset` writes it).

    Args:
        source: a ``torch.Tensor`` ``(N, D)`` or a ``datasets.Dataset``.
        max_in_memory_bytes: refuse (:class:`CheckpointDatasetError`) a tensor, or a dataset that is held in memory
            rather than memory-mapped, larger than this; ``None`` accepts any size.
    """

    def __init__(self, source, max_in_memory_bytes: Optional[int] = None):
        if isinstance(source, torch.Tensor):
            if source.dim() != 2 or not source.is_floating_point():
                raise DimensionMismatchError(f"expected a float tensor of checkpoints (N, D), found {source.dtype} "
                                             f"{tuple(source.shape)}")  # fmt: skip
            self._chunks: List[Tuple[int, Union[torch.Tensor, np.ndarray]]] = [(0, source)]
            self._row_map, self._dataset = None, None
            self.shape = tuple(source.shape)
            in_memory = source.numel() * source.element_size()
        else:
            self._chunks, self._row_map, self.shape, in_memory = _arrow_chunks(source)
            self._dataset = source  # pickled instead of the Arrow views (a memory-mapped dataset pickles its path)
        if max_in_memory_bytes is not None and in_memory > max_in_memory_bytes:
            raise CheckpointDatasetError(
                f"expected at most {max_in_memory_bytes / 2**30:.2f} GiB of checkpoints held in memory, found "
                f"{in_memory / 2**30:.2f} GiB ({self.shape[0]} x {self.shape[1]} float32); save the checkpoint "
                "dataset with save_to_disk and pass datasets.load_from_disk(path), which is memory-mapped"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):  # for DataLoader workers started with spawn: the dataset, not a copy of its rows
        return {**self.__dict__, "_chunks": None} if self._dataset is not None else self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._chunks is None:
            self._chunks = _arrow_chunks(self._dataset)[0]

    def rows(self, indices: Sequence[int]) -> torch.Tensor:
        """Float32 rows ``(len(indices), D)`` in the order given (a copy)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"expected row indices in [0, {self.shape[0]}), found {idx.min()}..{idx.max()}")
        return self._gather(idx, 0, self.shape[1])

    def columns(self, a: int, b: int) -> torch.Tensor:
        """Float32 columns ``a:b`` of every row ``(N, b - a)`` (a view of a float32 tensor source, else a copy)."""
        if self._row_map is None and len(self._chunks) == 1 and isinstance(self._chunks[0][1], torch.Tensor):
            return self._chunks[0][1][:, a:b].float()
        return self._gather(np.arange(self.shape[0]), a, b)

    def _gather(self, idx: np.ndarray, a: int, b: int) -> torch.Tensor:
        """Rows ``idx`` (logical), columns ``a:b``, read chunk by chunk into one new float32 tensor."""
        if self._row_map is not None:
            idx = self._row_map[idx]
        out = torch.empty(idx.size, b - a, dtype=torch.float32)
        for start, chunk in self._chunks:
            hit = np.nonzero((idx >= start) & (idx < start + chunk.shape[0]))[0]
            if not hit.size:
                continue
            local = idx[hit] - start
            if isinstance(chunk, torch.Tensor):
                block = chunk[torch.from_numpy(local), a:b]
            else:  # numpy view of Arrow memory: fancy indexing copies only the rows and columns asked for
                block = torch.from_numpy(chunk[local, a:b])
            if hit.size == idx.size:  # every row from this chunk: write in order without an index
                out.copy_(block)
            else:
                out[torch.from_numpy(hit)] = block.to(out.dtype)
        return out

    def row_chunks(self, max_entries: int = BLOCK_ENTRIES) -> Iterator[torch.Tensor]:
        """All rows in order, ``max(1, max_entries // D)`` at a time."""
        per_chunk = max(1, max_entries // self.shape[1])
        for start in range(0, self.shape[0], per_chunk):
            yield self.rows(range(start, min(start + per_chunk, self.shape[0])))

    def column_blocks(self, offsets: Optional[Sequence[Tuple[int, int]]] = None, max_entries: int = BLOCK_ENTRIES):
        """``(a, b)`` column ranges of about ``max_entries`` values each; with ``offsets`` (per-tensor statistics)
        one range per tensor instead."""
        if offsets is not None:
            return list(offsets)
        width = max(1, max_entries // max(1, self.shape[0]))
        return [(a, min(a + width, self.shape[1])) for a in range(0, self.shape[1], width)]


def checkpoint_rows(dataset) -> CheckpointRows:
    """:class:`CheckpointRows` of a checkpoint dataset: zero-copy from its ``params`` column when that holds
    fixed-size float32 lists (as :func:`~pdiff_hf.checkpoints.dataset.make_checkpoint_dataset` writes it), else from the
    float32 tensor :func:`~pdiff_hf.checkpoints.dataset.checkpoint_params` reads (other list types, with its errors)."""
    import pyarrow as pa

    from .dataset import PARAMS_COLUMN, checkpoint_params

    column_type = dataset.data.schema.field(PARAMS_COLUMN).type if PARAMS_COLUMN in dataset.column_names else None
    if column_type is not None and pa.types.is_fixed_size_list(column_type) and column_type.value_type == pa.float32():
        return CheckpointRows(dataset)
    return CheckpointRows(checkpoint_params(dataset))


def _arrow_chunks(dataset):
    """Zero-copy numpy views ``(rows, D)`` of the ``params`` column's Arrow chunks, the dataset's row mapping (after
    ``select`` / ``shuffle``), the shape, and how many of the bytes are held in memory rather than mapped."""
    import datasets
    import pyarrow as pa

    from .dataset import PARAMS_COLUMN

    if not isinstance(dataset, datasets.Dataset):
        raise CheckpointDatasetError(f"expected a torch.Tensor or a datasets.Dataset of checkpoints, found a "
                                     f"{type(dataset).__name__}")  # fmt: skip
    if PARAMS_COLUMN not in dataset.column_names:
        raise CheckpointDatasetError(f"expected a {PARAMS_COLUMN!r} column, found columns {dataset.column_names}")
    if len(dataset) == 0:
        raise CheckpointDatasetError("expected at least one checkpoint, found an empty dataset")
    column = dataset.data.column(PARAMS_COLUMN)
    if not pa.types.is_fixed_size_list(column.type) or column.type.value_type != pa.float32():
        raise CheckpointDatasetError(
            f"expected the {PARAMS_COLUMN!r} column to hold fixed-size lists of float32, found {column.type} "
            "(make_checkpoint_dataset writes that type)"
        )
    dim = column.type.list_size
    chunks, start = [], 0
    for chunk in column.chunks:
        if chunk.null_count:
            raise CheckpointDatasetError(f"expected no missing checkpoints, found {chunk.null_count}")
        values = chunk.values.slice(chunk.offset * dim, len(chunk) * dim)  # a sliced chunk keeps its parent buffer
        chunks.append((start, values.to_numpy(zero_copy_only=True).reshape(len(chunk), dim)))
        start += len(chunk)
    indices = getattr(dataset, "_indices", None)  # set by select / shuffle / filter: logical row -> table row
    row_map = np.asarray(indices.column(0).to_numpy(), dtype=np.int64) if indices is not None else None
    in_memory = 0 if _memory_mapped(dataset.data) else start * dim * 4
    return chunks, row_map, (len(dataset), dim), in_memory


def _memory_mapped(table) -> bool:
    """Whether every block of a ``datasets`` table is memory-mapped (as after ``load_from_disk``)."""
    from datasets.table import ConcatenationTable, MemoryMappedTable

    if isinstance(table, ConcatenationTable):
        return all(_memory_mapped(t) for row in table.blocks for t in row)
    return isinstance(table, MemoryMappedTable)


def fit_normalization(autoencoder, rows, check: bool = True) -> None:
    """The autoencoder's standardization statistics of the training checkpoints ``rows`` (a float tensor ``(N, D)``
    or :class:`CheckpointRows`), read a block of columns at a time and checked for NaN/Inf per block with ``check``:
    ``autoencoder.fit_normalization``, the one implementation of the block statistics."""
    autoencoder.fit_normalization(rows, check=check)


class NormalizedRows(torch.utils.data.Dataset):
    """The autoencoder's training rows, normalized when read: item ``i`` is ``autoencoder.normalize(row i)`` ``(D,)``.

    ``shape`` is ``(N, D)`` like the tensor it stands for, so :func:`~pdiff_hf.training.training_utils.make_dataloader`
    takes it as it takes a tensor; a batch of indices is read and normalized in one call (``__getitems__``)."""

    def __init__(self, rows: CheckpointRows, autoencoder):
        self.rows_source, self.autoencoder = rows, autoencoder
        self.shape = rows.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitems__(self, indices: Sequence[int]) -> List[torch.Tensor]:
        with torch.no_grad():
            batch = self.autoencoder.normalize(self.rows_source.rows(indices).to(self.autoencoder.norm_mean.device))
        return list(batch)  # the loader's collate stacks them back into (B, D)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]


@torch.no_grad()
def encode_rows(autoencoder, rows: CheckpointRows, max_entries: int = BLOCK_ENTRIES) -> torch.Tensor:
    """Scaled diffusion latents ``(N, C, L)`` of every checkpoint (``params_to_latents``), a chunk of rows at a
    time; one call when ``N * D <= max_entries``."""
    return torch.cat([autoencoder.params_to_latents(chunk.to(autoencoder.norm_mean.device))
                      for chunk in rows.row_chunks(max_entries)])  # fmt: skip
