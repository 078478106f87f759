"""What ``PDiffPipeline.__call__`` returns: :class:`PDiffPipelineOutput`, made by :func:`postprocess` from the decoded
parameter vectors, and :class:`GeneratedModels`, the lazy sequence of working networks of ``output_type="model"``."""

import copy
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import torch
from diffusers.utils import BaseOutput
from torch import nn

from pdiff_hf.errors import LayoutMismatchError, PipelineInputError
from pdiff_hf.evaluation.recalibration import prepare_batches, recalibrate_batchnorm
from pdiff_hf.layout import ParamLayout
from pdiff_hf.peft_adapters import (
    GeneratedAdapters,  # imports peft only when adapters are built
)

from .pipeline_checks import check_peft_output

# What `output_type` may ask for. "latent" stops before the decoder; the others are made from the decoded parameters
# by `postprocess`. To add a type: name it here, add a branch to `postprocess`, and say in
# `PDiffPipelineOutput._vectors` how `state_dicts()` / `load_into()` read it.
OUTPUT_TYPES = ("pt", "np", "latent", "state_dict", "model", "peft")


def _check_index(index: Any, n: int) -> int:
    """``index`` as an int in ``[0, n)``; negative indices count from the end, as for lists."""
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -n <= index < n:
        raise PipelineInputError(f"expected a model index in [0, {n}) (or [-{n}, 0)), found {index!r}")
    return int(index) % n


class GeneratedModels(Sequence):
    """``N`` generated networks, built one at a time on access (``output_type="model"``).

    ``models[i]`` is a deep copy of the pipeline's target network with generated parameter vector ``i`` written into
    the selected tensors, in eval mode; the tensors outside the selection are the target's. Nothing is cached: every
    access builds a new module, so iterating over ``N`` large networks holds one at a time (keep a reference to a
    model to reuse it). ``models[a:b]`` is again a lazy :class:`GeneratedModels`.

    With ``recalibrate_batchnorm``, each model's BatchNorm running statistics are re-estimated on those inputs when it
    is built (:func:`pdiff_hf.evaluation.recalibration.recalibrate_batchnorm`; off by default). ``vectors`` and
    :meth:`state_dict` stay the generated parameters; only the built modules carry the recalibrated statistics.

    Args:
        target (`nn.Module`): the network the parameters are for (not modified).
        layout (`ParamLayout`): maps each vector onto the target's named tensors.
        vectors (`torch.Tensor`): ``(N, D)`` generated parameter vectors (float32).
        recalibrate_batchnorm (optional): training inputs to recalibrate on, in any form of :mod:`pdiff_hf.evaluation.data`
            (a tensor of inputs, an ``(inputs, labels)`` pair, a ``datasets.Dataset``, a DataLoader); the first
            ``recalibration_batches`` batches are read once, here, and every model is recalibrated on the same ones.
        recalibration_batches (`int` or `None`): how many batches (of 128 for indexable inputs; default 8, ``None``:
            every batch).

    Raises:
        RecalibrationError: with ``recalibrate_batchnorm``, a target without BatchNorm running statistics, no batch,
            or ``recalibration_batches`` not a positive int; raised here, before any model is built.
    """

    def __init__(
        self,
        target: nn.Module,
        layout: ParamLayout,
        vectors: torch.Tensor,
        recalibrate_batchnorm: Any = None,
        recalibration_batches: Optional[int] = 8,
    ):
        layout.check_vector(vectors)
        self.target = target
        self.layout = layout
        self.vectors = vectors if vectors.dim() == 2 else vectors[None]
        self._recalibration = None  # the prepared batches (a list of pdiff_hf.evaluation.data.Batch) when recalibrating
        if recalibrate_batchnorm is not None:
            self._recalibration = prepare_batches(target, recalibrate_batchnorm, recalibration_batches)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return GeneratedModels(self.target, self.layout, self.vectors[index], self._recalibration, None)
        vector = self.vectors[_check_index(index, len(self))]
        model = copy.deepcopy(self.target)
        self.layout.load_into(model, vector)
        if self._recalibration is not None:
            recalibrate_batchnorm(model, self._recalibration, num_batches=None)
        return model.eval()

    def __iter__(self) -> Iterator[nn.Module]:
        for i in range(len(self)):
            yield self[i]

    def state_dict(self, index: int) -> Dict[str, torch.Tensor]:
        """The partial state dict (selected tensors only) of model ``index``, without building the model."""
        return self.layout.unflatten(self.vectors[_check_index(index, len(self))])

    def __repr__(self) -> str:
        return f"GeneratedModels({len(self)} x {type(self.target).__name__}, D={self.layout.dim})"


def postprocess(
    samples: torch.Tensor,
    output_type: str,
    layout: Optional[ParamLayout] = None,
    target: Optional[nn.Module] = None,
    recalibrate_batchnorm: Any = None,
) -> Any:
    """Turn the end of sampling into what ``output_type`` asks for (the role of diffusers'
    ``VaeImageProcessor.postprocess``). ``samples`` are the final latents ``(N, C, L)`` for ``"latent"``, else the
    decoded, de-normalized parameters ``(N, D)`` (float32, CPU). ``"state_dict"`` needs ``layout``, ``"model"``
    ``layout`` and ``target``, ``"peft"`` (a :class:`~pdiff_hf.peft_adapters.GeneratedAdapters`, needs peft) a PEFT
    adapter ``layout`` and the base model it attaches to as ``target``. ``recalibrate_batchnorm``: batches for
    ``"model"``'s BatchNorm recalibration (see :class:`GeneratedModels`), prepared by the caller or not."""
    if output_type in ("latent", "pt"):
        return samples
    if output_type == "np":
        return samples.numpy()
    if output_type in ("state_dict", "model") and layout is None:
        raise LayoutMismatchError("this pipeline's autoencoder has no parameter layout in its config")
    if output_type == "state_dict":
        return [layout.unflatten(vector) for vector in samples]
    if output_type == "model":
        if target is None:
            raise PipelineInputError(
                "expected a pipeline with a target network for output_type='model', found target=None; pass "
                "target= to PDiffPipeline (or pipe.set_target(model)), or load vectors with out.load_into(model, i)"
            )
        return GeneratedModels(target, layout, samples, recalibrate_batchnorm, None)
    if output_type == "peft":
        check_peft_output(layout, target)
        return GeneratedAdapters(target, layout, samples)
    raise PipelineInputError(f"expected output_type in {OUTPUT_TYPES}, found {output_type!r}")


@dataclass
class PDiffPipelineOutput(BaseOutput):
    """
    Args:
        params: what ``output_type`` asked for, one entry per generated model (like diffusers' ``images``):
            ``"pt"``: `torch.Tensor` `(num_models, D)`, de-normalized parameter vectors (float32);
            ``"np"``: the same as a `numpy.ndarray`;
            ``"state_dict"``: a list of `num_models` partial state dicts (the selected tensors, each with its shape
            and dtype), for ``module.load_state_dict(sd, strict=False)``;
            ``"model"``: a [`GeneratedModels`], `num_models` working copies of the pipeline's target network, built
            one at a time on access (also ``out.models``);
            ``"peft"``: a [`~pdiff_hf.peft_adapters.GeneratedAdapters`]: ``adapters[i]`` is a ``PeftModel``,
            ``.save_pretrained(dir)`` writes one adapter folder per model;
            ``"latent"``: `torch.Tensor` `(num_models, C, L)`, the final latents, not decoded
            (``pipe.autoencoder.latents_to_params(latents)`` decodes them).
        layout (`ParamLayout`): how each parameter vector maps onto named tensors of the target network.
        output_type (`str`): the ``output_type`` that made ``params``.
        conditions (`torch.Tensor`, *optional*): `(num_models,)` condition id each model was generated for, from a
            conditional pipeline called with ``condition=``; ``None`` otherwise.
    """

    params: Any
    layout: Optional[ParamLayout] = None
    output_type: str = "pt"
    conditions: Optional[torch.Tensor] = None

    @property
    def models(self) -> GeneratedModels:
        """The generated networks of ``output_type="model"``: ``out.models[i]`` is a new ``nn.Module`` in eval mode."""
        if self.output_type != "model":
            raise PipelineInputError(
                f"expected an output of output_type 'model' for .models, found output_type {self.output_type!r}; "
                "call the pipeline with output_type='model' (it needs a target network)"
            )
        return self.params

    def state_dicts(self) -> List[Dict[str, torch.Tensor]]:
        """One partial state dict per generated model (only the selected tensors), for ``load_state_dict(strict=False)``."""
        if self.output_type == "state_dict":
            return list(self.params)
        return [self._layout().unflatten(p) for p in self._vectors()]

    def load_into(self, module: nn.Module, index: int = 0) -> nn.Module:
        """Write generated model ``index`` into ``module`` (in place) and return it. Negative indices count from
        the end, as for lists."""
        vectors = self._vectors()
        return self._layout().load_into(module, vectors[_check_index(index, vectors.shape[0])])

    def _vectors(self) -> torch.Tensor:
        """``params`` as a ``(num_models, D)`` tensor, for the output types that hold parameters."""
        if self.output_type == "pt":
            return self.params
        if self.output_type == "np":
            return torch.from_numpy(self.params)
        if self.output_type in ("model", "peft"):
            return self.params.vectors
        if self.output_type == "state_dict":
            return torch.stack([self._layout().flatten(sd) for sd in self.params])
        raise PipelineInputError(
            f"expected an output of parameters (output_type 'pt', 'np', 'state_dict', 'model' or 'peft'), found "
            f"output_type {self.output_type!r}; decode latents with pipe.autoencoder.latents_to_params(out.params) first"
        )

    def _layout(self) -> ParamLayout:
        if self.layout is None:
            raise LayoutMismatchError("this pipeline's autoencoder has no parameter layout in its config")
        return self.layout
