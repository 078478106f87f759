"""TokenParameterAutoencoder: token cutting, padding kept out of the loss, save/load, the pipeline and fit_pdiff."""

import pytest
import torch

from pdiff_hf import (
    ParamLayout,
    ParamSpec,
    PDiffConfig,
    PDiffPipeline,
    TokenParameterAutoencoder,
    fit_pdiff,
)
from pdiff_hf.models.token_autoencoder import default_token_size
from pdiff_hf.training.config import choose_autoencoder_type
from pdiff_hf.training.training_utils import (
    autoencoder_loss,
    build_autoencoder,
    build_denoiser,
    sampling_scheduler_for,
)

LAYOUT = ParamLayout((ParamSpec("fc.weight", (10, 7)), ParamSpec("fc.bias", (10,)), ParamSpec("out.weight", (3, 10))))


def _tiny(**kwargs) -> TokenParameterAutoencoder:
    torch.manual_seed(0)
    options = dict(in_dim=LAYOUT.dim, token_size=16, hidden_dim=16, latent_channels=2, pos_dim=4,
                   param_layout=LAYOUT.to_list())  # fmt: skip
    return TokenParameterAutoencoder(**{**options, **kwargs})


def _checkpoints(n: int = 40, dim: int = LAYOUT.dim, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g) + 0.1 * torch.randn(n, 3, generator=g) @ torch.randn(3, dim, generator=g)


def test_tokens_are_per_tensor_and_round_trip_exactly():
    ae = _tiny().eval()
    # 70 -> 5 tokens (10 padding), 10 -> 1 (6 padding), 30 -> 2 (2 padding)
    assert ae.num_tokens == 8 and ae.latent_shape == (2, 8)
    x = torch.randn(3, LAYOUT.dim)
    tokens = ae.to_tokens(x)
    assert tokens.shape == (3, 8, 16)
    assert torch.equal(tokens[:, :5].reshape(3, -1)[:, :70], x[:, :70])
    assert torch.equal(tokens[:, 5, :10], x[:, 70:80]) and torch.equal(tokens[:, 6].reshape(3, -1)[:, :16], x[:, 80:96])
    padding = torch.cat([tokens[:, 4, 6:], tokens[:, 5, 10:], tokens[:, 7, 14:]], dim=1)
    assert padding.shape == (3, 10 + 6 + 2) and not padding.any()
    assert torch.equal(ae.from_tokens(tokens), x)
    assert torch.equal(ae.token_tensor_id, torch.tensor([0, 0, 0, 0, 0, 1, 2, 2]))


def test_shapes_without_layout_and_token_size_one():
    ae = TokenParameterAutoencoder(in_dim=5, token_size=1, hidden_dim=4, latent_channels=1, pos_dim=2).eval()
    x = torch.randn(2, 5)
    assert ae.latent_shape == (1, 5) and torch.equal(ae.from_tokens(ae.to_tokens(x)), x)
    out = ae(x)
    assert out.sample.shape == (2, 5) and out.latents.shape == (2, 1, 5)


def test_reconstruction_has_real_entries_only_and_padding_gets_no_gradient():
    ae = _tiny().eval()
    x = torch.randn(4, LAYOUT.dim)
    out = ae(x)
    assert out.sample.shape == (4, LAYOUT.dim) and out.latents.shape == (4, 2, 8)
    sample, latents = ae(x, return_dict=False)
    assert torch.equal(sample, out.sample) and torch.equal(latents, out.latents)
    # the loss sees only real entries: outputs in padding slots get no gradient
    seen = []

    def keep(module, inputs, output):
        output.retain_grad()
        seen.append(output)

    handle = ae.dec_out.register_forward_hook(keep)
    autoencoder_loss(ae, x).backward()
    handle.remove()
    grad = seen[0].grad  # (B, N, T)
    assert grad[:, 4, 6:].abs().sum() == 0 and grad[:, 5, 10:].abs().sum() == 0 and grad[:, 7, 14:].abs().sum() == 0
    assert grad[:, 4, :6].abs().sum() > 0


def test_deterministic_under_a_seed_and_eval_is_noise_free():
    a, b = _tiny(), _tiny()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(2, LAYOUT.dim)
    a.eval()
    assert torch.equal(a(x).sample, a(x).sample)
    a.train()
    torch.manual_seed(1)
    first = a(x).sample
    torch.manual_seed(1)
    assert torch.equal(first, a(x).sample)


def test_parameter_count_grows_only_through_position_codes():
    small = TokenParameterAutoencoder(in_dim=1_000, token_size=64, hidden_dim=8, latent_channels=2, pos_dim=4)
    large = TokenParameterAutoencoder(in_dim=100_000, token_size=64, hidden_dim=8, latent_channels=2, pos_dim=4)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(large) - count(small) == (large.num_tokens - small.num_tokens) * 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"token_size": 0}, "token_size to be an integer >= 1, found 0"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"latent_channels": -1}, "latent_channels"),
        ({"mix_kernel_size": 2}, "odd mix_kernel_size"),
        ({"norm_mode": "global"}, r"norm_mode in \('per_dimension', 'per_tensor'\)"),
        ({"latent_noise": -0.1}, "latent_noise >= 0"),
    ],
)
def test_bad_config_raises_naming_valid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)


def test_layout_of_another_dim_is_rejected():
    from pdiff_hf import DimensionMismatchError

    with pytest.raises(DimensionMismatchError, match="D=110, in_dim is 111"):
        _tiny(in_dim=111)
    with pytest.raises(DimensionMismatchError, match=r"expected latents of shape \(batch, 2, 8\)"):
        _tiny().decode(torch.zeros(1, 2, 7))


def test_choice_by_dimension():
    assert choose_autoencoder_type(49_999) == "conv" and choose_autoencoder_type(50_000) == "token"
    assert choose_autoencoder_type(10, "token") == "token" and choose_autoencoder_type(10**6, "conv") == "conv"
    assert choose_autoencoder_type(10, "linear") == "linear"
    with pytest.raises(ValueError, match=r"autoencoder_type in \('auto', 'learned', 'conv', 'token', 'linear'\), found 'tokens'"):
        choose_autoencoder_type(10, "tokens")
    # "auto" takes the linear code once the training checkpoints span its latent, "learned" never does
    assert choose_autoencoder_type(100, "auto", num_rows=65, linear_size=64) == "linear"
    assert choose_autoencoder_type(100, "auto", num_rows=64, linear_size=64) == "conv"
    assert choose_autoencoder_type(10**6, "auto", num_rows=64, linear_size=64) == "token"
    assert choose_autoencoder_type(100, "learned", num_rows=1000, linear_size=64) == "conv"
    assert choose_autoencoder_type(32, "auto", num_rows=1000, linear_size=64) == "conv"  # a code longer than D: no
    assert default_token_size(49_999) == 256 and default_token_size(50_000) == 1024
    assert default_token_size(499_999) == 1024 and default_token_size(500_000) == 4096
    assert type(build_autoencoder(LAYOUT, PDiffConfig())).__name__ == "ParameterAutoencoder"
    ae = build_autoencoder(LAYOUT, PDiffConfig(autoencoder_type="token", ae_token_size=32))
    assert isinstance(ae, TokenParameterAutoencoder) and ae.config.token_size == 32 and ae.latent_shape == (8, 5)


def test_save_and_load_round_trip_with_the_pipeline(tmp_path):
    config = PDiffConfig(autoencoder_type="token", ae_token_size=16, ae_token_hidden_dim=16,
                         denoiser_block_out_channels=(8, 16))  # fmt: skip
    torch.manual_seed(0)
    ae = build_autoencoder(LAYOUT, config)
    ae.fit_normalization(_checkpoints())
    ae.set_latent_scaling(_checkpoints())
    denoiser = build_denoiser(ae, config)
    pipe = PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_models=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0)).params
    assert out.shape == (3, LAYOUT.dim) and torch.isfinite(out).all()

    ae.save_pretrained(tmp_path / "ae")
    loaded = TokenParameterAutoencoder.from_pretrained(tmp_path / "ae")
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(ae.config)
    for (name, p), (_, q) in zip(ae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name

    pipe.save_pretrained(tmp_path / "pipe")
    again = PDiffPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.autoencoder, TokenParameterAutoencoder)
    same = again(num_models=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0)).params
    assert torch.equal(out, same)


def test_fit_pdiff_with_the_token_autoencoder_reduces_reconstruction_error():
    params = _checkpoints(n=48)
    config = PDiffConfig(autoencoder_type="token", ae_token_size=16, ae_token_hidden_dim=32, ae_steps=150,
                         denoiser_steps=5, denoiser_block_out_channels=(8, 16), lr_warmup_steps=5)  # fmt: skip
    torch.manual_seed(config.seed)
    untrained = build_autoencoder(LAYOUT, config).eval()
    untrained.fit_normalization(params)
    x = untrained.normalize(params)
    with torch.no_grad():
        before = float(((untrained(x).sample - x) ** 2).mean())
    pipe = fit_pdiff(params, LAYOUT, config, progress=False)
    assert isinstance(pipe.autoencoder, TokenParameterAutoencoder)
    with torch.no_grad():
        after = float(((pipe.autoencoder(x).sample - x) ** 2).mean())
    assert after < 0.5 * before, (before, after)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_models=4, num_inference_steps=5).params.shape == (4, LAYOUT.dim)


def test_too_many_tokens_is_refused_before_building_naming_a_size_that_fits():
    match = r"at most 65536 tokens, found 70000 for D=70000 with token_size=1 \(token_size must be at least 2"
    with pytest.raises(ValueError, match=match):
        TokenParameterAutoencoder(in_dim=70_000, token_size=1)
    assert TokenParameterAutoencoder(in_dim=70_000, token_size=2, hidden_dim=4, pos_dim=2).num_tokens == 35_000


def test_chunked_decode_matches_one_call():
    ae = _tiny().eval()
    latents = torch.randn(7, *ae.latent_shape)
    whole = ae.latents_to_params(latents)
    ae.decode_chunk_entries = 2 * LAYOUT.dim  # chunks of 2 models: 4 chunks, the last one of 1
    chunked = ae.latents_to_params(latents)
    assert chunked.shape == (7, LAYOUT.dim) and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
