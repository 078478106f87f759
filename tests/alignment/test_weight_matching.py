"""Weight matching and permutation application: the function is preserved exactly for every supported architecture,
a known permutation is recovered exactly, results are deterministic, bad input is a named error."""

import copy
import time

import pytest
import torch
from torch import nn

from pdiff_hf.alignment import (
    align_to,
    apply_permutation,
    identity_permutations,
    invert_permutations,
    permutation_spec,
    random_permutations,
    spec_from_module,
    weight_matching,
)
from pdiff_hf.errors import AlignmentError
from pdiff_hf.tasks import MNIST1DCNN

torch.set_num_threads(1)


class ViewCNN(nn.Module):
    """A CNN written with ``x.view(x.size(0), -1)``, a mean over one spatial axis and a transpose before a Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.mid = nn.Linear(5 * 6, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):  # (B, 2, 6, 6)
        h = torch.relu(self.bn(self.conv(x))).mean(3)  # (B, 5, 6)
        h = self.mid(h.view(h.size(0), -1))  # (B, 30) -> (B, 4)
        return self.out(torch.tanh(h) * 2.0)


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm / LayerNorm parameters and running statistics, so that a wrong permutation shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 2.8 + 0.2)
    return model.eval()


def _mlp(seed=0):
    torch.manual_seed(seed)
    return _randomize_norms(nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 12),
                                          nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 3)))  # fmt: skip


def _cnn(seed=0):
    torch.manual_seed(seed)
    return _randomize_norms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5),
    ))  # fmt: skip


def _mnist1d_cnn(seed=0, channels=16):
    torch.manual_seed(seed)
    return _randomize_norms(MNIST1DCNN(channels=channels))


def _view_cnn(seed=0):
    torch.manual_seed(seed)
    return _randomize_norms(ViewCNN())


def _resnet(seed=0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)
    return _randomize_norms(ResNetForImageClassification(config))


ARCHS = {
    "mlp": (_mlp, (8, 6)),
    "cnn": (_cnn, (4, 3, 8, 8)),
    "mnist1d_cnn": (_mnist1d_cnn, (8, 1, 40)),
    "view_cnn": (_view_cnn, (4, 2, 6, 6)),
    "resnet": (_resnet, (2, 3, 32, 32)),
}


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _load(model, state):
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_random_permutation_keeps_the_function_and_is_recovered_exactly(arch):
    build, shape = ARCHS[arch]
    model = build()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    spec = permutation_spec(model, x)
    perms = random_permutations(spec, seed=3)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    permuted_state = apply_permutation(spec, model.state_dict(), perms)
    permuted = _load(model, permuted_state)
    moved = [k for k in spec.permuted_names if not torch.equal(permuted_state[k], model.state_dict()[k])]
    assert moved  # the weights did change ...
    torch.testing.assert_close(_logits(permuted, x), _logits(model, x), rtol=0, atol=1e-5)  # ... the function not

    found = weight_matching(spec, model.state_dict(), permuted_state, seed=0)
    inverse = invert_permutations(perms)
    assert set(found) == set(spec.groups) and all(torch.equal(found[g], inverse[g]) for g in spec.groups)
    back = apply_permutation(spec, permuted_state, found)
    for k, v in model.state_dict().items():  # identity distance 0: the original network, bit for bit
        assert torch.equal(back[k], v), k
    # composing the applied and the recovered permutation gives the identity in every group
    for g, p in perms.items():
        assert torch.equal(p[found[g]], torch.arange(spec.group_sizes[g]))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_aligning_an_independent_network_keeps_its_function(arch):
    build, shape = ARCHS[arch]
    reference, other = build(seed=0), build(seed=1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    spec = permutation_spec(reference, x)
    aligned = align_to(reference, other, spec=spec, seed=0)
    torch.testing.assert_close(_logits(aligned, x), _logits(other, x), rtol=0, atol=1e-5)

    def distance(state, names):
        return sum(((state[k].double() - reference.state_dict()[k].double()) ** 2).sum() for k in names)

    # weight matching maximizes the inner product of the matched tensors: their distance to the reference shrinks
    parameters = [k for k in spec.permuted_names if k not in spec.buffers]
    assert spec.buffers >= {k for k in spec.permuted_names if "running" in k}
    assert distance(aligned.state_dict(), parameters) <= distance(other.state_dict(), parameters)
    everything = weight_matching(spec, reference.state_dict(), other.state_dict(), match_buffers=True)
    with_buffers = apply_permutation(spec, other.state_dict(), everything)
    torch.testing.assert_close(_logits(_load(other, with_buffers), x), _logits(other, x), rtol=0, atol=1e-5)
    assert distance(with_buffers, spec.permuted_names) <= distance(other.state_dict(), spec.permuted_names)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # align_to returns a copy


def test_weight_matching_is_deterministic_under_a_seed():
    reference, other = _mnist1d_cnn(0, channels=24), _mnist1d_cnn(1, channels=24)
    spec = spec_from_module(reference, torch.randn(2, 1, 40))
    a = weight_matching(spec, reference.state_dict(), other.state_dict(), seed=5)
    b = weight_matching(spec, reference.state_dict(), other.state_dict(), seed=5)
    assert all(torch.equal(a[g], b[g]) for g in spec.groups)
    one_sweep = weight_matching(spec, reference.state_dict(), other.state_dict(), seed=5, max_iter=1)
    assert set(one_sweep) == set(spec.groups)
    same = weight_matching(spec, reference.state_dict(), reference.state_dict())
    assert all(torch.equal(p, torch.arange(len(p))) for p in same.values())  # a network aligned to itself


def test_alignment_of_a_128_channel_mnist1d_cnn_takes_at_most_2_seconds():
    reference, other = _mnist1d_cnn(0, channels=128), _mnist1d_cnn(1, channels=128)
    spec = spec_from_module(reference, torch.randn(2, 1, 40))
    start = time.perf_counter()
    perms = weight_matching(spec, reference.state_dict(), other.state_dict())
    apply_permutation(spec, other.state_dict(), perms)
    assert time.perf_counter() - start <= 2.0


def test_bad_permutations_and_states_are_named_errors():
    model = _mlp()
    spec = spec_from_module(model, torch.randn(2, 6))
    state = model.state_dict()
    perms = identity_permutations(spec)
    with pytest.raises(AlignmentError, match="permutations of the groups"):
        apply_permutation(spec, state, {g: p for g, p in list(perms.items())[:1]})
    with pytest.raises(AlignmentError, match="a permutation of range"):
        apply_permutation(spec, state, {**perms, "0": torch.zeros(16, dtype=torch.long)})
    with pytest.raises(AlignmentError, match="a permutation of range"):
        apply_permutation(spec, state, {**perms, "0": torch.arange(15)})
    with pytest.raises(AlignmentError, match="architecture"):
        weight_matching(spec, state, _cnn().state_dict())
    with pytest.raises(AlignmentError, match="max_iter"):
        weight_matching(spec, state, state, max_iter=0)
    wide = nn.Sequential(nn.Linear(6, 17), nn.BatchNorm1d(17), nn.ReLU(), nn.Linear(17, 12), nn.LayerNorm(12),
                         nn.GELU(), nn.Linear(12, 3))  # fmt: skip
    with pytest.raises(AlignmentError, match="shape"):
        align_to(model, wide, spec=spec)
    # numpy / list permutations are accepted
    out = apply_permutation(spec, state, {g: p.numpy() for g, p in perms.items()})
    assert all(torch.equal(out[k], v) for k, v in state.items())
