"""Hand-written permutation specs where derivation is unsafe (residual connections: transformers'
``ResNetForImageClassification``, its residual streams tied), and :func:`permutation_spec`, which picks the
hand-written spec of a model or derives one (:mod:`.derived_spec`)."""

from typing import Any, Dict, List, Optional

from torch import nn

from ..errors import AlignmentError

from .derived_spec import spec_from_module
from .spec import PermutationSpec


# -------------------------------------------------------------------------------------------- hand-written specs
def resnet_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of transformers' ``ResNetForImageClassification`` (basic or bottleneck layers).

    Groups: one per convolution inside a residual layer (its output channels, its BatchNorm, the next convolution's
    input channels), and one per *residual stream*: the channels added together by ``hidden_state += residual``
    share one permutation. A stream starts at the stem (``resnet.embedder``) and at every layer with a shortcut
    projection (``...layers.j.shortcut``: its 1x1 convolution and BatchNorm, and the layer's last convolution); a
    layer with an identity shortcut adds into the stream it reads. The classifier's input axis is the last stream.
    With ``output_hidden_states=True`` the hidden states of an aligned model come back permuted; logits are
    unchanged.

    Raises:
        AlignmentError: ``model`` is not a ``ResNetForImageClassification``, has a grouped convolution or an
            activation with parameters, or has tensors the spec does not know.
    """
    from transformers import ResNetForImageClassification
    from transformers.models.resnet.modeling_resnet import ResNetConvLayer, ResNetShortCut

    if not isinstance(model, ResNetForImageClassification):
        raise AlignmentError(f"expected a transformers ResNetForImageClassification, found {type(model).__name__}")
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    axes: Dict[str, List[Optional[str]]] = {}

    def conv_layer(prefix: str, layer: nn.Module, in_group: Optional[str], out_group: str, kind=ResNetConvLayer):
        if not isinstance(layer, kind) or layer.convolution.groups != 1:
            raise AlignmentError(f"expected an ungrouped {kind.__name__} at {prefix}, found {layer!r}")
        act = getattr(layer, "activation", None)
        if act is not None and any(True for _ in act.parameters()):
            raise AlignmentError(f"expected an activation without parameters at {prefix}, found {act!r}")
        axes[f"{prefix}.convolution.weight"] = [out_group, in_group, None, None]
        for t in ("weight", "bias", "running_mean", "running_var"):
            axes[f"{prefix}.normalization.{t}"] = [out_group]

    stream = "resnet.embedder"
    conv_layer("resnet.embedder.embedder", model.resnet.embedder.embedder, None, stream)
    for s, stage in enumerate(model.resnet.encoder.stages):
        for j, layer in enumerate(stage.layers):
            prefix = f"resnet.encoder.stages.{s}.layers.{j}"
            if isinstance(layer.shortcut, ResNetShortCut):
                new_stream = f"{prefix}.shortcut"
                conv_layer(f"{prefix}.shortcut", layer.shortcut, stream, new_stream, kind=ResNetShortCut)
            elif isinstance(layer.shortcut, nn.Identity):
                new_stream = stream
            else:
                raise AlignmentError(f"expected a ResNetShortCut or nn.Identity at {prefix}.shortcut, found {layer.shortcut!r}")
            if any(True for _ in layer.activation.parameters()):
                raise AlignmentError(f"expected an activation without parameters at {prefix}, found {layer.activation!r}")
            convs = list(layer.layer)
            group_in = stream
            for i, conv in enumerate(convs):
                group_out = new_stream if i == len(convs) - 1 else f"{prefix}.layer.{i}"
                conv_layer(f"{prefix}.layer.{i}", conv, group_in, group_out)
                group_in = group_out
            stream = new_stream
    head = model.classifier[1] if len(model.classifier) > 1 else None
    if isinstance(head, nn.Linear):
        axes["classifier.1.weight"] = [None, stream]
    else:  # no head (num_labels=0): the last stream is the output and stays as it is
        axes = {k: [None if g == stream else g for g in v] for k, v in axes.items()}
    known = set(axes) | {n for n in shapes if n.endswith("num_batches_tracked")} | {"classifier.1.bias"}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise AlignmentError(f"expected only the tensors of transformers' ResNet, found unknown tensors {unknown[:5]}")
    return PermutationSpec.from_axes(shapes, axes, buffers=[name for name, _ in model.named_buffers()])


def has_handwritten_spec(model: nn.Module) -> bool:
    """Whether :func:`permutation_spec` has a hand-written spec for ``model`` (no example input needed)."""
    cls = type(model)
    return cls.__module__.startswith("transformers.models.resnet.") and cls.__name__ == "ResNetForImageClassification"


def permutation_spec(model: nn.Module, example_input: Any = None) -> PermutationSpec:
    """The hand-written spec where one exists (transformers' ``ResNetForImageClassification``), else
    :func:`spec_from_module` (which needs ``example_input``).

    Raises:
        AlignmentError: no hand-written spec and no ``example_input``, or the model is not supported.
    """
    if has_handwritten_spec(model):
        return resnet_spec(model)
    if example_input is None:
        raise AlignmentError(
            f"expected an example_input to derive the permutation spec of {type(model).__name__} (no hand-written "
            "spec), found None"
        )
    return spec_from_module(model, example_input)
