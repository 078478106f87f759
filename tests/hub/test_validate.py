"""Hostile or inconsistent pipeline folders are refused with a HubError before any component is built
(pdiff_hf.hub.validate, called by the folder/Hub loader): sizes beyond what the weights hold, counts beyond sane
limits, tensors missing, extra or of another shape, a layout of another D, zero statistics, links out of the folder,
JSON nested too deep. Each case is a fixture folder written by the test."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_bn_mlp, make_tiny_models  # noqa: E402

from pdiff_hf import ParamLayout  # noqa: E402
from pdiff_hf.errors import HubError  # noqa: E402
from pdiff_hf.hub import validate  # noqa: E402
from pdiff_hf.hub.load import load_components  # noqa: E402

torch.set_num_threads(1)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    """A pipeline folder written component by component (autoencoder, denoiser, scheduler, model_index.json,
    param_layout.json), with fitted statistics."""
    from pdiff_hf.training.training_utils import sampling_scheduler_for

    layout = ParamLayout.from_module(make_bn_mlp(), last_norm_layers=2, include_buffers=True)
    ae, denoiser = make_tiny_models(layout)
    params = torch.randn(12, layout.dim, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.5
    params[:, layout.log_space_mask()] = params[:, layout.log_space_mask()].abs() + 0.5
    ae.fit_normalization(params)
    folder = tmp_path_factory.mktemp("good") / "pipe"
    ae.save_pretrained(folder / "autoencoder")
    denoiser.save_pretrained(folder / "denoiser")
    sampling_scheduler_for(denoiser).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "PDiffPipeline", "_diffusers_version": "0.0",
        "autoencoder": ["pdiff_hf", "ParameterAutoencoder"], "denoiser": ["pdiff_hf", "LatentUNet1DModel"],
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    }  # fmt: skip
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "param_layout.json").write_text(json.dumps({"param_layout": layout.to_list(), "dim": layout.dim}))
    return folder


@pytest.fixture
def folder(good_folder, tmp_path):
    copy = tmp_path / "pipe"
    shutil.copytree(good_folder, copy)
    return copy


@pytest.fixture
def never_built(monkeypatch):
    """Building any component fails the test: the folder must be refused before."""
    from diffusers import SchedulerMixin

    from pdiff_hf.models import LatentUNet1DModel, ParameterAutoencoder

    def refuse(*args, **kwargs):
        raise AssertionError("a component was built before the folder was checked")

    for cls in (ParameterAutoencoder, LatentUNet1DModel, SchedulerMixin):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))


def edit_json(path: Path, **changes):
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def edit_weights(path: Path, fn):
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def load(folder: Path):
    return load_components(folder, f"pipeline folder {folder.name}")


def test_good_folder_loads_exactly(good_folder):
    components = load(good_folder)
    for name in ("autoencoder", "denoiser"):
        saved = load_file(str(good_folder / name / WEIGHTS))
        state = components[name].state_dict()
        assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)


# ------------------------------------------------------------------------------------ sizes and counts
@pytest.mark.parametrize(
    "component,changes,match",
    [
        ("autoencoder", {"in_dim": 200_000_000}, r"in_dim in autoencoder/config.json to be in \[0, \d+\].*found 200000000"),
        ("autoencoder", {"in_dim": -5}, r"in_dim .* found -5"),
        ("autoencoder", {"block_out_channels": [8, 10**9]}, r"block_out_channels .* found \[8, 1000000000\]"),
        ("autoencoder", {"scaling_factor": float("nan")}, "scaling_factor .* to be finite"),
        ("denoiser", {"num_conditions": 10**9}, r"num_conditions .* found 1000000000"),
        ("denoiser", {"num_train_timesteps": 200_000_000}, r"num_train_timesteps .* \[2, 100000\], found 200000000"),
        ("denoiser", {"sample_length": -3}, r"sample_length .* found -3"),
        ("denoiser", {"sample_length": 3}, r"latent shape \(2, 16\), found \(2, 3\)"),
        ("scheduler", {"num_train_timesteps": 200_000_000}, r"num_train_timesteps in scheduler/scheduler_config.json"),
        ("scheduler", {"solver_order": 10**9}, r"solver_order .* found 1000000000"),
    ],
)
def test_config_beyond_bounds_refused_before_building(folder, never_built, component, changes, match):
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    edit_json(folder / component / name, **changes)
    with pytest.raises(HubError, match=match):
        load(folder)


# ------------------------------------------------------------------------------------ tensors and consistency
def test_missing_tensor_is_an_error_not_a_meta_tensor(folder, never_built):
    edit_weights(folder / "denoiser" / WEIGHTS, lambda t: t.pop("conv_out.bias"))
    with pytest.raises(HubError, match=r"every tensor of the model, found 1 missing \(conv_out.bias\)"):
        load(folder)


def test_extra_tensor(folder, never_built):
    edit_weights(folder / "autoencoder" / WEIGHTS, lambda t: t.update(planted=torch.zeros(3)))
    with pytest.raises(HubError, match=r"only tensors of the model, found 1 extra \(planted\)"):
        load(folder)


def test_wrong_shape(folder, never_built):
    edit_weights(folder / "denoiser" / WEIGHTS, lambda t: t.update({"conv_out.bias": torch.zeros(5)}))
    with pytest.raises(HubError, match=r"tensor conv_out.bias of shape \[2\], found \[5\]"):
        load(folder)


def test_layout_file_of_another_d(folder, never_built):
    document = json.loads((folder / "param_layout.json").read_text())
    document["param_layout"][0]["shape"] = [9]
    (folder / "param_layout.json").write_text(json.dumps(document))
    with pytest.raises(HubError, match=r"param_layout.json to describe D = in_dim = 64 .*found D = 65"):
        load(folder)


def test_layout_in_config_of_another_d(folder, never_built):
    config = json.loads((folder / "autoencoder" / "config.json").read_text())
    config["param_layout"] = config["param_layout"][:-1]
    (folder / "autoencoder" / "config.json").write_text(json.dumps(config))
    with pytest.raises(HubError, match=r"param_layout to describe D = in_dim = 64, found D = 56"):
        load(folder)


@pytest.mark.parametrize("value,match", [(0.0, "positive and finite, found 0.0"), (float("inf"), "found inf")])
def test_normalization_statistics(folder, never_built, value, match):
    edit_weights(folder / "autoencoder" / WEIGHTS, lambda t: t["norm_std"].fill_(value))
    with pytest.raises(HubError, match=f"norm_std to be {match}" if value == 0 else match):
        load(folder)


# ------------------------------------------------------------------------------------ paths and JSON
def test_weights_link_out_of_the_folder(folder, tmp_path, never_built):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / "denoiser" / WEIGHTS, outside)
    os.symlink(outside, folder / "denoiser" / WEIGHTS)
    with pytest.raises(HubError, match=r"denoiser/diffusion_pytorch_model.safetensors to be a file inside the folder"):
        load(folder)


def test_config_link_out_of_the_folder(folder, tmp_path, never_built):
    outside = tmp_path / "config.json"
    shutil.move(folder / "autoencoder" / "config.json", outside)
    os.symlink(outside, folder / "autoencoder" / "config.json")
    with pytest.raises(HubError, match="outside it"):
        load(folder)


def test_hub_snapshot_links_into_its_blobs_load(good_folder, tmp_path):
    """A Hub cache snapshot (files linked to ../../blobs) is not refused."""
    repo = tmp_path / "models--o--n"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    blobs.mkdir(parents=True)
    for path in sorted(good_folder.rglob("*")):
        rel = path.relative_to(good_folder)
        if path.is_dir():
            (snapshot / rel).mkdir(parents=True, exist_ok=True)
            continue
        blob = blobs / rel.as_posix().replace("/", "_")
        shutil.copyfile(path, blob)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snapshot / rel).parent), snapshot / rel)
    assert set(load(snapshot)) == {"autoencoder", "denoiser", "scheduler"}
    os.unlink(snapshot / "param_layout.json")
    os.symlink(tmp_path, snapshot / "param_layout.json")  # out of blobs/: refused
    with pytest.raises(HubError, match="param_layout.json to be a file inside the folder"):
        load(snapshot)


def test_model_index_nested_too_deep(folder, never_built):
    (folder / "model_index.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(HubError, match=r"model_index.json to nest at most 32 levels deep, found 200000"):
        load(folder)


def test_json_size_limit(folder):
    path = folder / "denoiser" / "config.json"
    with pytest.raises(HubError, match=r"config.json to have at most 100 bytes, found \d+"):
        validate.read_json_limited(path, "folder", max_bytes=100)
    assert validate.json_depth('{"a": "[[[[", "b": [[1]]}') == 3  # brackets in strings do not count


# ------------------------------------------------------------------------------------ checkpoint dataset folders
@pytest.fixture
def dataset_folder(tmp_path):
    from pdiff_hf.checkpoints.dataset import make_checkpoint_dataset

    layout = ParamLayout.from_module(torch.nn.Linear(3, 2))
    ds = make_checkpoint_dataset(torch.randn(4, layout.dim), layout)
    path = tmp_path / "ds"
    ds.save_to_disk(str(path))
    return path


def test_dataset_folder_loads(dataset_folder):
    from pdiff_hf.hub.datasets import load_checkpoint_dataset

    assert len(load_checkpoint_dataset(dataset_folder)) == 4


@pytest.mark.parametrize("name", ["../../x.arrow", "/etc/passwd", "sub/../../x.arrow"])
def test_dataset_state_naming_a_file_outside(dataset_folder, tmp_path, name):
    from pdiff_hf.errors import CheckpointDatasetError
    from pdiff_hf.hub.datasets import load_checkpoint_dataset

    arrow = next(dataset_folder.glob("*.arrow"))
    shutil.copyfile(arrow, tmp_path / "x.arrow")  # a real Arrow file outside the dataset folder
    state = json.loads((dataset_folder / "state.json").read_text())
    state["_data_files"] = [{"filename": name}]
    (dataset_folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointDatasetError, match=r"expected a data file name inside the dataset folder"):
        load_checkpoint_dataset(dataset_folder)


def test_dataset_arrow_link_outside(dataset_folder, tmp_path):
    from pdiff_hf.errors import CheckpointDatasetError
    from pdiff_hf.hub.datasets import load_checkpoint_dataset

    arrow = next(dataset_folder.glob("*.arrow"))
    shutil.move(arrow, tmp_path / "outside.arrow")
    os.symlink(tmp_path / "outside.arrow", arrow)
    with pytest.raises(CheckpointDatasetError, match=r"to be a file inside the folder, found a link to .*outside it"):
        load_checkpoint_dataset(dataset_folder)


def test_dataset_state_nested_too_deep(dataset_folder):
    from pdiff_hf.errors import CheckpointDatasetError
    from pdiff_hf.hub.datasets import load_checkpoint_dataset

    (dataset_folder / "state.json").write_text("{\"a\": " + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CheckpointDatasetError, match="state.json to nest at most 32 levels deep, found 100001"):
        load_checkpoint_dataset(dataset_folder)


# ------------------------------------------------------------------------------------ the target network
def test_target_config_beyond_its_weights(folder, monkeypatch):
    from pdiff_hf.tasks import MNIST1DCNN

    MNIST1DCNN().save_pretrained(folder / "target")
    edit_json(folder / "model_index.json", target=["pdiff_hf", "MNIST1DCNN"])
    assert type(load(folder)["target"]).__name__ == "MNIST1DCNN"

    def refuse(*args, **kwargs):
        raise AssertionError("the target was built before its config was checked")

    monkeypatch.setattr(MNIST1DCNN, "from_pretrained", classmethod(refuse))
    config = json.loads((folder / "target" / "config.json").read_text())
    key = next(k for k, v in config.items() if not k.startswith("_") and isinstance(v, int) and not isinstance(v, bool))
    edit_json(folder / "target" / "config.json", **{key: 10**10})
    with pytest.raises(HubError, match=rf"expected {key} in target/config.json to be in \[0, \d+\].*found 10000000000"):
        load(folder)


def test_dataset_dict_folder_loads_and_its_split_names_are_checked(tmp_path):
    import datasets

    from pdiff_hf.checkpoints.dataset import make_checkpoint_dataset
    from pdiff_hf.errors import CheckpointDatasetError
    from pdiff_hf.hub.datasets import load_checkpoint_dataset

    layout = ParamLayout.from_module(torch.nn.Linear(3, 2))
    part = make_checkpoint_dataset(torch.randn(4, layout.dim), layout)
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(path))
    assert len(load_checkpoint_dataset(path, split="test")) == 4
    edit_json(path / "dataset_dict.json", splits=["train", "../../elsewhere"])
    with pytest.raises(CheckpointDatasetError, match=r"expected a split name in dataset_dict.json, found '../../elsewhere'"):
        load_checkpoint_dataset(path)


def test_target_fingerprint_nested_too_deep(folder):
    (folder / "target_fingerprint.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HubError, match="target_fingerprint.json to nest at most 32 levels deep"):
        load(folder)
