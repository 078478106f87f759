"""Checkpoint rows in memory or streamed to disk: the same dataset either way, decided before any work."""

import pytest
import torch

from pdiff_hf import ParamLayout, checkpoint_params, collect_checkpoints, get_layout
from pdiff_hf.checkpoints import writer as writer_module
from pdiff_hf.checkpoints.writer import CheckpointWriter, plan_storage
from pdiff_hf.errors import CheckpointDatasetError, NonFiniteParametersError
from pdiff_hf.evaluation.data import ClassificationSplits


def _layout(dim: int = 10) -> ParamLayout:
    return ParamLayout.from_module(torch.nn.Linear(dim - 1, 1))


def _write(layout, rows, **kwargs):
    writer = CheckpointWriter(layout, rows.shape[0], **kwargs)
    for row in rows:
        writer.append(row)
    return writer


def test_streamed_and_in_memory_datasets_are_identical(tmp_path):
    layout = _layout()
    rows = torch.randn(7, layout.dim)
    meta = {"step": list(range(7)), "run_id": [0] * 7}
    memory = _write(layout, rows).finish(meta)
    disk_writer = _write(layout, rows, max_in_memory_bytes=0, cache_dir=tmp_path)
    assert disk_writer.streamed and disk_writer.plan.path.parent == tmp_path
    disk = disk_writer.finish(meta)
    assert torch.equal(checkpoint_params(memory), rows) and torch.equal(checkpoint_params(disk), rows)
    assert disk["step"] == memory["step"] and disk["run_id"] == memory["run_id"]
    assert get_layout(disk).to_list() == layout.to_list()
    assert disk.cache_files and disk.cache_files[0]["filename"] == str(disk_writer.plan.path)  # memory-mapped
    # saved and reloaded like any checkpoint dataset
    disk.save_to_disk(str(tmp_path / "saved"))
    from pdiff_hf import load_checkpoint_dataset

    assert torch.equal(checkpoint_params(load_checkpoint_dataset(str(tmp_path / "saved"))), rows)


def test_row_chunks_read_back_the_rows_in_order(tmp_path):
    layout = _layout()
    rows = torch.randn(5, layout.dim)
    for kwargs in ({}, {"max_in_memory_bytes": 0, "cache_dir": tmp_path}):
        writer = _write(layout, rows, **kwargs)
        chunks = list(writer.row_chunks(2))
        assert [c.shape[0] for c in chunks] == [2, 2, 1]
        assert torch.equal(torch.cat(chunks), rows)


def test_collect_checkpoints_streams_to_disk_with_the_same_rows_and_scores(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    data = ClassificationSplits(x[:40], y[:40], x[40:52], y[40:52], x[52:], y[52:])

    def run(**kwargs):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        layout = ParamLayout.from_module(model, include="2.*")
        return collect_checkpoints(model, data, layout, num_checkpoints=30, batch_size=16, progress=False, **kwargs)

    memory = run()
    disk = run(max_in_memory_bytes=0, cache_dir=str(tmp_path))
    assert torch.equal(checkpoint_params(memory), checkpoint_params(disk))
    assert memory["test_accuracy"] == disk["test_accuracy"] and memory["step"] == disk["step"]


def test_not_enough_memory_or_disk_is_an_error_before_any_work(tmp_path, monkeypatch):
    class Usage:
        free = 1000

    monkeypatch.setattr(writer_module.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(CheckpointDatasetError, match=r"expected room for 200 checkpoints x D=11200000"):
        plan_storage(200, 11_200_000, max_in_memory_bytes=1 << 20, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_bad_rows_are_refused(tmp_path):
    layout = _layout()
    writer = CheckpointWriter(layout, 2)
    with pytest.raises(NonFiniteParametersError):
        writer.append(torch.full((layout.dim,), float("nan")))
    writer.append(torch.zeros(layout.dim))
    with pytest.raises(CheckpointDatasetError, match="expected 2 rows, found 1"):
        writer.finish()
    with pytest.raises(CheckpointDatasetError, match="max_in_memory_bytes >= 0"):
        CheckpointWriter(layout, 2, max_in_memory_bytes=-1)


def test_checkpoints_from_files_stream_to_disk_with_the_same_rows(tmp_path):
    from safetensors.torch import save_file

    from pdiff_hf import checkpoints_from_files

    layout = _layout()
    folder = tmp_path / "runs"
    folder.mkdir()
    states = []
    for i in range(4):
        state = {"weight": torch.randn(1, layout.dim - 1), "bias": torch.randn(1)}
        save_file(state, str(folder / f"ckpt-{i}.safetensors"))
        states.append(state)
    memory = checkpoints_from_files(folder, layout)
    disk = checkpoints_from_files(folder, layout, max_in_memory_bytes=0, cache_dir=str(tmp_path / "cache"))
    assert disk.cache_files and torch.equal(checkpoint_params(memory), checkpoint_params(disk))
    assert memory["file"] == disk["file"]


def test_trainer_callback_refuses_a_run_whose_rows_cannot_fit_before_training(monkeypatch):
    from types import SimpleNamespace

    from pdiff_hf import PDiffCheckpointCallback
    from pdiff_hf.checkpoints import trainer_callback

    model = torch.nn.Linear(9, 1)
    callback = PDiffCheckpointCallback(ParamLayout.from_module(model), save_steps=1)
    monkeypatch.setattr(trainer_callback, "available_memory_bytes", lambda: 1000)
    args = SimpleNamespace(metric_for_best_model=None, save_steps=1)
    state = SimpleNamespace(max_steps=100, global_step=0)
    with pytest.raises(CheckpointDatasetError, match=r"expected the 100 checkpoints of D=10"):
        callback.on_train_begin(args, state, None, model=model)
