"""The fingerprint of a pipeline's target network: what the generated tensors need from the rest of the network.

Generated parameters only work inside the network the checkpoints were collected from: the tensors outside the
selection (the trained convolutions around two generated BatchNorm layers, the backbone under a generated head) must
be that network's. A fresh, untrained copy of the same class has the right names and shapes but other values, and
gives chance-level models without any error. So a pipeline records, per tensor of its target's ``state_dict`` that is
*not* in the parameter layout, the shape, dtype and sha256 of its bytes, and checks every later target against the
record (:func:`fingerprint_differences`, :func:`check_fingerprint`). The record is saved next to ``model_index.json``
as ``target_fingerprint.json``.

Only torch, hashlib and pdiff_hf's own errors: this module is bundled into the remote code of a pushed pipeline.
"""

import hashlib
from typing import Dict, List, Optional

import torch
from torch import nn

from pdiff_hf.errors import TargetMismatchError
from pdiff_hf.layout import ParamLayout

# File next to model_index.json holding the fingerprint (and the target's class) of a saved pipeline.
FINGERPRINT_FILE = "target_fingerprint.json"
# state_dict entries left out of the fingerprint: BatchNorm's step counter does not change what the network computes
# (it only matters with momentum=None) and some loaders reset it.
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_MAX_NAMED = 8


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 (hex) of the raw bytes of ``tensor`` (any dtype, any shape; moved to the CPU and made contiguous)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def target_fingerprint(target: nn.Module, layout: Optional[ParamLayout]) -> Dict[str, Dict]:
    """``{name: {"shape", "dtype", "sha256"}}`` for every ``state_dict`` tensor of ``target`` outside ``layout``
    (the generated tensors change from model to model; the others are fixed), in ``state_dict`` order."""
    selected = set(layout.names) if layout is not None else set()
    record = {}
    for name, tensor in target.state_dict().items():
        if name in selected or name.endswith(_IGNORED_SUFFIXES) or not isinstance(tensor, torch.Tensor):
            continue
        record[name] = {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "sha256": tensor_digest(tensor),
        }
    return record


def fingerprint_differences(recorded: Dict[str, Dict], found: Dict[str, Dict]) -> List[str]:
    """What differs between two fingerprints, one phrase per kind of difference (empty when they agree): tensors
    missing from ``found``, extra in it, with another shape or dtype, and with other values."""
    missing = [n for n in recorded if n not in found]
    extra = [n for n in found if n not in recorded]
    shapes, values = [], []
    for name in recorded:
        if name not in found:
            continue
        a, b = recorded[name], found[name]
        if list(a["shape"]) != list(b["shape"]) or a["dtype"] != b["dtype"]:
            shapes.append(f"{name}: expected {a['dtype']}{list(a['shape'])}, found {b['dtype']}{list(b['shape'])}")
        elif a["sha256"] != b["sha256"]:
            values.append(name)

    def named(names: List[str]) -> str:
        more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
        return f"{names[:_MAX_NAMED]}{more}"

    out = []
    if values:
        out.append(f"{len(values)} of {len(recorded)} tensors have other values: {named(values)}")
    if shapes:
        out.append(f"{len(shapes)} have another shape or dtype: {'; '.join(shapes[:_MAX_NAMED])}")
    if missing:
        out.append(f"{len(missing)} are missing: {named(missing)}")
    if extra:
        out.append(f"{len(extra)} are not in the recorded network: {named(extra)}")
    return out


def check_fingerprint(recorded: Optional[Dict[str, Dict]], target: nn.Module, layout: Optional[ParamLayout],
                      what: str, advice: str = "") -> None:  # fmt: skip
    """Raise :class:`TargetMismatchError` naming the differing tensors unless ``target``'s tensors outside ``layout``
    are those of ``recorded`` (``None``: nothing recorded, nothing to check). ``what`` names the target in the
    message; ``advice`` ends it."""
    if recorded is None:
        return
    differences = fingerprint_differences(recorded, target_fingerprint(target, layout))
    if differences:
        raise TargetMismatchError(
            f"expected {what} to hold the weights outside the generated selection of the network this pipeline was "
            f"trained for, found {type(target).__name__} with other weights ({'; '.join(differences)}): generated "
            f"parameters would give chance-level models in it{advice}"
        )
