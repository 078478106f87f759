"""pdiff_hf.checkpoints.rows: rows and column blocks read from tensors and (memory-mapped) checkpoint datasets, batches
normalized when read, statistics and latents computed block by block."""

import datasets
import pytest
import torch

from pdiff_hf import ParamLayout, ParamSpec, make_checkpoint_dataset
from pdiff_hf.checkpoints.rows import (
    CheckpointRows,
    NormalizedRows,
    encode_rows,
    fit_normalization,
)
from pdiff_hf.errors import CheckpointDatasetError, NonFiniteParametersError
from pdiff_hf.models.token_autoencoder import TokenParameterAutoencoder
from pdiff_hf.training.training_utils import make_dataloader

datasets.disable_progress_bars()
LAYOUT = ParamLayout((ParamSpec("fc.weight", (30, 20)), ParamSpec("fc.bias", (30,)), ParamSpec("out.weight", (4, 30))))


def _params(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LAYOUT.dim, generator=g) + 0.1 * torch.randn(n, LAYOUT.dim, generator=g)


def _autoencoder(norm_mode="per_dimension"):
    torch.manual_seed(0)
    return TokenParameterAutoencoder(in_dim=LAYOUT.dim, token_size=64, hidden_dim=16, latent_channels=2, pos_dim=4,
                                     norm_mode=norm_mode, param_layout=LAYOUT.to_list()).eval()  # fmt: skip


def _sources(params, tmp_path):
    """The same checkpoints as a tensor, an in-memory dataset, a memory-mapped one in several shards, and a
    ``select``-ed dataset (with a row mapping) holding rows in another order."""
    dataset = make_checkpoint_dataset(params, LAYOUT)
    dataset.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    mapped = datasets.load_from_disk(str(tmp_path / "ds"))
    order = torch.randperm(len(params), generator=torch.Generator().manual_seed(1))
    shuffled = make_checkpoint_dataset(params[order], LAYOUT).select(order.argsort().tolist())  # back in order
    return {"tensor": params, "memory": dataset, "mapped": mapped, "selected": shuffled}


def test_rows_and_columns_equal_the_tensor_for_every_source(tmp_path):
    params = _params()
    sources = _sources(params, tmp_path)
    assert len(sources["mapped"].data.column("params").chunks) == 3  # several Arrow chunks are read
    idx = [5, 0, 23, 5, 11]
    for name, source in sources.items():
        rows = CheckpointRows(source)
        assert rows.shape == tuple(params.shape) and len(rows) == 24, name
        assert torch.equal(rows.rows(idx), params[idx]), name
        assert torch.equal(rows.columns(7, 650), params[:, 7:650]), name
        assert torch.equal(torch.cat(list(rows.row_chunks(max_entries=5 * LAYOUT.dim))), params), name
    with pytest.raises(IndexError, match=r"expected row indices in \[0, 24\), found 0..24"):
        CheckpointRows(params).rows([0, 24])


def test_batches_are_the_normalized_rows_exactly_in_the_loaders_order(tmp_path):
    params = _params()
    autoencoder = _autoencoder()
    autoencoder.fit_normalization(params)
    expected = make_dataloader(autoencoder.normalize(params), 8, seed=3)
    for source in _sources(params, tmp_path).values():
        loader = make_dataloader(NormalizedRows(CheckpointRows(source), autoencoder), 8, seed=3)
        for epoch in (0, 1):
            expected.sampler.set_epoch(epoch)
            loader.sampler.set_epoch(epoch)
            pairs = list(zip(expected, loader))
            assert len(pairs) == 3 and all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("norm_mode", ["per_dimension", "per_tensor"])
def test_statistics_and_latents_block_by_block_equal_the_whole_matrix(tmp_path, norm_mode):
    params = _params()
    params[:, :5] = 1.0  # constant columns get the minimum std
    whole = _autoencoder(norm_mode)
    whole.fit_normalization(params)
    rows = CheckpointRows(_sources(params, tmp_path)["mapped"])
    blocks = _autoencoder(norm_mode)
    fit_normalization(blocks, rows)
    torch.testing.assert_close(blocks.norm_mean, whole.norm_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(blocks.norm_std, whole.norm_std, rtol=1e-6, atol=1e-7)
    latents = encode_rows(whole, rows, max_entries=7 * LAYOUT.dim)  # 4 chunks
    torch.testing.assert_close(latents, whole.params_to_latents(params), rtol=1e-5, atol=1e-6)


def test_memory_budget_refuses_in_memory_checkpoints_but_not_mapped_ones(tmp_path):
    params = _params()
    budget = params.numel() * 4 - 1
    for name in ("tensor", "memory"):
        match = r"at most 0.00 GiB of checkpoints held in memory.*load_from_disk"
        with pytest.raises(CheckpointDatasetError, match=match):
            CheckpointRows(_sources(params, tmp_path / name)[name], max_in_memory_bytes=budget)
    assert CheckpointRows(_sources(params, tmp_path / "m")["mapped"], max_in_memory_bytes=budget).shape == (24, 750)


def test_bad_sources_are_named_errors():
    params = _params()
    with pytest.raises(CheckpointDatasetError, match="expected a 'params' column, found columns \\['w'\\]"):
        CheckpointRows(datasets.Dataset.from_dict({"w": [[1.0, 2.0]]}))
    with pytest.raises(CheckpointDatasetError, match="fixed-size lists of float32, found list<item: double>"):
        CheckpointRows(datasets.Dataset.from_dict({"params": [[1.0, 2.0]]}))
    with pytest.raises(CheckpointDatasetError, match="found a list"):
        CheckpointRows([[1.0]])
    params[3, 100] = float("nan")
    with pytest.raises(NonFiniteParametersError, match="columns 0:750"):
        fit_normalization(_autoencoder(), CheckpointRows(params))


def test_fit_pdiff_on_a_mapped_dataset_trains_what_it_trains_on_the_tensor(tmp_path):
    from pdiff_hf import PDiffConfig, fit_pdiff

    params = _params(n=16)
    config = PDiffConfig(autoencoder_type="token", ae_token_size=64, ae_token_hidden_dim=16, ae_steps=6,
                         denoiser_steps=4, denoiser_block_out_channels=(8, 16), ae_train_batch_size=8,
                         denoiser_train_batch_size=8, lr_warmup_steps=1)  # fmt: skip
    from_tensor = fit_pdiff(params, LAYOUT, config, progress=False)
    from_dataset = fit_pdiff(_sources(params, tmp_path)["mapped"], LAYOUT, config, progress=False)
    for a, b in ((from_tensor.autoencoder, from_dataset.autoencoder), (from_tensor.denoiser, from_dataset.denoiser)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert from_tensor.autoencoder.config.scaling_factor == from_dataset.autoencoder.config.scaling_factor
    bad = params.clone()
    bad[2, 7] = float("inf")
    with pytest.raises(NonFiniteParametersError):
        fit_pdiff(_nan_dataset(bad, tmp_path), LAYOUT, config, progress=False)


def _nan_dataset(params, tmp_path):
    """A mapped checkpoint dataset holding a non-finite value (make_checkpoint_dataset refuses one)."""
    import pyarrow as pa

    flat = pa.array(params.numpy().reshape(-1))
    table = pa.table({"params": pa.FixedSizeListArray.from_arrays(flat, params.shape[1])})
    datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(tmp_path / "nan"))
    return datasets.load_from_disk(str(tmp_path / "nan"))
