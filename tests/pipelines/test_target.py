"""The target network as a pipeline component: checked against the layout, saved in ``target/``, loaded back by the
safe loader and by stock diffusers (``trust_remote_code=True``, pdiff_hf blocked), and ``output_type`` ``"state_dict"``
/ ``"model"``."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from pdiff_hf.pipelines.pipeline_output import GeneratedModels
from torch import nn

from pdiff_hf import (
    HubError,
    LayoutMismatchError,
    ParamLayout,
    PDiffPipeline,
    predict_with_parameters,
)
from pdiff_hf.errors import PipelineInputError
from pdiff_hf.hub.target import check_savable_target
from pdiff_hf.tasks import MNIST1DCNN

STEPS = 3


def _tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


def _tiny_cnn():
    torch.manual_seed(0)
    return MNIST1DCNN(in_length=12, channels=4, num_classes=3).eval()


def _with_target(factory, target, layout):
    pipe, _ = factory(layout)
    pipe = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler, target=target)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, output_type="pt", num_models=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return pipe(num_models=num_models, num_inference_steps=STEPS, generator=gen, output_type=output_type)


@pytest.fixture(scope="module")
def cnn_pipe(tiny_pipeline_factory):
    net = _tiny_cnn()
    layout = ParamLayout.from_module(net, last_norm_layers=2, include_buffers=True)
    return _with_target(tiny_pipeline_factory, net, layout)


@pytest.fixture(scope="module")
def vit_pipe(tiny_pipeline_factory):
    vit = _tiny_vit()
    return _with_target(tiny_pipeline_factory, vit, ParamLayout.from_module(vit, include="classifier.*"))


@pytest.fixture(scope="module")
def saved(cnn_pipe, vit_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    cnn_pipe.save_pretrained(root / "cnn")
    vit_pipe.save_pretrained(root / "vit")
    return root


X_CNN = torch.randn(5, 1, 12, generator=torch.Generator().manual_seed(1))
X_VIT = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def _logits(model, x):
    with torch.no_grad():
        out = model(x)
    return getattr(out, "logits", out)


# ----------------------------------------------------------------------------------------------- construction
def test_target_is_checked_against_the_layout(cnn_pipe, vit_pipe):
    ae, den, sched = cnn_pipe.autoencoder, cnn_pipe.denoiser, cnn_pipe.scheduler
    with pytest.raises(LayoutMismatchError, match=r"target ViTForImageClassification.*missing \['features\.4\.weight'"):
        PDiffPipeline(ae, den, sched, target=_tiny_vit())
    wider = MNIST1DCNN(in_length=12, channels=5, num_classes=3)
    with pytest.raises(LayoutMismatchError, match=r"features\.4\.weight: expected \[4\], found \[5\]"):
        PDiffPipeline(ae, den, sched, target=wider)
    with pytest.raises(PipelineInputError, match=r"expected target to be a torch\.nn\.Module.*found builtins.str"):
        PDiffPipeline(ae, den, sched, target="vit")
    with pytest.raises(LayoutMismatchError, match="missing"):
        PDiffPipeline(ae, den, sched).set_target(_tiny_vit())
    assert PDiffPipeline(ae, den, sched).target is None
    assert set(cnn_pipe.components) == {"autoencoder", "denoiser", "scheduler", "target"}


# ------------------------------------------------------------------------------------------------ output types
def test_state_dict_output(cnn_pipe):
    pt = _sample(cnn_pipe)
    sd = _sample(cnn_pipe, "state_dict")
    assert sd.output_type == "state_dict" and isinstance(sd.params, list) and len(sd.params) == 3
    for a, b in zip(sd.params, pt.state_dicts()):
        assert list(a) == cnn_pipe.layout.names and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(cnn_pipe.layout.flatten(sd.load_into(_tiny_cnn(), 2)), pt.params[2])
    (params,) = cnn_pipe(num_models=3, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                         output_type="state_dict", return_dict=False)  # fmt: skip
    assert torch.equal(params[0]["features.4.weight"], sd.params[0]["features.4.weight"])


def test_model_output_is_lazy_and_matches_batched_evaluation(cnn_pipe):
    pt = _sample(cnn_pipe)
    out = _sample(cnn_pipe, "model")
    models = out.models
    assert isinstance(models, GeneratedModels) and len(models) == 3 and models is out.params
    first, again = models[0], models[0]
    assert first is not again and first is not cnn_pipe.target, "every access builds a new module"
    assert not first.training and isinstance(first, MNIST1DCNN)
    layout = cnn_pipe.layout
    for i, model in enumerate(models):
        assert torch.equal(layout.flatten(model), pt.params[i])
    # tensors outside the selection are the target's, and the target is untouched
    assert torch.equal(models[1].classifier.weight, cnn_pipe.target.classifier.weight)
    assert not torch.equal(layout.flatten(cnn_pipe.target), pt.params[0])
    # predictions of the built models = batched functional evaluation of the same vectors
    batched = predict_with_parameters(cnn_pipe.target, layout, pt.params, X_CNN)
    for i in range(3):
        assert torch.equal(_logits(models[i], X_CNN).argmax(-1), batched[i])
    assert torch.equal(layout.flatten(models[-1]), pt.params[2])
    assert len(models[1:]) == 2 and torch.equal(layout.flatten(models[1:][0]), pt.params[1])
    assert torch.equal(out.state_dicts()[1]["features.4.bias"], models.state_dict(1)["features.4.bias"])
    with pytest.raises(PipelineInputError, match=r"expected a model index in \[0, 3\)"):
        models[3]


def test_model_output_needs_a_target(cnn_pipe):
    pipe = PDiffPipeline(cnn_pipe.autoencoder, cnn_pipe.denoiser, cnn_pipe.scheduler)
    calls = []
    handle = pipe.denoiser.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with pytest.raises(PipelineInputError, match="expected a pipeline with a target network.*found target=None"):
            _sample(pipe, "model")
    finally:
        handle.remove()
    assert not calls, "the input check must come before any denoising step"
    with pytest.raises(PipelineInputError, match="output_type 'model' for .models, found output_type 'pt'"):
        _sample(cnn_pipe).models


def test_plain_module_target_gives_working_models(tiny_pipeline_factory, bn_mlp_factory):
    net = bn_mlp_factory(seed=0)
    layout = ParamLayout.from_module(net, last_norm_layers=2, include_buffers=True)
    pipe, _ = tiny_pipeline_factory(layout)
    pipe = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler, target=net)
    pipe.set_progress_bar_config(disable=True)
    out = _sample(pipe, num_models=2)
    models = _sample(pipe, "model", num_models=2).models
    assert isinstance(models[1], nn.Sequential) and torch.equal(layout.flatten(models[1]), out.params[1])
    assert torch.equal(layout.flatten(GeneratedModels(net, layout, out.params)[1]), out.params[1])
    check_savable_target(net)  # every module saves (as safetensors in target/)
    with pytest.raises(HubError, match="expected a target network .a torch.nn.Module. or None, found builtins.str"):
        check_savable_target("net")


# ------------------------------------------------------------------------------------------- saving and loading
def test_saved_folders_hold_the_target(saved):
    cnn_index = json.loads((saved / "cnn" / "model_index.json").read_text())
    assert cnn_index["target"] == ["pdiff_target", "MNIST1DCNN"]
    assert sorted(os.listdir(saved / "cnn" / "target")) == [
        "config.json", "diffusion_pytorch_model.safetensors", "pdiff_target.py",
    ]  # fmt: skip
    code = (saved / "cnn" / "target" / "pdiff_target.py").read_text()
    assert "class MNIST1DCNN" in code and not re.search(r"^\s*(from|import) pdiff_hf", code, flags=re.MULTILINE)
    vit_index = json.loads((saved / "vit" / "model_index.json").read_text())
    assert vit_index["target"] == ["transformers", "ViTForImageClassification"]
    assert sorted(os.listdir(saved / "vit" / "target")) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_safe_loader_builds_the_target(request, saved, name):
    pipe = request.getfixturevalue(f"{name}_pipe")
    loaded = PDiffPipeline.from_pretrained(saved / name)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.target) is type(pipe.target) and not loaded.target.training
    ref, got = pipe.target.state_dict(), loaded.target.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = X_CNN if name == "cnn" else X_VIT
    expected = _sample(pipe, "model").models
    for i, model in enumerate(_sample(loaded, "model").models):
        assert torch.equal(_logits(model, x), _logits(expected[i], x))
    # a target given to from_pretrained replaces the saved one
    other = _tiny_cnn() if name == "cnn" else _tiny_vit()
    assert PDiffPipeline.from_pretrained(saved / name, target=other).target is other


def test_safe_loader_refuses_unknown_classes_and_pickles(saved, tmp_path):
    folder = tmp_path / "unknown"
    shutil.copytree(saved / "cnn", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["target"] = ["my_models", "MyNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(HubError, match=r"expected the target to be a transformers model.*found my_models\.MyNet"):
        PDiffPipeline.from_pretrained(folder)
    index["target"] = ["transformers", "AutoConfig"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(HubError, match="expected a transformers PreTrainedModel class for the target"):
        PDiffPipeline.from_pretrained(folder)
    pickled = tmp_path / "pickled"
    shutil.copytree(saved / "vit", pickled)
    weights = pickled / "target" / "model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(HubError, match=r"expected target/\*\.safetensors weights, found \['config.json', 'model.bin'\]"):
        PDiffPipeline.from_pretrained(pickled)


STOCK_LOADER = """
import importlib.abc, json, sys, torch
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pdiff_hf" or name.startswith("pdiff_hf."):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
results = {}
for name in sys.argv[2:]:
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1] + "/" + name, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(num_models=3, num_inference_steps=%d, generator=torch.Generator().manual_seed(0), output_type="model")
    x = torch.load(sys.argv[1] + "/" + name + "-x.pt")
    with torch.no_grad():
        logits = [getattr(m(x), "logits", None) if hasattr(m(x), "logits") else m(x) for m in out.models]
    results[name] = {"target": type(pipe.target).__name__, "training": [m.training for m in out.models],
                     "logits": torch.stack(logits).tolist()}
results["pdiff_modules"] = [m for m in sys.modules if m.startswith("pdiff_hf")]
print(json.dumps(results))
""" % STEPS


def test_stock_diffusers_loads_the_target_without_pdiff_hf(cnn_pipe, vit_pipe, saved):
    expected = {}
    for name, pipe, x in (("cnn", cnn_pipe, X_CNN), ("vit", vit_pipe, X_VIT)):
        torch.save(x, saved / f"{name}-x.pt")
        expected[name] = torch.stack([_logits(m, x) for m in _sample(pipe, "model").models])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", STOCK_LOADER, str(saved), "cnn", "vit"],
        cwd=str(saved), env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results["pdiff_modules"] == []
    assert results["cnn"]["target"] == "MNIST1DCNN" and results["vit"]["target"] == "ViTForImageClassification"
    for name in ("cnn", "vit"):
        assert results[name]["training"] == [False] * 3
        torch.testing.assert_close(torch.tensor(results[name]["logits"]), expected[name], rtol=0, atol=1e-6)


def test_recalibrate_batchnorm_reestimates_statistics_of_built_models(cnn_pipe):
    from pdiff_hf.evaluation.recalibration import recalibrate_batchnorm

    inputs = torch.randn(256, 1, 12, generator=torch.Generator().manual_seed(3)) * 2 + 1
    kwargs = dict(num_models=2, num_inference_steps=STEPS, output_type="model")
    plain = cnn_pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    out = cnn_pipe(generator=torch.Generator().manual_seed(0), recalibrate_batchnorm=inputs, recalibration_batches=2,
                   **kwargs)  # fmt: skip
    assert torch.equal(out.params.vectors, plain.params.vectors)  # the generated parameters themselves are kept
    for i in range(2):
        expected = dict(recalibrate_batchnorm(plain.models[i], inputs, num_batches=2).named_buffers())
        got, before = dict(out.models[i].named_buffers()), dict(plain.models[i].named_buffers())
        for name, buffer in expected.items():
            torch.testing.assert_close(got[name], buffer)
        assert any(not torch.equal(got[n], before[n]) for n in got if n.endswith("running_mean"))


def test_recalibration_needs_model_output_and_fails_before_sampling(cnn_pipe):
    calls = []
    with pytest.raises(PipelineInputError, match="expected output_type='model' with recalibrate_batchnorm"):
        cnn_pipe(num_models=2, recalibrate_batchnorm=torch.randn(8, 1, 12),
                 callback_on_step_end=lambda *a: calls.append(1) or {})  # fmt: skip
    assert calls == []
