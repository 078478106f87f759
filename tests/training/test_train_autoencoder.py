"""training/train_autoencoder.py in this process: what it saves, that it trains what fit_pdiff trains, resumption."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from pdiff_hf import (
    ParameterAutoencoder,
    ParamLayout,
    PDiffConfig,
    checkpoint_params,
    get_layout,
)
from pdiff_hf.checkpoints.dataset import set_layout
from pdiff_hf.errors import (
    CheckpointDatasetError,
    NonFiniteParametersError,
    PDiffError,
    TrainingScriptError,
)
from pdiff_hf.training.fit import train_autoencoder
from pdiff_hf.training.training_utils import build_autoencoder

from .conftest import TINY_AE, D, run_in_process, same_weights


def _argv(dataset_dir, out, *extra):
    return ["--dataset_name", dataset_dir, "--output_dir", out, *TINY_AE, *extra]


def test_saves_the_autoencoder_at_output_dir_with_pruned_complete_checkpoints(scripts, dataset_dir, tmp_path):
    out = tmp_path / "ae"
    argv = _argv(dataset_dir, out, "--max_train_steps", "6", "--gradient_accumulation_steps", "2",
                 "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--use_ema")  # fmt: skip
    assert run_in_process(scripts["train_autoencoder"], argv) == 0

    ae = ParameterAutoencoder.from_pretrained(str(out))
    assert ae.config.in_dim == D and ae.config.block_out_channels == [8, 8]
    assert ae.config.scaling_factor != 1.0  # latent scaling set from the training checkpoints
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert not list(out.glob(".*")), "temporary folders left behind"
    ckpt = out / "checkpoint-6"
    # the model and its EMA as save_pretrained folders (safetensors), not a second pickled copy
    assert (ckpt / "autoencoder" / "diffusion_pytorch_model.safetensors").is_file()
    assert (ckpt / "autoencoder_ema" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(ckpt.glob("model*.safetensors")) and not list(ckpt.glob("pytorch_model*.bin"))
    # the saved weights are the EMA weights
    ema = load_file(str(ckpt / "autoencoder_ema" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ema[k], v) for k, v in ae.named_parameters())


def test_trains_the_same_weights_as_fit_pdiff(scripts, dataset_dir, tmp_path):
    out = tmp_path / "ae"
    argv = _argv(dataset_dir, out, "--max_train_steps", "9", "--checkpointing_steps", "3", "--use_ema")
    assert run_in_process(scripts["train_autoencoder"], argv) == 0

    import datasets

    params = checkpoint_params(datasets.load_from_disk(str(dataset_dir)))
    config = PDiffConfig(ae_block_out_channels=(8, 8), ae_train_batch_size=8, ae_steps=9, lr_warmup_steps=2, ae_use_ema=True)
    torch.manual_seed(config.seed)
    ae = build_autoencoder(get_layout(datasets.load_from_disk(str(dataset_dir))), config)
    train_autoencoder(ae, params, config, progress=False)
    assert same_weights(ae, ParameterAutoencoder.from_pretrained(str(out)))


def test_resume_mid_epoch_is_bit_identical(scripts, dataset_dir, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    argv = ["--max_train_steps", "11", "--checkpointing_steps", "5"]
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, full, *argv)) == 0
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-5", resumed / "checkpoint-5")  # as if killed after step 5 (of 4 per epoch)
    argv += ["--resume_from_checkpoint", "latest"]
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, resumed, *argv)) == 0
    assert same_weights(ParameterAutoencoder.from_pretrained(str(full)), ParameterAutoencoder.from_pretrained(str(resumed)))
    assert (resumed / "checkpoint-10").is_dir()


def test_refuses_to_mix_a_new_run_with_old_checkpoints(scripts, dataset_dir, tmp_path):
    out = tmp_path / "ae"
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1")) == 0
    with pytest.raises(TrainingScriptError, match="--resume_from_checkpoint latest"):
        run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, out, "--max_train_steps", "2"))


@pytest.fixture(scope="module")
def bad_datasets(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    datasets.Dataset.from_dict({"params": [[0.0] * 4] * 3}).save_to_disk(str(root / "no_layout"))
    layout = ParamLayout.from_module(nn.Linear(3, 1))
    set_layout(datasets.Dataset.from_dict({"params": [[0.0] * 4, [0.0] * 3, [1.0] * 4]}), layout).save_to_disk(str(root / "ragged"))
    set_layout(datasets.Dataset.from_dict({"params": ["a", "b", "c"]}), layout).save_to_disk(str(root / "strings"))
    set_layout(datasets.Dataset.from_dict({"params": [[0.0] * 4]}), layout).save_to_disk(str(root / "one_row"))
    return root


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--dataset_name", "{root}/nope"], CheckpointDatasetError, "neither"),
        (["--dataset_name", "{root}/empty"], CheckpointDatasetError, "written by save_to_disk"),
        (["--dataset_name", "{root}/no_layout"], CheckpointDatasetError, "parameter layout"),
        (["--dataset_name", "{root}/ragged"], CheckpointDatasetError, "lists of floats of one length"),
        (["--dataset_name", "{root}/strings"], CheckpointDatasetError, "lists of floats of one length"),
        (["--dataset_name", "{root}/one_row"], CheckpointDatasetError, "at least 2 checkpoints"),
        (["--push_to_hub"], TrainingScriptError, "--hub_model_id"),
        (["--checkpoints_total_limit", "0"], TrainingScriptError, "--checkpoints_total_limit"),
        (["--max_train_steps", "0"], TrainingScriptError, "--max_train_steps"),
        (["--block_out_channels", "0", "8"], TrainingScriptError, "--block_out_channels"),
        (["--ema_max_decay", "1.5"], TrainingScriptError, "--ema_max_decay"),
        (["--report_to", "nothing"], TrainingScriptError, "--report_to"),
        (["--learning_rate", "inf"], TrainingScriptError, "--learning_rate"),
        (["--learning_rate", "nan"], TrainingScriptError, "--learning_rate"),
        (["--autoencoder_type", "token", "--token_size", "0"], TrainingScriptError, "token_size"),
        (["--resume_from_checkpoint", "{root}/no/checkpoint-3"], TrainingScriptError, "--resume_from_checkpoint"),
    ],
)
def test_bad_input_is_a_named_error_before_any_work(scripts, dataset_dir, bad_datasets, tmp_path, extra, error, message):
    argv = _argv(dataset_dir, tmp_path / "out", "--max_train_steps", "2") + [e.format(root=bad_datasets) for e in extra]
    with pytest.raises(error, match=message) as info:
        run_in_process(scripts["train_autoencoder"], argv)
    assert isinstance(info.value, PDiffError)
    assert not (tmp_path / "out" / "config.json").exists()


def test_latest_falls_back_past_a_corrupt_checkpoint_and_a_named_one_is_an_error(scripts, dataset_dir, tmp_path):
    out, full = tmp_path / "ae", tmp_path / "full"
    argv = ["--max_train_steps", "6", "--checkpointing_steps", "2"]
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, full, *argv)) == 0
    out.mkdir()
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(full / name, out / name)
    weights = out / "checkpoint-4" / "autoencoder" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(TrainingScriptError, match="checkpoint-4"):
        run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, out, *argv, "--resume_from_checkpoint", "checkpoint-4"))
    # "latest" warns and resumes from checkpoint-2 instead: the run still ends where an uninterrupted one does
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, out, *argv, "--resume_from_checkpoint", "latest")) == 0
    assert same_weights(ParameterAutoencoder.from_pretrained(str(out)), ParameterAutoencoder.from_pretrained(str(full)))


def test_a_checkpoint_of_another_run_is_refused(scripts, dataset_dir, tmp_path):
    out = tmp_path / "ae"
    argv = ["--max_train_steps", "2", "--checkpointing_steps", "1"]
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, out, *argv)) == 0
    other = _argv(dataset_dir, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    other[other.index("--block_out_channels") + 1 : other.index("--block_out_channels") + 3] = ["16", "16"]
    with pytest.raises(TrainingScriptError, match="another run.*block_out_channels"):
        run_in_process(scripts["train_autoencoder"], other)
    # the step count may change between runs: training continues
    longer = _argv(dataset_dir, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    assert run_in_process(scripts["train_autoencoder"], longer) == 0


def test_a_diverging_run_stops_with_a_named_error(scripts, dataset_dir, tmp_path):
    argv = _argv(dataset_dir, tmp_path / "ae", "--max_train_steps", "20", "--learning_rate", "1e30")
    with pytest.raises(NonFiniteParametersError, match="finite loss"):
        run_in_process(scripts["train_autoencoder"], argv)
    assert not (tmp_path / "ae" / "config.json").exists()


def test_tracks_loss_and_flags_with_tensorboard(scripts, dataset_dir, tmp_path):
    out = tmp_path / "ae"
    argv = _argv(dataset_dir, out, "--max_train_steps", "3", "--hub_token", "hf_secret_value")
    argv[argv.index("--report_to") + 1] = "tensorboard"
    assert run_in_process(scripts["train_autoencoder"], argv) == 0
    events = list((out / "logs" / "pdiff-autoencoder").rglob("events.out.tfevents*"))
    assert events, list(out.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("loss")] == [1, 2, 3]
    assert not any(b"hf_secret_value" in p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_reads_the_dataset_a_block_at_a_time_as_fit_pdiff_does(scripts, dataset_dir, tmp_path, monkeypatch):
    """No (N, D) copy of the checkpoints: the script never calls checkpoint_params, and it trains what
    train_autoencoder trains on the dataset's CheckpointRows (fit_pdiff's path for a dataset)."""
    import datasets

    import pdiff_hf.checkpoints
    from pdiff_hf.checkpoints.rows import CheckpointRows

    def whole_matrix(*args, **kwargs):
        raise AssertionError("the script read the whole (N, D) matrix with checkpoint_params")

    monkeypatch.setattr(pdiff_hf.checkpoints.dataset, "checkpoint_params", whole_matrix)
    monkeypatch.setattr(scripts["train_autoencoder"], "checkpoint_params", whole_matrix, raising=False)
    out = tmp_path / "ae"
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, out, "--max_train_steps", "6")) == 0
    dataset = datasets.load_from_disk(str(dataset_dir))
    config = PDiffConfig(ae_block_out_channels=(8, 8), ae_train_batch_size=8, ae_steps=6, lr_warmup_steps=2)
    torch.manual_seed(config.seed)
    ae = build_autoencoder(get_layout(dataset), config)
    train_autoencoder(ae, CheckpointRows(dataset), config, progress=False)
    assert same_weights(ae, ParameterAutoencoder.from_pretrained(str(out)))


def test_dataloader_workers_train_the_same_weights(scripts, dataset_dir, tmp_path):
    argv = ["--max_train_steps", "6", "--checkpointing_steps", "100"]
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, tmp_path / "w0", *argv)) == 0
    argv += ["--dataloader_num_workers", "2"]
    assert run_in_process(scripts["train_autoencoder"], _argv(dataset_dir, tmp_path / "w2", *argv)) == 0
    assert same_weights(ParameterAutoencoder.from_pretrained(str(tmp_path / "w0")),
                        ParameterAutoencoder.from_pretrained(str(tmp_path / "w2")))  # fmt: skip


def test_training_rows_pickle_as_the_memory_mapped_dataset_not_its_rows(tmp_path):
    """Loader workers started with spawn get the dataset (its file paths), not a copy of the checkpoints."""
    import pickle

    import datasets

    from pdiff_hf import make_checkpoint_dataset
    from pdiff_hf.checkpoints.rows import NormalizedRows, checkpoint_rows

    layout = ParamLayout.from_module(nn.Linear(2000, 10))  # D = 20010
    params = torch.randn(6, layout.dim, generator=torch.Generator().manual_seed(0))
    make_checkpoint_dataset(params, layout).save_to_disk(str(tmp_path / "ds"))
    rows = checkpoint_rows(datasets.load_from_disk(str(tmp_path / "ds")).select([4, 1, 2]))
    blob = pickle.dumps(rows)
    assert len(blob) < params.numel()  # the 3 x 20010 float32 rows alone are 240 kB
    assert torch.equal(pickle.loads(blob).rows([2, 0]), params[[2, 4]])
    torch.manual_seed(0)
    ae = build_autoencoder(layout, PDiffConfig(ae_block_out_channels=(8, 8)))
    ae.fit_normalization(params[[4, 1, 2]])
    data = NormalizedRows(rows, ae)
    assert torch.equal(torch.stack(pickle.loads(pickle.dumps(data)).__getitems__([0, 2])), ae.normalize(params[[4, 2]]))
