"""``autoencoder_type="auto"`` (the default): the linear code once the training checkpoints span its latent, p-diff's
learned autoencoders below that; ``PDiffConfig.paper()`` keeps p-diff's recipe."""

import dataclasses

import torch

from pdiff_hf import (
    LinearParameterAutoencoder,
    ParameterAutoencoder,
    ParamLayout,
    PDiffConfig,
    fit_pdiff,
)
from pdiff_hf.training.config import resolve_autoencoder_type

LAYOUT = ParamLayout.from_module(torch.nn.Linear(11, 1))  # D = 12
FAST = dict(ae_steps=2, denoiser_steps=2, lr_warmup_steps=0, ae_linear_latent_length=2)  # linear latent 4 x 2 = 8


def _fit(num_rows: int, config: PDiffConfig):
    params = torch.randn(num_rows, LAYOUT.dim, generator=torch.Generator().manual_seed(0))
    return fit_pdiff(params, LAYOUT, config, progress=False)


def test_auto_is_linear_when_the_checkpoints_span_the_latent():
    pipe = _fit(9, PDiffConfig(**FAST))  # N - 1 = 8 = 4 x 2 <= D = 12
    assert isinstance(pipe.autoencoder, LinearParameterAutoencoder)
    assert pipe.autoencoder.latent_shape == (4, 2)
    assert pipe(num_models=3).params.shape == (3, LAYOUT.dim)


def test_auto_falls_back_to_the_learned_autoencoder_with_too_few_checkpoints():
    pipe = _fit(8, PDiffConfig(**FAST))  # N - 1 = 7 < 8
    assert isinstance(pipe.autoencoder, ParameterAutoencoder)
    wide = dataclasses.replace(PDiffConfig(**FAST), ae_linear_latent_length=4)  # 16 values for D = 12: padding
    assert isinstance(_fit(40, wide).autoencoder, ParameterAutoencoder)


def test_paper_recipe_keeps_the_conv_autoencoder_and_ddpm():
    config = PDiffConfig.paper(**FAST)
    assert (config.autoencoder_type, config.latent_noise, config.input_noise, config.objective) == (
        "learned", 0.1, 0.001, "ddpm")  # fmt: skip
    assert isinstance(_fit(40, config).autoencoder, ParameterAutoencoder)


def test_resolve_is_deterministic_and_leaves_explicit_types_alone():
    config = PDiffConfig(**FAST)
    assert resolve_autoencoder_type(config, 12, 100).autoencoder_type == "linear"
    assert resolve_autoencoder_type(config, 12, 5).autoencoder_type == "conv"
    assert resolve_autoencoder_type(config, 60_000, 5).autoencoder_type == "token"
    explicit = dataclasses.replace(config, autoencoder_type="conv")
    assert resolve_autoencoder_type(explicit, 12, 100) is explicit
