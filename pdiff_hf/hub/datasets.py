"""Checkpoint datasets on the Hub: parquet shards, one dataset config per architecture / parameter selection.

A repo pushed by :func:`push_checkpoint_dataset` holds, for each config ``C``::

    C/train-00000-of-0000N.parquet ...   rows of (params: float32[D], run_id, step, val_accuracy, ...)
    param_layouts/C.json                 the parameter layout of the D values, the columns, the checkpoint count
                                         (and, for a conditional dataset, the condition_names of its condition ids)
    README.md                            the dataset card listing every config (hub_cards/dataset_card.md)

Stock ``datasets.load_dataset(repo_id, C)`` gives back the rows; :func:`load_checkpoint_dataset_from_hub` also
re-attaches the layout, so :func:`~pdiff_hf.checkpoint_params` and :func:`~pdiff_hf.get_layout` work as on the pushed
dataset (and the condition names of a conditional dataset, for :func:`~pdiff_hf.checkpoints.dataset.get_condition_names`).
It refuses repos holding anything but parquet data and text metadata, because ``datasets`` also has builders that
unpickle (pandas ``.pkl``) or run code. ``pdiff_hf.load_checkpoint_dataset`` dispatches here for a
Hub repo id.
"""

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import datasets
from huggingface_hub import CommitInfo, CommitOperationAdd, DatasetCard, hf_hub_download
from torch import nn

from .. import __version__
from ..checkpoints.dataset import (
    CONDITION_COLUMN,
    PARAMS_COLUMN,
    checkpoint_conditions,
    checkpoint_params,
    get_condition_names,
    get_layout,
    set_condition_names,
    set_layout,
)
from ..errors import (
    CheckpointDatasetError,
    ConditionError,
    DimensionMismatchError,
    HubError,
    first_line,
)
from ..layout import ParamLayout
from .cards import DEFAULT_LICENSE, build_dataset_card, describe_architecture
from .repo import LAYOUT_DIR, check_repo_id, check_target, hub_api

logger = logging.getLogger(__name__)

# Files a checkpoint dataset repo may hold: parquet data and text metadata, nothing that unpickles or runs.
_SAFE_DATASET_SUFFIXES = (".parquet", ".json", ".md", ".txt", ".yaml", ".yml")
_SAFE_DATASET_NAMES = (".gitattributes", ".gitignore", "LICENSE")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "params"


def default_config_name(layout: ParamLayout, architecture: Any = None) -> str:
    """Dataset config name of a selection: ``<architecture>-d<D>-<hash of the layout>``, so every architecture /
    parameter selection gets its own config and the same selection always maps to the same one."""
    digest = hashlib.sha1(json.dumps(layout.to_list(), sort_keys=True).encode()).hexdigest()[:8]
    if isinstance(architecture, str):
        arch = architecture.split("(", 1)[0]  # "MNIST1DCNN(channels=32, …)" -> "MNIST1DCNN"
    else:
        arch = type(architecture).__name__ if architecture is not None else "params"
    return f"{_slug(arch)}-d{layout.dim}-{digest}"


def _check_config_name(config_name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}", config_name or "") or config_name == "data":
        raise CheckpointDatasetError(
            f"expected a dataset config name of letters, digits, '-', '_' or '.' (not 'data'), found {config_name!r}"
        )
    return config_name


def _layout_configs(files: list[str]) -> list[str]:
    """Names of the configs that have a layout file (``param_layouts/<config>.json``) among a repo's ``files``."""
    prefix = LAYOUT_DIR + "/"
    return sorted(f[len(prefix) : -len(".json")] for f in files if f.startswith(prefix) and f.endswith(".json"))


def _layouts_of(splits: dict[str, datasets.Dataset]) -> ParamLayout:
    """The one parameter layout of all ``splits``, checked against their ``params`` column (D, finite values)
    before anything is uploaded."""
    layout = None
    for split_name, part in splits.items():
        part_layout = get_layout(part)
        params = checkpoint_params(part)  # (N, D); checks the column and finiteness
        if params.shape[1] != part_layout.dim:
            raise DimensionMismatchError(
                f"split {split_name}: the params column has D={params.shape[1]}, its layout "
                f"[{part_layout.describe()}] has D={part_layout.dim}"
            )
        if layout is not None and part_layout != layout:
            raise CheckpointDatasetError(f"split {split_name} has another parameter layout than the other splits")
        layout = part_layout
    return layout


def _condition_names_of(splits: dict[str, datasets.Dataset]) -> list[str] | None:
    """The one list of condition names of all ``splits`` (``None`` for unconditional ones), their condition ids
    checked against it before anything is uploaded."""
    found = {name: get_condition_names(part) for name, part in splits.items()}
    distinct = {json.dumps(v) for v in found.values()}
    if len(distinct) > 1:
        raise ConditionError(f"expected the same condition_names in every split, found {found}")
    names = next(iter(found.values()))
    if names is not None:
        for part in splits.values():
            checkpoint_conditions(part)  # a condition column with ids in [0, len(names))
    return names


def push_checkpoint_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict,
    repo_id: str,
    config_name: str | None = None,
    *,
    token: str | None = None,
    private: bool = False,
    split: str | None = None,
    architecture: Any = None,
    max_shard_size: int | str | None = None,
    num_shards: int | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    license: str = DEFAULT_LICENSE,
    description: str | None = None,
    card_template: str | os.PathLike | None = None,
) -> CommitInfo:
    """Push a checkpoint dataset (or a ``DatasetDict`` of splits) to the dataset repo ``repo_id`` as parquet shards
    under config ``config_name`` (default :func:`default_config_name`), with the parameter layout in
    ``param_layouts/<config>.json`` and a dataset card listing every config of the repo. Returns the ``CommitInfo``
    of the card commit; ``.config_name`` is set on it. Hub errors propagate unchanged.

    The Hub endpoint is ``HF_ENDPOINT`` (the ``datasets`` library reads it at import).
    """
    repo_id = check_repo_id(repo_id, "a dataset repo id")
    if isinstance(dataset, datasets.DatasetDict):
        splits = dict(dataset)
    else:
        splits = {split or (str(dataset.split) if dataset.split else "train"): dataset}
    layout = _layouts_of(splits)
    condition_names = _condition_names_of(splits)
    if isinstance(max_shard_size, str) and max_shard_size.strip().isdigit():
        max_shard_size = int(max_shard_size)
    if max_shard_size is not None:
        from datasets.utils.py_utils import convert_file_size_to_int

        try:
            convert_file_size_to_int(max_shard_size)
        except (ValueError, TypeError):
            raise CheckpointDatasetError(
                f"expected max_shard_size as bytes or a size such as '500MB', found {max_shard_size!r}"
            ) from None
    arch = describe_architecture(architecture)
    config_name = _check_config_name(config_name or default_config_name(layout, architecture))
    for split_name, part in splits.items():
        part.push_to_hub(
            repo_id,
            config_name=config_name,
            split=split_name,
            token=token,
            private=private,
            max_shard_size=max_shard_size,
            num_shards=num_shards,
            revision=revision,
            commit_message=commit_message or f"Upload p-diff checkpoints ({config_name}, {split_name})",
        )
    first = next(iter(splits.values()))
    document = {
        "config_name": config_name,
        "architecture": arch,
        "dim": layout.dim,
        "num_tensors": len(layout.specs),
        "num_checkpoints": sum(len(p) for p in splits.values()),
        "splits": {k: len(v) for k, v in splits.items()},
        "columns": list(first.column_names),
        "param_layout": layout.to_list(),
        "pdiff_hf_version": __version__,
    }
    if condition_names is not None:  # a conditional dataset: which task each condition id is
        document.update(condition_column=CONDITION_COLUMN, condition_names=condition_names)
    # The card lists every config of the repo: read the layout documents of the others.
    api = hub_api(token)
    configs = {config_name: document}
    for other in _layout_configs(api.list_repo_files(repo_id, repo_type="dataset", revision=revision)):
        if other != config_name:
            path = f"{LAYOUT_DIR}/{other}.json"
            local = hf_hub_download(repo_id, path, repo_type="dataset", revision=revision, token=token)
            configs[other] = json.loads(Path(local).read_text(encoding="utf-8"))
    readme = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision, token=token)
    card = build_dataset_card(
        repo_id,
        configs,
        DatasetCard.load(readme).data.to_dict(),  # keeps the configs / dataset_info that datasets wrote
        license=license,
        description=description,
        template_path=card_template,
        token=token,
    )
    info = api.create_commit(
        repo_id,
        repo_type="dataset",
        revision=revision,
        operations=[
            CommitOperationAdd(f"{LAYOUT_DIR}/{config_name}.json", (json.dumps(document, indent=2) + "\n").encode()),
            CommitOperationAdd("README.md", str(card).encode("utf-8")),
        ],
        commit_message=f"Add p-diff parameter layout and dataset card ({config_name})",
    )
    info.config_name = config_name
    logger.info("pushed checkpoint config %s to %s", config_name, info.commit_url)
    return info


def _params_dim(dataset: datasets.Dataset) -> int | None:
    """D of the ``params`` column (from the Arrow schema when it is fixed-size), ``None`` without the column."""
    import pyarrow as pa

    if PARAMS_COLUMN not in dataset.column_names:
        return None
    field_type = dataset.data.schema.field(PARAMS_COLUMN).type
    if pa.types.is_fixed_size_list(field_type):
        return field_type.list_size
    return len(dataset[0][PARAMS_COLUMN]) if len(dataset) else None


def load_checkpoint_dataset_from_hub(
    repo_id: str,
    config_name: str | None = None,
    *,
    split: str | None = "train",
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    target_module: nn.Module | None = None,
    **load_dataset_kwargs,
) -> datasets.Dataset | datasets.DatasetDict:
    """Load config ``config_name`` of a checkpoint dataset repo with ``datasets.load_dataset`` and attach its
    parameter layout (from ``param_layouts/<config>.json``). ``config_name`` may be left out when the repo has one
    config; ``split=None`` returns a ``DatasetDict``. :class:`HubError` for a repo holding files other than parquet
    and text, or without a layout for the config; Hub errors (``RepositoryNotFoundError``, …) propagate unchanged."""
    repo_id = check_repo_id(repo_id, "a dataset repo id")
    label = f"dataset repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    files = hub_api(token).list_repo_files(repo_id, repo_type="dataset", revision=revision)
    unsafe = [f for f in files if not (f.endswith(_SAFE_DATASET_SUFFIXES) or f.rsplit("/", 1)[-1] in _SAFE_DATASET_NAMES)]
    if unsafe:
        listed = ", ".join(unsafe[:5]) + (", …" if len(unsafe) > 5 else "")
        raise HubError(
            f"{label} holds files that pdiff_hf does not load ({listed}): checkpoint datasets are read from parquet "
            "only, so that nothing downloaded is unpickled or executed"
        )
    available = _layout_configs(files)
    if config_name is None:
        if not available:
            raise HubError(
                f"{label} has no parameter layout ({LAYOUT_DIR}/<config>.json): it was not pushed by "
                "pdiff_hf.hub.push_checkpoint_dataset"
            )
        if len(available) > 1:
            raise HubError(f"{label} has {len(available)} p-diff configs {available}; pass config_name=")
        config_name = available[0]
    if config_name not in available:
        raise HubError(
            f"{label} has no parameter layout for config {config_name!r} ({LAYOUT_DIR}/{config_name}.json); "
            f"configs with a layout: {available}"
        )
    layout_file = hf_hub_download(
        repo_id,
        f"{LAYOUT_DIR}/{config_name}.json",
        repo_type="dataset",
        revision=revision,
        token=token,
        cache_dir=cache_dir,
    )
    try:
        from .validate import read_json_limited

        document = read_json_limited(Path(layout_file), label, f"{LAYOUT_DIR}/{config_name}.json")
        layout = ParamLayout.from_list(document["param_layout"])
    except (ValueError, KeyError, TypeError) as err:
        raise HubError(f"{label}: {LAYOUT_DIR}/{config_name}.json is not a parameter layout ({err})") from None
    condition_names = document.get("condition_names")
    loaded = datasets.load_dataset(
        repo_id, config_name, split=split, revision=revision, token=token, cache_dir=cache_dir, **load_dataset_kwargs
    )
    parts = loaded.values() if isinstance(loaded, datasets.DatasetDict) else [loaded]
    for part in parts:
        dim = _params_dim(part)
        if dim is None:
            raise CheckpointDatasetError(
                f"{label}, config {config_name!r}: expected a {PARAMS_COLUMN!r} column, found {part.column_names}"
            )
        if dim != layout.dim:
            raise DimensionMismatchError(
                f"{label}, config {config_name!r}: params have D={dim}, the recorded layout has D={layout.dim}"
            )
        set_layout(part, layout)
        if condition_names is not None:
            set_condition_names(part, condition_names)
    if target_module is not None:
        check_target(layout, target_module, f"{label}, config {config_name!r}")
    return loaded


def load_checkpoint_dataset(
    name_or_path: Union[str, "os.PathLike"],
    config_name: Optional[str] = None,
    split: Optional[str] = None,
    cache_dir: Optional[str] = None,
    **hub_kwargs,
) -> datasets.Dataset:
    """Load a checkpoint dataset from a local folder or the Hub and check that it holds at least two checkpoints.

    Args:
        name_or_path: a folder written by ``save_to_disk`` (a ``Dataset``, or a ``DatasetDict`` whose ``split`` is
            taken, ``"train"`` by default), or a Hub dataset repo id (``"owner/name"``), loaded with
            :func:`pdiff_hf.hub.load_checkpoint_dataset_from_hub` (with ``config_name``, ``cache_dir`` and
            ``hub_kwargs`` such as ``revision`` and ``token``; all are ignored for local folders).
        split: the split of a ``DatasetDict``.

    Returns the ``datasets.Dataset`` with its parameter layout (:func:`get_layout`). Raises
    :class:`CheckpointDatasetError` for a folder that is not a checkpoint dataset, a missing split or fewer than two
    checkpoints.
    """
    path = os.fspath(name_or_path)
    if not path:
        raise CheckpointDatasetError("expected a checkpoint dataset folder or Hub repo id, found an empty string")
    if os.path.isfile(path):
        raise CheckpointDatasetError(f"expected a save_to_disk folder or a Hub repo id, found the file {path!r}")
    if os.path.isdir(path):
        from .validate import check_dataset_folder

        try:  # JSON limits; data file names and links inside the folder (state.json may name ../../x.arrow)
            check_dataset_folder(Path(path), f"dataset folder {path!r}")
        except HubError as err:
            raise CheckpointDatasetError(str(err)) from None
        try:
            ds = datasets.load_from_disk(path)
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as err:
            first = first_line(err)
            raise CheckpointDatasetError(
                f"expected {path!r} to be a dataset folder written by save_to_disk, found none "
                f"({type(err).__name__}: {first})"
            ) from err
    elif path.count("/") == 1 and not path.startswith((".", "/", "~")):
        ds = load_checkpoint_dataset_from_hub(
            path, config_name, split=split or "train", cache_dir=cache_dir, **hub_kwargs
        )
    else:
        raise CheckpointDatasetError(
            f"expected an existing save_to_disk folder or a Hub repo id 'owner/name', found {path!r}, which is neither"
        )
    if isinstance(ds, datasets.DatasetDict):
        name = split or "train"
        if name not in ds:
            raise CheckpointDatasetError(f"expected a split {name!r} in {path!r}, found splits {sorted(ds)}")
        ds = ds[name]
    elif split not in (None, "train") and os.path.isdir(path):
        raise CheckpointDatasetError(f"expected a DatasetDict with split {split!r} in {path!r}, found a single Dataset")
    layout = get_layout(ds)
    dim = getattr(ds.features.get(PARAMS_COLUMN), "length", None)
    if dim is not None and dim not in (-1, layout.dim):
        raise DimensionMismatchError(
            f"{path!r}: its layout describes D={layout.dim}, its {PARAMS_COLUMN!r} column has {dim} values per row"
        )
    if len(ds) < 2:
        raise CheckpointDatasetError(
            f"expected at least 2 checkpoints in {path!r} to fit normalization statistics, found {len(ds)}"
        )
    return ds
