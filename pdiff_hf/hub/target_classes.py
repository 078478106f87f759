"""Which classes may build a target network read from a folder or the Hub: transformers ``PreTrainedModel``
classes, diffusers models and the networks of :mod:`pdiff_hf.tasks`, found by name; never code from the folder."""

from pathlib import Path

from ..errors import HubError


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
        f"pdiff_hf.tasks ({sorted(model_classes())}), found {library}.{class_name}; pass target_class={class_name} "
        f"(or target={class_name}(...)) to from_pretrained, or load the repo with "
        "DiffusionPipeline.from_pretrained(..., trust_remote_code=True)"
    )



def target_class_of_folder(folder: Path, label: str) -> type:
    """The class to load a standalone ``save_pretrained`` folder of a network with, read from its ``config.json``:
    ``_class_name`` (a ``pdiff_hf.tasks`` network or a diffusers model) or ``architectures[0]`` (a transformers
    model), through :func:`trusted_target_class` (never code from the folder). :class:`HubError` otherwise."""
    from .validate import read_json_limited, resolve_inside

    config = read_json_limited(resolve_inside(Path(folder), "config.json", label), label, "config.json")
    if isinstance(config, dict) and isinstance(config.get("_class_name"), str):
        return trusted_target_class("diffusers", config["_class_name"], label)
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return trusted_target_class("transformers", architectures[0], label)
    found = sorted(config)[:8] if isinstance(config, dict) else type(config).__name__
    raise HubError(f"{label}: expected a config.json naming its class (_class_name or architectures), found {found}")
