"""PDiffConfig.validate: every nonsense setting is a PDiffConfigError naming the field, the range and the value,
raised by fit_pdiff and the builders before any model is built or trained."""

import dataclasses
import math

import pytest
import torch

from pdiff_hf import ParamLayout
from pdiff_hf.errors import PDiffConfigError
from pdiff_hf.training import fit as fit_module
from pdiff_hf.training.config import PDiffConfig
from pdiff_hf.training.config_checks import RULES, rule_for, validate_config
from pdiff_hf.training.training_utils import build_autoencoder, build_denoiser

torch.set_num_threads(1)
LAYOUT = ParamLayout.from_module(torch.nn.Linear(3, 2))  # D = 8

# (field, nonsense value, text the message must contain): the kinds of nonsense of issue 19 and their neighbours
NONSENSE = [
    ("denoiser_block_out_channels", (12,), "multiple of the denoiser's 8 group-norm groups"),
    ("prediction_type", "x0", "'epsilon', 'sample', 'v_prediction'"),
    ("beta_schedule", "cubic", "beta schedule that diffusers"),
    ("ema_max_decay", 1.5, "(0, 1)"),
    ("layers_per_block", 0, "positive integer"),
    ("lr_warmup_steps", -5, "integer >= 0"),
    ("input_noise", -1, "[0, 10]"),
    ("latent_noise", float("nan"), "finite number"),
    ("ae_steps", 0, "positive integer"),
    ("ae_learning_rate", -1e-3, "(0, 1000]"),
    ("denoiser_train_batch_size", "64", "positive integer"),
    ("ae_block_out_channels", (), "tuple of 1 to 8 integers"),
    ("norm_mode", "per_layer", "'per_dimension', 'per_tensor'"),
    ("autoencoder_type", "mlp", "'auto', 'learned', 'conv', 'token', 'linear'"),
    ("lr_scheduler", "cosine_annealing", "learning-rate schedule"),
    ("num_train_timesteps", 200_000_000, "at most 100000"),
    ("condition_dropout", 1.0, "[0, 1)"),
    ("use_ema", "yes", "True or False"),
    ("num_conditions", -1, "integer >= 0"),
    ("adam_beta2", 1.0, "[0, 1)"),
    ("adam_epsilon", 0.0, "(0, 1]"),
    ("seed", -1, "integer >= 0"),
    ("ae_token_size", 0, "None or a positive integer"),
    ("ae_patch_size", 2.5, "positive integer"),
    ("objective", "score_matching", "'ddpm', 'flow_matching'"),
    ("ae_linear_latent_length", 0, "positive integer"),
]


def test_defaults_are_valid():
    assert PDiffConfig().validate(dim=8) == PDiffConfig()


@pytest.mark.parametrize("field,value,expected", NONSENSE, ids=[f"{f}={v!r}" for f, v, _ in NONSENSE])
def test_nonsense_is_named(field, value, expected):
    config = dataclasses.replace(PDiffConfig(), **{field: value})
    with pytest.raises(PDiffConfigError) as info:
        config.validate()
    message = str(info.value)
    assert message.startswith(f"expected config.{field} to be "), message
    assert expected in message, message
    assert f"found {value!r}" in message, message


@pytest.mark.parametrize("field,value,expected", NONSENSE[:8], ids=[f"{f}={v!r}" for f, v, _ in NONSENSE[:8]])
def test_fit_pdiff_refuses_before_building(field, value, expected, monkeypatch):
    """fit_pdiff raises before any model is built (the builders must never be reached)."""

    def never(*args, **kwargs):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(fit_module, "build_autoencoder", never)
    monkeypatch.setattr(fit_module, "build_denoiser", never)
    config = dataclasses.replace(PDiffConfig(), **{field: value})
    with pytest.raises(PDiffConfigError, match=f"config.{field}"):
        fit_module.fit_pdiff(torch.randn(4, 8), LAYOUT, config, progress=False)


def test_token_size_larger_than_d():
    config = PDiffConfig(autoencoder_type="token", ae_token_size=64)
    with pytest.raises(PDiffConfigError, match=r"expected config.ae_token_size to be at most D = 8 .*found 64"):
        build_autoencoder(LAYOUT, config)
    with pytest.raises(PDiffConfigError, match="ae_token_size"):
        fit_module.fit_pdiff(torch.randn(4, 8), LAYOUT, config, progress=False)
    build_autoencoder(LAYOUT, dataclasses.replace(config, ae_token_size=8))  # D itself is fine
    # auto picks conv at D = 8: the token size is not used, so it is not an error
    build_autoencoder(LAYOUT, PDiffConfig(ae_token_size=64))


def test_patch_larger_than_d():
    with pytest.raises(PDiffConfigError, match="ae_patch_size to be at most D = 8"):
        build_autoencoder(LAYOUT, PDiffConfig(ae_patch_size=9))


def test_build_denoiser_refuses_bad_channels():
    autoencoder = build_autoencoder(LAYOUT, PDiffConfig(ae_block_out_channels=(8,), latent_channels=2))
    with pytest.raises(PDiffConfigError, match=r"denoiser_block_out_channels.*found \(8, 12\)"):
        build_denoiser(autoencoder, PDiffConfig(denoiser_block_out_channels=(8, 12)))


def test_every_field_is_checked():
    """Each field has a rule in the table or a type check from its default; a new field is checked by type."""
    for field in dataclasses.fields(PDiffConfig):
        assert rule_for(field) is not None or field.default is None, field.name
    assert set(RULES) <= {f.name for f in dataclasses.fields(PDiffConfig)}


def test_new_field_without_rule_is_type_checked():
    @dataclasses.dataclass
    class Extended(PDiffConfig):
        sampler_name: str = "dpm"
        guidance_warmup: float = 0.5

    Extended().validate()
    with pytest.raises(PDiffConfigError, match="expected config.sampler_name to be a string, found 3"):
        Extended(sampler_name=3).validate()
    with pytest.raises(PDiffConfigError, match="guidance_warmup to be a finite number.*found inf"):
        Extended(guidance_warmup=math.inf).validate()


def test_not_a_config():
    with pytest.raises(PDiffConfigError, match="expected a PDiffConfig, found a dict"):
        validate_config({"ae_steps": 1})
