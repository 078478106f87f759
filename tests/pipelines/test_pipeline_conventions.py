"""diffusers' pipeline conventions, as its ``PipelineTesterMixin`` (tests/pipelines/test_pipelines_common.py) checks
them for every pipeline: save/load with ``safe_serialization=False`` and variants, ``dtype`` / ``torch_dtype`` /
per-component dtype dicts, ``device_map``, the per-component load log line, and step callbacks that read
``num_timesteps`` / ``guidance_scale`` and change the guidance — per call, so concurrent calls stay independent."""

import contextlib
import io
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from pdiff_hf import PDiffPipeline
from pdiff_hf.errors import HubError
from pdiff_hf.training.training_utils import sampling_scheduler_for

STEPS = 4
MODEL_COMPONENTS = ("autoencoder", "denoiser")


def _sample(pipe, seed=0, num_models=2, steps=STEPS, **kwargs):
    return pipe(num_models=num_models, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kwargs)


@contextlib.contextmanager
def _captured(name: str, level=logging.INFO):
    """The records of logger ``name`` (diffusers' loggers do not propagate to pytest's caplog)."""
    logger = logging.getLogger(name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="module")
def cond_pipeline(bn_layout, tiny_models_factory):
    """An untrained conditional pipeline (2 conditions) with fitted normalization: guidance doubles its batch."""
    ae, denoiser = tiny_models_factory(bn_layout, num_conditions=2)
    params = torch.rand(10, bn_layout.dim, generator=torch.Generator().manual_seed(0)) + 0.5
    ae.fit_normalization(params)
    ae.set_latent_scaling(params)
    denoiser.register_to_config(sample_abs_max=round(float(ae.params_to_latents(params).abs().max()), 4))
    pipe = PDiffPipeline(ae, denoiser, sampling_scheduler_for(denoiser))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------ saving
def test_safe_serialization_false_writes_safetensors_with_a_warning(tiny_pipeline, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pdiff_hf.pipelines.pipeline_pdiff"):
        tiny_pipeline.save_pretrained(tmp_path, safe_serialization=False)
    assert "safe_serialization=False" in caplog.text and "safetensors" in caplog.text
    files = [os.path.relpath(os.path.join(root, f), tmp_path) for root, _, fs in os.walk(tmp_path) for f in fs]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    for name in MODEL_COMPONENTS:
        assert f"{name}/diffusion_pytorch_model.safetensors" in files
    loaded = PDiffPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.target is None  # the optional component stays None
    assert torch.equal(_sample(loaded).params, _sample(tiny_pipeline).params)


def test_load_logs_each_component_as_diffusers_does(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path)
    with _captured("diffusers.pipelines.pipeline_utils") as log:
        PDiffPipeline.from_pretrained(tmp_path)
    text = log.getvalue()
    expected = {"autoencoder": "ParameterAutoencoder", "denoiser": "LatentUNet1DModel",
                "scheduler": type(tiny_pipeline.scheduler).__name__}  # fmt: skip
    for name, class_name in expected.items():
        assert f"Loaded {name} as {class_name} from `{name}` subfolder of" in text, text


# ------------------------------------------------------------------------------------------------ variants
def test_variant_files_are_written_and_loaded(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
    index = json.loads((tmp_path / "model_index.json").read_text())
    for name in MODEL_COMPONENTS:
        assert name in index
        weights = sorted(p.name for p in (tmp_path / name).iterdir() if ".safetensors" in p.name or ".bin" in p.name)
        assert weights == ["diffusion_pytorch_model.fp16.safetensors"]
    loaded = PDiffPipeline.from_pretrained(tmp_path, variant="fp16")
    loaded.set_progress_bar_config(disable=True)
    for name in MODEL_COMPONENTS:
        original, restored = dict(getattr(tiny_pipeline, name).named_parameters()), dict(getattr(loaded, name).named_parameters())
        assert original.keys() == restored.keys()
        assert all(torch.equal(original[k], restored[k]) for k in original), name
    assert torch.equal(_sample(loaded).params, _sample(tiny_pipeline).params)
    with pytest.raises(HubError, match="diffusion_pytorch_model.safetensors"):
        PDiffPipeline.from_pretrained(tmp_path)  # only variant files: loading without the variant finds none


def test_variant_reaches_a_library_target(tiny_pipeline_factory, tmp_path):
    """diffusers writes a diffusers / transformers target's weights with the variant too: they load back with it."""
    from pdiff_hf import ParamLayout
    from pdiff_hf.tasks import MNIST1DCNN

    torch.manual_seed(0)
    target = MNIST1DCNN(channels=4)
    pipe, _ = tiny_pipeline_factory(ParamLayout.from_module(target, last_norm_layers=2))
    pipe.set_target(target)
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "target" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = PDiffPipeline.from_pretrained(tmp_path, variant="fp16")
    assert isinstance(loaded.target, MNIST1DCNN)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), loaded.target.state_dict().values()))


def test_missing_variant_is_diffusers_error(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ValueError, match=r"You are trying to load the model files of the `variant=fp16`"):
        PDiffPipeline.from_pretrained(tmp_path, variant="fp16")


# ------------------------------------------------------------------------------------------------ dtypes
@pytest.fixture(scope="module")
def saved(tiny_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("conventions")
    tiny_pipeline.save_pretrained(path)
    return path


def _module_dtypes(pipe):
    return {name: c.dtype for name, c in pipe.components.items() if isinstance(c, nn.Module)}


@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_and_its_alias(saved, tiny_pipeline, keyword, dtype):
    loaded = PDiffPipeline.from_pretrained(saved, **{keyword: dtype})
    loaded.set_progress_bar_config(disable=True)
    assert _module_dtypes(loaded) == {name: dtype for name in MODEL_COMPONENTS}
    out = _sample(loaded).params  # samples in that dtype, decoded parameters come back as float32
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, _sample(tiny_pipeline).params, atol=0.05, rtol=0.05)


def test_dtype_dict_per_component(saved):
    loaded = PDiffPipeline.from_pretrained(saved, dtype={"denoiser": torch.bfloat16, "default": torch.float16})
    assert _module_dtypes(loaded) == {"autoencoder": torch.float16, "denoiser": torch.bfloat16}
    # components a dict without "default" leaves out load in float32, as in diffusers
    loaded = PDiffPipeline.from_pretrained(saved, torch_dtype={"autoencoder": torch.float16})
    assert _module_dtypes(loaded) == {"autoencoder": torch.float16, "denoiser": torch.float32}


@pytest.mark.parametrize(
    "dtype, match",
    [({"unet": torch.float16}, r"dtype keys among .*found \['unet'\]"), ({"default": "fp16"}, "torch.dtype values"),
     ("float16", "torch.dtype or a dict")],
)  # fmt: skip
def test_bad_dtype_fails_before_loading(saved, dtype, match, monkeypatch):
    from pdiff_hf.hub import load

    monkeypatch.setattr(load, "load_components", lambda *a, **k: pytest.fail("loaded before the dtype check"))
    with pytest.raises(HubError, match=match):
        PDiffPipeline.from_pretrained(saved, dtype=dtype)


# ------------------------------------------------------------------------------------------------ device_map
def test_device_map_as_a_device_string(saved, tiny_pipeline):
    loaded = PDiffPipeline.from_pretrained(saved, device_map="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert {c.device.type for c in loaded.components.values() if isinstance(c, nn.Module)} == {"cpu"}
    assert torch.equal(_sample(loaded).params, _sample(tiny_pipeline).params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_map_cuda(saved, tiny_pipeline):
    loaded = PDiffPipeline.from_pretrained(saved, device_map="cuda")
    loaded.set_progress_bar_config(disable=True)
    assert {c.device.type for c in loaded.components.values() if isinstance(c, nn.Module)} == {"cuda"}
    out = _sample(loaded).params  # noise from the CPU generator, as in diffusers' device_map test
    torch.testing.assert_close(out, _sample(tiny_pipeline).params, atol=1e-4, rtol=1e-4)


def test_device_map_strategies_and_bad_values(saved, monkeypatch):
    from pdiff_hf.hub import load

    monkeypatch.setattr(load, "load_components", lambda *a, **k: pytest.fail("loaded before the device_map check"))
    with pytest.raises(NotImplementedError, match="balanced not supported. Supported strategies are: cpu"):
        PDiffPipeline.from_pretrained(saved, device_map="balanced")
    with pytest.raises(ValueError, match="must be a string"):
        PDiffPipeline.from_pretrained(saved, device_map={"": "cpu"})
    with pytest.raises(NotImplementedError, match="not supported"):
        PDiffPipeline.from_pretrained(saved, device_map="no_such_device")
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="cuda not supported"):
            PDiffPipeline.from_pretrained(saved, device_map="cuda")


# ------------------------------------------------------------------------------------------------ callbacks
def test_callback_reads_num_timesteps_and_replaces_latents(tiny_pipeline):
    seen = []

    def zero_last(pipe, i, t, kwargs):
        seen.append((pipe.num_timesteps, pipe.guidance_scale, pipe.do_classifier_free_guidance))
        if i == pipe.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = _sample(tiny_pipeline, steps=5, output_type="latent", callback_on_step_end=zero_last)
    assert out.params.abs().sum() == 0
    assert seen == [(5, 1.0, False)] * 5
    assert tiny_pipeline.num_timesteps == 5  # readable after the call, as in diffusers


def test_callback_changes_guidance_of_the_remaining_steps(cond_pipeline):
    def increase(pipe, i, t, kwargs):
        assert pipe.do_classifier_free_guidance == (pipe.guidance_scale != 1)
        pipe._guidance_scale += 1.0
        return kwargs

    changed = _sample(cond_pipeline, condition=0, guidance_scale=2.0, callback_on_step_end=increase).params
    assert cond_pipeline.guidance_scale == 2.0 + cond_pipeline.num_timesteps  # diffusers' test_callback_cfg
    constant = _sample(cond_pipeline, condition=0, guidance_scale=2.0).params
    assert not torch.equal(changed, constant)
    # the same schedule set by hand at each step gives the same models: the loop reads the guidance per step
    by_hand = _sample(
        cond_pipeline, condition=0, guidance_scale=2.0,
        callback_on_step_end=lambda pipe, i, t, kw: (setattr(pipe, "_guidance_scale", 3.0 + i), kw)[1],
    ).params  # fmt: skip
    assert torch.equal(changed, by_hand)
    # guidance switched on from 1 by a callback: the null-condition batch is built when needed
    switched = _sample(
        cond_pipeline, condition=0, guidance_scale=1.0,
        callback_on_step_end=lambda pipe, i, t, kw: (setattr(pipe, "_guidance_scale", 2.0), kw)[1],
    ).params  # fmt: skip
    assert torch.isfinite(switched).all() and not torch.equal(switched, _sample(cond_pipeline, condition=0).params)


def test_concurrent_calls_keep_their_own_guidance_and_timesteps(cond_pipeline):
    """4 threads, each with its own step count and guidance increment: every callback sees its own call's
    num_timesteps and guidance, and the models equal those of serial calls."""

    def job(worker):
        steps, increment, seen = STEPS + worker, 0.5 * worker, []

        def callback(pipe, i, t, kwargs):
            seen.append((pipe.num_timesteps, pipe.guidance_scale))
            pipe._guidance_scale += increment
            return kwargs

        params = _sample(cond_pipeline, seed=worker, steps=steps, condition=worker % 2, guidance_scale=1.5,
                         callback_on_step_end=callback).params  # fmt: skip
        assert seen == [(steps, 1.5 + increment * i) for i in range(steps)]
        assert cond_pipeline.guidance_scale == 1.5 + increment * steps  # this thread's last call
        return params

    serial = [job(w) for w in range(4)]
    start = threading.Barrier(4)

    def run(worker):
        start.wait()
        return [job(worker) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(4)))
    for worker, params in enumerate(results):
        assert all(torch.equal(p, serial[worker]) for p in params), worker


def test_batch_size_from_the_inputs_when_num_models_is_not_given(cond_pipeline):
    """As DiTPipeline takes its batch from its class labels, diffusers' batch tests pass a list where a pipeline
    batches: a list of conditions, of generators, or initial latents set the number of models."""
    gens = lambda n: [torch.Generator().manual_seed(i) for i in range(n)]  # noqa: E731
    single = cond_pipeline(num_inference_steps=STEPS, generator=gens(1), condition=0).params
    batch = cond_pipeline(num_inference_steps=STEPS, generator=gens(3), condition=[0, 0, 0]).params
    assert single.shape[0] == 1 and batch.shape[0] == 3
    torch.testing.assert_close(batch[:1], single, atol=1e-5, rtol=1e-5)  # model i depends on generator i only
    assert cond_pipeline(num_inference_steps=STEPS, generator=gens(2), condition=1).params.shape[0] == 2
    latents = torch.randn(4, *cond_pipeline.autoencoder.latent_shape)
    assert cond_pipeline(num_inference_steps=STEPS, latents=latents).params.shape[0] == 4
    assert cond_pipeline(num_inference_steps=STEPS).params.shape[0] == 1
    with pytest.raises(Exception, match="num_models"):  # explicit num_models must agree with the lists
        cond_pipeline(num_models=2, num_inference_steps=STEPS, condition=[0, 1, 1])
