"""Every autoencoder class by its saved name: ``pdiff_hf.models.autoencoder_class`` (the one map), the scripts'
``load_autoencoder`` and ``train_ldm.py`` on a conv, token and linear autoencoder (the token chain at D >= 60,000 in
real subprocesses is in test_token_chain.py)."""

import datasets
import pytest
import torch

from pdiff_hf import PDiffPipeline, get_layout
from pdiff_hf.checkpoints.dataset import checkpoint_params
from pdiff_hf.errors import PDiffError, TrainingScriptError
from pdiff_hf.models import AUTOENCODER_MODULES, autoencoder_class
from pdiff_hf.training.script_args import load_autoencoder

from .conftest import TINY_LDM, run_in_process


def test_autoencoder_class_maps_every_saved_name():
    assert set(AUTOENCODER_MODULES) == {"ParameterAutoencoder", "TokenParameterAutoencoder", "LinearParameterAutoencoder"}
    for name in AUTOENCODER_MODULES:
        assert autoencoder_class(name).__name__ == name
    for bad in ("LatentUNet1DModel", "os", "", None):
        with pytest.raises(PDiffError, match="expected an autoencoder class of pdiff_hf"):
            autoencoder_class(bad)


def _autoencoder(kind, dataset_dir):
    ds = datasets.load_from_disk(str(dataset_dir))
    layout, params = get_layout(ds), checkpoint_params(ds)  # (32, 64)
    torch.manual_seed(0)
    cls = autoencoder_class(kind)
    if kind == "ParameterAutoencoder":
        ae = cls(in_dim=layout.dim, block_out_channels=(8, 8), param_layout=layout.to_list())
    elif kind == "TokenParameterAutoencoder":
        ae = cls(in_dim=layout.dim, token_size=16, hidden_dim=16, param_layout=layout.to_list())
    else:
        ae = cls(in_dim=layout.dim, latent_channels=2, latent_length=8, param_layout=layout.to_list())
    ae.fit_normalization(params)
    if hasattr(ae, "fit_basis"):
        ae.fit_basis(params)
    ae.set_latent_scaling(params)
    return ae.eval()


@pytest.mark.parametrize("kind", ["ParameterAutoencoder", "TokenParameterAutoencoder", "LinearParameterAutoencoder"])
def test_train_ldm_trains_on_whichever_autoencoder_class_was_saved(scripts, dataset_dir, tmp_path, kind):
    ae = _autoencoder(kind, dataset_dir)
    ae.save_pretrained(str(tmp_path / "ae"))
    loaded = load_autoencoder(str(tmp_path / "ae"))
    assert type(loaded) is type(ae)
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), loaded.state_dict().values()))
    argv = ["--dataset_name", dataset_dir, "--pretrained_autoencoder_name_or_path", tmp_path / "ae",
            "--output_dir", tmp_path / "ldm", *TINY_LDM, "--max_train_steps", "2"]  # fmt: skip
    assert run_in_process(scripts["train_ldm"], argv) == 0
    pipe = PDiffPipeline.from_pretrained(str(tmp_path / "ldm"))
    assert type(pipe.autoencoder).__name__ == kind
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_models=2, num_inference_steps=3).params.isfinite().all()


def test_load_autoencoder_names_what_is_wrong(dataset_dir, tmp_path):
    with pytest.raises(TrainingScriptError, match="--pretrained_autoencoder_name_or_path: expected a saved autoencoder"):
        load_autoencoder(str(tmp_path / "missing"))
    ae = _autoencoder("ParameterAutoencoder", dataset_dir)
    ae.save_pretrained(str(tmp_path / "foreign"))
    config = tmp_path / "foreign" / "config.json"
    config.write_text(config.read_text().replace('"ParameterAutoencoder"', '"SomeoneElsesModel"'))
    with pytest.raises(TrainingScriptError, match="expected an autoencoder class of pdiff_hf.*'SomeoneElsesModel'"):
        load_autoencoder(str(tmp_path / "foreign"))
    ae.save_pretrained(str(tmp_path / "no_weights"))
    (tmp_path / "no_weights" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(TrainingScriptError, match="expected a complete ParameterAutoencoder"):
        load_autoencoder(str(tmp_path / "no_weights"))
