"""merge_many: many networks aligned to one another, in the first network's frame; functions kept exactly, a known
set of permutations recovered exactly, deterministic under a seed, bad input a named error."""

import copy

import pytest
import torch
from torch import nn

from pdiff_hf.alignment import (
    apply_permutation,
    merge_many,
    permutation_spec,
    random_permutations,
    weight_matching,
)
from pdiff_hf.errors import AlignmentError
from pdiff_hf.tasks import MNIST1DCNN

torch.set_num_threads(1)


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = MNIST1DCNN(channels=12, num_layers=2)
    with torch.no_grad():  # running statistics that show a wrong permutation
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.2, 3.0)
    return model.eval()


def _spec(model):
    return permutation_spec(model, torch.randn(2, 1, 40))


def _logits(model, state, x):
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    with torch.no_grad():
        return other.eval()(x)


def test_permuted_copies_are_recovered_exactly_in_the_first_frame():
    base = _cnn(0)
    spec = _spec(base)
    g = torch.Generator().manual_seed(1)
    states = []
    for k in range(4):  # four copies of one network, each permuted and slightly perturbed
        noisy = {n: t + 1e-4 * torch.randn(t.shape, generator=g) if t.is_floating_point() else t
                 for n, t in base.state_dict().items()}  # fmt: skip
        states.append(apply_permutation(spec, noisy, random_permutations(spec, seed=10 + k)))
    perms = merge_many(spec, states, seed=0)
    assert len(perms) == 4 and all(torch.equal(p, torch.arange(len(p))) for p in perms[0].values())
    aligned = [apply_permutation(spec, s, p) for s, p in zip(states, perms)]
    for a in aligned[1:]:  # every copy lands on the first, unit for unit
        for n in spec.permuted_names:
            torch.testing.assert_close(a[n], aligned[0][n], rtol=0, atol=1e-3)
    x = torch.randn(16, 1, 40, generator=g)
    for s, a in zip(states, aligned):  # and computes exactly what it computed before
        torch.testing.assert_close(_logits(base, a, x), _logits(base, s, x), rtol=0, atol=1e-5)


def test_independent_networks_keep_their_functions_and_the_result_is_deterministic():
    models = [_cnn(s) for s in range(4)]
    spec = _spec(models[0])
    states = [m.state_dict() for m in models]
    perms = merge_many(spec, states, seed=3)
    again = merge_many(spec, states, seed=3)
    assert all(torch.equal(p[g], q[g]) for p, q in zip(perms, again) for g in p)
    x = torch.randn(8, 1, 40, generator=torch.Generator().manual_seed(2))
    for model, state, p in zip(models, states, perms):
        moved = apply_permutation(spec, state, p)
        torch.testing.assert_close(_logits(model, moved, x), _logits(model, state, x), rtol=0, atol=1e-5)
    # the first network is never moved; no rounds is matching every network to the first
    first = merge_many(spec, states, max_rounds=0, seed=3)
    for i in range(1, 4):
        direct = weight_matching(spec, states[0], states[i], seed=3)
        assert all(torch.equal(first[i][g], direct[g]) for g in direct)


def test_rounds_bring_the_networks_closer_to_their_average():
    models = [_cnn(s) for s in range(5)]
    spec = _spec(models[0])
    states = [m.state_dict() for m in models]

    def spread(perms):
        moved = [apply_permutation(spec, s, p) for s, p in zip(states, perms)]
        flat = torch.stack([torch.cat([m[n].flatten() for n in spec.permuted_names]) for m in moved])
        return float(((flat - flat.mean(0)) ** 2).sum())

    to_first = merge_many(spec, states, max_rounds=0)
    assert spread(merge_many(spec, states)) <= spread(to_first) + 1e-9


@pytest.mark.parametrize("states, kwargs, message", [
    (1, {}, "at least two state dicts"),
    (3, {"max_rounds": -1}, "max_rounds"),
    (3, {"max_rounds": True}, "max_rounds"),
    (3, {"init": "two"}, "one starting permutation per state dict"),
])  # fmt: skip
def test_bad_input_is_a_named_error(states, kwargs, message):
    base = _cnn(0)
    spec = _spec(base)
    if kwargs.get("init") == "two":
        kwargs["init"] = [random_permutations(spec)] * 2
    with pytest.raises(AlignmentError, match=message):
        merge_many(spec, [base.state_dict()] * states, **kwargs)


def test_a_network_of_another_architecture_is_refused():
    spec = _spec(_cnn(0))
    wider = MNIST1DCNN(channels=13, num_layers=2).state_dict()
    with pytest.raises(AlignmentError, match="state dict 1"):
        merge_many(spec, [_cnn(0).state_dict(), wider])


def test_residual_networks_keep_their_functions():
    """A hand-written spec (transformers' ResNet: residual streams tied across each stage) works the same way."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(ResNetForImageClassification(config).eval())
    spec = permutation_spec(models[0])
    perms = merge_many(spec, [m.state_dict() for m in models], max_rounds=3)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for model, p in zip(models, perms):
        moved = copy.deepcopy(model)
        moved.load_state_dict(apply_permutation(spec, model.state_dict(), p))
        with torch.no_grad():
            torch.testing.assert_close(moved(x).logits, model(x).logits, rtol=0, atol=1e-5)
