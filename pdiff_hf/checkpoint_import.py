"""Existing checkpoints in: a checkpoint dataset from state dicts or checkpoint files instead of the built-in collector.

::

    ds = checkpoints_from_state_dicts(state_dicts, layout)          # any iterable of (partial) state dicts
    ds = checkpoints_from_files("runs/", layout)                     # a folder (or list) of .safetensors files

Only the tensors of ``layout`` are read from each state dict (others are ignored), so full model checkpoints work.
``.safetensors`` files are read without unpickling; ``.pt`` / ``.bin`` / ``.pth`` files only with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. A tensor of another shape, a missing tensor
or an unreadable file is a :class:`~pdiff_hf.errors.CheckpointFileError` naming the checkpoint.
"""

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import datasets
import torch

from .checkpoints import make_checkpoint_dataset
from .errors import CheckpointFileError, LayoutMismatchError
from .layout import ParamLayout

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")


def _vector(state: Mapping[str, Any], layout: ParamLayout, what: str) -> torch.Tensor:
    """The ``(D,)`` vector of ``state``'s selected tensors; :class:`CheckpointFileError` naming ``what``."""
    if not isinstance(state, Mapping):
        raise CheckpointFileError(f"{what}: expected a state dict (a mapping of tensor names), found {type(state).__name__}")
    try:
        return layout.flatten(state)
    except LayoutMismatchError as err:
        raise CheckpointFileError(f"{what}: {err}") from None


def checkpoints_from_state_dicts(
    state_dicts: Iterable[Mapping[str, torch.Tensor]],
    layout: ParamLayout,
    metadata: Optional[Mapping[str, Sequence]] = None,
) -> datasets.Dataset:
    """A checkpoint dataset ``(N, D)`` from an iterable of state dicts (full or partial) holding every tensor of
    ``layout`` with its shape. ``metadata``: extra columns, one value per state dict. Columns: ``params``,
    ``index`` (position in the iterable) and ``metadata``."""
    vectors = [_vector(sd, layout, f"state dict {i}") for i, sd in enumerate(state_dicts)]
    if not vectors:
        raise CheckpointFileError("expected at least one state dict, found none")
    return make_checkpoint_dataset(torch.stack(vectors), layout, {"index": list(range(len(vectors))), **(metadata or {})})


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The tensors of one checkpoint file: safetensors as they are, ``.pt``/``.pth``/``.bin`` only through
    ``torch.load(weights_only=True)`` (a pickle of arbitrary objects is refused). A ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is unwrapped."""
    path = Path(path)
    if path.suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as err:
            raise CheckpointFileError(f"{path}: expected a complete safetensors file, found one that is not ({err})") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointFileError(
            f"{path}: expected a checkpoint file ending in {SAFE_SUFFIXES + PICKLE_SUFFIXES}, found {path.suffix!r}"
        )
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for objects weights_only refuses, RuntimeError for a broken file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointFileError(
            f"{path}: expected tensors that torch.load(weights_only=True) can read, found a file it refuses "
            f"({type(err).__name__}: {first}); save the state dict with safetensors instead"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    return state


def checkpoint_files(source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Path]:
    """The checkpoint files of a folder (sorted, recursive) or a list of paths."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        suffixes = SAFE_SUFFIXES + PICKLE_SUFFIXES
        files = sorted(p for p in Path(source).rglob("*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise CheckpointFileError(f"{source}: expected checkpoint files ({', '.join(suffixes)}), found none")
        return files
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CheckpointFileError(f"expected checkpoint files or a folder, found no file at {missing}")
    return paths


def checkpoints_from_files(
    source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    layout: ParamLayout,
    metadata: Optional[Mapping[str, Sequence]] = None,
) -> datasets.Dataset:
    """A checkpoint dataset from a folder (or list) of checkpoint files, read one at a time (see
    :func:`load_state_dict_file`). Columns: ``params``, ``file`` (path relative to the folder) and ``metadata``."""
    files = checkpoint_files(source)
    root = Path(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() else None
    vectors = [_vector(load_state_dict_file(f), layout, f"checkpoint {f}") for f in files]
    names = [str(f.relative_to(root)) if root is not None else str(f) for f in files]
    return make_checkpoint_dataset(torch.stack(vectors), layout, {"file": names, **(metadata or {})})
