import os

import datasets
import pytest
import torch

from pdiff_hf import (
    DimensionMismatchError,
    NonFiniteParametersError,
    ParameterAutoencoder,
    ParamLayout,
    check_dataset_layout,
    checkpoint_params,
    make_checkpoint_dataset,
)
from pdiff_hf.training.config import PDiffConfig
from pdiff_hf.training.fit import train_autoencoder

datasets.disable_progress_bars()


def _cheap(in_dim: int, **kwargs) -> ParameterAutoencoder:
    torch.manual_seed(0)
    return ParameterAutoencoder(in_dim=in_dim, block_out_channels=(4, 4), latent_channels=2, pos_channels=1, **kwargs)


@pytest.mark.parametrize("in_dim", [1, 2, 37, 64, 12_810])
def test_output_shapes(in_dim):
    ae = _cheap(in_dim).eval()
    x = torch.randn(3, in_dim)
    out = ae(x)
    expected_length = -(-in_dim // 4)
    assert ae.latent_shape == (2, expected_length)
    assert out.sample.shape == (3, in_dim)
    assert out.latents.shape == (3, 2, expected_length)
    assert ae.encode(x).shape == (3, 2, expected_length)
    assert ae.decode(out.latents).shape == (3, in_dim)
    sample, latents = ae(x, return_dict=False)
    assert torch.equal(sample, out.sample) and torch.equal(latents, out.latents)
    assert torch.isfinite(out.sample).all()


def test_default_config_shapes():
    ae = ParameterAutoencoder(in_dim=100).eval()
    assert ae.latent_shape == (4, 13)  # padded to 104 = 8 * 13
    assert ae(torch.randn(2, 100)).sample.shape == (2, 100)


def test_odd_kernel_size_is_rejected():
    with pytest.raises(ValueError, match="even kernel_size"):
        ParameterAutoencoder(in_dim=16, kernel_size=3)
    ae = ParameterAutoencoder(in_dim=37, block_out_channels=(4, 4), kernel_size=6).eval()
    assert ae(torch.randn(2, 37)).sample.shape == (2, 37)


@torch.no_grad()
def test_eval_is_deterministic_and_training_adds_noise():
    ae = _cheap(37)
    x = torch.randn(4, 37)
    ae.eval()
    a, b = ae(x), ae(x)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.latents, b.latents)
    ae.train()
    c, d = ae(x), ae(x)
    assert not torch.equal(c.sample, d.sample)
    assert not torch.equal(c.latents, d.latents)
    # the noise is at the configured scale: latent differences look like N(0, 2 * 0.1^2)
    diff = (c.latents - a.latents).std()
    assert 0.03 < float(diff) < 0.5
    # no noise configured -> training mode equals eval mode
    quiet = _cheap(37, input_noise=0.0, latent_noise=0.0).train()
    assert torch.equal(quiet(x).sample, quiet(x).sample)


def test_normalization_and_param_round_trip_helpers(bn_layout):
    ae = ParameterAutoencoder(
        in_dim=bn_layout.dim, block_out_channels=(4, 4), latent_channels=2, pos_channels=1,
        param_layout=bn_layout.to_list(),
    )
    assert ae.param_layout == bn_layout
    assert torch.equal(ae.log_mask, bn_layout.log_space_mask())
    params = torch.rand(10, bn_layout.dim, generator=torch.Generator().manual_seed(0)) + 0.5
    ae.fit_normalization(params)
    assert not torch.equal(ae.norm_mean, torch.zeros(bn_layout.dim))
    torch.testing.assert_close(ae.denormalize(ae.normalize(params)), params, rtol=1e-5, atol=1e-5)
    scaled = ae.set_latent_scaling(params)
    latents = ae.params_to_latents(params)
    assert torch.equal(scaled, latents)  # the latents it computed: fit_pdiff does not encode again
    assert latents.shape == (10,) + ae.latent_shape
    assert float(latents.std()) == pytest.approx(1.0, rel=1e-3)
    assert ae.latents_to_params(latents).shape == params.shape


def test_save_load_round_trip(bn_layout, tmp_path):
    ae = ParameterAutoencoder(
        in_dim=bn_layout.dim, block_out_channels=(4, 4), latent_channels=2, pos_channels=1,
        param_layout=bn_layout.to_list(), norm_mode="per_tensor",
    )
    params = torch.rand(10, bn_layout.dim, generator=torch.Generator().manual_seed(0)) + 0.5
    ae.fit_normalization(params)
    ae.set_latent_scaling(params)
    factor = ae.config.scaling_factor
    ae.eval()
    ae.save_pretrained(str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert "diffusion_pytorch_model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)

    loaded = ParameterAutoencoder.from_pretrained(str(tmp_path))
    assert not loaded.training
    for name in ("norm_mean", "norm_std", "log_mask"):
        assert torch.equal(getattr(loaded, name), getattr(ae, name)), name
    assert loaded.log_mask.dtype == torch.bool
    assert loaded.config.scaling_factor == factor
    assert loaded.param_layout == bn_layout
    assert loaded.config.norm_mode == "per_tensor"
    for name, value in ae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = ae.normalize(params)
    assert torch.equal(loaded(x).sample, ae(x).sample)
    latents = ae.params_to_latents(params)
    assert torch.equal(loaded.params_to_latents(params), latents)
    assert torch.equal(loaded.latents_to_params(latents), ae.latents_to_params(latents))


def test_dimension_errors(bn_layout):
    ae = ParameterAutoencoder(
        in_dim=bn_layout.dim, block_out_channels=(4, 4), latent_channels=2, pos_channels=1,
        param_layout=bn_layout.to_list(),
    )
    wrong = torch.zeros(3, bn_layout.dim + 1)
    for call in (ae, ae.encode, ae.normalize, ae.fit_normalization, ae.params_to_latents, ae.set_latent_scaling):
        with pytest.raises(DimensionMismatchError, match=f"\\(batch, {bn_layout.dim}\\)|\\(N, {bn_layout.dim}\\)"):
            call(wrong)
    with pytest.raises(DimensionMismatchError):
        ae.encode(torch.zeros(bn_layout.dim))  # missing batch dim
    with pytest.raises(DimensionMismatchError, match="latents"):
        ae.decode(torch.zeros(2, 2, ae.latent_length + 1))
    with pytest.raises(DimensionMismatchError):
        ae.decode(torch.zeros(2, 3, ae.latent_length))
    with pytest.raises(DimensionMismatchError, match="param_layout"):
        ParameterAutoencoder(in_dim=bn_layout.dim + 1, param_layout=bn_layout.to_list())
    with pytest.raises(DimensionMismatchError):
        train_autoencoder(ae, wrong, PDiffConfig(ae_steps=1), progress=False)


def test_dataset_dimension_mismatch(bn_layout):
    """A checkpoint dataset of another selection cannot be used with this autoencoder."""
    ae = ParameterAutoencoder(
        in_dim=bn_layout.dim, block_out_channels=(4, 4), param_layout=bn_layout.to_list()
    )
    other = ParamLayout.from_list([{"name": "w", "shape": [bn_layout.dim + 5]}])
    ds = make_checkpoint_dataset(torch.zeros(4, other.dim), other)
    with pytest.raises(DimensionMismatchError):
        check_dataset_layout(ds, ae.param_layout, "the autoencoder")
    with pytest.raises(DimensionMismatchError):
        ae.fit_normalization(checkpoint_params(ds))


def test_non_finite_training_checkpoints(bn_layout):
    ae = ParameterAutoencoder(in_dim=bn_layout.dim, block_out_channels=(4, 4))
    params = torch.rand(4, bn_layout.dim)
    params[1, 2] = float("nan")
    with pytest.raises(NonFiniteParametersError):
        ae.fit_normalization(params)
    assert torch.equal(ae.norm_mean, torch.zeros(bn_layout.dim))  # nothing was stored
    params[1, 2] = float("-inf")
    with pytest.raises(NonFiniteParametersError):
        ae.fit_normalization(params)


@pytest.mark.parametrize("norm_mode", ["per_dimension", "per_tensor"])
def test_large_inputs_get_the_same_statistics_block_by_block(bn_layout, norm_mode):
    g = torch.Generator().manual_seed(0)
    params = torch.randn(bn_layout.dim, generator=g) + torch.rand(9, bn_layout.dim, generator=g)
    params[:, bn_layout.log_space_mask()] = params[:, bn_layout.log_space_mask()].abs() + 0.1
    whole = _cheap(bn_layout.dim, param_layout=bn_layout.to_list(), norm_mode=norm_mode)
    whole.fit_normalization(params)
    blocks = _cheap(bn_layout.dim, param_layout=bn_layout.to_list(), norm_mode=norm_mode)
    blocks.decode_chunk_entries = 9 * 5  # column blocks of 5 (per_dimension), one tensor at a time (per_tensor)
    blocks.fit_normalization(params)
    torch.testing.assert_close(blocks.norm_mean, whole.norm_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(blocks.norm_std, whole.norm_std, rtol=1e-6, atol=1e-7)
    assert not torch.equal(whole.norm_std, torch.ones(bn_layout.dim))


def test_chunked_decode_matches_one_call_for_conv():
    ae = _cheap(37).eval()
    latents = torch.randn(5, *ae.latent_shape)
    whole = ae.latents_to_params(latents)
    ae.decode_chunk_entries = 2 * 37
    torch.testing.assert_close(ae.latents_to_params(latents), whole, rtol=0, atol=1e-6)
