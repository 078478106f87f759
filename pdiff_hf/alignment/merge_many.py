"""Aligning many networks to one another (MergeMany, Git Re-Basin, Ainsworth et al. 2023, Algorithm 3).

Weight matching aligns one network to one reference. Aligning K independent runs each to the first run leaves them
consistent with run 0 only: pairs of other runs may still be matched unit-for-unit badly, and their weight average
(the centre of what a generator learns) sits on the loss barriers between them. MergeMany aligns every run to the
*average of all the others*, in a random order, round after round, until a round changes no permutation::

    spec = permutation_spec(model, example_input)
    perms = merge_many(spec, [run.state_dict() for run in runs], seed=0)    # [{group: (n,) long}] * K
    aligned = [apply_permutation(spec, run.state_dict(), p) for run, p in zip(runs, perms)]

The permutations are returned in run 0's frame (``perms[0]`` is the identity), so the first run is never moved and
every aligned run computes exactly its original function.

Measured on 32 independent ``MNIST1DCNN(channels=128)`` runs (15 epochs each, 97.4% median test accuracy), every
average's BatchNorm statistics recalibrated on 8 training batches (``OMP_NUM_THREADS=1 python
benchmarks/bench_alignment_methods.py --channels 128 --runs 32 --cache_dir DIR``):
the aligned average of all 32 scores 89.2% when each run is matched to run 0 and 92.1% after MergeMany (24 s for
the 32 runs); midpoints of two runs 93.8% and 94.6%.
"""

from typing import List, Mapping, Optional, Sequence

import torch

from ..errors import AlignmentError
from .spec import PermutationSpec
from .weight_matching import Permutations, apply_permutation, identity_permutations, weight_matching


def merge_many(
    spec: PermutationSpec,
    states: Sequence[Mapping[str, torch.Tensor]],
    max_rounds: int = 50,
    seed: int = 0,
    max_iter: int = 100,
    match_buffers: bool = False,
    init: Optional[Sequence[Mapping[str, torch.Tensor]]] = None,
) -> List[Permutations]:
    """The permutations that align every network of ``states`` to the others, in the first network's frame.

    1. Start: ``init``, or every network matched to the first (:func:`weight_matching` with ``seed``, the first left
       as it is; with ``max_rounds=0`` this is the result).
    2. Rounds (at most ``max_rounds``; ``0`` keeps the start): in an order drawn from ``seed``, network ``i`` is
       re-matched to the average of the other ``K - 1`` aligned networks (starting from its current permutation).
       A round in which no permutation changes ends the loop.
    3. Every permutation is composed with the inverse of the first network's, which is then the identity.

    Args:
        spec: the architecture's permutation spec (every state dict must fit it).
        states: ``K >= 2`` state dicts of that architecture.
        max_rounds / seed: rounds of re-matching and the order of the networks within each.
        max_iter / match_buffers: passed to :func:`weight_matching`.
        init: starting permutations, one per network (default: each matched to the first).

    Returns:
        ``K`` dicts ``{group: (n,) int64 tensor}``; ``perms[0]`` is the identity, and ``apply_permutation(spec,
        states[i], perms[i])`` is network ``i`` aligned.

    Raises:
        AlignmentError: fewer than two state dicts, one of another architecture, ``max_rounds`` not an int >= 0, or
            ``init`` of another length.
    """
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 0:
        raise AlignmentError(f"expected max_rounds to be an int >= 0, found {max_rounds!r}")
    if len(states) < 2:
        raise AlignmentError(f"expected at least two state dicts to align to one another, found {len(states)}")
    if init is not None and len(init) != len(states):
        raise AlignmentError(f"expected one starting permutation per state dict ({len(states)}), found {len(init)}")
    for i, state in enumerate(states):
        spec.check_state_dict(state, f"state dict {i}")
    K = len(states)
    if init is not None:
        perms = [dict(p) for p in init]
    else:
        perms = [identity_permutations(spec)]
        perms += [weight_matching(spec, states[0], states[i], max_iter=max_iter, seed=seed, match_buffers=match_buffers)
                  for i in range(1, K)]  # fmt: skip
    names = spec.permuted_names
    aligned = [{n: t.to(torch.float64) for n, t in _aligned(spec, states[i], perms[i]).items()} for i in range(K)]
    total = {n: sum(a[n] for a in aligned) for n in names}
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_rounds):
        changed = False
        for i in torch.randperm(K, generator=gen).tolist():
            others = {**states[0], **{n: (total[n] - aligned[i][n]) / (K - 1) for n in names}}
            p = weight_matching(spec, others, states[i], max_iter=max_iter, seed=seed, init=perms[i],
                                match_buffers=match_buffers)  # fmt: skip
            if all(torch.equal(p[g], perms[i][g]) for g in p):
                continue
            changed = True
            new = {n: t.to(torch.float64) for n, t in _aligned(spec, states[i], p).items()}
            for n in names:
                total[n] += new[n] - aligned[i][n]
            perms[i], aligned[i] = p, new
        if not changed:
            break
    first_inverse = {g: torch.argsort(q) for g, q in perms[0].items()}
    return [{g: p[g][first_inverse[g]] for g in p} for p in perms]


def _aligned(spec: PermutationSpec, state: Mapping[str, torch.Tensor], perms: Permutations):
    """The permuted tensors of ``state`` (only the names the spec permutes)."""
    moved = apply_permutation(spec, state, perms)
    return {n: moved[n] for n in spec.permuted_names}
