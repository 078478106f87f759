"""LoRA (and other PEFT) adapters as p-diff parameters: the layout, the base model, and adapter folders.

The optional extra ``pdiff_hf[peft]`` installs ``peft``. The generated vector is the adapter itself::

    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    layout = peft_layout(peft_model)          # names as get_peft_model_state_dict gives them (no adapter name)
    callback = PDiffCheckpointCallback(layout, save_steps=1)        # records peft_model's adapter while it trains
    ...
    pipe = fit_pdiff(checkpoint_params(callback.dataset()), layout, target=peft_target(peft_model))
    out = pipe(num_models=50, output_type="peft")
    out.params.save_pretrained("adapters")    # adapters/adapter_000/{adapter_config.json, adapter_model.safetensors}
    model = PeftModel.from_pretrained(copy.deepcopy(pipe.target), "adapters/adapter_000")   # == out.params[0]

The pipeline's target is the *base* model (a transformers ``PreTrainedModel``, saved in ``target/`` like any target):
:func:`peft_target` copies it out of the PEFT model without the adapter layers and stores the adapter config (JSON)
in its ``config`` under :data:`PEFT_CONFIG_KEY`, so it is saved, pushed and loaded with the pipeline as part of the
target's ``config.json``. Adapter folders are JSON and safetensors only, as ``PeftModel.save_pretrained`` writes them.
"""

from __future__ import annotations

import copy
import json
import numbers
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from .errors import PeftLayoutError, PipelineInputError
from .layout import ParamLayout, ParamSpec, _dtype_name

# key of the target's config that holds the adapter config (a JSON object, as in adapter_config.json)
PEFT_CONFIG_KEY = "pdiff_peft_config"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# every name of get_peft_model_state_dict(PeftModel) starts with this: PeftModel.base_model (tuner).model (the base)
BASE_PREFIX = "base_model.model."
_LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


def require_peft():
    """The ``peft`` module; ``ImportError`` naming the extra to install when it is missing."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            "expected the peft package for LoRA adapters, found it missing: pip install 'pdiff-hf[peft]'"
        ) from err
    return peft


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (never imports peft: without it loaded there is none)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _adapter_name(model, adapter_name: Optional[str]) -> str:
    if not is_peft_model(model):
        raise PeftLayoutError(f"expected a peft.PeftModel, found {type(model).__module__}.{type(model).__name__}")
    name = adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise PeftLayoutError(f"expected an adapter name in {sorted(model.peft_config)}, found {name!r}")
    return name


# ------------------------------------------------------------------------------------------------------- layout
def peft_state_dict(model, adapter_name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The adapter's tensors as ``get_peft_model_state_dict`` gives them (and ``save_pretrained`` saves them)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=_adapter_name(model, adapter_name))


def peft_layout(model, adapter_name: Optional[str] = None) -> ParamLayout:
    """The :class:`ParamLayout` of an adapter of a ``PeftModel`` (the active one by default): every tensor of
    ``get_peft_model_state_dict``, in its order, named as there (``base_model.model.<module>.lora_A.weight``, and for
    ``modules_to_save`` such as a classifier head ``base_model.model.classifier.weight``)."""
    state = peft_state_dict(model, adapter_name)
    specs = [ParamSpec(k, tuple(v.shape), _dtype_name(v.dtype)) for k, v in state.items() if v.is_floating_point()]
    if not specs:
        raise PeftLayoutError(f"expected an adapter with floating-point tensors, found {sorted(state)}")
    return ParamLayout(tuple(specs))


def peft_parameter_names(model, layout: Optional[ParamLayout] = None, adapter_name: Optional[str] = None) -> Dict[str, str]:
    """``{layout name: the PeftModel's own parameter name}``, e.g. ``...query.lora_A.weight`` ->
    ``...query.lora_A.default.weight`` and ``...classifier.weight`` -> ``...classifier.modules_to_save.default.weight``.
    Found by tensor identity (the state dict shares storage with the parameters), not by string rules."""
    layout = layout or peft_layout(model, adapter_name)
    state = peft_state_dict(model, adapter_name)
    owners = {(p.data_ptr(), tuple(p.shape)): n for n, p in model.named_parameters()}
    mapping, missing = {}, []
    for name in layout.names:
        tensor = state.get(name)
        owner = owners.get((tensor.data_ptr(), tuple(tensor.shape))) if tensor is not None else None
        if owner is None:
            missing.append(name)
        else:
            mapping[name] = owner
    if missing:
        raise PeftLayoutError(f"expected every layout tensor to be a parameter of the PeftModel, found {missing} not")
    return mapping


def peft_module_layout(model, layout: Optional[ParamLayout] = None, adapter_name: Optional[str] = None) -> ParamLayout:
    """The same layout (order, shapes, vectors) named by the PeftModel's own parameters: for
    ``evaluate_parameters(peft_model, peft_module_layout(peft_model), vectors, data)`` and ``analyze_novelty``,
    which write vectors into the module (batched with vmap)."""
    layout = layout or peft_layout(model, adapter_name)
    names = peft_parameter_names(model, layout, adapter_name)
    return ParamLayout(tuple(ParamSpec(names[s.name], s.shape, s.dtype, s.kind) for s in layout.specs))


# ------------------------------------------------------------------------------------------- config and target
def _json_value(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def peft_config_dict(model, adapter_name: Optional[str] = None) -> Dict[str, Any]:
    """The adapter config as the JSON object ``adapter_config.json`` holds (sets as sorted lists)."""
    config = model.peft_config[_adapter_name(model, adapter_name)]
    return json.loads(json.dumps(config.to_dict(), default=_json_value))


def peft_target(model, adapter_name: Optional[str] = None) -> nn.Module:
    """The base model of a ``PeftModel`` for a pipeline's ``target``: a copy without adapter layers (the original
    modules of ``modules_to_save``, not their trained copies), with the adapter config in
    ``config.pdiff_peft_config``. ``model`` is not modified."""
    from peft.utils import ModulesToSaveWrapper

    config = peft_config_dict(model, adapter_name)
    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent), child, module.original_module)
    base = clone.unload()
    setattr(base.config, PEFT_CONFIG_KEY, config)  # saved in config.json with the target
    return base.eval()


def peft_config_of(target: Any) -> Optional[Dict[str, Any]]:
    """The adapter config a target base model carries (see :func:`peft_target`), or ``None``."""
    value = getattr(getattr(target, "config", None), PEFT_CONFIG_KEY, None)
    return dict(value) if isinstance(value, dict) else None


def peft_config_object(config: Dict[str, Any]):
    """The ``peft.PeftConfig`` (``LoraConfig`` …) of an adapter config dict; :class:`PeftLayoutError` if peft
    cannot read it."""
    from peft import PeftConfig

    try:
        return PeftConfig.from_peft_type(**config)
    except (TypeError, ValueError, KeyError) as err:
        raise PeftLayoutError(f"expected a PEFT adapter config, found one peft cannot read ({err})") from None


def check_adapter_base(layout: ParamLayout, base: nn.Module, config: Dict[str, Any]) -> None:
    """Raise :class:`PeftLayoutError` unless ``base`` holds every module ``layout``'s adapter tensors attach to:
    for LoRA names ``base_model.model.<module>.lora_A.weight`` a module ``<module>`` (for ``nn.Linear`` with
    matching in/out features), for other names (``modules_to_save``) the tensor itself with its shape. Needs no
    peft (a pipeline with a LoRA target loads without it)."""
    missing, wrong = [], []
    modules = dict(base.named_modules())
    tensors = dict(base.named_parameters())
    tensors.update(dict(base.named_buffers()))
    for spec in layout.specs:
        if not spec.name.startswith(BASE_PREFIX):
            raise PeftLayoutError(
                f"expected adapter tensor names as get_peft_model_state_dict gives them (starting with "
                f"{BASE_PREFIX!r}), found {spec.name!r}"
            )
        name = spec.name[len(BASE_PREFIX) :]
        part = next((p for p in _LORA_PARTS if p in name), None)
        if part is None:  # a module_to_save tensor
            if name not in tensors:
                missing.append(name)
            elif tuple(tensors[name].shape) != spec.shape:
                wrong.append(f"{name}: adapter {list(spec.shape)}, base {list(tensors[name].shape)}")
            continue
        module_name = name.split(part)[0]
        module = modules.get(module_name)
        if module is None:
            missing.append(module_name)
        elif isinstance(module, nn.Linear) and part in (".lora_A.", ".lora_B."):
            expected = module.in_features if part == ".lora_A." else module.out_features
            found = spec.shape[1] if part == ".lora_A." else spec.shape[0]
            if len(spec.shape) != 2 or found != expected:
                wrong.append(f"{name}: adapter {list(spec.shape)}, base Linear {module.in_features}->{module.out_features}")
    if missing or wrong:
        raise PeftLayoutError(
            f"expected the base model {type(base).__name__} to hold the modules the adapter "
            f"(target_modules={config.get('target_modules')}) attaches to, found "
            + (f"missing {sorted(set(missing))}" if missing else "")
            + ("; " if missing and wrong else "")
            + (f"shape mismatch {wrong}" if wrong else "")
        )


def build_peft_model(base: nn.Module, config: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> nn.Module:
    """A ``PeftModel`` on a copy of ``base`` with adapter ``state_dict`` loaded as ``PeftModel.from_pretrained``
    loads it (same class, ``set_peft_model_state_dict``, inference mode), in eval mode. Leaves the global torch
    random state as it was (adapter initialization draws from it before the weights are overwritten)."""
    from peft import get_peft_model, set_peft_model_state_dict

    peft_config = peft_config_object({**config, "inference_mode": True})
    with torch.random.fork_rng(devices=[]):
        model = get_peft_model(copy.deepcopy(base), peft_config)
    result = set_peft_model_state_dict(model, state_dict)
    unexpected = [k for k in result.unexpected_keys if any(p in k for p in _LORA_PARTS)]
    if unexpected:
        raise PeftLayoutError(f"expected adapter tensors that fit the base model, found unused {unexpected}")
    return model.eval()


# ------------------------------------------------------------------------------------------------ adapter folders
def save_adapter(folder: Union[str, Path], config: Dict[str, Any], state_dict: Dict[str, torch.Tensor]) -> Path:
    """Write ``folder/adapter_config.json`` and ``folder/adapter_model.safetensors`` (the files of
    ``PeftModel.save_pretrained``; ``PeftModel.from_pretrained(base, folder)`` loads them)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def load_adapter(folder: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """``(config, state_dict)`` of an adapter folder, from JSON and safetensors only (no pickle is read)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [n for n in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise PeftLayoutError(f"expected an adapter folder with {missing}, found {folder} without them")
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    return config, load_file(str(folder / ADAPTER_WEIGHTS_NAME))


class GeneratedAdapters(Sequence):
    """``N`` generated adapters (``output_type="peft"``); each ``adapters[i]`` is built on access.

    ``adapters[i]``: a ``PeftModel`` on a copy of the base model with adapter ``i``, in eval mode;
    ``adapters.state_dict(i)``: its tensors named as in ``adapter_model.safetensors``;
    ``adapters.save_pretrained(dir)``: ``dir/adapter_000/``, … one adapter folder each.

    Args:
        target (`nn.Module`): the base model, carrying the adapter config (:func:`peft_target`); not modified.
        layout (`ParamLayout`): the adapter layout (:func:`peft_layout`).
        vectors (`torch.Tensor`): ``(N, D)`` generated adapters (float32).
    """

    def __init__(self, target: nn.Module, layout: ParamLayout, vectors: torch.Tensor):
        config = peft_config_of(target)
        if config is None:
            raise PeftLayoutError(
                f"expected a base model carrying its adapter config in config.{PEFT_CONFIG_KEY} (made by "
                f"peft_target(peft_model)), found {type(target).__name__} without one"
            )
        layout.check_vector(vectors)
        self.target, self.layout, self.config = target, layout, config
        self.vectors = vectors if vectors.dim() == 2 else vectors[None]

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def _index(self, index: Any) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -n <= index < n:
            raise PipelineInputError(f"expected an adapter index in [0, {n}) (or [-{n}, 0)), found {index!r}")
        return int(index) % n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return GeneratedAdapters(self.target, self.layout, self.vectors[index])
        return build_peft_model(self.target, self.config, self.state_dict(index))

    def __iter__(self) -> Iterator[nn.Module]:
        for i in range(len(self)):
            yield self[i]

    def state_dict(self, index: int) -> Dict[str, torch.Tensor]:
        """Adapter ``index`` as ``get_peft_model_state_dict`` names it, without building a model."""
        return self.layout.unflatten(self.vectors[self._index(index)])

    def save_pretrained(self, save_directory: Union[str, Path]) -> List[Path]:
        """Write one adapter folder per adapter, ``save_directory/adapter_000`` … (``adapter_config.json`` +
        ``adapter_model.safetensors``); returns their paths in order."""
        width = max(3, len(str(len(self) - 1)))
        return [
            save_adapter(Path(save_directory) / f"adapter_{i:0{width}d}", self.config, self.state_dict(i))
            for i in range(len(self))
        ]

    def __repr__(self) -> str:
        return f"GeneratedAdapters({len(self)} x {self.config.get('peft_type')} on {type(self.target).__name__}, D={self.layout.dim})"
