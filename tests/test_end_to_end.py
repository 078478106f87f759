"""Collect -> fit -> sample -> evaluate on a tiny local task (scikit-learn's bundled digits, no downloads)."""

import datasets
import pytest
import torch
from torch import nn

from pdiff_hf import (
    ClassificationSplits,
    ParamLayout,
    PDiffPipeline,
    checkpoint_params,
    collect_checkpoints,
    evaluate_parameters,
    fit_pdiff,
    get_layout,
    summarize_accuracies,
)
from pdiff_hf.training.config import PDiffConfig

datasets.disable_progress_bars()


def _digits() -> ClassificationSplits:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x, y = sklearn_datasets.load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return ClassificationSplits(x[:1200], y[:1200], x[1200:1500], y[1200:1500], x[1500:], y[1500:])


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 10),
    )


def test_collect_fit_sample_evaluate(tmp_path):
    data = _digits()
    assert data.num_classes == 10
    model = _mlp()
    layout = ParamLayout.from_module(model, last_norm_layers=2, include_buffers=True)
    assert layout.dim == 4 * 16 * 2

    ds = collect_checkpoints(
        model, data, layout, num_checkpoints=12, save_every=1, learning_rate=0.05, batch_size=64, train_epochs=3
    )
    assert len(ds) == 12
    assert {"params", "run_id", "seed", "step", "val_accuracy", "test_accuracy"} <= set(ds.column_names)
    assert get_layout(ds) == layout
    assert ds["step"] == list(range(1, 13))
    params = checkpoint_params(ds)
    assert params.shape == (12, layout.dim) and torch.isfinite(params).all()
    assert (params[:, layout.log_space_mask()] > 0).all()
    assert not torch.equal(params[0], params[-1])  # the selection moved during collection
    assert torch.equal(params[-1], layout.flatten(model))  # the model ends at the last checkpoint
    collected_acc = torch.tensor(ds["val_accuracy"])
    assert collected_acc.mean() > 40.0  # well above chance (10%) after a few epochs
    # the recorded accuracies are the batched evaluation of the stored checkpoints
    torch.testing.assert_close(evaluate_parameters(model, layout, params, data.val_x, data.val_y), collected_acc)

    config = PDiffConfig(
        ae_block_out_channels=(8, 8),
        latent_channels=2,
        ae_steps=30,
        denoiser_block_out_channels=(8, 16),
        denoiser_steps=30,
        ae_train_batch_size=6,
        denoiser_train_batch_size=6,
    )
    pipe = fit_pdiff(params, layout, config)
    assert isinstance(pipe, PDiffPipeline)
    assert pipe.layout == layout
    assert pipe.autoencoder.config.scaling_factor != 1.0
    assert pipe.denoiser.config.sample_abs_max > 0
    pipe.set_progress_bar_config(disable=True)

    out = pipe(num_models=5, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert out.params.shape == (5, layout.dim)
    assert torch.isfinite(out.params).all()
    assert (out.params[:, layout.log_space_mask()] > 0).all()

    acc = evaluate_parameters(model, layout, out.params, data.test_x, data.test_y)
    assert acc.shape == (5,) and torch.isfinite(acc).all()
    assert ((acc >= 0) & (acc <= 100)).all()
    summary = summarize_accuracies(acc)
    assert summary["count"] == 5 and summary["min"] <= summary["mean"] <= summary["best"]

    # generated models load into the network and give the evaluated accuracy
    out.load_into(model, 0)
    with torch.no_grad():
        single = (model.eval()(data.test_x).argmax(-1) == data.test_y).float().mean() * 100
    assert float(single) == pytest.approx(float(acc[0]))

    # the fitted pipeline reloads and samples the same parameters
    pipe.save_pretrained(str(tmp_path / "pipe"))
    reloaded = PDiffPipeline.from_pretrained(str(tmp_path / "pipe"))
    reloaded.set_progress_bar_config(disable=True)
    again = reloaded(num_models=5, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.params, out.params)
