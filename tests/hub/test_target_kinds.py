"""Any ``nn.Module`` as a pipeline's target, and the fingerprint that keeps a target honest.

* a ``PyTorchModelHubMixin`` MLP saves as ``config.json`` + ``model.safetensors`` and loads with ``target_class=``;
* a plain ``nn.Sequential`` saves as ``model.safetensors`` and ``from_pretrained(target=fresh)`` fills the instance
  (every name and shape checked); a load and save without the class keeps the target;
* ``target_fingerprint.json`` records the sha256 of every tensor outside the selection: ``set_target`` and
  ``from_pretrained(target=...)`` with other weights raise :class:`TargetMismatchError` naming them (``check_weights``
  / ``check_target_weights=False`` opt out), a pipeline saved without any target warns;
* no code is imported from the folder to build a target.
"""

import json
import os
import sys
import warnings

import pytest
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from pdiff_hf import PDiffConfig, ParamLayout, PDiffPipeline, TargetMismatchError, fit_pdiff
from pdiff_hf.errors import HubError, LayoutMismatchError

STEPS = 3
X = torch.randn(7, 6, generator=torch.Generator().manual_seed(3))


class MixMLP(nn.Module, PyTorchModelHubMixin):
    """A Hub-mixin network: its init arguments become ``config.json``."""

    def __init__(self, in_features: int = 6, hidden: int = 8, num_classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class PlainNet(nn.Sequential):
    """The plain target's layers, as a class built without arguments."""

    def __init__(self):
        super().__init__(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _mix(seed=0, hidden=8):
    torch.manual_seed(seed)
    return MixMLP(hidden=hidden).eval()


def _plain(seed=0, hidden=8):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3))
    with torch.no_grad():  # trained-looking running statistics
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    return net.eval()


def _pipe(factory, net, include):
    layout = ParamLayout.from_module(net, include=include)
    pipe, _ = factory(layout)
    pipe = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler, target=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _outputs(pipe):
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    models = pipe(num_models=3, num_inference_steps=STEPS, generator=gen, output_type="model").models
    with torch.no_grad():
        return [model(X) for model in models]


@pytest.fixture(scope="module")
def plain_pipe(tiny_pipeline_factory):
    return _pipe(tiny_pipeline_factory, _plain(), "3.*")  # the classifier is generated


@pytest.fixture(scope="module")
def mix_pipe(tiny_pipeline_factory):
    return _pipe(tiny_pipeline_factory, _mix(), "head.*")


@pytest.fixture(scope="module")
def saved(plain_pipe, mix_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    plain_pipe.save_pretrained(root / "plain")
    mix_pipe.save_pretrained(root / "mix")
    return root


# ---------------------------------------------------------------------------------------------- saved files
def test_saved_files_of_a_plain_and_a_hub_mixin_target(saved, plain_pipe):
    assert sorted(os.listdir(saved / "plain" / "target")) == ["model.safetensors"]
    assert sorted(os.listdir(saved / "mix" / "target")) == ["config.json", "model.safetensors"]
    assert json.loads((saved / "mix" / "target" / "config.json").read_text()) == {
        "hidden": 8, "in_features": 6, "num_classes": 3,
    }  # fmt: skip
    for name in ("plain", "mix"):
        index = json.loads((saved / name / "model_index.json").read_text())
        assert index["target"] == [None, None]  # stock diffusers cannot build these: no code is named
        assert not list((saved / name / "target").glob("*.py"))
    record = json.loads((saved / "plain" / "target_fingerprint.json").read_text())
    assert record["kind"] == "plain" and record["class_name"] == "Sequential"
    # every tensor outside the selection, none of the selection, no step counter
    assert list(record["tensors"]) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert record["tensors"] == plain_pipe.target_fingerprint
    assert json.loads((saved / "mix" / "target_fingerprint.json").read_text())["kind"] == "hub_mixin"


def test_card_tells_how_to_load_a_target_whose_code_is_the_users(saved):
    plain = (saved / "plain" / "README.md").read_text()
    assert 'PDiffPipeline.from_pretrained("path/to/this/folder", target=Sequential(...))' in plain
    assert "net = out.models[0]" in plain and "Sequential (" in plain  # architecture with its parameter count
    mix = (saved / "mix" / "README.md").read_text()
    assert 'from_pretrained("path/to/this/folder", target_class=MixMLP)' in mix
    assert "MixMLP(in_features=6, hidden=8, num_classes=3)" in mix
    assert "target_fingerprint.json" in mix


# ---------------------------------------------------------------------------------------------- loading
def test_hub_mixin_target_loads_with_its_class(saved, mix_pipe):
    loaded = PDiffPipeline.from_pretrained(saved / "mix", target_class=MixMLP)
    assert type(loaded.target) is MixMLP and not loaded.target.training
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded), _outputs(mix_pipe)))


def test_plain_target_fills_the_given_instance(saved, plain_pipe):
    fresh = _plain(seed=5)  # untrained: other weights everywhere
    loaded = PDiffPipeline.from_pretrained(saved / "plain", target=fresh)
    assert loaded.target is fresh and not fresh.training
    ref = plain_pipe.target.state_dict()
    assert all(torch.equal(fresh.state_dict()[k], ref[k]) for k in ref)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded), _outputs(plain_pipe)))
    # a plain class built without arguments also works as target_class
    by_class = PDiffPipeline.from_pretrained(saved / "plain", target_class=PlainNet)
    assert type(by_class.target) is PlainNet
    assert all(torch.equal(a, b) for a, b in zip(_outputs(by_class), _outputs(plain_pipe)))


def test_filling_checks_every_name_and_shape(saved):
    with pytest.raises(TargetMismatchError, match=r"0\.weight: saved \[8, 6\], found \[5, 6\]"):
        PDiffPipeline.from_pretrained(saved / "plain", target=_plain(hidden=5))
    extra = nn.Sequential(*_plain(), nn.Linear(3, 3))
    with pytest.raises(LayoutMismatchError, match=r"missing from the saved weights \['4\.weight', '4\.bias'\]"):
        PDiffPipeline.from_pretrained(saved / "plain", target=extra)


def test_without_the_class_the_target_is_left_out_with_a_warning_and_kept_on_save(saved, plain_pipe, caplog, tmp_path):
    with caplog.at_level("WARNING", logger="pdiff_hf.hub.target"):
        loaded = PDiffPipeline.from_pretrained(saved / "plain")
    assert loaded.target is None
    assert "plain target network Sequential" in caplog.text and "pass target=Sequential(...)" in caplog.text
    loaded.save_pretrained(tmp_path / "again")  # no class at hand: the saved target travels on unchanged
    assert (tmp_path / "again" / "target" / "model.safetensors").read_bytes() == (
        saved / "plain" / "target" / "model.safetensors"
    ).read_bytes()
    again = PDiffPipeline.from_pretrained(tmp_path / "again", target=_plain(seed=9))
    assert all(torch.equal(a, b) for a, b in zip(_outputs(again), _outputs(plain_pipe)))
    assert "target=Sequential(...)" in (tmp_path / "again" / "README.md").read_text()


def test_no_code_from_the_folder_is_imported(saved, tmp_path):
    import shutil

    folder = tmp_path / "evil"
    shutil.copytree(saved / "plain", folder)
    record = json.loads((folder / "target_fingerprint.json").read_text())
    record["module"] = "pdiff_evil_target_module"
    (folder / "target_fingerprint.json").write_text(json.dumps(record))
    (folder / "target" / "pdiff_evil_target_module.py").write_text("raise SystemExit('imported')\n")
    sys.path.insert(0, str(folder / "target"))
    try:
        pipe = PDiffPipeline.from_pretrained(folder, target=_plain(seed=1))
        assert isinstance(pipe.target, nn.Sequential)
        PDiffPipeline.from_pretrained(folder)
    finally:
        sys.path.remove(str(folder / "target"))
    assert "pdiff_evil_target_module" not in sys.modules


def test_target_and_target_class_together_are_refused(saved):
    with pytest.raises(HubError, match="expected target= or target_class=, found both"):
        PDiffPipeline.from_pretrained(saved / "mix", target=_mix(), target_class=MixMLP)
    with pytest.raises(HubError, match="expected target_class to be an nn.Module class, found 'MixMLP'"):
        PDiffPipeline.from_pretrained(saved / "mix", target_class="MixMLP")


# ---------------------------------------------------------------------------------------------- fingerprint
def test_set_target_with_other_weights_names_them(plain_pipe):
    fresh = _plain(seed=5)
    with pytest.raises(TargetMismatchError, match=r"4 of 6 tensors have other values: \['0\.weight', '0\.bias', "
                       r"'1\.running_mean', '1\.running_var'\].*chance-level.*check_weights=False"):  # fmt: skip
        plain_pipe.set_target(fresh)
    assert plain_pipe.target is not fresh
    twin = _plain()  # same weights, another object: accepted
    twin.load_state_dict(plain_pipe.target.state_dict())
    original = plain_pipe.target
    try:
        assert plain_pipe.set_target(twin).target is twin
        # opting out makes the new network the record
        plain_pipe.set_target(fresh, check_weights=False)
        assert plain_pipe.target_fingerprint["0.weight"]["sha256"] != twin and plain_pipe.target is fresh
        with pytest.raises(TargetMismatchError):
            plain_pipe.set_target(twin)
    finally:
        plain_pipe.set_target(original, check_weights=False)


def test_selected_tensors_may_differ(plain_pipe):
    other = _plain()
    other.load_state_dict(plain_pipe.target.state_dict())
    with torch.no_grad():
        other[3].weight.add_(1.0)  # in the selection: generated anyway
    original = plain_pipe.target
    plain_pipe.set_target(other)
    plain_pipe.set_target(original)


def test_removed_target_keeps_its_record_through_save_and_load(plain_pipe, tmp_path):
    original = plain_pipe.target
    try:
        plain_pipe.set_target(None)
        assert plain_pipe.target_fingerprint is not None
        plain_pipe.save_pretrained(tmp_path / "bare")
    finally:
        plain_pipe.set_target(original)
    assert not (tmp_path / "bare" / "target").exists()
    loaded = PDiffPipeline.from_pretrained(tmp_path / "bare")
    with pytest.raises(TargetMismatchError, match="4 of 6 tensors have other values"):
        PDiffPipeline.from_pretrained(tmp_path / "bare", target=_plain(seed=5))  # no weights to fill it from
    with pytest.raises(TargetMismatchError):
        loaded.set_target(_plain(seed=5))
    assert loaded.set_target(original).target is original
    unchecked = PDiffPipeline.from_pretrained(tmp_path / "bare", target=_plain(seed=5), check_target_weights=False)
    assert isinstance(unchecked.target, nn.Sequential)


def test_library_target_given_to_from_pretrained_is_filled_or_used_as_given(tiny_pipeline_factory, tmp_path):
    from pdiff_hf.tasks import MNIST1DCNN

    torch.manual_seed(0)
    cnn = MNIST1DCNN(in_length=12, channels=4, num_classes=3).eval()
    pipe = _pipe(tiny_pipeline_factory, cnn, "classifier.*")
    pipe.save_pretrained(tmp_path / "cnn")
    torch.manual_seed(7)
    fresh = MNIST1DCNN(in_length=12, channels=4, num_classes=3)
    loaded = PDiffPipeline.from_pretrained(tmp_path / "cnn", target=fresh)
    assert loaded.target is fresh and torch.equal(fresh.features[0].weight, cnn.features[0].weight)
    torch.manual_seed(7)
    as_given = MNIST1DCNN(in_length=12, channels=4, num_classes=3)
    kept = PDiffPipeline.from_pretrained(tmp_path / "cnn", target=as_given, check_target_weights=False)
    assert not torch.equal(kept.target.features[0].weight, cnn.features[0].weight)
    # the target the folder holds is checked against its fingerprint too
    record = json.loads((tmp_path / "cnn" / "target_fingerprint.json").read_text())
    record["tensors"]["features.0.weight"]["sha256"] = "0" * 64
    (tmp_path / "cnn" / "target_fingerprint.json").write_text(json.dumps(record))
    with pytest.raises(TargetMismatchError, match=r"1 of \d+ tensors have other values: \['features\.0\.weight'\]"):
        PDiffPipeline.from_pretrained(tmp_path / "cnn")


def test_pipeline_saved_without_a_target_warns_when_one_is_set(tiny_pipeline_factory, tmp_path):
    net = _plain()
    layout = ParamLayout.from_module(net, include="3.*")
    pipe, _ = tiny_pipeline_factory(layout)
    pipe.save_pretrained(tmp_path / "none")
    assert not (tmp_path / "none" / "target_fingerprint.json").exists()
    loaded = PDiffPipeline.from_pretrained(tmp_path / "none")
    with pytest.warns(UserWarning, match="saved without its target network.*chance level"):
        loaded.set_target(_plain(seed=5))
    with pytest.warns(UserWarning, match="saved without its target network"):
        PDiffPipeline.from_pretrained(tmp_path / "none", target=_plain(seed=5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.set_target(net)  # in the process that made it: the first target is the record, no warning


# ---------------------------------------------------------------------------------------------- fit_pdiff
def test_fit_pdiff_takes_a_plain_linear_target(tmp_path):
    torch.set_num_threads(1)
    net = nn.Linear(32, 10)
    layout = ParamLayout.from_module(net, include="bias")
    params = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 0.1
    config = PDiffConfig(
        ae_block_out_channels=(8, 8), latent_channels=2, denoiser_block_out_channels=(8, 16), ae_steps=3,
        denoiser_steps=3, ae_train_batch_size=8, denoiser_train_batch_size=8, lr_warmup_steps=0,
    )  # fmt: skip
    pipe = fit_pdiff(params, layout, config, progress=False, target=net)
    assert pipe.target is net and list(pipe.target_fingerprint) == ["weight"]
    pipe.save_pretrained(tmp_path / "linear")
    fresh = nn.Linear(32, 10)
    loaded = PDiffPipeline.from_pretrained(tmp_path / "linear", target=fresh)
    assert torch.equal(fresh.weight, net.weight)
    models = loaded(num_models=2, num_inference_steps=STEPS, output_type="model").models
    assert isinstance(models[0], nn.Linear) and torch.equal(models[1].weight, net.weight)


STOCK = """
import importlib.abc, json, sys, torch
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pdiff_hf" or name.startswith("pdiff_hf."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
params = pipe(num_models=3, num_inference_steps=%d, generator=torch.Generator().manual_seed(0)).params
print(json.dumps({"target": getattr(pipe, "target", None) is None, "params": params.tolist(),
                  "pdiff_modules": [m for m in sys.modules if m.startswith("pdiff_hf")]}))
""" % STEPS


def test_stock_diffusers_loads_the_pipeline_without_the_users_target(saved, plain_pipe):
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", STOCK, str(saved / "plain")], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["target"] and got["pdiff_modules"] == []  # no target code exists in the folder to run
    ref = plain_pipe(num_models=3, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0)).params
    assert torch.equal(torch.tensor(got["params"]), ref)
