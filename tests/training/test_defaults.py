"""One set of defaults: the training scripts' flags, PDiffConfig (fit_pdiff) and the model classes agree."""

import inspect

import pytest

from pdiff_hf import LatentUNet1DModel, ParameterAutoencoder, PDiffConfig

# script flag -> PDiffConfig field, per script
AUTOENCODER_FLAGS = {
    "block_out_channels": "ae_block_out_channels", "patch_size": "ae_patch_size", "latent_channels": "latent_channels",
    "input_noise": "input_noise", "latent_noise": "latent_noise", "norm_mode": "norm_mode",
    "train_batch_size": "ae_train_batch_size", "max_train_steps": "ae_steps", "learning_rate": "ae_learning_rate",
    "use_ema": "ae_use_ema", "autoencoder_type": "autoencoder_type", "token_size": "ae_token_size",
    "token_hidden_dim": "ae_token_hidden_dim", "token_latent_channels": "ae_token_latent_channels",
}  # fmt: skip
LDM_FLAGS = {
    "block_out_channels": "denoiser_block_out_channels", "layers_per_block": "layers_per_block",
    "num_train_timesteps": "num_train_timesteps", "beta_schedule": "beta_schedule", "prediction_type": "prediction_type",
    "train_batch_size": "denoiser_train_batch_size", "max_train_steps": "denoiser_steps",
    "learning_rate": "denoiser_learning_rate", "use_ema": "use_ema",
}  # fmt: skip
SHARED_FLAGS = ("ema_max_decay", "ema_power", "ema_inv_gamma", "lr_scheduler", "lr_warmup_steps", "adam_beta1",
                "adam_beta2", "adam_weight_decay", "adam_epsilon", "seed")  # fmt: skip


def _as_config_value(value):
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("script, flags", [("train_autoencoder", AUTOENCODER_FLAGS), ("train_ldm", LDM_FLAGS)])
def test_script_defaults_are_pdiff_config_defaults(scripts, script, flags):
    args = scripts[script].parse_args(["--dataset_name", "x", "--pretrained_autoencoder_name_or_path", "y"]
                                      if script == "train_ldm" else ["--dataset_name", "x"])  # fmt: skip
    config = PDiffConfig()
    mapping = {**flags, **{name: name for name in SHARED_FLAGS}}
    found = {flag: _as_config_value(getattr(args, flag)) for flag in mapping}
    expected = {flag: getattr(config, field) for flag, field in mapping.items()}
    assert found == expected


def _defaults(obj):
    function = obj.__init__ if isinstance(obj, type) else obj
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


def test_model_class_defaults_are_pdiff_config_defaults():
    config = PDiffConfig()
    ae = _defaults(ParameterAutoencoder)
    assert ae["block_out_channels"] == config.ae_block_out_channels and ae["patch_size"] == config.ae_patch_size
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
    assert demo.pdiff_config(128) == PDiffConfig()  # the default selection (D = 128) trains with PDiffConfig()
    assert demo.target_epochs == _defaults(train_classifier)["epochs"]
    assert COLLECT_LR[demo.selection] == _defaults(collect_checkpoints)["learning_rate"]
