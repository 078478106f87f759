"""training/train_ldm.py --objective flow_matching: the saved pipeline samples with FlowMatchEulerDiscreteScheduler
and holds the weights fit_pdiff trains with PDiffConfig(objective="flow_matching")."""

import datasets
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pdiff_hf import (
    PDiffConfig,
    PDiffPipeline,
    checkpoint_params,
    fit_pdiff,
    get_layout,
)

from .conftest import TINY_AE, TINY_LDM, D, run_in_process, same_weights

AE_STEPS, LDM_STEPS = 6, 9


def test_flow_matching_script_run_equals_fit_pdiff(scripts, dataset_dir, tmp_path):
    ae_dir, ldm_dir = tmp_path / "ae", tmp_path / "ldm"
    argv = ["--dataset_name", dataset_dir, "--output_dir", ae_dir, *TINY_AE, "--max_train_steps", AE_STEPS]
    assert run_in_process(scripts["train_autoencoder"], argv) == 0
    argv = ["--dataset_name", dataset_dir, "--pretrained_autoencoder_name_or_path", ae_dir, "--output_dir", ldm_dir,
            *TINY_LDM, "--max_train_steps", LDM_STEPS, "--objective", "flow_matching"]  # fmt: skip
    assert run_in_process(scripts["train_ldm"], argv) == 0
    loaded = PDiffPipeline.from_pretrained(str(ldm_dir))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is FlowMatchEulerDiscreteScheduler
    assert loaded.denoiser.config.objective == "flow_matching"
    out = loaded(num_models=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.params.shape == (2, D) and torch.isfinite(out.params).all()

    dataset = datasets.load_from_disk(str(dataset_dir))
    config = PDiffConfig(
        ae_block_out_channels=(8, 8), ae_train_batch_size=8, ae_steps=AE_STEPS, denoiser_block_out_channels=(8, 16),
        num_train_timesteps=100, denoiser_train_batch_size=8, denoiser_steps=LDM_STEPS, lr_warmup_steps=2,
        objective="flow_matching",
    )
    pipe = fit_pdiff(checkpoint_params(dataset), get_layout(dataset), config, progress=False)
    assert same_weights(pipe.denoiser, loaded.denoiser)
