"""The ``target/`` component of a saved pipeline: the network the generated parameters are for.

A target is saved by diffusers' ``save_pretrained`` with its own class's method (transformers: ``config.json`` +
``model.safetensors``; diffusers ``ModelMixin``: ``config.json`` + ``diffusion_pytorch_model.safetensors``).
:func:`load_target` builds it again the safe way, from JSON and safetensors only, with a class found by *name* among
classes pdiff_hf trusts: transformers ``PreTrainedModel`` classes, diffusers ``ModelMixin`` classes and the networks
of pdiff_hf's task registry (:func:`pdiff_hf.tasks.model_classes`). No module named in ``model_index.json`` is
imported; a target of any other class is a :class:`HubError` that says how to load it instead.
"""

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..errors import HubError, first_line

TARGET = "target"


def target_kind(target: nn.Module) -> str:
    """``"transformers"`` for a ``PreTrainedModel``, ``"diffusers"`` for a ``ModelMixin`` defined in diffusers,
    ``"custom"`` for another ``ModelMixin`` (pdiff_hf's task networks, a user's class), ``"plain"`` otherwise (a
    module that cannot be saved with a pipeline)."""
    from diffusers import ModelMixin

    module = type(target).__module__.split(".")[0]
    if module == "transformers":
        from transformers import PreTrainedModel

        if isinstance(target, PreTrainedModel):
            return "transformers"
    if isinstance(target, ModelMixin):
        return "diffusers" if module == "diffusers" else "custom"
    return "plain"


def check_savable_target(target: Any) -> None:
    """Raise :class:`HubError` unless ``target`` is ``None`` or can be saved in ``target/`` and loaded back."""
    if target is not None and target_kind(target) == "plain":
        raise HubError(
            f"expected a target network that saves with the pipeline (a transformers PreTrainedModel or a diffusers "
            f"ModelMixin, ConfigMixin), found {type(target).__module__}.{type(target).__name__}; make its class a "
            "ModelMixin, ConfigMixin (see pdiff_hf.tasks.MNIST1DCNN) or remove it with pipe.set_target(None)"
        )


def _check_files(sub: Path, label: str) -> None:
    """``config.json`` and at least one complete safetensors file in ``sub``; pickles are never loaded."""
    from safetensors import SafetensorError, safe_open

    if not (sub / "config.json").is_file():
        raise HubError(f"{label} lacks the target component: missing {TARGET}/config.json")
    weights = sorted(sub.glob("*.safetensors"))
    if not weights:
        found = sorted(p.name for p in sub.iterdir()) if sub.is_dir() else []
        raise HubError(
            f"{label} lacks the target component: expected {TARGET}/*.safetensors weights, found {found} "
            "(pickled weights are never loaded)"
        )
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (OSError, SafetensorError) as err:
            raise HubError(
                f"{label}: expected {TARGET}/{path.name} to be a complete safetensors file, found one that is not "
                f"({err})"
            ) from None
    if (sub / "config.json").is_file():  # sizes in the config within what the weights hold, before building
        from .validate import check_target_config

        check_target_config(sub.parent, label)


def trusted_target_class(library: str, class_name: str, label: str) -> type:
    """The class to build a target named ``[library, class_name]`` in ``model_index.json`` with (``library`` is
    only compared with ``"transformers"``, never imported)."""
    if library == "transformers":
        import transformers

        cls = getattr(transformers, class_name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
        raise HubError(f"{label}: expected a transformers PreTrainedModel class for the target, found {class_name!r}")
    import diffusers
    from diffusers import ModelMixin

    from ..tasks import model_classes

    cls = model_classes().get(class_name) or getattr(diffusers, class_name, None)
    if isinstance(cls, type) and issubclass(cls, ModelMixin):
        return cls
    raise HubError(
        f"{label}: expected the target to be a transformers model, a diffusers model or a network of "
        f"pdiff_hf.tasks ({sorted(model_classes())}), found {library}.{class_name}; pass "
        f"target={class_name}.from_pretrained(folder, subfolder='target') to from_pretrained, or load the repo with "
        "DiffusionPipeline.from_pretrained(..., trust_remote_code=True)"
    )


def load_target(folder: Path, entry: Sequence, label: str) -> nn.Module:
    """Build the ``target/`` component of the pipeline folder ``folder`` from its config and safetensors weights
    (``entry`` is its ``[library, class name]`` in ``model_index.json``), in eval mode."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(e, str) for e in entry):
        raise HubError(f"{label}: expected a 'target' entry [library, class name] in model_index.json, found {entry!r}")
    sub = Path(folder) / TARGET
    _check_files(sub, label)
    cls = trusted_target_class(entry[0], entry[1], label)
    try:
        if entry[0] == "transformers":
            model = cls.from_pretrained(str(sub), use_safetensors=True)
        else:
            model = cls.from_pretrained(str(folder), subfolder=TARGET, use_safetensors=True)
    except (OSError, ValueError, TypeError) as err:
        first = first_line(err)
        raise HubError(f"{label}: could not load the target component ({type(err).__name__}: {first})") from None
    return model.eval()
