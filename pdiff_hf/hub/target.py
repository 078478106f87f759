"""The ``target/`` component of a saved pipeline: the network the generated parameters are for.

Any ``nn.Module`` saves as a target, in one of three ways (``kind``):

* ``"transformers"``, ``"diffusers"``, ``"custom"`` (a ``PreTrainedModel``, a diffusers ``ModelMixin``, a
  ``ModelMixin`` of pdiff_hf or of the user): diffusers' ``save_pretrained`` with the class's own method
  (``config.json`` + ``model.safetensors`` / ``diffusion_pytorch_model.safetensors``), named in ``model_index.json``;
* ``"hub_mixin"`` (a ``huggingface_hub.PyTorchModelHubMixin`` module): its own ``save_pretrained``, ``config.json`` +
  ``model.safetensors``;
* ``"plain"`` (any other module): its ``state_dict`` as ``target/model.safetensors``.

``model_index.json`` names only the first kind (``[null, null]`` for the others: stock diffusers cannot build them).
Every saved pipeline with a target also gets ``target_fingerprint.json`` next to ``model_index.json``
(:func:`target_record`): the target's class and kind, and the fingerprint of its tensors outside the selection
(:mod:`pdiff_hf.pipelines.pipeline_target`).

Loading (:func:`resolve_target`) never imports code from the repo: library classes are found by *name* among classes
pdiff_hf trusts (transformers ``PreTrainedModel`` classes, diffusers ``ModelMixin`` classes and the networks of
:func:`pdiff_hf.tasks.model_classes`); any other class comes from the caller, as ``target_class=MyNet`` (built with
``MyNet.from_pretrained`` for a Hub mixin or a ``ModelMixin``, ``MyNet()`` for a plain module) or as an instance
``target=MyNet(...)``, which is filled from the saved weights after every name and shape is checked
(:func:`fill_target`). Pickles are never loaded.
"""

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import HubError, TargetMismatchError, first_line
from ..pipelines.pipeline_target import FINGERPRINT_FILE, check_fingerprint, target_fingerprint
from .target_classes import trusted_target_class

logger = logging.getLogger(__name__)

TARGET = "target"
# What diffusers' save_pretrained writes itself (a class it finds in LOADABLE_CLASSES)
LIBRARY_KINDS = ("transformers", "diffusers", "custom")
# The weights file pdiff_hf writes for a plain module (the name PyTorchModelHubMixin uses too)
WEIGHTS_NAME = "model.safetensors"
_MAX_NAMED = 8


def target_kind(target: nn.Module) -> str:
    """``"transformers"`` for a ``PreTrainedModel``, ``"diffusers"`` for a ``ModelMixin`` defined in diffusers,
    ``"custom"`` for another ``ModelMixin`` (pdiff_hf's task networks, a user's class), ``"hub_mixin"`` for a
    ``huggingface_hub.PyTorchModelHubMixin`` module, ``"plain"`` for any other module."""
    from diffusers import ModelMixin
    from huggingface_hub import PyTorchModelHubMixin

    module = type(target).__module__.split(".")[0]
    if module == "transformers":
        from transformers import PreTrainedModel

        if isinstance(target, PreTrainedModel):
            return "transformers"
    if isinstance(target, ModelMixin):
        return "diffusers" if module == "diffusers" else "custom"
    if isinstance(target, PyTorchModelHubMixin):
        return "hub_mixin"
    return "plain"


def check_savable_target(target: Any) -> None:
    """Raise :class:`HubError` unless ``target`` is ``None`` or an ``nn.Module`` (every module saves in ``target/``)."""
    if target is not None and not isinstance(target, nn.Module):
        raise HubError(
            f"expected a target network (a torch.nn.Module) or None, found {type(target).__module__}."
            f"{type(target).__name__}"
        )


def save_target_files(target: nn.Module, sub: Path) -> None:
    """Write a ``"hub_mixin"`` or ``"plain"`` target into the folder ``sub`` (``config.json`` when the Hub mixin
    records its init arguments, and ``model.safetensors``); library targets are written by diffusers."""
    from safetensors.torch import save_model

    sub.mkdir(parents=True, exist_ok=True)
    kind = target_kind(target)
    if kind == "hub_mixin":
        had_card = (sub / "README.md").exists()
        target.save_pretrained(sub)
        if not had_card:  # the mixin's own model card: the pipeline's card describes the target
            (sub / "README.md").unlink(missing_ok=True)
    elif kind == "plain":
        save_model(target, str(sub / WEIGHTS_NAME))  # shared (tied) tensors are written once
    else:
        raise HubError(f"expected a hub_mixin or plain target for pdiff_hf to write, found a {kind} target")


def target_record(target: nn.Module, fingerprint: Dict[str, Dict]) -> Dict[str, Any]:
    """The content of ``target_fingerprint.json``: the target's class (its name and module, never imported), its
    kind and the fingerprint of its tensors outside the selection."""
    from .cards import describe_architecture

    return {
        "class_name": type(target).__name__,
        "module": type(target).__module__,
        "kind": target_kind(target),
        "architecture": describe_architecture(target),
        "tensors": fingerprint,
    }


def read_target_record(folder: Path, label: str) -> Optional[Dict[str, Any]]:
    """The ``target_fingerprint.json`` of the pipeline folder ``folder`` (``None`` without one), checked."""
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        from .validate import read_json_limited  # size and nesting limited

        record = read_json_limited(path, label, FINGERPRINT_FILE)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise HubError(f"{label}: expected {FINGERPRINT_FILE} to be a JSON file, found unreadable content ({err})") from None
    tensors = record.get("tensors") if isinstance(record, dict) else None
    ok = isinstance(tensors, dict) and all(
        isinstance(v, dict) and {"shape", "dtype", "sha256"} <= set(v) for v in tensors.values()
    )
    if not ok or not isinstance(record.get("class_name"), str) or not isinstance(record.get("kind"), str):
        raise HubError(
            f"{label}: expected {FINGERPRINT_FILE} to hold class_name, kind and tensors {{name: {{shape, dtype, "
            f"sha256}}}}, found {sorted(record) if isinstance(record, dict) else type(record).__name__}"
        )
    return record


def _check_files(sub: Path, label: str, need_config: bool = True) -> None:
    """``config.json`` (when ``need_config``) and at least one complete safetensors file in ``sub``; pickles are
    never loaded."""
    from safetensors import SafetensorError, safe_open

    if need_config and not (sub / "config.json").is_file():
        raise HubError(f"{label} lacks the target component: missing {TARGET}/config.json")
    weights = sorted(sub.glob("*.safetensors")) if sub.is_dir() else []
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
    if (sub / "config.json").is_file():  # sizes in the config within what the weights hold, before building
        from .validate import check_target_config

        check_target_config(sub.parent, label)


def _short(err: Exception) -> str:
    first = first_line(err)
    return f"{type(err).__name__}: {first}"


def load_target(folder: Path, entry: Sequence, label: str, variant: Optional[str] = None) -> nn.Module:
    """Build the ``target/`` component of the pipeline folder ``folder`` from its config and safetensors weights
    (``entry`` is its ``[library, class name]`` in ``model_index.json``; ``variant``: the weights variant the pipeline
    was saved with, which diffusers also gives a transformers or diffusers target), in eval mode."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(e, str) for e in entry):
        raise HubError(f"{label}: expected a 'target' entry [library, class name] in model_index.json, found {entry!r}")
    sub = Path(folder) / TARGET
    _check_files(sub, label)
    cls = trusted_target_class(entry[0], entry[1], label)
    return _build(cls, folder, label, transformers_kind=entry[0] == "transformers", variant=variant)


def _build(
    cls: type, folder: Path, label: str, transformers_kind: bool = False, variant: Optional[str] = None
) -> nn.Module:
    """``cls.from_pretrained`` on ``folder/target`` (safetensors only), in eval mode; a plain class is built with
    ``cls()`` and filled."""
    from diffusers import ModelMixin
    from huggingface_hub import PyTorchModelHubMixin

    sub = Path(folder) / TARGET
    try:
        if transformers_kind:
            model = cls.from_pretrained(str(sub), use_safetensors=True, variant=variant)
        elif issubclass(cls, ModelMixin):
            model = cls.from_pretrained(str(folder), subfolder=TARGET, use_safetensors=True, variant=variant)
        elif issubclass(cls, PyTorchModelHubMixin):
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loading weights from local directory"
                model = cls.from_pretrained(str(sub), strict=True)
        else:
            return fill_target(cls(), folder, label)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        if isinstance(err, TargetMismatchError):
            raise
        raise HubError(f"{label}: could not load the target component ({_short(err)})") from None
    return model.eval()


def _saved_tensors(sub: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: Dict[str, torch.Tensor] = {}
    for path in sorted(sub.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def fill_target(
    target: nn.Module, folder: Path, label: str, saved: Optional[Dict[str, torch.Tensor]] = None
) -> nn.Module:
    """Load the safetensors weights in ``folder/target`` (or the tensors ``saved``) into ``target`` in place (eval
    mode) and return it, after checking that they hold every tensor of its ``state_dict`` (a tied tensor counts
    once) with its shape and nothing else; :class:`TargetMismatchError` naming the differences otherwise."""
    if saved is None:
        sub = Path(folder) / TARGET
        _check_files(sub, label, need_config=False)
        saved = _saved_tensors(sub)
    own = target.state_dict(keep_vars=True)
    present = {own[n].data_ptr() for n in own if n in saved and own[n].numel()}
    missing = [n for n in own if n not in saved and not (own[n].numel() and own[n].data_ptr() in present)]
    unexpected = [n for n in saved if n not in own]
    shapes = [
        f"{n}: saved {list(saved[n].shape)}, found {list(own[n].shape)}"
        for n in own
        if n in saved and tuple(saved[n].shape) != tuple(own[n].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the saved weights {missing[:_MAX_NAMED]}")
        if unexpected:
            parts.append(f"saved but not in the network {unexpected[:_MAX_NAMED]}")
        if shapes:
            parts.append("; ".join(shapes[:_MAX_NAMED]))
        raise TargetMismatchError(
            f"{label}: expected {type(target).__name__} to have the tensors of the saved target in {TARGET}/ with "
            f"their shapes, found {', '.join(parts)}"
        )
    with torch.no_grad():
        target.load_state_dict({n: saved[n] for n in own if n in saved}, strict=False)
    return target.eval()


def resolve_target(
    folder: Path,
    entry: Any,
    record: Optional[Dict[str, Any]],
    label: str,
    target: Optional[nn.Module] = None,
    target_class: Optional[type] = None,
    fill: bool = True,
    variant: Optional[str] = None,
) -> Optional[nn.Module]:
    """The target network of the pipeline saved in ``folder`` (``entry``: its ``model_index.json`` entry, ``record``:
    its ``target_fingerprint.json``), or ``None`` when it has none or cannot be built without the caller's class.

    ``target``: an instance to use; filled from ``target/`` when the folder holds target weights and ``fill``
    (otherwise used as given). ``target_class``: the class to build the saved target with (needed for a Hub mixin
    or plain module, whose class is never imported from the repo)."""
    if target is not None and target_class is not None:
        raise HubError(
            f"expected target= or target_class=, found both ({type(target).__name__} and {target_class.__name__})"
        )
    if target_class is not None and not (isinstance(target_class, type) and issubclass(target_class, nn.Module)):
        raise HubError(f"expected target_class to be an nn.Module class, found {target_class!r}")
    sub = Path(folder) / TARGET
    named = entry not in (None, [None, None], (None, None))  # load_target checks the entry
    has_files = sub.is_dir() and any(sub.glob("*.safetensors"))
    if target is not None:
        if not (fill and has_files):
            return target
        if named and entry[0] == "transformers":  # transformers renames tensors in its files: fill from the model
            return fill_target(target, folder, label, saved=load_target(folder, entry, label, variant).state_dict())
        return fill_target(target, folder, label)
    if target_class is not None:
        if not (named or has_files):
            raise HubError(f"{label}: expected saved target weights in {TARGET}/ to build {target_class.__name__}, found none")
        _check_files(sub, label, need_config=False)
        transformers_kind = named and entry[0] == "transformers"
        return _build(target_class, folder, label, transformers_kind=transformers_kind, variant=variant)
    if named:
        return load_target(folder, entry, label, variant)
    if record is not None and has_files:  # a Hub mixin or plain target: its class is the caller's
        name = record["class_name"]
        how = f"target_class={name}" if record["kind"] == "hub_mixin" else f"target={name}(...)"
        logger.warning(
            "%s holds the weights of a %s target network %s (module %s) in %s/, whose code is never imported: pass "
            "%s to from_pretrained to get working networks with output_type='model'",
            label, record["kind"], name, record.get("module"), TARGET, how,
        )  # fmt: skip
    return None


def _has_weights(folder: Path) -> bool:
    sub = Path(folder) / TARGET
    return sub.is_dir() and any(sub.glob("*.safetensors"))


def copy_unbuilt_target(pipe, folder: Path) -> Optional[Dict[str, Any]]:
    """Copy the ``target/`` files of a loaded pipeline whose Hub-mixin or plain target was not built (no class was
    given) into ``folder/target``, so that loading and saving again keeps the target; returns its record, or
    ``None`` when ``pipe`` has no such target."""
    import shutil

    unbuilt = getattr(pipe, "_unbuilt_target", None) if getattr(pipe, "target", None) is None else None
    if not unbuilt or not _has_weights(Path(unbuilt["folder"])):
        return None
    source, sub = Path(unbuilt["folder"]) / TARGET, Path(folder) / TARGET
    if source.resolve() != sub.resolve():
        sub.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.is_file() and (path.suffix == ".safetensors" or path.name == "config.json"):
                shutil.copyfile(path, sub / path.name)
    return unbuilt["record"]


def check_loaded_target(
    pipe, record: Optional[Dict[str, Any]], label: str, check: bool = True, unchecked: bool = False,
    folder: Optional[Path] = None,
) -> None:  # fmt: skip
    """After loading: keep the saved fingerprint on ``pipe`` and, with ``check``, check its target against it
    (:class:`TargetMismatchError` naming the tensors that differ). ``unchecked``: the target is the caller's and
    there were no saved weights to fill it from (warned about when nothing records the network either). A
    Hub-mixin or plain target left unbuilt is remembered with its ``folder`` and saved again with the pipeline."""
    if record is None:
        pipe._target_record_missing = True
        target = getattr(pipe, "target", None)
        if unchecked and check and target is not None:
            warnings.warn(
                f"{label} was saved without its target network, so nothing records the weights outside the generated "
                f"selection: {type(target).__name__} must hold the trained weights of the network the checkpoints "
                "came from, or the generated models are at chance level (save pipelines with fit_pdiff(..., "
                "target=net) to have this checked)",
                UserWarning,
                stacklevel=3,
            )
        return
    target = getattr(pipe, "target", None)
    if target is None:
        pipe._target_fingerprint = record["tensors"]
        if record["kind"] not in LIBRARY_KINDS and folder is not None and _has_weights(folder):  # saved again with the pipeline
            pipe._unbuilt_target = {"folder": str(folder), "record": record}
        return
    if not check:
        return
    check_fingerprint(
        record["tensors"], target, pipe.layout, f"the target of {label}",
        advice="; pass the trained network as target= (it is filled from the saved target/ weights) or "
        "check_target_weights=False to use it anyway",
    )  # fmt: skip


__all__ = [
    "FINGERPRINT_FILE",
    "TARGET",
    "check_loaded_target",
    "check_savable_target",
    "copy_unbuilt_target",
    "fill_target",
    "load_target",
    "read_target_record",
    "resolve_target",
    "save_target_files",
    "target_fingerprint",
    "target_kind",
    "target_record",
]
