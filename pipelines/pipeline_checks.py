"""Checks a ``PDiffPipeline`` makes on its components: that a sampling scheduler runs the forward process the
denoiser was trained with (and can step its prediction type), that a target network holds every tensor of the
parameter layout with its shape, that a base model holds the modules a PEFT adapter layout attaches to, and that the
sampling arguments (output type, generators, initial latents, step callback) fit the pipeline."""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from pdiff_hf.errors import (
    LayoutMismatchError,
    PeftLayoutError,
    PipelineInputError,
)
from pdiff_hf.layout import ParamLayout
from pdiff_hf.peft_adapters import (
    PEFT_CONFIG_KEY,
    check_adapter_base,
    is_peft_model,
    peft_config_object,
    peft_config_of,
    require_peft,
)

from .pipeline_schedulers import OBJECTIVE_KEYS, check_scheduler  # noqa: F401  (the scheduler checks live there)


def check_target(target: Optional[nn.Module], layout: Optional[ParamLayout]) -> None:
    """Raise unless ``target`` is ``None`` or an ``nn.Module`` holding every tensor of ``layout`` with its shape
    (:class:`LayoutMismatchError` naming the missing tensors and wrong shapes; :class:`PipelineInputError` for a
    target that is not an ``nn.Module``). Any module saves with the pipeline: transformers and diffusers models with
    their own ``save_pretrained``, others as safetensors in ``target/`` (see :mod:`pdiff_hf.hub.target`)."""
    if target is None:
        return
    if is_peft_model(target):
        raise PeftLayoutError(
            f"expected the base model of a PeftModel as target, found the {type(target).__name__} itself; pass "
            "target=pdiff_hf.peft_adapters.peft_target(peft_model)"
        )
    if not isinstance(target, nn.Module):
        raise PipelineInputError(
            f"expected target to be a torch.nn.Module (the network the parameters are for) or None, found "
            f"{type(target).__module__}.{type(target).__name__}"
        )
    if layout is None:
        raise LayoutMismatchError(
            f"expected an autoencoder with a parameter layout to check the target {type(target).__name__} against, "
            "found none in its config"
        )
    if peft_config_of(target) is not None:  # a base model for adapters: the layout names the adapter's tensors
        check_adapter_base(layout, target, peft_config_of(target))
        return
    try:
        layout.check_module(target)
    except LayoutMismatchError as err:
        raise LayoutMismatchError(f"target {type(target).__name__}: {err}") from None


def check_peft_output(layout: Optional[ParamLayout], target: Optional[nn.Module]) -> None:
    """Raise :class:`PeftLayoutError` unless ``output_type="peft"`` can be made: a PEFT adapter ``layout``
    (:func:`~pdiff_hf.peft_adapters.peft_layout`) and a ``target`` base model that carries the adapter config
    (:func:`~pdiff_hf.peft_adapters.peft_target`) and holds every module the adapter attaches to."""
    if layout is None:
        raise PeftLayoutError("expected an autoencoder with a parameter layout for output_type='peft', found none")
    if target is None:
        raise PeftLayoutError(
            "expected a pipeline with a target base model for output_type='peft', found target=None; pass "
            "target=peft_target(peft_model) to fit_pdiff (or pipe.set_target(...))"
        )
    config = peft_config_of(target)
    if config is None:
        raise PeftLayoutError(
            f"expected a target base model carrying its adapter config in config.{PEFT_CONFIG_KEY} for "
            f"output_type='peft', found {type(target).__name__} without one; make it with peft_target(peft_model)"
        )
    require_peft()
    peft_config_object(config)  # a config peft cannot read fails here, not when the adapters are built
    check_adapter_base(layout, target, config)


def check_output_request(
    output_type: str,
    layout: Optional[ParamLayout],
    target: Optional[nn.Module],
    recalibrate_batchnorm=None,
) -> None:
    """Raise :class:`PipelineInputError` (:class:`PeftLayoutError` for ``"peft"``) unless a pipeline with ``layout``
    and ``target`` can make ``output_type`` (already checked to be one of ``OUTPUT_TYPES``), and
    ``recalibrate_batchnorm`` is only asked for with working networks (``"model"``)."""
    if output_type in ("state_dict", "model") and layout is None:
        raise PipelineInputError(
            f"expected an autoencoder with a parameter layout for output_type {output_type!r}, found none"
        )
    if output_type == "model" and target is None:
        raise PipelineInputError(
            "expected a pipeline with a target network for output_type='model', found target=None; pass "
            "target= to PDiffPipeline (or pipe.set_target(model)), or load vectors with out.load_into(model, i)"
        )
    if output_type == "model":
        check_target(target, layout)  # the target may have been replaced after construction
    if output_type == "peft":
        check_peft_output(layout, target)
    if recalibrate_batchnorm is not None and output_type != "model":
        raise PipelineInputError(
            f"expected output_type='model' with recalibrate_batchnorm (it recalibrates built networks), found "
            f"output_type={output_type!r}"
        )


def check_noise(generator, latents, num_models: int, latent_shape: Tuple[int, int]) -> None:
    """Raise :class:`PipelineInputError` unless ``generator`` is ``None``, a ``torch.Generator`` or one per model,
    and ``latents`` is ``None`` or a float tensor ``(num_models, *latent_shape)``."""
    if isinstance(generator, list):
        if len(generator) != num_models:
            raise PipelineInputError(
                f"expected one generator per model ({num_models}), found a list of {len(generator)} generators"
            )
        not_generators = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if not_generators:
            raise PipelineInputError(f"expected a list of torch.Generator, found {not_generators}")
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise PipelineInputError(
            f"expected generator to be a torch.Generator or a list of them, found {type(generator).__name__}"
        )
    if latents is not None:
        shape = (num_models, *latent_shape)
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            found = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise PipelineInputError(f"expected latents as a floating-point torch.Tensor, found {found}")
        if tuple(latents.shape) != shape:
            raise PipelineInputError(
                f"expected latents of shape {shape} (num_models, C, L), found {tuple(latents.shape)}"
            )


def check_callback(callback, names, allowed: Sequence[str]) -> None:
    """Raise :class:`PipelineInputError` unless ``callback`` is ``None`` or callable and ``names`` lists tensors
    from ``allowed`` (the pipeline's ``_callback_tensor_inputs``)."""
    if callback is not None and not callable(callback):
        raise PipelineInputError(f"expected callback_on_step_end to be callable, found {type(callback).__name__}")
    names = names or []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise PipelineInputError(f"expected callback_on_step_end_tensor_inputs to be a list of names, found {names!r}")
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise PipelineInputError(f"expected callback_on_step_end_tensor_inputs within {list(allowed)}, found {unknown}")
