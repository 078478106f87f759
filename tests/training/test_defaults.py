"""One set of defaults: the training scripts' flags, PDiffConfig (fit_pdiff) and the model classes agree."""

import dataclasses
import inspect

import pytest

from pdiff_hf import LatentUNet1DModel, ParameterAutoencoder, PDiffConfig
from pdiff_hf.training.config import conv_autoencoder_sizes

# script flag -> PDiffConfig field, per script
AUTOENCODER_FLAGS = {
    "block_out_channels": "ae_block_out_channels", "patch_size": "ae_patch_size", "latent_channels": "latent_channels",
    "input_noise": "input_noise", "latent_noise": "latent_noise", "norm_mode": "norm_mode",
    "train_batch_size": "ae_train_batch_size", "max_train_steps": "ae_steps", "learning_rate": "ae_learning_rate",
    "use_ema": "ae_use_ema", "autoencoder_type": "autoencoder_type", "token_size": "ae_token_size",
    "token_hidden_dim": "ae_token_hidden_dim", "token_latent_channels": "ae_token_latent_channels",
    "linear_latent_length": "ae_linear_latent_length", "linear_whiten": "ae_linear_whiten",
}  # fmt: skip
LDM_FLAGS = {
    "block_out_channels": "denoiser_block_out_channels", "layers_per_block": "layers_per_block",
    "num_train_timesteps": "num_train_timesteps", "beta_schedule": "beta_schedule", "prediction_type": "prediction_type",
    "train_batch_size": "denoiser_train_batch_size", "max_train_steps": "denoiser_steps",
    "learning_rate": "denoiser_learning_rate", "use_ema": "use_ema", "objective": "objective",
}  # fmt: skip
SHARED_FLAGS = ("ema_max_decay", "ema_power", "ema_inv_gamma", "lr_scheduler", "lr_warmup_steps", "adam_beta1",
                "adam_beta2", "adam_weight_decay", "adam_epsilon", "seed")  # fmt: skip


def _as_config_value(value):
    return tuple(value) if isinstance(value, list) else value


# Hub ids (never looked up: parse_args only checks that a local-looking path exists)
REQUIRED = {"train_autoencoder": ["--dataset_name", "user/ckpts"],
            "train_ldm": ["--dataset_name", "user/ckpts", "--pretrained_autoencoder_name_or_path", "user/ae"]}  # fmt: skip


@pytest.mark.parametrize("script, flags", [("train_autoencoder", AUTOENCODER_FLAGS), ("train_ldm", LDM_FLAGS)])
def test_script_defaults_are_pdiff_config_defaults(scripts, script, flags):
    args = scripts[script].parse_args(REQUIRED[script])
    config = PDiffConfig()
    mapping = {**flags, **{name: name for name in SHARED_FLAGS}}
    found = {flag: _as_config_value(getattr(args, flag)) for flag in mapping}
    expected = {flag: getattr(config, field) for flag, field in mapping.items()}
    assert found == expected


def _changed(name, value):
    """Another value of the same type, that the scripts' flag checks still accept."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, tuple):
        return tuple(2 * v for v in value)
    if isinstance(value, str):
        return value + "_changed"
    assert value is None, value  # fields chosen by D (None) or optional: an explicit value
    return (8, 8) if name == "ae_block_out_channels" else 512


@pytest.mark.parametrize("script, flags", [("train_autoencoder", AUTOENCODER_FLAGS), ("train_ldm", LDM_FLAGS)])
def test_script_defaults_are_read_from_pdiff_config_not_copied(scripts, script, flags, monkeypatch):
    """Every mapped flag follows its PDiffConfig field when the config's defaults change: the scripts name the
    fields instead of restating their values."""
    mapping = {**flags, **{name: name for name in SHARED_FLAGS}}
    changed = PDiffConfig(**{field: _changed(field, getattr(PDiffConfig(), field)) for field in set(mapping.values())})
    module = scripts[script]
    monkeypatch.setattr(module, "DEFAULTS", changed)
    args = module.parse_args(REQUIRED[script])
    found = {flag: _as_config_value(getattr(args, flag)) for flag in mapping}
    assert found == {flag: getattr(changed, field) for flag, field in mapping.items()}


def _defaults(obj):
    function = obj.__init__ if isinstance(obj, type) else obj
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def test_model_class_defaults_are_pdiff_config_defaults():
    config = PDiffConfig()
    ae = _defaults(ParameterAutoencoder)
    # the conv sizes are chosen by D: up to D = 1024 they are the class's own defaults
    for dim in (8, 128, 1024):
        assert conv_autoencoder_sizes(config, dim) == (ae["block_out_channels"], ae["patch_size"]), dim
    for name in ("latent_channels", "input_noise", "latent_noise", "norm_mode"):
        assert ae[name] == getattr(config, name), name
    denoiser = _defaults(LatentUNet1DModel)
    assert denoiser["block_out_channels"] == config.denoiser_block_out_channels
    assert denoiser["in_channels"] == config.latent_channels
    for name in ("layers_per_block", "num_train_timesteps", "beta_schedule", "prediction_type"):
        assert denoiser[name] == getattr(config, name), name


def test_the_demo_runs_the_library_defaults():
    from pdiff_hf import collect_checkpoints, train_classifier
    from pdiff_hf.demos.demo import COLLECT_LR, DemoConfig

    demo = DemoConfig()
    # every selection's vector length: the demo sizes the conv autoencoder as PDiffConfig() does for that D
    for dim in (128, 1025, 2048, 4810, 12_810, 23_690):
        assert conv_autoencoder_sizes(demo.pdiff_config(dim), dim) == conv_autoencoder_sizes(PDiffConfig(), dim), dim
    resolved = dataclasses.replace(demo.pdiff_config(128), ae_block_out_channels=None, ae_patch_size=None)
    assert resolved == PDiffConfig()  # the default selection (D = 128) trains with PDiffConfig()
    assert demo.target_epochs == _defaults(train_classifier)["epochs"]
    assert COLLECT_LR[demo.selection] == _defaults(collect_checkpoints)["learning_rate"]


@pytest.mark.parametrize("dim, patch, channels", [(128, 1, (16, 32, 32)), (1024, 1, (16, 32, 32)), (1025, 4, (32, 64, 64, 64)),
                                                  (2048, 4, (32, 64, 64, 64)), (4810, 16, (32, 64, 64, 64)),
                                                  (12_810, 32, (32, 64, 64, 64))])  # fmt: skip
def test_conv_autoencoder_sizes_are_chosen_by_d(dim, patch, channels):
    from torch import nn

    from pdiff_hf import ParamLayout
    from pdiff_hf.training.training_utils import build_autoencoder

    assert conv_autoencoder_sizes(PDiffConfig(), dim) == (channels, patch)
    ae = build_autoencoder(ParamLayout.from_module(nn.Linear(dim - 1, 1)), PDiffConfig(autoencoder_type="conv"))
    assert (tuple(ae.config.block_out_channels), ae.config.patch_size) == (channels, patch)
    # set fields win: an explicit patch keeps its value and gets the channels that go with it
    assert conv_autoencoder_sizes(PDiffConfig(ae_patch_size=1), dim) == ((16, 32, 32), 1)
    assert conv_autoencoder_sizes(PDiffConfig(ae_block_out_channels=(8, 8)), dim) == ((8, 8), patch)


@pytest.mark.parametrize("script", ["train_autoencoder", "train_ldm", "collect_checkpoints"])
def test_help_shows_every_optional_flags_default(scripts, script, capsys):
    import re

    from .conftest import load_script

    module = scripts.get(script) or load_script(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    options = capsys.readouterr().out.split("options:", 1)[1]
    entries = re.split(r"\n(?=  -)", options.strip("\n"))  # one entry per flag: "  --flag VALUE\n  help..."
    required = {"--dataset_name", "--pretrained_autoencoder_name_or_path"}
    checked = 0
    for entry in entries:
        flag = entry.split()[0].rstrip(",")
        if flag in ("-h", *required):
            assert "(default:" not in entry, entry
            continue
        assert "(default: " in " ".join(entry.split()), entry
        checked += 1
    assert checked >= 15
