"""training/train_ldm.py --condition_column: a conditional denoiser from a conditional checkpoint dataset, the same
weights as fit_pdiff(conditions=...), resumption, and named errors for a missing column or bad ids."""

import shutil

import pytest
import torch
from torch import nn

from pdiff_hf import (
    ParamLayout,
    PDiffConfig,
    PDiffPipeline,
    checkpoint_params,
    fit_pdiff,
    get_layout,
)
from pdiff_hf.checkpoints.dataset import (
    checkpoint_conditions,
    get_condition_names,
    make_checkpoint_dataset,
)
from pdiff_hf.errors import ConditionError, TrainingScriptError

from .conftest import TINY_AE, TINY_LDM, D, N, run_in_process, same_weights

AE_STEPS, LDM_STEPS = 6, 9
NAMES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def conditional_dir(tmp_path_factory):
    """32 checkpoints of a Linear(7, 8) (D=64) around four base points, one per condition (8 each)."""
    generator = torch.Generator().manual_seed(0)
    layout = ParamLayout.from_module(nn.Linear(7, 8))
    conditions = torch.arange(4).repeat(N // 4)  # interleaved, so batches mix conditions
    centers = torch.randn(4, D, generator=generator)
    params = centers[conditions] + 0.05 * torch.randn(N, D, generator=generator)
    path = tmp_path_factory.mktemp("data") / "conditional"
    metadata = {"run_id": conditions.tolist(), "step": list(range(N)), "condition": conditions.tolist()}
    make_checkpoint_dataset(params, layout, metadata, condition_names=NAMES).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def autoencoder_dir(scripts, conditional_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    argv = ["--dataset_name", conditional_dir, "--output_dir", out, *TINY_AE, "--max_train_steps", AE_STEPS]
    assert run_in_process(scripts["train_autoencoder"], argv) == 0
    return out


def _argv(dataset_dir, autoencoder_dir, out, *extra):
    return ["--dataset_name", dataset_dir, "--pretrained_autoencoder_name_or_path", autoencoder_dir,
            "--output_dir", out, *TINY_LDM, "--condition_column", "condition", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def ldm_dir(scripts, conditional_dir, autoencoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ldm") / "ldm"
    argv = _argv(conditional_dir, autoencoder_dir, out, "--max_train_steps", LDM_STEPS, "--checkpointing_steps", "3",
                 "--condition_dropout", "0.25")  # fmt: skip
    assert run_in_process(scripts["train_ldm"], argv) == 0
    return out


def test_the_conditional_pipeline_is_saved_with_its_condition_names(ldm_dir):
    pipe = PDiffPipeline.from_pretrained(str(ldm_dir))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.denoiser.config.num_conditions == 4 and pipe.denoiser.config.condition_names == NAMES
    out = pipe(num_models=3, condition="c", guidance_scale=2.0, num_inference_steps=5,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.params.shape == (3, D) and out.conditions.tolist() == [2, 2, 2]
    with pytest.raises(ConditionError):
        pipe(num_models=1, condition=4, num_inference_steps=2)


def test_script_trains_the_same_pipeline_as_fit_pdiff_with_conditions(conditional_dir, ldm_dir):
    """train_autoencoder.py + train_ldm.py --condition_column (one process) == fit_pdiff(conditions=...) with the
    same settings: batches of (latents, ids), the same condition dropout draws, EMA and checkpointing included."""
    import datasets

    dataset = datasets.load_from_disk(str(conditional_dir))
    config = PDiffConfig(
        ae_block_out_channels=(8, 8), ae_train_batch_size=8, ae_steps=AE_STEPS, denoiser_block_out_channels=(8, 16),
        num_train_timesteps=100, denoiser_train_batch_size=8, denoiser_steps=LDM_STEPS, lr_warmup_steps=2,
        condition_dropout=0.25,
    )
    pipe = fit_pdiff(checkpoint_params(dataset), get_layout(dataset), config, progress=False,
                     conditions=checkpoint_conditions(dataset), condition_names=get_condition_names(dataset))  # fmt: skip
    loaded = PDiffPipeline.from_pretrained(str(ldm_dir))
    assert same_weights(pipe.autoencoder, loaded.autoencoder)
    assert same_weights(pipe.denoiser, loaded.denoiser)
    # the condition dropout is part of the training: another value trains other weights
    other = fit_pdiff(checkpoint_params(dataset), get_layout(dataset), PDiffConfig(**{**config.__dict__, "condition_dropout": 0.0}),
                      progress=False, conditions=checkpoint_conditions(dataset))  # fmt: skip
    assert not same_weights(other.denoiser, loaded.denoiser)


def test_resume_mid_epoch_is_bit_identical(scripts, conditional_dir, autoencoder_dir, ldm_dir, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(ldm_dir / "checkpoint-6", resumed / "checkpoint-6")  # as if killed after step 6 (of 4 per epoch)
    argv = _argv(conditional_dir, autoencoder_dir, resumed, "--max_train_steps", LDM_STEPS, "--checkpointing_steps",
                 "3", "--condition_dropout", "0.25", "--resume_from_checkpoint", "latest")  # fmt: skip
    assert run_in_process(scripts["train_ldm"], argv) == 0
    assert same_weights(PDiffPipeline.from_pretrained(str(ldm_dir)).denoiser, PDiffPipeline.from_pretrained(str(resumed)).denoiser)


def test_a_checkpoint_of_an_unconditional_run_is_not_resumed(scripts, conditional_dir, autoencoder_dir, ldm_dir, tmp_path):
    resumed = tmp_path / "other"
    resumed.mkdir()
    shutil.copytree(ldm_dir / "checkpoint-6", resumed / "checkpoint-6")
    argv = _argv(conditional_dir, autoencoder_dir, resumed, "--max_train_steps", LDM_STEPS, "--condition_dropout", "0.5",
                 "--resume_from_checkpoint", "latest")  # fmt: skip
    with pytest.raises(TrainingScriptError, match="condition_dropout"):
        run_in_process(scripts["train_ldm"], argv)


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--condition_column", "task"], ConditionError, r"expected a condition column 'task'"),
        (["--num_conditions", "2"], ConditionError, r"expected condition ids in \[0, 2\).*found \[2, 3\]"),
        (["--num_conditions", "5"], ConditionError, r"--num_conditions: expected 4 \(one per condition name"),
        (["--condition_column", "step"], ConditionError, r"expected condition ids in \[0, 4\) in column 'step'"),
        (["--condition_dropout", "1.0"], TrainingScriptError, r"--condition_dropout: expected a value in \[0, 1\)"),
    ],
)
def test_bad_conditions_are_named_errors_before_any_work(scripts, conditional_dir, autoencoder_dir, tmp_path, extra, error, message):
    argv = _argv(conditional_dir, autoencoder_dir, tmp_path / "out", "--max_train_steps", "2", *extra)
    with pytest.raises(error, match=message):
        run_in_process(scripts["train_ldm"], argv)
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_num_conditions_without_a_condition_column_is_refused(scripts, conditional_dir, autoencoder_dir, tmp_path):
    argv = ["--dataset_name", conditional_dir, "--pretrained_autoencoder_name_or_path", autoencoder_dir,
            "--output_dir", tmp_path / "out", *TINY_LDM, "--num_conditions", "3"]  # fmt: skip
    with pytest.raises(TrainingScriptError, match="--num_conditions: expected it only with --condition_column"):
        run_in_process(scripts["train_ldm"], argv)
