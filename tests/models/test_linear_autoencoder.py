"""LinearParameterAutoencoder: shapes, exact round trip in the span of the checkpoints, whitening, block-wise fitting,
save/load, determinism, bad input, and held-out reconstruction equal to PCA computed independently."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pdiff_hf.checkpoints.rows import CheckpointRows
from pdiff_hf.errors import (
    DimensionMismatchError,
    NonFiniteParametersError,
    PDiffConfigError,
)
from pdiff_hf.layout import ParamLayout, ParamSpec
from pdiff_hf.models.autoencoder_base import ParameterAutoencoderOutput
from pdiff_hf.models.linear_autoencoder import LinearParameterAutoencoder

# a BatchNorm layer: running_var entries are standardized in log space
LAYOUT = ParamLayout((
    ParamSpec("bn.weight", (12,)), ParamSpec("bn.bias", (12,)),
    ParamSpec("bn.running_mean", (12,), kind="buffer"), ParamSpec("bn.running_var", (12,), kind="buffer"),
))  # fmt: skip
D = LAYOUT.dim  # 48


def _checkpoints(n: int, rank: int, dim: int = D, seed: int = 0) -> torch.Tensor:
    """``(n, dim)`` rows around a mean on a random ``rank``-dimensional subspace, with spread per direction."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(1.0, 0.05, rank)
    rows = torch.randn(dim, generator=g) + (torch.randn(n, rank, generator=g) * spread) @ torch.randn(rank, dim, generator=g)
    return rows


def _fitted(params: torch.Tensor, **kwargs) -> LinearParameterAutoencoder:
    options = {"in_dim": params.shape[1], "latent_channels": 2, "latent_length": 4}
    ae = LinearParameterAutoencoder(**{**options, **kwargs})
    ae.fit_normalization(params)
    ae.fit_basis(params)
    ae.set_latent_scaling(params)
    return ae.eval()


def test_shapes_and_output_type():
    params = _checkpoints(20, 12)
    ae = _fitted(params, latent_channels=3, latent_length=5)
    assert ae.latent_shape == (3, 5) and ae.num_components == 15 and ae.rank == 12
    assert ae.basis.shape == (15, D) and ae.basis_mean.shape == (D,) and ae.component_scale.shape == (15,)
    assert ae.param_layout is None and not bool(ae.log_mask.any())
    with_layout = LinearParameterAutoencoder(in_dim=D, param_layout=LAYOUT.to_list())
    assert with_layout.param_layout == LAYOUT and bool(with_layout.log_mask[36:].all())
    assert not bool(with_layout.log_mask[:36].any())
    x = ae.normalize(params[:4])
    assert ae.encode(x).shape == (4, 3, 5) and ae.decode(ae.encode(x)).shape == (4, D)
    out = ae(x)
    assert isinstance(out, ParameterAutoencoderOutput) and out.sample.shape == (4, D) and out.latents.shape == (4, 3, 5)
    sample, latents = ae(x, return_dict=False)
    assert torch.equal(sample, out.sample) and torch.equal(latents, out.latents)
    assert ae.params_to_latents(params).shape == (20, 3, 5)
    assert ae.latents_to_params(ae.params_to_latents(params)).dtype == torch.float32
    assert sum(p.numel() for p in ae.parameters()) == 0  # nothing is trained by gradient descent


@pytest.mark.parametrize("norm_mode", ["per_dimension", "per_tensor"])
def test_exact_round_trip_in_the_span_of_the_checkpoints(norm_mode):
    # K = N - 1 = 8: the code spans every affine combination of the 9 checkpoints (rank 8 around their mean)
    params = _checkpoints(9, 20, dim=30)
    ae = _fitted(params, norm_mode=norm_mode)
    assert ae.rank == 8
    weights = torch.randn(6, 9, generator=torch.Generator().manual_seed(1))
    weights = weights / weights.sum(1, keepdim=True)  # affine combinations (weights sum to 1), extrapolating too
    z = weights @ ae.normalize(params)  # points of the affine span in normalized space
    x = ae.denormalize(z)
    for y in (params, x):
        rec = ae.latents_to_params(ae.params_to_latents(y))
        torch.testing.assert_close(rec, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    # a direction outside the span is removed: the reconstruction is the projection
    off = torch.randn(1, 30, generator=torch.Generator().manual_seed(2))
    z_off = ae.normalize(params[:1]) + off
    assert (ae(z_off).sample - z_off).norm() > 0.1 * off.norm()


def test_round_trip_with_log_space_entries():
    # BatchNorm running variances (positive) are in log space: the span is taken there
    params = _checkpoints(13, 30)
    params[:, 36:] = params[:, 36:].abs() + 0.1
    ae = _fitted(params, param_layout=LAYOUT.to_list(), latent_channels=3, latent_length=4)
    rec = ae.latents_to_params(ae.params_to_latents(params))
    torch.testing.assert_close(rec, params, rtol=1e-5, atol=1e-5)
    assert bool((ae.latents_to_params(3 * torch.randn(5, 3, 4))[:, 36:] > 0).all())


def test_whitened_coefficients_and_orthonormal_basis():
    params = _checkpoints(40, 30)
    ae = _fitted(params)
    coeffs = ae.encode(ae.normalize(params)).flatten(1)  # (N, K) before scaling_factor
    torch.testing.assert_close(coeffs.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(coeffs.std(0), torch.ones(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(ae.basis @ ae.basis.T, torch.eye(8), atol=1e-6, rtol=0)
    assert bool((ae.component_scale[:-1] >= ae.component_scale[1:]).all())  # decreasing variance
    # unit-variance columns: the std of all N * K values is sqrt(K (N - 1) / (N K - 1))
    assert ae.config.scaling_factor == pytest.approx(((40 * 8 - 1) / (8 * 39)) ** 0.5, rel=1e-5)
    # without whitening the coefficients keep the components' own spread
    plain = _fitted(params, whiten=False)
    plain_coeffs = plain.encode(plain.normalize(params)).flatten(1)
    torch.testing.assert_close(plain_coeffs.std(0), ae.component_scale, rtol=1e-4, atol=0)
    torch.testing.assert_close(plain(plain.normalize(params)).sample, ae(ae.normalize(params)).sample, atol=1e-5, rtol=0)


def test_slots_beyond_the_rank_are_zero_and_ignored_on_decode():
    params = _checkpoints(30, 5)  # rank 5 < K = 8
    ae = _fitted(params)
    assert ae.rank == 5
    assert not bool(ae.basis[5:].any()) and not bool(ae.component_scale[5:].any())
    latents = ae.params_to_latents(params)
    assert not bool(latents.flatten(1)[:, 5:].any())
    # the scaling factor is taken over the slots in use
    assert float(latents.flatten(1)[:, :5].std()) == pytest.approx(1.0, rel=1e-4)
    noisy = latents.clone()
    noisy.view(30, -1)[:, 5:] = torch.randn(30, 3)
    torch.testing.assert_close(ae.latents_to_params(noisy), ae.latents_to_params(latents), rtol=0, atol=0)
    torch.testing.assert_close(ae.latents_to_params(latents), params, rtol=1e-5, atol=1e-5)


def test_all_equal_checkpoints_give_rank_zero_and_the_mean():
    params = _checkpoints(10, 1)[:1].expand(10, -1).clone()
    ae = _fitted(params)
    assert ae.rank == 0 and ae.config.scaling_factor == 1.0
    assert not bool(ae.params_to_latents(params).any())
    torch.testing.assert_close(ae.latents_to_params(torch.randn(3, 2, 4)), params[:3], rtol=1e-6, atol=1e-6)


def test_block_wise_fit_and_checkpoint_rows_equal_one_block():
    params = _checkpoints(25, 10, dim=D)
    whole = _fitted(params)
    blocked = LinearParameterAutoencoder(in_dim=D, latent_channels=2, latent_length=4)
    blocked.decode_chunk_entries = 25 * 7  # blocks of 7 columns: 7 blocks, the last one partial
    blocked.fit_normalization(params)
    blocked.fit_basis(CheckpointRows(params))
    for name in ("basis", "basis_mean", "component_scale"):
        torch.testing.assert_close(getattr(blocked, name), getattr(whole, name), rtol=1e-5, atol=1e-6)


def test_fit_is_deterministic():
    params = _checkpoints(30, 12)
    a, b = _fitted(params), _fitted(params)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert a.config.scaling_factor == b.config.scaling_factor
    assert torch.equal(a.params_to_latents(params), b.params_to_latents(params))


def test_save_and_load_are_bit_identical(tmp_path):
    params = _checkpoints(30, 12)
    ae = _fitted(params, param_layout=LAYOUT.to_list(), whiten=True)
    ae.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    saved = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert sorted(saved) == ["basis", "basis_mean", "component_scale", "log_mask", "norm_mean", "norm_std"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "LinearParameterAutoencoder" and config["latent_length"] == 4
    loaded = LinearParameterAutoencoder.from_pretrained(tmp_path).eval()
    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(ae.config)
    for name, tensor in ae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert torch.equal(loaded.params_to_latents(params), ae.params_to_latents(params))
    latents = torch.randn(4, 2, 4)
    assert torch.equal(loaded.latents_to_params(latents), ae.latents_to_params(latents))


def test_heldout_reconstruction_equals_pca_from_torch_linalg():
    params = _checkpoints(60, 25, dim=D, seed=3)
    train, held = params[:50], params[50:]
    ae = _fitted(train, param_layout=LAYOUT.to_list(), latent_channels=2, latent_length=5)
    # PCA of the standardized training rows, independently: SVD of the centred matrix in float64
    z_train, z_held = ae.normalize(train).double(), ae.normalize(held).double()
    mean = z_train.mean(0)
    _, s, vh = torch.linalg.svd(z_train - mean, full_matrices=False)
    basis = vh[:10]
    z_pca = (z_held - mean) @ basis.T @ basis + mean
    z_ae = ae(ae.normalize(held)).sample.double()
    torch.testing.assert_close(z_ae, z_pca, rtol=0, atol=1e-5)
    torch.testing.assert_close(ae.component_scale.double(), s[:10] / (50 - 1) ** 0.5, rtol=1e-5, atol=0)
    # the same in raw units through the public helpers
    torch.testing.assert_close(ae.latents_to_params(ae.params_to_latents(held)), ae.denormalize(z_pca.float()),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


# ------------------------------------------------------------------------------------------------- bad input
def test_latent_larger_than_the_checkpoints_span_is_refused_before_any_work():
    params = _checkpoints(8, 5)
    ae = LinearParameterAutoencoder(in_dim=D, latent_channels=2, latent_length=4)  # K = 8 > N - 1 = 7
    ae.fit_normalization(params)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    with pytest.raises(PDiffConfigError, match=r"at most N - 1 = 7 values .* found latent_channels x latent_length = 2 x 4 = 8"):
        ae.fit_basis(params)
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in before.items())


def test_bad_rows_are_refused_before_any_buffer_changes():
    params = _checkpoints(20, 5)
    ae = _fitted(params)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    with pytest.raises(DimensionMismatchError, match=r"expected training checkpoints of shape \(N, 48\), found \(20, 47\)"):
        ae.fit_basis(params[:, :47])
    bad = params.clone()
    bad[7, 40] = float("nan")
    ae.decode_chunk_entries = 20 * 16  # the NaN is in the last of three blocks
    with pytest.raises(NonFiniteParametersError):
        ae.fit_basis(bad)
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in before.items())
    with pytest.raises(DimensionMismatchError, match=r"expected latents of shape \(batch, 2, 4\), found \(3, 8\)"):
        ae.decode(torch.zeros(3, 8))
    with pytest.raises(DimensionMismatchError, match=r"expected normalized parameters of shape \(batch, 48\)"):
        ae.encode(torch.zeros(3, 40))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_channels": 0}, "expected latent_channels to be an integer >= 1, found 0"),
        ({"latent_length": 2.5}, "expected latent_length to be an integer >= 1, found 2.5"),
        ({"whiten": "yes"}, "expected whiten to be True or False, found 'yes'"),
        ({"norm_mode": "global"}, r"expected norm_mode in \('per_dimension', 'per_tensor'\), found 'global'"),
    ],
)
def test_bad_config_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearParameterAutoencoder(**{"in_dim": D, **kwargs})


def test_layout_of_another_size_is_refused():
    with pytest.raises(DimensionMismatchError, match="param_layout describes D=48, in_dim is 50"):
        LinearParameterAutoencoder(in_dim=50, param_layout=LAYOUT.to_list())


# ------------------------------------------------------------------------------------------- fit_pdiff, pipeline
def _linear_config(**kwargs):
    from pdiff_hf import PDiffConfig

    options = {"autoencoder_type": "linear", "latent_channels": 2, "ae_linear_latent_length": 4, "denoiser_steps": 5,
               "denoiser_block_out_channels": (8, 16), "lr_warmup_steps": 2}  # fmt: skip
    return PDiffConfig(**{**options, **kwargs})


def test_fit_pdiff_fits_the_basis_and_the_pipeline_round_trips(tmp_path):
    import datasets

    from pdiff_hf import LinearParameterAutoencoder as Exported
    from pdiff_hf import PDiffPipeline, fit_pdiff, make_checkpoint_dataset
    from pdiff_hf.training.fit import train_autoencoder
    from pdiff_hf.training.training_utils import build_autoencoder

    assert Exported is LinearParameterAutoencoder
    params = _checkpoints(30, 12)
    config = _linear_config()
    assert isinstance(build_autoencoder(LAYOUT, config), LinearParameterAutoencoder)
    pipe = fit_pdiff(params, LAYOUT, config, progress=False)
    pipe.set_progress_bar_config(disable=True)
    ae = pipe.autoencoder
    assert isinstance(ae, LinearParameterAutoencoder) and ae.latent_shape == (2, 4) and ae.rank == 8
    assert ae.param_layout == LAYOUT and ae.config.whiten is True
    direct = _fitted(params, param_layout=LAYOUT.to_list())  # fit_pdiff fits what the model's methods fit
    for name, tensor in direct.state_dict().items():
        assert torch.equal(tensor, ae.state_dict()[name]), name
    assert train_autoencoder(LinearParameterAutoencoder(**ae.config), params, config, progress=False) == []
    # a checkpoint dataset (read a block at a time) gives the same code
    datasets.disable_progress_bars()
    rows_ae = build_autoencoder(LAYOUT, config)
    train_autoencoder(rows_ae, CheckpointRows(make_checkpoint_dataset(params, LAYOUT)), config, progress=False)
    for name in ("basis", "component_scale", "norm_mean"):
        torch.testing.assert_close(getattr(rows_ae, name), getattr(ae, name), rtol=1e-5, atol=1e-6)

    out = pipe(num_models=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).params
    assert out.shape == (3, D) and bool(torch.isfinite(out).all())
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["autoencoder"] == ["pdiff_autoencoder", "LinearParameterAutoencoder"]
    again = PDiffPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.autoencoder, LinearParameterAutoencoder)
    for name, tensor in ae.state_dict().items():
        assert torch.equal(tensor, again.autoencoder.state_dict()[name]), name
    same = again(num_models=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).params
    assert torch.equal(out, same)


def test_fit_pdiff_refuses_a_latent_larger_than_the_span_before_building(monkeypatch):
    from pdiff_hf import fit_pdiff
    from pdiff_hf.training import fit as fit_module

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the latent size was checked")

    monkeypatch.setattr(fit_module, "build_autoencoder", never)
    with pytest.raises(PDiffConfigError, match=r"latent_channels x config.ae_linear_latent_length <= N - 1 = 7 .*"
                                               r"found 2 x 4 = 8"):  # fmt: skip
        fit_pdiff(_checkpoints(8, 5), LAYOUT, _linear_config(), progress=False)
    with pytest.raises(PDiffConfigError, match=r"expected config.ae_linear_latent_length to be .*found 0"):
        fit_pdiff(_checkpoints(8, 5), LAYOUT, _linear_config(ae_linear_latent_length=0), progress=False)


STOCK_LOADER = """
import importlib.abc, json, sys, torch
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pdiff_hf" or name.startswith("pdiff_hf."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
out = pipe(num_models=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
print(json.dumps({"autoencoder": type(pipe.autoencoder).__name__, "params": out.params.tolist(),
                  "pdiff_modules": [m for m in sys.modules if m.startswith("pdiff_hf")]}))
"""


def test_stock_diffusers_loads_a_linear_pipeline_without_pdiff_hf(tmp_path):
    import os
    import subprocess
    import sys

    from pdiff_hf import fit_pdiff

    pipe = fit_pdiff(_checkpoints(30, 12), LAYOUT, _linear_config(), progress=False)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(num_models=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).params
    pipe.save_pretrained(tmp_path / "pipe")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", STOCK_LOADER, str(tmp_path / "pipe")], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["autoencoder"] == "LinearParameterAutoencoder" and result["pdiff_modules"] == []
    assert torch.equal(torch.tensor(result["params"]), expected)
