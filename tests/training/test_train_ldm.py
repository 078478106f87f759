"""training/train_ldm.py in this process: the pipeline at --output_dir, the same weights as fit_pdiff, resumption,
and bad input."""

import shutil

import pytest
import torch

from pdiff_hf import (
    ParameterAutoencoder,
    PDiffConfig,
    PDiffPipeline,
    checkpoint_params,
    fit_pdiff,
    get_layout,
)
from pdiff_hf.errors import DimensionMismatchError, PDiffError, TrainingScriptError

from .conftest import TINY_AE, TINY_LDM, D, run_in_process, same_weights

AE_STEPS, LDM_STEPS = 6, 9


@pytest.fixture(scope="module")
def autoencoder_dir(scripts, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    argv = ["--dataset_name", dataset_dir, "--output_dir", out, *TINY_AE, "--max_train_steps", AE_STEPS]
    assert run_in_process(scripts["train_autoencoder"], argv) == 0
    return out


def _argv(dataset_dir, autoencoder_dir, out, *extra):
    return ["--dataset_name", dataset_dir, "--pretrained_autoencoder_name_or_path", autoencoder_dir,
            "--output_dir", out, *TINY_LDM, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def ldm_dir(scripts, dataset_dir, autoencoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "ldm"
    argv = _argv(dataset_dir, autoencoder_dir, out, "--max_train_steps", LDM_STEPS, "--checkpointing_steps", "3")
    assert run_in_process(scripts["train_ldm"], argv) == 0
    return out


def test_the_pipeline_is_saved_at_output_dir(ldm_dir):
    pipe = PDiffPipeline.from_pretrained(str(ldm_dir))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_models=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.params.shape == (3, D) and torch.isfinite(out.params).all()
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.denoiser.config.sample_abs_max > 0
    assert sorted(p.name for p in ldm_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    assert (ldm_dir / "checkpoint-9" / "denoiser_ema" / "diffusion_pytorch_model.safetensors").is_file()


def test_scripts_train_the_same_pipeline_as_fit_pdiff(dataset_dir, ldm_dir):
    """One training story: train_autoencoder.py + train_ldm.py (one process) == fit_pdiff with the same settings,
    EMA and checkpointing included."""
    import datasets

    dataset = datasets.load_from_disk(str(dataset_dir))
    config = PDiffConfig(
        ae_block_out_channels=(8, 8), ae_train_batch_size=8, ae_steps=AE_STEPS, denoiser_block_out_channels=(8, 16),
        num_train_timesteps=100, denoiser_train_batch_size=8, denoiser_steps=LDM_STEPS, lr_warmup_steps=2,
    )
    pipe = fit_pdiff(checkpoint_params(dataset), get_layout(dataset), config, progress=False)
    loaded = PDiffPipeline.from_pretrained(str(ldm_dir))
    assert same_weights(pipe.autoencoder, loaded.autoencoder)
    assert same_weights(pipe.denoiser, loaded.denoiser)
    assert pipe.denoiser.config.sample_abs_max == loaded.denoiser.config.sample_abs_max


def test_reads_the_dataset_a_chunk_at_a_time_as_fit_pdiff_does(scripts, dataset_dir, autoencoder_dir, tmp_path, monkeypatch):
    """No (N, D) copy of the checkpoints: train_ldm.py never calls checkpoint_params, and both scripts train what
    fit_pdiff trains on the dataset itself (read a block at a time)."""
    import datasets

    import pdiff_hf.checkpoints

    def whole_matrix(*args, **kwargs):
        raise AssertionError("the script read the whole (N, D) matrix with checkpoint_params")

    monkeypatch.setattr(pdiff_hf.checkpoints.dataset, "checkpoint_params", whole_matrix)
    monkeypatch.setattr(scripts["train_ldm"], "checkpoint_params", whole_matrix, raising=False)
    out = tmp_path / "ldm"
    argv = _argv(dataset_dir, autoencoder_dir, out, "--max_train_steps", LDM_STEPS, "--checkpointing_steps", "100")
    assert run_in_process(scripts["train_ldm"], argv) == 0
    dataset = datasets.load_from_disk(str(dataset_dir))
    config = PDiffConfig(
        ae_block_out_channels=(8, 8), ae_train_batch_size=8, ae_steps=AE_STEPS, denoiser_block_out_channels=(8, 16),
        num_train_timesteps=100, denoiser_train_batch_size=8, denoiser_steps=LDM_STEPS, lr_warmup_steps=2,
    )
    pipe = fit_pdiff(dataset, get_layout(dataset), config, progress=False)
    loaded = PDiffPipeline.from_pretrained(str(out))
    assert same_weights(pipe.autoencoder, loaded.autoencoder)
    assert same_weights(pipe.denoiser, loaded.denoiser)


def test_resume_mid_epoch_is_bit_identical(scripts, dataset_dir, autoencoder_dir, ldm_dir, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(ldm_dir / "checkpoint-6", resumed / "checkpoint-6")  # as if killed after step 6 (of 4 per epoch)
    argv = _argv(dataset_dir, autoencoder_dir, resumed, "--max_train_steps", LDM_STEPS, "--checkpointing_steps", "3",
                 "--resume_from_checkpoint", "latest")  # fmt: skip
    assert run_in_process(scripts["train_ldm"], argv) == 0
    assert same_weights(PDiffPipeline.from_pretrained(str(ldm_dir)).denoiser, PDiffPipeline.from_pretrained(str(resumed)).denoiser)


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--pretrained_autoencoder_name_or_path", "{tmp}/nope"], TrainingScriptError, "--pretrained_autoencoder"),
        (["--num_inference_steps", "101"], TrainingScriptError, "--num_inference_steps"),
        (["--num_train_timesteps", "1"], TrainingScriptError, "--num_train_timesteps"),
        (["--block_out_channels"], SystemExit, None),  # argparse: exit code 2
        (["--num_validation_models", "-1"], TrainingScriptError, "--num_validation_models"),
        (["--block_out_channels", "12", "20"], TrainingScriptError, "group-norm groups"),
    ],
)
def test_bad_input_is_a_named_error_before_any_work(scripts, dataset_dir, autoencoder_dir, tmp_path, extra, error, message):
    argv = _argv(dataset_dir, autoencoder_dir, tmp_path / "out", "--max_train_steps", "2")
    argv += [e.format(tmp=tmp_path) for e in extra]
    with pytest.raises(error, match=message):
        run_in_process(scripts["train_ldm"], argv)
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_an_autoencoder_for_another_layout_is_refused(scripts, dataset_dir, tmp_path):
    ParameterAutoencoder(in_dim=D // 2, block_out_channels=(8, 8)).save_pretrained(str(tmp_path / "ae32"))
    with pytest.raises(PDiffError, match="D=32|layout") as info:
        run_in_process(scripts["train_ldm"], _argv(dataset_dir, tmp_path / "ae32", tmp_path / "out"))
    assert isinstance(info.value, (DimensionMismatchError, TrainingScriptError))
