"""The scripts with the linear autoencoder (the default once the checkpoints span its latent): train_autoencoder.py
fits it exactly, train_ldm.py loads it by its saved class, and the chain trains what fit_pdiff trains."""

import datasets

from pdiff_hf import (
    LinearParameterAutoencoder,
    PDiffConfig,
    PDiffPipeline,
    checkpoint_params,
    fit_pdiff,
    get_layout,
)

from .conftest import TINY_LDM, run_in_process, same_weights

LDM_STEPS = 5


def test_linear_chain_trains_what_fit_pdiff_trains(scripts, dataset_dir, tmp_path):
    ae_dir, ldm_dir = tmp_path / "ae", tmp_path / "ldm"
    # N = 32 checkpoints span 31 directions: a (4, 2) latent fits, so "auto" resolves to linear as in fit_pdiff
    ae_argv = ["--dataset_name", dataset_dir, "--output_dir", ae_dir, "--linear_latent_length", "2", "--report_to", "none"]
    assert run_in_process(scripts["train_autoencoder"], ae_argv) == 0
    assert not list(ae_dir.glob("checkpoint-*"))  # fitted, not trained: no steps to checkpoint
    assert LinearParameterAutoencoder.from_pretrained(str(ae_dir)).latent_shape == (4, 2)
    ldm_argv = ["--dataset_name", dataset_dir, "--pretrained_autoencoder_name_or_path", ae_dir, "--output_dir", ldm_dir,
                *TINY_LDM, "--max_train_steps", LDM_STEPS]  # fmt: skip
    assert run_in_process(scripts["train_ldm"], ldm_argv) == 0

    dataset = datasets.load_from_disk(str(dataset_dir))
    config = PDiffConfig(
        ae_linear_latent_length=2, denoiser_block_out_channels=(8, 16), num_train_timesteps=100,
        denoiser_train_batch_size=8, denoiser_steps=LDM_STEPS, lr_warmup_steps=2,
    )  # fmt: skip
    pipe = fit_pdiff(checkpoint_params(dataset), get_layout(dataset), config, progress=False)
    loaded = PDiffPipeline.from_pretrained(str(ldm_dir))
    assert isinstance(pipe.autoencoder, LinearParameterAutoencoder)
    assert isinstance(loaded.autoencoder, LinearParameterAutoencoder)
    assert same_weights(pipe.autoencoder, loaded.autoencoder)
    assert same_weights(pipe.denoiser, loaded.denoiser)


def test_no_linear_whiten_keeps_raw_coefficients_as_fit_pdiff_does(scripts, dataset_dir, tmp_path):
    ae_dir = tmp_path / "ae"
    argv = ["--dataset_name", dataset_dir, "--output_dir", ae_dir, "--linear_latent_length", "2", "--report_to", "none",
            "--no_linear_whiten"]  # fmt: skip
    assert run_in_process(scripts["train_autoencoder"], argv) == 0
    saved = LinearParameterAutoencoder.from_pretrained(str(ae_dir))
    assert saved.config.whiten is False
    dataset = datasets.load_from_disk(str(dataset_dir))
    config = PDiffConfig(ae_linear_latent_length=2, ae_linear_whiten=False, denoiser_steps=1)
    pipe = fit_pdiff(checkpoint_params(dataset), get_layout(dataset), config, progress=False)
    assert same_weights(pipe.autoencoder, saved)
