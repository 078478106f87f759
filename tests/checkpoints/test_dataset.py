import datasets
import numpy as np
import pytest
import torch
from torch import nn

from pdiff_hf import (
    CheckpointDatasetError,
    DimensionMismatchError,
    NonFiniteParametersError,
    ParamLayout,
    check_dataset_layout,
    checkpoint_params,
    get_layout,
    make_checkpoint_dataset,
    set_layout,
    split_by_runs,
)
from pdiff_hf.checkpoints.dataset import summary

datasets.disable_progress_bars()


@pytest.fixture
def layout(bn_layout):
    return bn_layout


@pytest.fixture
def dataset(layout):
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(12, layout.dim, generator=gen)
    meta = {
        "run_id": [i // 4 for i in range(12)],
        "seed": [10 + i // 4 for i in range(12)],
        "step": list(range(12)),
        "val_accuracy": np.linspace(50, 90, 12),
        "test_accuracy": torch.linspace(40, 80, 12),
    }
    return make_checkpoint_dataset(params, layout, meta), params


def test_make_and_read(dataset, layout):
    ds, params = dataset
    assert len(ds) == 12
    assert ds.column_names == ["params", "run_id", "seed", "step", "val_accuracy", "test_accuracy"]
    feature = ds.features["params"]
    assert feature.length == layout.dim and feature.feature.dtype == "float32"
    assert get_layout(ds) == layout
    assert torch.equal(checkpoint_params(ds), params)
    assert ds["run_id"] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert ds[3]["val_accuracy"] == pytest.approx(float(np.linspace(50, 90, 12)[3]))
    assert summary(ds) == {"checkpoints": 12, "D": layout.dim, "runs": 3}


def test_accepts_numpy_and_float64(layout):
    arr = np.random.default_rng(0).normal(size=(3, layout.dim))
    ds = make_checkpoint_dataset(arr, layout)
    assert torch.equal(checkpoint_params(ds), torch.from_numpy(arr).float())


def test_save_load_round_trip(dataset, layout, tmp_path):
    ds, params = dataset
    ds.save_to_disk(str(tmp_path / "ckpts"))
    loaded = datasets.load_from_disk(str(tmp_path / "ckpts"))
    assert torch.equal(checkpoint_params(loaded), params)
    assert get_layout(loaded) == layout
    for column in ("run_id", "seed", "step", "val_accuracy", "test_accuracy"):
        assert loaded[column] == ds[column]
    assert loaded.features == ds.features


def test_select_filter_shuffle_split_keep_layout(dataset, layout):
    ds, params = dataset
    sel = ds.select([5, 1, 7])
    assert get_layout(sel) == layout
    assert torch.equal(checkpoint_params(sel), params[[5, 1, 7]])

    filtered = ds.filter(lambda row: row["step"] % 3 == 0)
    assert get_layout(filtered) == layout
    assert torch.equal(checkpoint_params(filtered), params[::3])

    shuffled = ds.shuffle(seed=0)
    order = shuffled["step"]
    assert get_layout(shuffled) == layout
    assert torch.equal(checkpoint_params(shuffled), params[order])

    splits = ds.train_test_split(test_size=0.25, seed=0)
    assert get_layout(splits["train"]) == layout and get_layout(splits["test"]) == layout
    assert torch.equal(checkpoint_params(splits["test"]), params[splits["test"]["step"]])


def test_split_by_runs_keeps_runs_whole(dataset, layout):
    ds, params = dataset
    train, holdout = split_by_runs(ds, [1])
    assert set(train["run_id"]) == {0, 2} and set(holdout["run_id"]) == {1}
    assert len(train) == 8 and len(holdout) == 4
    assert get_layout(train) == layout and get_layout(holdout) == layout
    assert torch.equal(checkpoint_params(holdout), params[4:8])
    assert torch.equal(checkpoint_params(train), torch.cat([params[:4], params[8:]]))
    with pytest.raises(CheckpointDatasetError, match="not in dataset runs"):
        split_by_runs(ds, [7])
    with pytest.raises(CheckpointDatasetError, match="'run'"):
        split_by_runs(ds, [1], run_column="run")


def test_concatenate_and_set_layout(dataset, layout):
    ds, params = dataset
    merged = set_layout(datasets.concatenate_datasets([ds, ds.select([0])]), layout)
    assert get_layout(merged) == layout
    assert torch.equal(checkpoint_params(merged), torch.cat([params, params[:1]]))


def test_plain_list_column_is_read(layout):
    params = torch.randn(3, layout.dim)
    ds = set_layout(datasets.Dataset.from_dict({"params": params.tolist()}), layout)
    assert torch.equal(checkpoint_params(ds), params)


def test_missing_params_column_layout_or_rows(dataset, layout):
    ds, _ = dataset
    with pytest.raises(CheckpointDatasetError, match="'params' column"):
        checkpoint_params(ds.remove_columns(["params"]))
    with pytest.raises(CheckpointDatasetError, match="empty"):
        checkpoint_params(ds.select([]))
    plain = datasets.Dataset.from_dict({"params": [[0.0] * layout.dim]})
    with pytest.raises(CheckpointDatasetError, match="parameter layout"):
        get_layout(plain)
    with pytest.raises(CheckpointDatasetError):
        check_dataset_layout(plain, layout)
    plain.info.description = '{"something": "else"}'
    with pytest.raises(CheckpointDatasetError):
        get_layout(plain)


def test_metadata_length_mismatch(layout):
    with pytest.raises(CheckpointDatasetError, match="run_id"):
        make_checkpoint_dataset(torch.zeros(3, layout.dim), layout, {"run_id": [0, 1]})


def test_dimension_mismatch(dataset, layout):
    ds, _ = dataset
    with pytest.raises(DimensionMismatchError):
        make_checkpoint_dataset(torch.zeros(3, layout.dim + 1), layout)
    with pytest.raises(DimensionMismatchError):
        make_checkpoint_dataset(torch.zeros(layout.dim), layout)
    other = ParamLayout.from_module(nn.Linear(3, 2))
    with pytest.raises(DimensionMismatchError, match="does not match"):
        check_dataset_layout(ds, other)
    assert check_dataset_layout(ds, layout) == layout


def test_non_finite_checkpoints(layout):
    params = torch.zeros(5, layout.dim)
    params[2, 4] = float("nan")
    params[4, 0] = float("inf")
    with pytest.raises(NonFiniteParametersError, match=r"2 of 5 rows \(first rows: \[2, 4\]\)"):
        make_checkpoint_dataset(params, layout)
    # a dataset assembled by hand with NaN is caught on read
    ds = set_layout(datasets.Dataset.from_dict({"params": params.tolist()}), layout)
    with pytest.raises(NonFiniteParametersError):
        checkpoint_params(ds)
    assert torch.isnan(checkpoint_params(ds, check=False)).sum() == 1


def test_large_dataset():
    layout = ParamLayout.from_list([{"name": "w", "shape": [200_000]}])
    params = torch.randn(200, 200_000, generator=torch.Generator().manual_seed(0))
    ds = make_checkpoint_dataset(params, layout, {"run_id": [0] * 200})
    out = checkpoint_params(ds)
    assert out.shape == (200, 200_000) and out.dtype == torch.float32
    assert torch.equal(out, params)
    assert torch.equal(checkpoint_params(ds.select(range(1, 200, 50))), params[1::50])


def test_checkpoint_dataset_fingerprint_follows_its_content():
    """The fingerprint is a hash of the rows, metadata and layout (datasets' own would pickle the whole table)."""
    from pdiff_hf.checkpoints.dataset import make_checkpoint_dataset

    layout = ParamLayout.from_list([{"name": "w", "shape": [5]}])
    params = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    first = make_checkpoint_dataset(params, layout, {"step": [0, 1, 2, 3]})
    assert make_checkpoint_dataset(params.clone(), layout, {"step": [0, 1, 2, 3]})._fingerprint == first._fingerprint
    changed = params.clone()
    changed[2, 3] += 1e-6
    others = [
        make_checkpoint_dataset(changed, layout, {"step": [0, 1, 2, 3]}),
        make_checkpoint_dataset(params, layout, {"step": [0, 1, 2, 4]}),
        make_checkpoint_dataset(params, ParamLayout.from_list([{"name": "v", "shape": [5]}]), {"step": [0, 1, 2, 3]}),
    ]
    assert len({first._fingerprint} | {o._fingerprint for o in others}) == 4
