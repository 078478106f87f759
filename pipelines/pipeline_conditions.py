"""Conditions and classifier-free guidance arguments of :class:`PDiffPipeline`: checks and id lookup.

A conditional pipeline's denoiser has ``num_conditions = K > 0`` (ids ``0 … K-1``, optionally named in
``condition_names``) and a null id ``K``; see :class:`~pdiff_hf.models.LatentUNet1DModel`.
"""

import math
import numbers
from typing import List, Optional, Sequence, Union

import torch

from pdiff_hf.checkpoints.condition_ids import check_conditions
from pdiff_hf.errors import ConditionError

Condition = Union[int, str, Sequence[Union[int, str]], torch.Tensor]


def _is_int(value) -> bool:
    """An integer (Python or numpy), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_single_condition(condition: Condition) -> bool:
    """Whether ``condition`` is one id or name (used for every model) rather than a list of them."""
    return isinstance(condition, (str, numbers.Integral)) or (
        isinstance(condition, torch.Tensor) and condition.dim() == 0
    )


def condition_ids(condition: Condition, num_conditions: int, names: Optional[List[str]] = None) -> List[int]:
    """Condition ids for ids or names (as ``DiTPipeline.get_label_ids`` maps labels to ids), checked to lie in
    ``[0, num_conditions)`` by :func:`pdiff_hf.checkpoints.condition_ids.check_conditions`. :class:`ConditionError`
    names the valid ids or names otherwise."""
    if not num_conditions:
        raise ConditionError(f"expected no condition for an unconditional pipeline (num_conditions=0), found {condition!r}")
    if isinstance(condition, torch.Tensor):
        if condition.is_floating_point() or condition.dtype == torch.bool or condition.dim() > 1:
            raise ConditionError(f"expected condition ids as an integer tensor (num_models,), found {condition.dtype} "
                                 f"of shape {tuple(condition.shape)}")
        condition = condition.tolist()
    items = [condition] if isinstance(condition, (str, numbers.Integral)) else condition
    if not isinstance(items, (list, tuple)):
        raise ConditionError(f"expected a condition id, a name, or a list of them, found {type(condition).__name__}")
    ids = []
    for item in items:
        if isinstance(item, str):
            if not names or item not in names:
                raise ConditionError(f"expected a condition name in {list(names or [])}, found {item!r}")
            ids.append(names.index(item))
        elif _is_int(item):
            ids.append(int(item))
        else:
            raise ConditionError(f"expected condition ids (integers) or names, found {item!r}")
    if not ids:
        raise ConditionError("expected at least one condition, found an empty list")
    return check_conditions(ids, num_conditions).tolist()  # ids in [0, num_conditions)


def check_conditioning(
    condition: Optional[Condition],
    guidance_scale: float,
    num_models: int,
    num_conditions: int,
    names: Optional[List[str]] = None,
) -> None:
    """Raise :class:`ConditionError` for a ``condition`` / ``guidance_scale`` pair that a pipeline with
    ``num_conditions`` conditions cannot sample: a condition or guidance for an unconditional pipeline, guidance
    without a condition, unknown ids or names, or a list whose length is not ``num_models``."""
    if not isinstance(guidance_scale, numbers.Real) or isinstance(guidance_scale, bool) or not (
        math.isfinite(guidance_scale) and guidance_scale >= 0
    ):
        raise ConditionError(f"expected guidance_scale to be a finite number >= 0, found {guidance_scale!r}")
    if not num_conditions and (condition is not None or guidance_scale != 1):
        raise ConditionError(
            "expected neither a condition nor guidance_scale != 1 for an unconditional pipeline (num_conditions=0), "
            f"found condition={condition!r}, guidance_scale={guidance_scale!r}"
        )
    if condition is None:
        if guidance_scale != 1:
            raise ConditionError(
                f"expected a condition for classifier-free guidance (guidance_scale={guidance_scale!r}), found none"
            )
        return
    ids = condition_ids(condition, num_conditions, names)
    if not is_single_condition(condition) and len(ids) != num_models:
        raise ConditionError(
            f"expected one condition or a list of num_models ({num_models}) conditions, found a list of {len(ids)}"
        )
