"""Existing checkpoints in: a checkpoint dataset from state dicts or checkpoint files instead of the built-in collector.

::

    ds = checkpoints_from_state_dicts(state_dicts, layout)          # any iterable of (partial) state dicts
    ds = checkpoints_from_files("runs/", layout)                     # a folder (or list) of .safetensors files
    ds = checkpoints_from_hub(["owner/run-1", "owner/run-2"], layout) # Hub model repos (safetensors only)

Only the tensors of ``layout`` are read from each state dict (others are ignored), so full model checkpoints work.
``.safetensors`` files are read without unpickling; ``.pt`` / ``.bin`` / ``.pth`` files only with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. A tensor of another shape, a missing tensor
or an unreadable file is a :class:`~pdiff_hf.errors.CheckpointFileError` naming the checkpoint. From the Hub only
``*.safetensors`` and ``*.json`` files are downloaded, and only the selected tensors are read from them, so a repo's
pickles are never fetched and a large model costs ``D`` values in memory, not the model.

During training with ``transformers.Trainer``, :class:`~pdiff_hf.checkpoints.trainer_callback.PDiffCheckpointCallback` records
checkpoints as the run goes.

Checkpoints of several trainings of a whole network from scratch (different seeds) lie in different basins: their
weight-space average is a broken network, and p-diff would learn a mixture. Before training on an imported
collection, check it (it evaluates a few averages, and warns with
:class:`~pdiff_hf.checkpoints.run_mixing.MixedRunsWarning` when one scores far below the checkpoints)::

    from pdiff_hf.checkpoints.run_mixing import check_weight_averaging
    check_weight_averaging(model, layout, checkpoint_params(ds), (val_x, val_y), run_ids=ds["run_id"])

Fine-tuning runs of one pretrained model, or branches of one early checkpoint (:func:`pdiff_hf.collect_branches`),
pass it.
"""

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import datasets
import torch

from ..errors import CheckpointFileError, LayoutMismatchError, first_line
from ..layout import ParamLayout
from .dataset import make_checkpoint_dataset
from .writer import CheckpointWriter

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
        first = first_line(err)
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
    max_in_memory_bytes: Optional[int] = None,
    cache_dir: Optional[str] = None,
) -> datasets.Dataset:
    """A checkpoint dataset from a folder (or list) of checkpoint files, read one at a time (see
    :func:`load_state_dict_file`). Columns: ``params``, ``file`` (path relative to the folder) and ``metadata``.
    Rows beyond ``max_in_memory_bytes`` stream to an Arrow file in ``cache_dir`` (:mod:`pdiff_hf.checkpoints.writer`)."""
    files = checkpoint_files(source)
    root = Path(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() else None
    writer = CheckpointWriter(layout, len(files), max_in_memory_bytes, cache_dir)  # memory or disk, decided first
    for f in files:
        writer.append(_vector(load_state_dict_file(f), layout, f"checkpoint {f}"))
    names = [str(f.relative_to(root)) if root is not None else str(f) for f in files]
    return writer.finish({"file": names, **(metadata or {})})


# What checkpoints_from_hub downloads: weights without pickles, and the JSON files that go with them (configs, shard
# indices).
HUB_ALLOW_PATTERNS = ("*.safetensors", "*.json")


def _selected_tensors(files: Sequence[Path], layout: ParamLayout, what: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``layout`` read from a set of safetensors files (the shards of one checkpoint): only the selected
    tensors are read. A tensor found in two files is ambiguous and refused."""
    from safetensors import SafetensorError, safe_open

    wanted, found, where = set(layout.names), {}, {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    if name not in wanted:
                        continue
                    if name in where:
                        raise CheckpointFileError(
                            f"{what}: expected each tensor in one safetensors file, found {name!r} in both "
                            f"{where[name].name} and {path.name} (pass subfolder= to choose one checkpoint)"
                        )
                    where[name], found[name] = path, f.get_tensor(name)
        except SafetensorError as err:
            raise CheckpointFileError(f"{what}: expected a complete safetensors file {path.name}, found one that is not ({err})") from None
    return found


def checkpoints_from_hub(
    repo_ids: Union[str, Sequence[str]],
    layout: ParamLayout,
    revision: Optional[Union[str, Sequence[Optional[str]]]] = None,
    token: Union[str, bool, None] = None,
    *,
    subfolder: Optional[str] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    metadata: Optional[Mapping[str, Sequence]] = None,
    max_in_memory_bytes: Optional[int] = None,
) -> datasets.Dataset:
    """A checkpoint dataset with one row per Hub model repo (a trained network, e.g. fine-tuning runs of one model).

    Each repo is fetched with ``huggingface_hub.snapshot_download(allow_patterns=["*.safetensors", "*.json"])``: no
    ``.bin`` / ``.pt`` pickle is ever downloaded. The selected tensors are read from the ``.safetensors`` files at the
    repo root (or in ``subfolder``), all shards of a sharded checkpoint together.

    Args:
        repo_ids: one repo id or a list of them.
        revision: a branch, tag or commit for every repo, or one per repo.
        token: Hub access token (default: ``HF_TOKEN`` or the saved login).
        subfolder: read the weights in this folder of each repo (``"unet"``, ``"checkpoint-500"``, …).

    Columns: ``params``, ``repo_id``, ``revision`` (the commit that was read) and ``metadata``. Errors of the Hub
    (``RepositoryNotFoundError``, ``RevisionNotFoundError``, …) propagate with their own types; a repo without
    safetensors weights, or whose weights lack a selected tensor or hold one of another shape, is a
    :class:`~pdiff_hf.errors.CheckpointFileError` naming the repo.
    """
    from huggingface_hub import snapshot_download

    repo_ids = [repo_ids] if isinstance(repo_ids, str) else list(repo_ids)
    if not repo_ids or not all(isinstance(r, str) and r for r in repo_ids):
        raise CheckpointFileError(f"expected one or more Hub model repo ids 'owner/name', found {repo_ids!r}")
    revisions = list(revision) if isinstance(revision, (list, tuple)) else [revision] * len(repo_ids)
    if len(revisions) != len(repo_ids):
        raise CheckpointFileError(f"expected one revision per repo ({len(repo_ids)}), found {len(revisions)}")
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    writer, commits = CheckpointWriter(layout, len(repo_ids), max_in_memory_bytes), []  # memory or disk, decided first
    for repo_id, rev in zip(repo_ids, revisions):
        what = f"Hub repo {repo_id}" + (f"@{rev}" if rev else "") + (f" ({prefix.rstrip('/')})" if prefix else "")
        folder = Path(
            snapshot_download(
                repo_id,
                revision=rev,
                token=token,
                cache_dir=cache_dir,
                allow_patterns=[prefix + p for p in HUB_ALLOW_PATTERNS],
            )
        )
        files = sorted((folder / prefix).glob("*.safetensors")) if (folder / prefix).is_dir() else []
        if not files:
            raise CheckpointFileError(
                f"{what}: expected .safetensors weights{' in ' + prefix if prefix else ' at the repo root'} (pickled "
                f".bin/.pt weights are never downloaded), found none"
            )
        writer.append(_vector(_selected_tensors(files, layout, what), layout, what))
        commits.append(folder.name)  # snapshots/<commit>
    return writer.finish({"repo_id": repo_ids, "revision": commits, **(metadata or {})})
