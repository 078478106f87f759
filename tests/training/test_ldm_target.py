"""train_ldm.py saves the target network with the pipeline: the collection's target/ by default, or
--pretrained_target_name_or_path; its folder then gives working networks alone."""

import pytest
import torch

from pdiff_hf import ParamLayout, PDiffPipeline, make_checkpoint_dataset
from pdiff_hf.errors import LayoutMismatchError, TrainingScriptError
from pdiff_hf.tasks import MNIST1DCNN

from .conftest import TINY_AE, TINY_LDM, run_in_process


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """DIR/target (a saved MNIST1DCNN) and DIR/checkpoints (24 checkpoints of its last two BatchNorm layers)."""
    root = tmp_path_factory.mktemp("collection")
    torch.manual_seed(0)
    model = MNIST1DCNN(channels=4)
    layout = ParamLayout.from_module(model, last_norm_layers=2)
    base = layout.flatten(model)
    params = base + 0.05 * torch.randn(24, layout.dim, generator=torch.Generator().manual_seed(0))
    make_checkpoint_dataset(params, layout, {"step": list(range(24))}).save_to_disk(str(root / "checkpoints"))
    model.save_pretrained(str(root / "target"))
    return root, model


@pytest.fixture(scope="module")
def autoencoder_dir(scripts, collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "ae"
    argv = ["--dataset_name", collection[0] / "checkpoints", "--output_dir", out, *TINY_AE, "--max_train_steps", 2]
    assert run_in_process(scripts["train_autoencoder"], argv) == 0
    return out


def _ldm(scripts, collection, autoencoder_dir, out, *extra):
    argv = ["--dataset_name", collection[0] / "checkpoints", "--pretrained_autoencoder_name_or_path", autoencoder_dir,
            "--output_dir", out, *TINY_LDM, "--max_train_steps", 2, *extra]  # fmt: skip
    return run_in_process(scripts["train_ldm"], argv)


def test_the_collections_target_travels_with_the_pipeline(scripts, collection, autoencoder_dir, tmp_path):
    assert _ldm(scripts, collection, autoencoder_dir, tmp_path / "ldm") == 0
    pipe = PDiffPipeline.from_pretrained(tmp_path / "ldm")
    assert isinstance(pipe.target, MNIST1DCNN)
    saved = collection[1].state_dict()
    assert all(torch.equal(saved[k], v) for k, v in pipe.target.state_dict().items())
    nets = pipe(num_models=2, num_inference_steps=3, output_type="model").models
    assert isinstance(nets[0], MNIST1DCNN)


def test_no_target_and_an_explicit_target(scripts, collection, autoencoder_dir, tmp_path):
    assert _ldm(scripts, collection, autoencoder_dir, tmp_path / "none", "--no_target") == 0
    assert PDiffPipeline.from_pretrained(tmp_path / "none").target is None
    explicit = ("--pretrained_target_name_or_path", collection[0] / "target")
    assert _ldm(scripts, collection, autoencoder_dir, tmp_path / "explicit", *explicit) == 0
    assert isinstance(PDiffPipeline.from_pretrained(tmp_path / "explicit").target, MNIST1DCNN)


def test_bad_targets_fail_before_training(scripts, collection, autoencoder_dir, tmp_path):
    with pytest.raises(TrainingScriptError, match="--pretrained_target_name_or_path"):
        _ldm(scripts, collection, autoencoder_dir, tmp_path / "a", "--pretrained_target_name_or_path", tmp_path / "nope")
    other = tmp_path / "other"
    MNIST1DCNN(channels=8).save_pretrained(str(other))  # BatchNorm layers of another size than the dataset's
    with pytest.raises(LayoutMismatchError):
        _ldm(scripts, collection, autoencoder_dir, tmp_path / "b", "--pretrained_target_name_or_path", other)
    assert not (tmp_path / "b" / "model_index.json").exists()
