import pytest
import torch

from pdiff_hf import ParamLayout
from pdiff_hf.models.normalization import (
    compute_stats,
    denormalize,
    from_log_space,
    normalize,
    to_log_space,
)


def _checkpoints(layout: ParamLayout, n: int = 20, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(n, layout.dim, generator=gen) * torch.linspace(0.01, 2.0, layout.dim) + 3.0
    mask = layout.log_space_mask()
    params[:, mask] = torch.rand(n, int(mask.sum()), generator=gen) * 5 + 1e-3
    return params


def test_per_dimension_stats(bn_layout):
    params = _checkpoints(bn_layout)
    no_log = torch.zeros(bn_layout.dim, dtype=torch.bool)
    mean, std = compute_stats(params, no_log, mode="per_dimension")
    assert mean.shape == std.shape == (bn_layout.dim,)
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, params.double().mean(0).float())
    torch.testing.assert_close(std, params.double().std(0, unbiased=False).float())
    z = normalize(params, mean, std, no_log)
    torch.testing.assert_close(z.mean(0), torch.zeros(bn_layout.dim), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(bn_layout.dim), atol=1e-4, rtol=0)


def test_per_dimension_log_space_stats(bn_layout):
    params = _checkpoints(bn_layout)
    mask = bn_layout.log_space_mask()
    mean, std = compute_stats(params, mask, mode="per_dimension")
    logged = params.double().clone()
    logged[:, mask] = logged[:, mask].log()
    torch.testing.assert_close(mean, logged.mean(0).float())
    torch.testing.assert_close(std, logged.std(0, unbiased=False).float())


def test_per_tensor_stats_are_shared_within_each_tensor(bn_layout):
    params = _checkpoints(bn_layout)
    mask = bn_layout.log_space_mask()
    mean, std = compute_stats(params, mask, mode="per_tensor", offsets=bn_layout.offsets())
    logged = to_log_space(params.double(), mask)
    for spec, (a, b) in zip(bn_layout.specs, bn_layout.offsets()):
        assert torch.unique(mean[a:b]).numel() == 1, spec.name
        assert torch.unique(std[a:b]).numel() == 1, spec.name
        assert mean[a] == pytest.approx(float(logged[:, a:b].mean()), rel=1e-5, abs=1e-6)
        assert std[a] == pytest.approx(float(logged[:, a:b].std(unbiased=False)), rel=1e-5)
    # tensors have different stats from each other
    assert torch.unique(mean).numel() == len(bn_layout.specs)
    # without offsets, one block over everything
    mean_all, std_all = compute_stats(params, None, mode="per_tensor")
    assert torch.unique(mean_all).numel() == 1 and torch.unique(std_all).numel() == 1


def test_constant_dimensions_get_min_std_and_decode_to_their_value():
    params = torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    mask = torch.zeros(2, dtype=torch.bool)
    mean, std = compute_stats(params, mask, min_std=1e-8)
    assert std[0] == pytest.approx(1e-8) and std[1] > 1
    assert torch.isfinite(normalize(params, mean, std, mask)).all()
    torch.testing.assert_close(denormalize(torch.zeros(1, 2), mean, std, mask), torch.tensor([[1.0, 4.0]]))
    # a single checkpoint works too
    mean1, std1 = compute_stats(params[:1], mask)
    assert torch.equal(mean1, params[0]) and std1.tolist() == pytest.approx([1e-8, 1e-8])


def test_unknown_mode():
    with pytest.raises(ValueError, match="per_dimension"):
        compute_stats(torch.zeros(3, 2), mode="global")


@pytest.mark.parametrize("mode", ["per_dimension", "per_tensor"])
def test_normalize_denormalize_inverse(bn_layout, mode):
    params = _checkpoints(bn_layout)
    mask = bn_layout.log_space_mask()
    mean, std = compute_stats(params, mask, mode=mode, offsets=bn_layout.offsets())
    z = normalize(params, mean, std, mask)
    assert not torch.allclose(z, params)
    back = denormalize(z, mean, std, mask)
    torch.testing.assert_close(back, params, rtol=1e-5, atol=1e-5)
    # and the other way round
    z2 = torch.randn(4, bn_layout.dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(normalize(denormalize(z2, mean, std, mask), mean, std, mask), z2, rtol=1e-4, atol=1e-4)
    # works for a single (D,) vector
    torch.testing.assert_close(denormalize(normalize(params[0], mean, std, mask), mean, std, mask), params[0])


def test_running_var_stays_positive(bn_layout):
    params = _checkpoints(bn_layout)
    mask = bn_layout.log_space_mask()
    mean, std = compute_stats(params, mask)
    for value in (-3.0, -50.0, -1e3, -1e6):
        z = torch.full((2, bn_layout.dim), value)
        raw = denormalize(z, mean, std, mask)
        assert (raw[:, mask] > 0).all(), value
        assert torch.isfinite(raw).all()
        # plain (non log-space) entries do go negative: the mask is what protects the variances
        assert (raw[:, ~mask] < 0).any()


def test_log_space_helpers():
    mask = torch.tensor([False, True, True])
    x = torch.tensor([[-2.0, 4.0, 0.0]])
    logged = to_log_space(x, mask)
    assert logged[0, 0] == -2.0 and logged[0, 1] == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert torch.isfinite(logged).all()  # zero variance is floored, not -inf
    back = from_log_space(logged, mask)
    assert back[0, 0] == -2.0 and back[0, 1] == pytest.approx(4.0) and back[0, 2] > 0
    none = torch.zeros(3, dtype=torch.bool)
    assert to_log_space(x, none) is x and from_log_space(x, none) is x
