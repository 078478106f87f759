"""Load a pipeline from a Hub repo or a local folder without running or unpickling anything from it.

Both go the same way: the folder (for a repo, a ``snapshot_download`` of its JSON and safetensors files only) is read
by pdiff_hf itself. ``model_index.json`` is used only for the class *names* of its components, which must be
``ParameterAutoencoder``, ``LatentUNet1DModel`` and a scheduler class of diffusers; the components are built from
pdiff_hf's own classes and safetensors weights. Code files (``pipeline_pdiff.py`` and the component ``.py`` files that
``trust_remote_code=True`` uses, or any module the index names) are never imported, and pickled weights (``.bin``,
``.pt``, …) are never loaded: a component that only has pickles is reported as missing its safetensors.
"""

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from torch import nn

from .. import __version__
from ..errors import HubError, PDiffError, first_line
from .repo import LIBRARY_NAME, check_repo_id, check_target
from .validate import check_folder_paths, check_no_meta_tensors, check_pipeline_folder, read_json_limited, resolve_inside

# What a pipeline download fetches: configs and safetensors. No code, no pickles.
PIPELINE_ALLOW_PATTERNS = ["model_index.json", "README.md", "*.json", "*.safetensors"]
# component name -> pdiff_hf class name it must have (None: any diffusers scheduler)
COMPONENTS = {"autoencoder": "ParameterAutoencoder", "denoiser": "LatentUNet1DModel", "scheduler": None}
# the autoencoder may also be any other autoencoder class of pdiff_hf (same interface):
# pdiff_hf.models.AUTOENCODER_MODULES names them
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _read_json_object(path: Path, folder: Path, label: str) -> dict:
    """The JSON object in ``path``; :class:`HubError` naming the file if it is not one."""
    rel = path.relative_to(folder).as_posix()
    try:  # size and nesting limited, a link out of the folder refused (pdiff_hf.hub.validate)
        obj = read_json_limited(resolve_inside(folder, rel, label), label, rel)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise HubError(f"{label}: expected {rel} to be a JSON file, found unreadable content ({err})") from None
    if not isinstance(obj, dict):
        raise HubError(f"{label}: expected {rel} to hold a JSON object, found a {type(obj).__name__}")
    return obj


def _check_safetensors(path: Path, folder: Path, label: str) -> None:
    """Read the header of the safetensors file ``path`` (cheap: no tensor is loaded); :class:`HubError` naming the
    file if it is truncated, random bytes or empty."""
    from safetensors import SafetensorError, safe_open

    rel = path.relative_to(folder).as_posix()
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (OSError, SafetensorError) as err:
        size = path.stat().st_size if path.exists() else 0
        raise HubError(
            f"{label}: expected {rel} to be a complete safetensors file, found {size} bytes that are not one ({err})"
        ) from None


def _check_component_files(folder: Path, name: str, label: str) -> None:
    """Parse every config and safetensors header of component ``name`` before anything is built."""
    sub = folder / name
    if name == "scheduler":
        _read_json_object(sub / "scheduler_config.json", folder, label)
        return
    _read_json_object(sub / "config.json", folder, label)
    for path in sorted(sub.glob("*.safetensors")):
        _check_safetensors(path, folder, label)


def _missing_component_files(folder: Path, name: str) -> list[str]:
    """Files component ``name`` lacks in ``folder`` (its config, its safetensors weights)."""
    sub = folder / name
    if name == "scheduler":
        return [] if (sub / "scheduler_config.json").is_file() else [f"{name}/scheduler_config.json"]
    missing = [] if (sub / "config.json").is_file() else [f"{name}/config.json"]
    if not sub.is_dir() or not any(p.name.endswith(".safetensors") for p in sub.iterdir()):
        pickles = sorted(p.name for p in sub.iterdir() if p.name.endswith(_PICKLE_SUFFIXES)) if sub.is_dir() else []
        if pickles:
            missing.append(f"{name}/*.safetensors (found only pickle weights {pickles}, which pdiff_hf never loads)")
        else:
            missing.append(f"{name}/diffusion_pytorch_model.safetensors")
    return missing


def load_components(
    folder: Path, label: str, skip: Collection[str] = (), torch_dtype=None, variant: str | None = None
) -> dict[str, Any]:
    """The components of the pipeline saved in ``folder`` (``label`` names it in errors) except those in ``skip``,
    built with pdiff_hf's classes from JSON configs and safetensors weights; :class:`HubError` for anything missing
    or unexpected."""
    import diffusers
    from diffusers import SchedulerMixin

    from ..models import AUTOENCODER_MODULES, LatentUNet1DModel, autoencoder_class
    from .load_options import dtype_for, log_loaded, weight_variants

    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise HubError(f"{label} lacks model_index.json: it is not a saved diffusers pipeline")
    check_folder_paths(folder, label)  # no link out of the folder, before any file is read
    index = _read_json_object(index_path, folder, label)
    wanted = [name for name in COMPONENTS if name not in skip]
    for name in wanted:  # every file is checked before any component is built
        entry = index.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[1], str):
            raise HubError(
                f"{label} lacks the {name} component: expected a {name!r} entry [library, class name] in "
                f"model_index.json, found {entry!r}"
            )
        missing = _missing_component_files(folder, name)
        if missing:
            raise HubError(f"{label} lacks the {name} component: missing {', '.join(missing)}")
        _check_component_files(folder, name, label)
    # sizes within the weights' budget, tensors named as in the weights, layout and statistics: before any allocation
    check_pipeline_folder(folder, label, index, wanted, variant=variant)
    variants = weight_variants(folder, [n for n in wanted if n != "scheduler"], variant)  # diffusers' missing-variant error
    components: dict[str, Any] = {}
    for name in sorted(wanted, key=lambda n: n != "scheduler"):  # the scheduler is cheap: its values first
        expected, entry = COMPONENTS[name], index[name]
        class_name = entry[1]  # entry[0], the library or module, is never imported
        if expected is None:
            scheduler_cls = getattr(diffusers, class_name, None)
            if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
                raise HubError(
                    f"{label}: expected a diffusers scheduler class for the scheduler, found {entry[0]}.{class_name}"
                )
            try:
                components[name] = scheduler_cls.from_pretrained(str(folder), subfolder=name)
                log_loaded(name, class_name, label)
            except (OSError, ValueError, TypeError, NotImplementedError) as err:  # values the class rejects
                first = first_line(err)
                raise HubError(
                    f"{label}: expected scheduler/scheduler_config.json to configure a {class_name}, found values it "
                    f"rejects ({type(err).__name__}: {first})"
                ) from None
            continue
        if class_name != expected and not (name == "autoencoder" and class_name in AUTOENCODER_MODULES):
            raise HubError(f"{label}: expected component {name} to be a {expected}, found {class_name}")
        kwargs = {"use_safetensors": True, "variant": variants[name]}
        if dtype_for(torch_dtype, name) is not None:
            kwargs["torch_dtype"] = dtype_for(torch_dtype, name)
        try:
            model_cls = LatentUNet1DModel if name == "denoiser" else autoencoder_class(class_name)
            components[name] = model_cls.from_pretrained(str(folder), subfolder=name, **kwargs)
            log_loaded(name, class_name, label)
        except PDiffError as err:
            raise type(err)(f"{label}, component {name}: {err}") from None
        except (OSError, ValueError) as err:  # a truncated or foreign safetensors file, a config that does not fit
            first = first_line(err)
            raise HubError(f"{label}: could not load the {name} component ({type(err).__name__}: {first})") from None
    for name in ("autoencoder", "denoiser"):
        if name in components:
            check_no_meta_tensors(components[name], label, name)
    if "target" not in skip:  # optional: the target network (a Hub mixin or plain one needs the caller's class)
        from .target import read_target_record, resolve_target

        target = resolve_target(folder, index.get("target"), read_target_record(folder, label), label, variant=variant)
        if target is not None:
            components["target"] = target
    return components


def _is_local_path(name: str) -> bool:
    return os.path.exists(name) or name.startswith(("/", ".", "~")) or name.count("/") > 1


def load_pipeline(
    pretrained_model_name_or_path: str | os.PathLike,
    pipeline_class=None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    endpoint: str | None = None,
    target_module: nn.Module | None = None,
    target_class: type | None = None,
    check_target_weights: bool = True,
    dtype=None,
    torch_dtype=None,
    device_map: str | None = None,
    variant: str | None = None,
    use_safetensors: bool | None = None,
    **overrides,
):
    """Load a :class:`~pdiff_hf.PDiffPipeline` from a local folder or a Hub repo id (``PDiffPipeline.from_pretrained``).

    A Hub repo is fetched with ``huggingface_hub.snapshot_download`` (``revision``, ``cache_dir``, ``token``,
    ``local_files_only``, ``force_download``, ``endpoint``) — JSON and safetensors files only — and then read like a
    local folder (see the module docstring). Errors of the Hub (``RepositoryNotFoundError``, ``RevisionNotFoundError``,
    ``LocalEntryNotFoundError`` when offline and not cached, …) propagate unchanged.

    Args:
        target_module: the network the parameters are for; raises :class:`LayoutMismatchError` naming the repo if
            the pipeline's parameter layout does not fit it.
        dtype / torch_dtype: the dtype of the loaded model components (``torch_dtype`` is diffusers' older name), or
            a dict per component with a ``"default"``, e.g. ``{"default": torch.float16, "denoiser": torch.bfloat16}``
            (components a dict without a default leaves out load in float32, as in diffusers). Components passed as
            keyword arguments are used as given.
        device_map: a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``): every loaded component goes there;
            diffusers' multi-device strategies (``"balanced"``) are ``NotImplementedError``.
        variant: load ``diffusion_pytorch_model.<variant>.safetensors`` (``save_pretrained(dir, variant=...)``) where
            a component has it; ``ValueError`` with diffusers' message when none has.
        Each loaded component is reported as diffusers does ("Loaded denoiser as LatentUNet1DModel from `denoiser`
        subfolder of …", INFO on the ``diffusers.pipelines.pipeline_utils`` logger).
        target_class: the class of a saved target that only the caller can build (a ``PyTorchModelHubMixin`` or
            plain ``nn.Module``: no code is imported from the repo), e.g. ``target_class=MyNet``.
        check_target_weights: with ``target=net``, fill ``net`` in place from the saved ``target/`` weights (every
            name and shape checked), and check the target against the saved ``target_fingerprint.json``
            (:class:`TargetMismatchError` naming the tensors that differ); ``False`` uses ``target=`` as given.
        overrides: components to use instead of the saved ones (``autoencoder=``, ``denoiser=``, ``scheduler=``,
            ``target=``; the saved ``target/`` is built by :func:`pdiff_hf.hub.target.resolve_target`).
    """
    from ..pipelines import PDiffPipeline

    pipeline_class = pipeline_class or PDiffPipeline
    if use_safetensors is False:
        raise HubError("expected use_safetensors=True or None, found False: pdiff_hf only loads safetensors weights")
    unknown = sorted(set(overrides) - set(COMPONENTS) - {"target"})
    if unknown:
        raise TypeError(f"unexpected keyword arguments for loading a {pipeline_class.__name__}: {unknown}")
    from .load_options import place_components, resolve_device_map, resolve_dtype

    dtypes = resolve_dtype(dtype, torch_dtype, [*COMPONENTS, "target"])
    device = resolve_device_map(device_map)
    name = os.fspath(pretrained_model_name_or_path)
    if os.path.isdir(name):
        folder, label = Path(name), f"pipeline folder {name}"
    elif _is_local_path(name):
        raise HubError(f"expected a pipeline folder or a Hub repo id 'owner/name', found no folder {name!r}")
    else:
        repo_id = check_repo_id(name, "a pipeline folder or a Hub repo id")
        label = f"model repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                force_download=force_download,
                allow_patterns=PIPELINE_ALLOW_PATTERNS,
                endpoint=endpoint,
                library_name=LIBRARY_NAME,
                library_version=__version__,
            )
        )
    from .target import check_loaded_target, read_target_record, resolve_target

    given_target = "target" in overrides
    target = overrides.pop("target", None)
    components = load_components(folder, label, skip=set(overrides) | {"target"}, torch_dtype=dtypes, variant=variant)
    record = read_target_record(folder, label)
    if not (given_target and target is None):  # target=None: load without the target network
        entry = _read_json_object(folder / "model_index.json", folder, label).get("target")
        components["target"] = resolve_target(
            folder, entry, record, label, target=target, target_class=target_class, fill=check_target_weights,
            variant=variant,
        )
    if components.get("target") is not None and not given_target:
        from .load_options import log_loaded

        log_loaded("target", type(components["target"]).__name__, label)
    place_components({k: v for k, v in components.items() if not (k == "target" and given_target)}, dtypes, device)
    pipe = pipeline_class(**{**components, **overrides})
    saved_weights = (folder / "target").is_dir() and any((folder / "target").glob("*.safetensors"))
    check_loaded_target(
        pipe, record, label, check=check_target_weights, unchecked=target is not None and not saved_weights,
        folder=None if given_target and target is None else folder,
    )  # fmt: skip
    pipe.register_to_config(_name_or_path=name)
    if target_module is not None:
        check_target(pipe.layout, target_module, label)
    return pipe
