"""Weight matching (Git Re-Basin, Ainsworth et al. 2023): permute a network's hidden units to match a reference.

For each permutation group of a :class:`~pdiff_hf.alignment.spec.PermutationSpec`, the cost of matching unit ``i``
of the reference to unit ``j`` of the other network is the summed inner product of every parameter slice that
belongs to those units (weights, biases, BatchNorm weights and biases, the next layer's input columns), with the
other network's remaining axes already permuted by the current estimate. Each group's permutation is the linear
assignment (``scipy.optimize.linear_sum_assignment``) maximizing that cost; groups are visited in a random order
(``seed``) and the sweep repeats until no group improves::

    spec = spec_from_module(reference, example_input)
    perms = weight_matching(spec, reference.state_dict(), other.state_dict(), seed=0)   # {group: (n,) long}
    aligned_state = apply_permutation(spec, other.state_dict(), perms)                  # the same function

    aligned = align_to(reference, other, example_input=x)                               # both steps, a copy

A permutation ``perm`` of a group maps unit ``i`` of the permuted network to unit ``perm[i]`` of the input one
(``index_select(axis, perm)``).

Buffers (BatchNorm running statistics) are permuted with their units but left out of the cost by default
(``match_buffers=True`` puts them in): matching parameters only gave the better aligned averages of MNIST1DCNN runs
(see ``benchmarks/bench_aligned_runs.py``, which prints both).
"""

import copy
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..errors import AlignmentError
from .handwritten_specs import permutation_spec
from .spec import PermutationSpec

Permutations = Dict[str, torch.Tensor]


def _axis_index(perm: torch.Tensor, inner: int) -> torch.Tensor:
    """Index of an axis of ``len(perm)`` blocks of ``inner`` entries, the blocks reordered by ``perm``."""
    if inner == 1:
        return perm
    return (perm[:, None] * inner + torch.arange(inner)).reshape(-1)


def _permute_tensor(spec: PermutationSpec, name: str, tensor: torch.Tensor, perms: Permutations, skip: int = -1):
    """``tensor`` with every permuted axis (except ``skip``) reordered by its group's permutation."""
    for d, a in enumerate(spec.axes[name]):
        if a is not None and d != skip:
            tensor = tensor.index_select(d, _axis_index(perms[a.group], a.inner).to(tensor.device))
    return tensor


def check_permutations(spec: PermutationSpec, perms: Mapping[str, Any]) -> Permutations:
    """``perms`` as ``{group: (n,) int64 tensor}``; :class:`AlignmentError` unless it holds exactly the spec's groups,
    each a permutation of ``range(group size)``."""
    if set(perms) != set(spec.group_sizes):
        raise AlignmentError(
            f"expected permutations of the groups {sorted(spec.group_sizes)}, found {sorted(perms)}"
        )
    out = {}
    for g, n in spec.group_sizes.items():
        p = torch.as_tensor(np.asarray(perms[g]) if not isinstance(perms[g], torch.Tensor) else perms[g])
        p = p.to(torch.int64).cpu()
        if p.shape != (n,) or not torch.equal(torch.sort(p).values, torch.arange(n)):
            raise AlignmentError(f"expected a permutation of range({n}) for group {g!r}, found {p.tolist()[:10]}...")
        out[g] = p
    return out


def apply_permutation(
    spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor], perms: Mapping[str, Any]
) -> Dict[str, torch.Tensor]:
    """The state dict with every tensor sharing a permuted axis reordered (a new dict of new tensors, same keys and
    order; tensors without permuted axes are cloned).

    Raises:
        AlignmentError: ``state_dict`` is not of the spec's architecture, or ``perms`` are not permutations of the
            spec's groups.
    """
    spec.check_state_dict(state_dict)
    perms = check_permutations(spec, perms)
    return {name: _permute_tensor(spec, name, t, perms).clone() for name, t in state_dict.items()}


def identity_permutations(spec: PermutationSpec) -> Permutations:
    """``{group: arange(n)}``."""
    return {g: torch.arange(n) for g, n in spec.group_sizes.items()}


def random_permutations(spec: PermutationSpec, seed: int = 0) -> Permutations:
    """A random permutation of every group, deterministic under ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return {g: torch.randperm(n, generator=gen) for g, n in spec.group_sizes.items()}


def invert_permutations(perms: Mapping[str, torch.Tensor]) -> Permutations:
    """The inverse of every permutation: ``apply(apply(s, p), invert(p)) == s``."""
    return {g: torch.argsort(torch.as_tensor(p)) for g, p in perms.items()}


def weight_matching(
    spec: PermutationSpec,
    reference_state: Mapping[str, torch.Tensor],
    other_state: Mapping[str, torch.Tensor],
    max_iter: int = 100,
    seed: int = 0,
    init: Optional[Mapping[str, Any]] = None,
    match_buffers: bool = False,
) -> Permutations:
    """The permutations that align ``other_state``'s hidden units to ``reference_state``'s.

    Args:
        spec: the architecture's permutation spec (both state dicts must fit it).
        reference_state / other_state: state dicts of two networks of that architecture.
        max_iter: at most this many sweeps over the groups (each sweep visits every group once, in an order drawn
            from ``seed``); it stops earlier at the first sweep in which no group's assignment improves.
        seed: the order of the groups in each sweep (the result is deterministic under it).
        init: starting permutations (default: identities).
        match_buffers: also sum the cross-correlation of buffers (``spec.buffers``: BatchNorm running statistics)
            into the cost; by default only parameters are matched (buffers are permuted all the same).

    Returns:
        ``{group: (n,) int64 tensor}``; ``apply_permutation(spec, other_state, perms)`` is the aligned state dict.

    Raises:
        AlignmentError: a state dict of another architecture, ``max_iter < 1``.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise AlignmentError(f"expected max_iter to be an int >= 1, found {max_iter!r}")
    spec.check_state_dict(reference_state, "reference state dict")
    spec.check_state_dict(other_state, "other state dict")
    names = [n for n in spec.permuted_names if match_buffers or n not in spec.buffers]
    ref = {n: reference_state[n].detach().to("cpu", torch.float64) for n in names}
    other = {n: other_state[n].detach().to("cpu", torch.float64) for n in names}
    perms = check_permutations(spec, init) if init is not None else identity_permutations(spec)
    groups = spec.groups
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        improved = False
        for k in torch.randperm(len(groups), generator=gen).tolist():
            g = groups[k]
            n = spec.group_sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, d in spec.group_axes(g):
                if name not in ref:  # a buffer, left out of the cost
                    continue
                a = ref[name].movedim(d, 0).reshape(n, -1)  # (n, rest): unit i's slice, inner blocks included
                b = _permute_tensor(spec, name, other[name], perms, skip=d).movedim(d, 0).reshape(n, -1)
                cost += a @ b.T  # cost[i, j]: reference unit i . other unit j
            rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            old = cost[torch.arange(n), perms[g]].sum().item()
            new = cost[torch.as_tensor(rows), torch.as_tensor(cols)].sum().item()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g] = torch.as_tensor(cols, dtype=torch.int64)
                improved = True
        if not improved:
            break
    return perms


def align_to(
    reference_model: nn.Module,
    model: nn.Module,
    spec: Optional[PermutationSpec] = None,
    example_input: Any = None,
    max_iter: int = 100,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted to match ``reference_model`` (the same function).

    ``spec`` defaults to :func:`~pdiff_hf.alignment.handwritten_specs.permutation_spec` of ``reference_model`` (with
    ``example_input`` where no hand-written spec exists). ``model`` is not changed.

    Raises:
        AlignmentError: no spec can be derived, or the models are of different architectures.
    """
    spec = spec if spec is not None else permutation_spec(reference_model, example_input)
    state = model.state_dict()
    perms = weight_matching(spec, reference_model.state_dict(), state, max_iter=max_iter, seed=seed)
    aligned = copy.deepcopy(model)
    aligned.load_state_dict(apply_permutation(spec, state, perms))
    return aligned
