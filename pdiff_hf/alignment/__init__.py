"""Permutation alignment of independently trained networks (weight matching, Git Re-Basin, Ainsworth et al. 2023):
permutation specs (:mod:`.spec`; derived by :mod:`.derived_spec`, hand-written in :mod:`.handwritten_specs`) say which tensor axes are tied by a permutation of hidden units; weight matching
(:mod:`.weight_matching`) finds the permutations that align a network to a reference, keeping its function;
:mod:`.merge_many` aligns many networks to one another."""

from .derived_spec import spec_from_module
from .handwritten_specs import has_handwritten_spec, permutation_spec, resnet_spec
from .merge_many import merge_many
from .spec import Axis, PermutationSpec
from .weight_matching import (
    align_to,
    apply_permutation,
    check_permutations,
    identity_permutations,
    invert_permutations,
    random_permutations,
    weight_matching,
)

__all__ = [
    "Axis",
    "PermutationSpec",
    "align_to",
    "apply_permutation",
    "check_permutations",
    "has_handwritten_spec",
    "identity_permutations",
    "invert_permutations",
    "merge_many",
    "permutation_spec",
    "random_permutations",
    "resnet_spec",
    "spec_from_module",
    "weight_matching",
]
