"""Permutation specs: which axes of which tensors are permuted together when hidden units are reordered.

Reordering the hidden units of a network (the output channels of a layer, and with them the input channels of the
next) leaves the function it computes unchanged, provided every tensor that indexes those units is reordered the
same way: the layer's weight rows and bias, the following BatchNorm's weight, bias and running statistics, and the
next layer's weight columns. A :class:`PermutationSpec` names these permutation *groups* (one per set of tied
units) and records, for every tensor of the state dict, which group (if any) each of its axes belongs to::

    spec = spec_from_module(model, example_input)       # chains of Linear / Conv with norms and activations
    spec = resnet_spec(resnet)                          # transformers' ResNetForImageClassification (hand-written)
    spec = permutation_spec(model, example_input)       # whichever of the two fits

    spec.group_sizes     # {"features.0": 32, "features.3": 32, "features.6": 32}
    spec.axes["classifier.weight"]      # (None, Axis("features.6", inner=40)): input axis = channels x positions

An :class:`Axis` with ``inner > 1`` is an axis made of ``group size`` consecutive blocks of ``inner`` entries: a
flatten of ``(channels, positions)`` into one axis of ``channels * positions`` (channel-major) permutes whole
blocks of ``positions`` entries.

:func:`spec_from_module` traces the model with ``torch.fx`` and accepts only operations it can prove equivariant
under a permutation of hidden units; anything else — residual adds, concatenation, attention, grouped convolutions,
unknown modules with parameters, a module called twice — is an :class:`~pdiff_hf.errors.AlignmentError`, never a
silent partial alignment. Units that reach the model's output are never permuted (the output must stay the same).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import AlignmentError


@dataclass(frozen=True)
class Axis:
    """One permuted axis: ``group``'s permutation reorders ``group size`` blocks of ``inner`` consecutive entries
    (``inner = 1``: one entry per unit)."""

    group: str
    inner: int = 1


AxisLike = Union[None, str, Axis]


@dataclass(frozen=True)
class PermutationSpec:
    """Named permutation groups and the axis -> group mapping of every tensor of a state dict.

    Args:
        group_sizes: ``{group: number of units}``.
        axes: ``{tensor name: (Axis or None per axis)}``; a plain string is ``Axis(string)``. Every tensor of the
            state dict is listed (tensors that are not permuted with all ``None``), so a state dict with other
            tensors is recognized as another architecture.
        shapes: ``{tensor name: shape}``, the same names as ``axes``.
        buffers: names of the tensors that are buffers, not parameters (BatchNorm running statistics): they are
            permuted like the rest, and weight matching leaves them out of its cost unless asked
            (``weight_matching(..., match_buffers=True)``).

    Raises:
        AlignmentError: at construction, when a tensor's axes and shape differ in length, an axis names an unknown
            group, a group has no axis, or tied axes disagree in size (``shape[d] != group_sizes[g] * inner``).
    """

    group_sizes: Dict[str, int]
    axes: Dict[str, Tuple[Optional[Axis], ...]]
    shapes: Dict[str, Tuple[int, ...]]
    buffers: FrozenSet[str] = frozenset()
    _group_axes: Dict[str, Tuple[Tuple[str, int], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        axes = {name: tuple(_as_axis(a) for a in ax) for name, ax in self.axes.items()}
        shapes = {name: tuple(int(s) for s in shape) for name, shape in self.shapes.items()}
        sizes = {g: int(n) for g, n in self.group_sizes.items()}
        unknown_buffers = sorted(set(self.buffers) - set(shapes))
        if unknown_buffers:
            raise AlignmentError(f"expected buffers among the spec's tensors, found {unknown_buffers[:5]}")
        if set(axes) != set(shapes):
            raise AlignmentError(
                f"expected the same tensor names in axes and shapes, found {sorted(set(axes) ^ set(shapes))} in only "
                "one of them"
            )
        for g, n in sizes.items():
            if n < 1:
                raise AlignmentError(f"expected every permutation group to have >= 1 unit, found {g!r} with {n}")
        group_axes: Dict[str, List[Tuple[str, int]]] = {g: [] for g in sizes}
        for name, ax in axes.items():
            shape = shapes[name]
            if len(ax) != len(shape):
                raise AlignmentError(
                    f"expected one axis entry per dimension of {name!r} (shape {shape}), found {len(ax)}"
                )
            for d, a in enumerate(ax):
                if a is None:
                    continue
                if a.group not in sizes:
                    raise AlignmentError(f"expected a group of group_sizes for {name!r} axis {d}, found {a.group!r}")
                if a.inner < 1 or shape[d] != sizes[a.group] * a.inner:
                    raise AlignmentError(
                        f"expected tied axes of one size: group {a.group!r} has {sizes[a.group]} units, so "
                        f"{name!r} axis {d} (inner {a.inner}) should have {sizes[a.group] * a.inner} entries, found "
                        f"{shape[d]}"
                    )
                group_axes[a.group].append((name, d))
        unused = [g for g, lst in group_axes.items() if not lst]
        if unused:
            raise AlignmentError(f"expected every permutation group to permute some axis, found unused {unused}")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "group_sizes", sizes)
        object.__setattr__(self, "buffers", frozenset(self.buffers))
        object.__setattr__(self, "_group_axes", {g: tuple(lst) for g, lst in group_axes.items()})

    @classmethod
    def from_axes(
        cls,
        shapes: Mapping[str, Sequence[int]],
        axes: Mapping[str, Sequence[AxisLike]],
        buffers: Iterable[str] = (),
    ) -> "PermutationSpec":
        """Build a spec whose group sizes are read from the tensors (each group's first axis); tensors of
        ``shapes`` missing from ``axes`` are not permuted. Tied axes of other sizes are an :class:`AlignmentError`
        (raised by the constructor)."""
        unknown = sorted(set(axes) - set(shapes))
        if unknown:
            raise AlignmentError(f"expected axes only for tensors of the state dict, found {unknown}")
        full = {name: tuple(axes.get(name, (None,) * len(shape))) for name, shape in shapes.items()}
        sizes: Dict[str, int] = {}
        for name, ax in full.items():
            for d, a in enumerate(ax):
                a = _as_axis(a)
                if a is not None and a.group not in sizes and d < len(shapes[name]):
                    sizes[a.group] = shapes[name][d] // max(a.inner, 1)
        return cls(group_sizes=sizes, axes=full, shapes={k: tuple(v) for k, v in shapes.items()}, buffers=frozenset(buffers))

    @property
    def groups(self) -> List[str]:
        """The group names, in the order they were found."""
        return list(self.group_sizes)

    def group_axes(self, group: str) -> Tuple[Tuple[str, int], ...]:
        """``((tensor name, axis), ...)`` permuted by ``group``."""
        return self._group_axes[group]

    @property
    def permuted_names(self) -> List[str]:
        """Names of the tensors with at least one permuted axis."""
        return [name for name, ax in self.axes.items() if any(a is not None for a in ax)]

    def check_state_dict(self, state_dict: Mapping[str, torch.Tensor], what: str = "state dict") -> None:
        """:class:`AlignmentError` unless ``state_dict`` has exactly the spec's tensor names and shapes (the same
        architecture)."""
        names = set(state_dict)
        if names != set(self.shapes):
            missing, extra = sorted(set(self.shapes) - names), sorted(names - set(self.shapes))
            raise AlignmentError(
                f"expected the {what} of the spec's architecture, found missing tensors {missing[:5]} and unknown "
                f"tensors {extra[:5]}"
            )
        for name, shape in self.shapes.items():
            found = tuple(state_dict[name].shape)
            if found != shape:
                raise AlignmentError(f"expected {name!r} of shape {shape} in the {what}, found {found}")

    def summary(self) -> Dict[str, Any]:
        """A JSON-able description: ``{"groups": {group: size}, "permuted_tensors": n}``."""
        return {"groups": dict(self.group_sizes), "permuted_tensors": len(self.permuted_names)}


def _as_axis(a: AxisLike) -> Optional[Axis]:
    if a is None or isinstance(a, Axis):
        return a
    if isinstance(a, str):
        return Axis(a)
    raise AlignmentError(f"expected an Axis, a group name or None for an axis, found {a!r}")


