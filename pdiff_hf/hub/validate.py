"""Checks of a folder read from disk or the Hub, done before anything in it is built or allocated.

A pulled repo must not be able to take the loading process down or load half-filled, so :mod:`pdiff_hf.hub.load`,
:mod:`pdiff_hf.hub.target` and :func:`pdiff_hf.hub.datasets.load_checkpoint_dataset` call these first:

* **paths** (:func:`check_folder_paths`, :func:`resolve_inside`; these readers live in :mod:`.safe_files`): every file and folder of the folder resolves inside
  it; a symlink or a name leaving it (``../x``, an absolute path) is a :class:`HubError`. A Hub snapshot's files
  are links into the same repo's ``blobs/`` folder of the cache, and only there.
* **JSON** (:func:`read_json_limited`): at most :data:`MAX_JSON_BYTES` bytes and :data:`MAX_JSON_DEPTH` levels of
  nesting (checked on the text before parsing: a 200,000-deep ``[[[[…`` is a HubError, not a ``RecursionError``).
* **sizes** (:func:`check_model_component`): every integer of a model's config is a count or a size, so it is
  >= 0 and at most the number of values the component's safetensors file holds (its header says it; no tensor is
  read): a config may not ask for more than the file holds. Timestep counts are at most
  :data:`~pdiff_hf.training.config_checks.MAX_TRAIN_TIMESTEPS`; floats are finite.
* **tensors**: the model is built with empty (meta) weights, which allocates nothing of size, and its state dict is
  compared with the file's header: a tensor missing, extra or of another shape is a HubError (never a ``meta``
  tensor after loading, :func:`check_no_meta_tensors`).
* **consistency**: ``param_layout.json`` and the autoencoder's ``param_layout`` describe ``D = in_dim``; the
  denoiser's ``(in_channels, sample_length)`` equals the autoencoder's latent shape; ``norm_std`` is positive and
  finite and ``norm_mean`` finite.
"""

import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..errors import HubError, first_line
from ..training.config_checks import MAX_TRAIN_TIMESTEPS

from .safe_files import (  # noqa: F401  (re-exported: validate's readers)
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    _inside,
    allowed_roots,
    check_folder_paths,
    json_depth,
    read_json_limited,
    resolve_inside,
    safetensors_header,
    value_count,
    weight_files,
)

_TIMESTEP_KEYS = ("num_train_timesteps",)


# ------------------------------------------------------------------------------------------------ model configs
def _ints(value: Any) -> Iterable[int]:
    """Every int (not bool) in a JSON value, through lists (dicts are not descended: they are not sizes)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _ints(item)


def check_config_budget(config: Dict[str, Any], budget: int, rel: str, label: str,
                        skip: Iterable[str] = ()) -> None:  # fmt: skip
    """Every integer of ``config`` (a model's JSON config, lists included) is in ``[0, budget]`` — timestep counts
    in ``[2, MAX_TRAIN_TIMESTEPS]`` — and every float is finite; :class:`HubError` naming the key otherwise."""
    skip = set(skip)
    for key, value in config.items():
        if key.startswith("_") or key in skip:
            continue
        if key in _TIMESTEP_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_TRAIN_TIMESTEPS:
                raise HubError(
                    f"{label}: expected {key} in {rel} to be an integer in [2, {MAX_TRAIN_TIMESTEPS}], found {value!r}"
                )
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise HubError(f"{label}: expected {key} in {rel} to be finite, found {value!r}")
        for number in _ints(value):
            if not 0 <= number <= budget:
                raise HubError(
                    f"{label}: expected {key} in {rel} to be in [0, {budget}] (a size no larger than the {budget} "
                    f"values its safetensors weights hold), found {value!r}"
                )


def _layout_dim(param_layout: Any, what: str, label: str) -> int:
    from ..layout import ParamLayout

    try:
        return ParamLayout.from_list(param_layout).dim
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HubError(f"{label}: expected {what} to be a parameter layout, found one that is not ({err})") from None


def check_layout_file(folder: Path, config: Dict[str, Any], label: str, roots=None) -> None:
    """``param_layout.json`` (when the folder has one) and the autoencoder config's ``param_layout`` describe
    ``D = in_dim`` and the same tensors."""
    in_dim = config.get("in_dim")
    layout = config.get("param_layout")
    if layout is not None:
        dim = _layout_dim(layout, "param_layout in autoencoder/config.json", label)
        if dim != in_dim:
            raise HubError(
                f"{label}: expected the autoencoder's param_layout to describe D = in_dim = {in_dim}, found D = {dim}"
            )
    path = Path(folder) / "param_layout.json"
    if not (path.exists() or path.is_symlink()):
        return
    document = read_json_limited(resolve_inside(folder, "param_layout.json", label, roots), label, "param_layout.json")
    listed = document.get("param_layout") if isinstance(document, dict) else None
    dim = _layout_dim(listed, "param_layout.json", label)
    if dim != in_dim:
        raise HubError(f"{label}: expected param_layout.json to describe D = in_dim = {in_dim} of the autoencoder, "
                       f"found D = {dim}")  # fmt: skip
    if layout is not None:
        from ..layout import ParamLayout

        if ParamLayout.from_list(listed) != ParamLayout.from_list(layout):
            raise HubError(f"{label}: expected param_layout.json to list the tensors of the autoencoder's "
                           "param_layout, found other tensors")  # fmt: skip


def empty_model(model_cls: type, config: Dict[str, Any], label: str, name: str):
    """``model_cls`` built from ``config`` with empty (meta) parameters: nothing of the weights' size allocated."""
    from accelerate import init_empty_weights

    from ..errors import PDiffError

    try:
        # parameters on meta; buffers (a few vectors of D values, D within the file's budget) are real, since
        # index arithmetic in some constructors cannot run on meta tensors
        with init_empty_weights(include_buffers=False):
            return model_cls.from_config(config)
    except PDiffError as err:
        raise type(err)(f"{label}, component {name}: {err}") from None
    except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as err:
        first = first_line(err)
        raise HubError(f"{label}: expected {name}/config.json to configure a {model_cls.__name__}, found values it "
                       f"rejects ({type(err).__name__}: {first})") from None  # fmt: skip


def compare_shapes(expected: Dict[str, Tuple[int, ...]], found: Dict[str, Tuple[int, ...]], what: str, label: str,
                   allow_missing: Iterable[str] = ()) -> None:  # fmt: skip
    """:class:`HubError` listing tensors the model needs that ``found`` lacks, extra ones, and shape mismatches."""
    allow = set(allow_missing)
    missing = sorted(set(expected) - set(found) - allow)
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))

    def few(keys: List[str]) -> str:
        return ", ".join(keys[:5]) + (f", … ({len(keys)} in all)" if len(keys) > 5 else "")

    if missing:
        raise HubError(f"{label}: expected {what} to hold every tensor of the model, found {len(missing)} missing "
                       f"({few(missing)})")  # fmt: skip
    if extra:
        raise HubError(f"{label}: expected {what} to hold only tensors of the model, found {len(extra)} extra "
                       f"({few(extra)})")  # fmt: skip
    if wrong:
        k = wrong[0]
        raise HubError(f"{label}: expected {what} tensor {k} of shape {list(expected[k])}, found "
                       f"{list(found[k])}" + (f" ({len(wrong)} tensors differ)" if len(wrong) > 1 else ""))  # fmt: skip


def _check_statistics(paths: List[Path], label: str, name: str) -> None:
    """``norm_std`` positive and finite, ``norm_mean`` finite (the autoencoder's normalization statistics)."""
    import torch
    from safetensors import safe_open

    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            for key, positive in (("norm_std", True), ("norm_mean", False)):
                if key not in keys:
                    continue
                values = f.get_tensor(key).float()
                bad = ~torch.isfinite(values) | ((values <= 0) if positive else torch.zeros_like(values, dtype=torch.bool))
                if bool(bad.any()):
                    first = int(bad.nonzero()[0, 0])
                    wanted = "positive and finite" if positive else "finite"
                    raise HubError(f"{label}: expected {name} {key} to be {wanted}, found {float(values[first])} at "
                                   f"index {first} ({int(bad.sum())} bad values)")  # fmt: skip


def check_model_component(folder: Path, name: str, model_cls: type, label: str,
                          latent_shape: Optional[Tuple[int, int]] = None, variant: Optional[str] = None):  # fmt: skip
    """Check model component ``name`` (``autoencoder`` or ``denoiser``) of the pipeline folder ``folder`` without
    building it: config within JSON limits and the weights' value budget, layout consistent, the state dict of an
    empty ``model_cls`` equal in names and shapes to the weights' header, statistics positive and finite; a denoiser
    against the autoencoder's ``latent_shape``. Returns the empty (meta) model."""
    folder = Path(folder)
    roots = allowed_roots(folder)
    rel = f"{name}/config.json"
    config = read_json_limited(resolve_inside(folder, rel, label, roots), label, rel)
    if not isinstance(config, dict):
        raise HubError(f"{label}: expected {rel} to hold a JSON object, found a {type(config).__name__}")
    paths = weight_files(folder / name, label, variant, roots=roots)
    shapes = safetensors_header(paths, label)
    check_config_budget(config, value_count(shapes), rel, label)
    if "param_layout" in config or "in_dim" in config:
        check_layout_file(folder, config, label, roots)
    if latent_shape is not None and "sample_length" in config:
        found = (config.get("in_channels"), config.get("sample_length"))
        if found != tuple(latent_shape):
            raise HubError(f"{label}: expected the {name}'s (in_channels, sample_length) to equal the autoencoder's "
                           f"latent shape {tuple(latent_shape)}, found {found}")  # fmt: skip
    model = empty_model(model_cls, config, label, name)
    what = f"{name}/{paths[0].name}" if len(paths) == 1 else f"{name}/*.safetensors"
    compare_shapes({k: tuple(t.shape) for k, t in model.state_dict().items()}, shapes, what, label)
    _check_statistics(paths, label, name)
    return model


def check_pipeline_folder(folder: Path, label: str, index: Dict[str, Any], wanted: Iterable[str],
                          variant: Optional[str] = None) -> None:  # fmt: skip
    """Everything :func:`pdiff_hf.hub.load.load_components` can check before building a component: paths inside
    the folder, the scheduler's counts, and each model component of ``wanted`` (:func:`check_model_component`).
    A component whose class ``model_index.json`` names is not a pdiff_hf model is left to the loader, which refuses
    it."""
    import importlib

    from diffusers import ModelMixin

    from ..errors import PDiffError

    folder = Path(folder)
    check_folder_paths(folder, label)
    wanted = list(wanted)
    if "scheduler" in wanted:
        check_scheduler_config(folder, label)
    models = importlib.import_module("pdiff_hf.models")
    latent_shape = None
    for name in ("autoencoder", "denoiser"):
        if name not in wanted:
            continue
        entry = index.get(name)
        class_name = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
        if name == "denoiser":
            model_cls = models.LatentUNet1DModel if class_name == "LatentUNet1DModel" else None
        else:
            try:
                model_cls = models.autoencoder_class(class_name)  # imports nothing outside pdiff_hf's autoencoders
            except (PDiffError, TypeError):
                model_cls = None
        if not (isinstance(model_cls, type) and issubclass(model_cls, ModelMixin)):
            continue  # the loader refuses the class itself
        model = check_model_component(folder, name, model_cls, label, latent_shape, variant)
        if name == "autoencoder":
            latent_shape = tuple(model.latent_shape)


def check_scheduler_config(folder: Path, label: str) -> None:
    """The scheduler's config: ``num_train_timesteps`` in ``[2, MAX_TRAIN_TIMESTEPS]`` and no other integer (solver
    order, offsets, ``trained_betas``' length) above that either, before the scheduler allocates its tables."""
    rel = "scheduler/scheduler_config.json"
    config = read_json_limited(resolve_inside(folder, rel, label), label, rel)
    if not isinstance(config, dict):
        raise HubError(f"{label}: expected {rel} to hold a JSON object, found a {type(config).__name__}")
    for key, value in config.items():
        if key in _TIMESTEP_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_TRAIN_TIMESTEPS:
                raise HubError(f"{label}: expected {key} in {rel} to be an integer in [2, {MAX_TRAIN_TIMESTEPS}], "
                               f"found {value!r}")  # fmt: skip
        elif isinstance(value, list) and len(value) > MAX_TRAIN_TIMESTEPS:
            raise HubError(f"{label}: expected {key} in {rel} to have at most {MAX_TRAIN_TIMESTEPS} entries, found "
                           f"{len(value)}")  # fmt: skip
        else:
            for number in _ints(value):
                if abs(number) > MAX_TRAIN_TIMESTEPS:
                    raise HubError(f"{label}: expected {key} in {rel} to be at most {MAX_TRAIN_TIMESTEPS} in size, "
                                   f"found {number}")  # fmt: skip


def check_target_config(folder: Path, label: str) -> None:
    """The target's ``target/config.json`` within JSON limits and its integers (sizes, counts; token ids excepted)
    no larger than the number of values its safetensors weights hold (all ``target/*.safetensors``, headers only),
    before the target class builds anything from it."""
    folder = Path(folder)
    roots = allowed_roots(folder)
    rel = "target/config.json"
    config = read_json_limited(resolve_inside(folder, rel, label, roots), label, rel)
    if not isinstance(config, dict):
        raise HubError(f"{label}: expected {rel} to hold a JSON object, found a {type(config).__name__}")
    paths = [resolve_inside(folder, f"target/{p.name}", label, roots) for p in sorted((folder / "target").glob("*.safetensors"))]
    # token ids of a transformers config are indices into a vocabulary, not sizes
    skip = [k for k in config if k.endswith(("_token_id", "_token_ids"))]
    check_config_budget(config, value_count(safetensors_header(paths, label)), rel, label, skip=skip)


def check_no_meta_tensors(model, label: str, name: str) -> None:
    """:class:`HubError` if any parameter or buffer of a loaded ``model`` is still on the ``meta`` device."""
    left = [key for key, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise HubError(f"{label}: expected every tensor of the {name} loaded from its weights, found {len(left)} left "
                       f"unloaded ({', '.join(left[:5])})")  # fmt: skip


# ------------------------------------------------------------------------------------------------ datasets
def check_dataset_folder(path: Path, label: str) -> None:
    """A ``save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict`` of them): JSON files within limits, split and
    data file names (``state.json``'s ``_data_files``) plain names resolving inside the folder, no link leaving
    it."""
    path = Path(path)
    check_folder_paths(path, label)
    roots = allowed_roots(path)
    splits = [path]
    if (path / "dataset_dict.json").exists():
        document = read_json_limited(resolve_inside(path, "dataset_dict.json", label, roots), label, "dataset_dict.json")
        names = document.get("splits") if isinstance(document, dict) else None
        if not isinstance(names, list):
            raise HubError(f"{label}: expected dataset_dict.json to list its splits, found {names!r}")
        for split in names:
            if not isinstance(split, str) or "/" in split or split in ("", ".", ".."):
                raise HubError(f"{label}: expected a split name in dataset_dict.json, found {split!r}")
        splits = [resolve_inside(path, split, label, roots) for split in names]
    for folder in splits:
        prefix = "" if folder == path else f"{folder.name}/"
        for rel in ("state.json", "dataset_info.json"):
            if (folder / rel).exists() or (folder / rel).is_symlink():
                read_json_limited(resolve_inside(path, prefix + rel, label, roots), label, prefix + rel)
        if not (folder / "state.json").exists():
            continue
        state = read_json_limited(folder / "state.json", label, prefix + "state.json")
        files = state.get("_data_files") if isinstance(state, dict) else None
        if not isinstance(files, list):
            raise HubError(f"{label}: expected {prefix}state.json to list _data_files, found {files!r}")
        for entry in files:
            name = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
                raise HubError(
                    f"{label}: expected a data file name inside the dataset folder in {prefix}state.json, found "
                    f"{name!r}"
                )
            resolve_inside(path, prefix + name, label, roots)


# ------------------------------------------------------------------------------------------------ plain model folders
def check_model_folder(folder: Path, what: str) -> None:
    """A ``save_pretrained`` folder of one model (``config.json`` + safetensors weights), as the CLI's ``--target``:
    no link out of it, a config within JSON limits and the weights' value budget, and safetensors weights — a folder
    with only pickled weights (``.bin``, ``.pt``) is a :class:`HubError`, since pickles are never read."""
    folder = Path(folder)
    check_folder_paths(folder, what)
    weights = sorted(p.name for p in folder.glob("*.safetensors"))
    if not weights:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise HubError(f"{what}: expected safetensors weights in {folder}, found {found} (pickled weights such as "
                       ".bin are never loaded)")  # fmt: skip
    config = read_json_limited(resolve_inside(folder, "config.json", what), what, "config.json")
    if not isinstance(config, dict):
        raise HubError(f"{what}: expected config.json to hold a JSON object, found a {type(config).__name__}")
    shapes = safetensors_header([resolve_inside(folder, name, what) for name in weights], what)
    skip = [k for k in config if k.endswith(("_token_id", "_token_ids"))]
    check_config_budget(config, value_count(shapes), "config.json", what, skip=skip)


def load_model_folder(model_cls: type, folder: Path, what: str):
    """``model_cls.from_pretrained(folder, use_safetensors=True)`` after :func:`check_model_folder`; never a
    pickle. :class:`HubError` naming ``what`` when the folder does not hold a ``model_cls``."""
    check_model_folder(folder, what)
    try:
        return model_cls.from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        first = first_line(err, type(err).__name__)
        raise HubError(f"{what}: expected a saved {model_cls.__name__} in {folder}, found one it cannot load "
                       f"({first})") from None  # fmt: skip
