"""diffusers' loading options for a saved pipeline, as ``DiffusionPipeline.from_pretrained`` takes them: ``dtype``
(or its older name ``torch_dtype``; one dtype, or a dict per component with a ``"default"``), ``device_map`` (a
device string) and ``variant``; and the log line diffusers writes per loaded component.

Everything here is checked before any component is built: a dtype that is not a ``torch.dtype``, a dict naming a
component the pipeline does not have, a device that is not there, or a variant no weight file has.
"""

from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

import torch

from ..errors import HubError

# The logger diffusers' own pipelines report loaded components on (diffusers.pipelines.pipeline_utils): a user who
# turns diffusers' logging to INFO sees our components the same way, and diffusers' pipeline tests find the line.
LOAD_LOGGER_NAME = "diffusers.pipelines.pipeline_utils"
# device_map strategies of diffusers that place components on several devices: not implemented for this pipeline
DEVICE_MAP_STRATEGIES = ("balanced", "auto")


def resolve_dtype(dtype, torch_dtype, components: Iterable[str]) -> Union[None, torch.dtype, Dict[str, torch.dtype]]:
    """The dtype(s) to load with: ``dtype`` if given, else ``torch_dtype`` (diffusers' older name). A dict maps
    component names (and ``"default"``, for the others) to dtypes; components missing from a dict without a
    default load in float32, as in diffusers. :class:`HubError` for anything else."""
    chosen = dtype if dtype is not None else torch_dtype
    if chosen is None or isinstance(chosen, torch.dtype):
        return chosen
    if not isinstance(chosen, dict):
        raise HubError(f"expected dtype to be a torch.dtype or a dict of them, found {chosen!r}")
    known = set(components) | {"default"}
    unknown = sorted(str(k) for k in chosen if k not in known)
    if unknown:
        raise HubError(f"expected dtype keys among {sorted(known)}, found {unknown}")
    bad = {k: v for k, v in chosen.items() if not isinstance(v, torch.dtype)}
    if bad:
        raise HubError(f"expected torch.dtype values in the dtype dict, found {bad}")
    return dict(chosen)


def dtype_for(dtypes, name: str) -> Optional[torch.dtype]:
    """The dtype component ``name`` loads in (``None``: as saved)."""
    if isinstance(dtypes, dict):
        return dtypes.get(name, dtypes.get("default", torch.float32))
    return dtypes


def resolve_device_map(device_map) -> Optional[torch.device]:
    """The device every component goes to for ``device_map="cpu"`` / ``"cuda"`` / ``"cuda:1"`` / ``"mps"``
    (``None``: stay on the CPU). Like diffusers, a ``device_map`` that is not a string is a ``ValueError``; the
    multi-device strategies (``"balanced"``) and devices this machine lacks are ``NotImplementedError``."""
    if device_map is None:
        return None
    if not isinstance(device_map, str):
        raise ValueError("`device_map` must be a string.")
    supported = ["cpu"] + [kind for kind in ("cuda", "mps", "xpu") if _available(kind)]
    try:
        device = None if device_map in DEVICE_MAP_STRATEGIES else torch.device(device_map)
    except RuntimeError:
        device = None
    if device is None or device.type not in supported or not _index_exists(device):
        raise NotImplementedError(
            f"{device_map} not supported. Supported strategies are: {', '.join(supported)} (a device string; the "
            "whole pipeline goes to that device)"
        )
    return device


def _available(kind: str) -> bool:
    backend = getattr(torch, kind, None) if kind != "mps" else getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _index_exists(device: torch.device) -> bool:
    if device.type in ("cpu", "mps") or device.index is None:
        return True
    return device.index < getattr(torch, device.type).device_count()


def weight_variants(folder: Path, names: Iterable[str], variant: Optional[str]) -> Dict[str, Optional[str]]:
    """The variant each model component of ``folder`` loads: ``variant`` where its subfolder has weights of that
    variant (``diffusion_pytorch_model.<variant>.safetensors``, sharded ``…<variant>-00001-of-00002…`` or an index
    ``….safetensors.index.<variant>.json``), else none, as diffusers does. ``ValueError`` with diffusers' message
    when no component has it."""
    names = list(names)
    if variant is None:
        return {name: None for name in names}
    found = {name: _has_variant(Path(folder) / name, variant) for name in names}
    if names and not any(found.values()):
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available. (No *.{variant}.safetensors file in {', '.join(names)}.)"
        )
    return {name: variant if found[name] else None for name in names}


def _has_variant(sub: Path, variant: str) -> bool:
    if not sub.is_dir():
        return False
    for path in sub.iterdir():
        parts = path.name.split(".")
        if path.name.endswith(".safetensors") and len(parts) >= 3 and parts[-2].split("-")[0] == variant:
            return True
        if path.name.endswith(f".safetensors.index.{variant}.json"):
            return True
    return False


def log_loaded(name: str, class_name: str, source: str) -> None:
    """diffusers' per-component line, on diffusers' pipeline logger (shown at INFO)."""
    from diffusers.utils import logging

    logging.get_logger(LOAD_LOGGER_NAME).info(f"Loaded {name} as {class_name} from `{name}` subfolder of {source}.")


def place_components(components: Dict[str, Any], dtypes, device: Optional[torch.device]) -> None:
    """Cast the loaded ``nn.Module`` components to their dtype (:func:`dtype_for`) and move them to ``device``."""
    for name, component in components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        dtype = dtype_for(dtypes, name)
        # models loaded with torch_dtype already have it (casting again makes diffusers warn)
        if dtype is not None and any(t.is_floating_point() and t.dtype != dtype for t in component.state_dict().values()):
            component.to(dtype=dtype)
        if device is not None:
            component.to(device=device)
