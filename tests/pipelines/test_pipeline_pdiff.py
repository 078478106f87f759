import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor
from pdiff_hf.pipelines.pipeline_pdiff import check_scheduler

from pdiff_hf import (
    LayoutMismatchError,
    NonFiniteParametersError,
    ParameterAutoencoder,
    PDiffPipeline,
    PDiffPipelineOutput,
    SchedulerError,
)
from pdiff_hf.errors import PipelineInputError

STEPS = 4


def _sample(pipe, seed=0, num_models=3, steps=STEPS, **kwargs):
    return pipe(num_models=num_models, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.fixture(scope="module")
def saved_dir(tiny_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("pdiff_pipe")
    tiny_pipeline.save_pretrained(str(path))
    return path


def test_params_shape_layout_and_determinism(tiny_pipeline, bn_layout):
    out = _sample(tiny_pipeline)
    assert isinstance(out, PDiffPipelineOutput)
    assert out.params.shape == (3, bn_layout.dim) and out.params.dtype == torch.float32
    assert out.layout == bn_layout
    assert torch.isfinite(out.params).all()
    # BatchNorm running variances are generated in log space: positive
    assert (out.params[:, bn_layout.log_space_mask()] > 0).all()
    # same seed -> identical, other seed -> different
    assert torch.equal(_sample(tiny_pipeline).params, out.params)
    assert not torch.equal(_sample(tiny_pipeline, seed=1).params, out.params)
    # the models of one call differ from each other
    assert not torch.equal(out.params[0], out.params[1])
    (params,) = _sample(tiny_pipeline, return_dict=False)
    assert torch.equal(params, out.params)


def test_explicit_latents_and_generator_lists(tiny_pipeline):
    shape = (3,) + tiny_pipeline.autoencoder.latent_shape
    latents = randn_tensor(shape, generator=torch.Generator().manual_seed(0))
    from_latents = tiny_pipeline(num_models=3, num_inference_steps=STEPS, latents=latents).params
    assert torch.equal(from_latents, _sample(tiny_pipeline).params)
    with pytest.raises(PipelineInputError, match="latents"):
        tiny_pipeline(num_models=2, num_inference_steps=STEPS, latents=latents)
    # one generator per model: model i depends only on generator i
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    pair = tiny_pipeline(num_models=2, num_inference_steps=STEPS, generator=gens).params
    single = _sample(tiny_pipeline, seed=6, num_models=1).params
    torch.testing.assert_close(pair[1:], single, rtol=1e-5, atol=1e-5)


def test_state_dicts_and_load_into_agree_with_layout(tiny_pipeline, bn_layout, bn_mlp_factory):
    out = _sample(tiny_pipeline)
    state_dicts = out.state_dicts()
    assert len(state_dicts) == 3
    for i, sd in enumerate(state_dicts):
        expected = bn_layout.unflatten(out.params[i])
        assert list(sd) == bn_layout.names
        for name in bn_layout.names:
            assert torch.equal(sd[name], expected[name])
    for i in range(3):
        model = bn_mlp_factory(seed=0)
        returned = out.load_into(model, i)
        assert returned is model
        assert torch.equal(bn_layout.flatten(model), out.params[i])
        other = bn_mlp_factory(seed=0)
        missing, unexpected = other.load_state_dict(state_dicts[i], strict=False)
        assert not unexpected
        assert torch.equal(bn_layout.flatten(other), out.params[i])
        # tensors outside the selection are untouched
        assert torch.equal(model[0].weight, bn_mlp_factory(seed=0)[0].weight)
    with pytest.raises(LayoutMismatchError):
        PDiffPipelineOutput(params=out.params).state_dicts()


def test_saved_layout_files(saved_dir):
    """save_pretrained writes the self-contained folder of a push: remote-code module names in model_index.json
    (so stock diffusers loads it with trust_remote_code=True), the code next to them, safetensors weights."""
    index = json.loads((saved_dir / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_pdiff", "PDiffPipeline"]
    assert index["autoencoder"] == ["pdiff_autoencoder", "ParameterAutoencoder"]
    assert index["denoiser"] == ["pdiff_denoiser", "LatentUNet1DModel"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    for path in ("pipeline_pdiff.py", "autoencoder/pdiff_autoencoder.py", "denoiser/pdiff_denoiser.py"):
        assert (saved_dir / path).is_file()
    files = [os.path.relpath(os.path.join(root, f), saved_dir) for root, _, fs in os.walk(saved_dir) for f in fs]
    weights = [f for f in files if f.endswith(".safetensors")]
    assert sorted(weights) == [
        os.path.join("autoencoder", "diffusion_pytorch_model.safetensors"),
        os.path.join("denoiser", "diffusion_pytorch_model.safetensors"),
    ]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    ae_config = json.loads((saved_dir / "autoencoder" / "config.json").read_text())
    assert ae_config["param_layout"] and ae_config["scaling_factor"] != 1.0


def test_from_pretrained_same_process(tiny_pipeline, saved_dir):
    loaded = PDiffPipeline.from_pretrained(str(saved_dir))
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.autoencoder, ParameterAutoencoder)
    assert loaded.layout == tiny_pipeline.layout
    assert loaded.denoiser.config.sample_abs_max == tiny_pipeline.denoiser.config.sample_abs_max
    assert torch.equal(_sample(loaded).params, _sample(tiny_pipeline).params)


def test_from_pretrained_fresh_process(tiny_pipeline, saved_dir, tmp_path):
    expected = _sample(tiny_pipeline, seed=123).params
    out_file = tmp_path / "params.pt"
    code = (
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from pdiff_hf import PDiffPipeline\n"
        "pipe = PDiffPipeline.from_pretrained(sys.argv[1])\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        f"out = pipe(num_models=3, num_inference_steps={STEPS}, generator=torch.Generator().manual_seed(123))\n"
        "torch.save(out.params, sys.argv[2])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(saved_dir), str(out_file)],
        cwd=str(tmp_path),  # not the repo root: the installed package must be importable on its own
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(out_file), expected)


@pytest.mark.parametrize(
    "scheduler_cls", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]
)
def test_scheduler_swap_via_from_pretrained(tiny_pipeline, saved_dir, bn_layout, scheduler_cls):
    scheduler = scheduler_cls.from_config(tiny_pipeline.scheduler.config)
    pipe = PDiffPipeline.from_pretrained(str(saved_dir), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is scheduler_cls
    out = _sample(pipe, steps=5)
    assert out.params.shape == (3, bn_layout.dim)
    assert torch.isfinite(out.params).all()
    assert torch.equal(_sample(pipe, steps=5).params, out.params)


@pytest.mark.parametrize(
    "scheduler_cls",
    [LMSDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler, DEISMultistepScheduler],
)
def test_other_ddpm_family_schedulers_run(tiny_pipeline, bn_layout, scheduler_cls):
    """Schedulers whose ``step`` takes no ``generator`` keyword must work too."""
    pipe = PDiffPipeline(
        tiny_pipeline.autoencoder, tiny_pipeline.denoiser, scheduler_cls.from_config(tiny_pipeline.scheduler.config)
    )
    pipe.set_progress_bar_config(disable=True)
    out = _sample(pipe, num_models=2)
    assert out.params.shape == (2, bn_layout.dim) and torch.isfinite(out.params).all()


@pytest.mark.parametrize(
    "scheduler_cls", [EulerAncestralDiscreteScheduler, PNDMScheduler, KDPM2DiscreteScheduler]
)
def test_schedulers_without_x0_prediction(tiny_pipeline_factory, bn_layout, scheduler_cls):
    """These schedulers step only epsilon / v predictions: with an x0 ("sample") denoiser they are refused up front,
    with an epsilon denoiser they sample."""
    pipe, _ = tiny_pipeline_factory(bn_layout)
    assert pipe.denoiser.config.prediction_type == "sample"
    with pytest.raises(SchedulerError, match="prediction_type 'sample'"):
        PDiffPipeline(pipe.autoencoder, pipe.denoiser, scheduler_cls.from_config(pipe.scheduler.config))
    pipe.denoiser.register_to_config(prediction_type="epsilon")
    scheduler = scheduler_cls.from_config(pipe.scheduler.config, prediction_type="epsilon")
    pipe = PDiffPipeline(pipe.autoencoder, pipe.denoiser, scheduler)
    pipe.set_progress_bar_config(disable=True)
    out = _sample(pipe, num_models=2)
    assert out.params.shape == (2, bn_layout.dim) and torch.isfinite(out.params).all()


def _bad_schedulers(denoiser):
    """Schedulers that differ from a compatible one in one respect each."""
    clip_max = denoiser.config.sample_abs_max
    assert clip_max > 0.5
    pt = denoiser.config.prediction_type
    other_pt = "v_prediction" if pt != "v_prediction" else "epsilon"
    bad = {
        "timesteps": DDPMScheduler(num_train_timesteps=500, clip_sample=False, prediction_type=pt),
        "prediction": DDPMScheduler(prediction_type=other_pt, clip_sample=False),
        "beta_schedule": DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False, prediction_type=pt),
        "beta_end": DPMSolverMultistepScheduler(beta_end=0.012, prediction_type=pt),
        "flow_match": FlowMatchEulerDiscreteScheduler(),
        "clip": DDPMScheduler(clip_sample=True, clip_sample_range=clip_max / 2, prediction_type=pt),
        "default_clip": DDPMScheduler(prediction_type=pt),  # clip_sample=True, range 1.0 < sample_abs_max
        "thresholding": DDPMScheduler(clip_sample=False, thresholding=True, prediction_type=pt),
        "zero_snr": DDPMScheduler(clip_sample=False, rescale_betas_zero_snr=True, prediction_type=pt),
        "trained_betas": DDPMScheduler(
            clip_sample=False, trained_betas=torch.linspace(1e-4, 0.02, 1000).tolist(), prediction_type=pt
        ),
        "not_a_scheduler": object(),
    }
    if pt == "sample":
        bad["no_x0_step"] = EulerAncestralDiscreteScheduler(prediction_type=pt)
    return bad


def test_incompatible_schedulers_rejected(tiny_pipeline):
    ae, denoiser = tiny_pipeline.autoencoder, tiny_pipeline.denoiser
    for name, scheduler in _bad_schedulers(denoiser).items():
        with pytest.raises(SchedulerError):
            PDiffPipeline(ae, denoiser, scheduler)
            pytest.fail(f"{name} was accepted")
    # a clip range that covers the training latents is fine
    ok = DDPMScheduler(
        clip_sample=True,
        clip_sample_range=denoiser.config.sample_abs_max + 1,
        prediction_type=denoiser.config.prediction_type,
    )
    check_scheduler(ok, denoiser)
    PDiffPipeline(ae, denoiser, ok)


def test_incompatible_schedulers_rejected_by_from_pretrained(tiny_pipeline, saved_dir):
    bad = _bad_schedulers(tiny_pipeline.denoiser)
    for name in ("timesteps", "prediction", "flow_match", "clip"):
        with pytest.raises(SchedulerError):
            PDiffPipeline.from_pretrained(str(saved_dir), scheduler=bad[name])
            pytest.fail(f"{name} was accepted")


def test_non_finite_generated_params(bn_layout, tiny_pipeline_factory):
    pipe, _ = tiny_pipeline_factory(bn_layout, seed=1)
    with torch.no_grad():
        pipe.autoencoder.conv_out[-1].weight.fill_(float("nan"))
    with pytest.raises(NonFiniteParametersError, match="generated parameters"):
        _sample(pipe)
    pipe, _ = tiny_pipeline_factory(bn_layout, seed=1)
    with torch.no_grad():
        pipe.autoencoder.decoder[0].weight.fill_(float("inf"))
    with pytest.raises(NonFiniteParametersError):
        _sample(pipe)


# ------------------------------------------------------------------------------------- output_type, callbacks
def test_output_types(tiny_pipeline, bn_layout):
    latent_shape = tiny_pipeline.autoencoder.latent_shape
    pt = _sample(tiny_pipeline)
    assert pt.output_type == "pt" and isinstance(pt.params, torch.Tensor)
    assert pt.params.shape == (3, bn_layout.dim) and pt.params.dtype == torch.float32

    np_out = _sample(tiny_pipeline, output_type="np")
    assert np_out.output_type == "np" and isinstance(np_out.params, np.ndarray)
    assert np_out.params.shape == (3, bn_layout.dim) and np_out.params.dtype == np.float32
    np.testing.assert_array_equal(np_out.params, pt.params.numpy())

    latent = _sample(tiny_pipeline, output_type="latent")
    assert latent.output_type == "latent" and isinstance(latent.params, torch.Tensor)
    assert latent.params.shape == (3, *latent_shape)

    for output_type, expected in (("pt", pt.params), ("latent", latent.params)):
        (params,) = _sample(tiny_pipeline, output_type=output_type, return_dict=False)
        assert torch.equal(params, expected)
    (params,) = _sample(tiny_pipeline, output_type="np", return_dict=False)
    np.testing.assert_array_equal(params, np_out.params)


def test_latent_output_decoded_by_hand_equals_pt(tiny_pipeline):
    latents = _sample(tiny_pipeline, seed=7, output_type="latent").params
    decoded = tiny_pipeline.autoencoder.latents_to_params(latents)
    assert torch.equal(decoded, _sample(tiny_pipeline, seed=7).params)


def test_state_dicts_and_load_into_by_output_type(tiny_pipeline, bn_layout, bn_mlp_factory):
    pt = _sample(tiny_pipeline)
    np_out = _sample(tiny_pipeline, output_type="np")
    for a, b in zip(np_out.state_dicts(), pt.state_dicts()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = np_out.load_into(bn_mlp_factory(seed=0), index=1)
    assert torch.equal(bn_layout.flatten(model), pt.params[1])

    latent = _sample(tiny_pipeline, output_type="latent")
    with pytest.raises(PipelineInputError, match="output_type 'latent'"):
        latent.state_dicts()
    with pytest.raises(PipelineInputError, match="latents_to_params"):
        latent.load_into(bn_mlp_factory(seed=0), 0)


def test_load_into_index_out_of_range(tiny_pipeline, bn_layout, bn_mlp_factory):
    out = _sample(tiny_pipeline)  # 3 models
    for index in (3, 10, -4, 1.0, True, "0"):
        with pytest.raises(PipelineInputError, match=r"expected a model index in \[0, 3\)"):
            out.load_into(bn_mlp_factory(seed=0), index)
            pytest.fail(f"index {index!r} was accepted")
    # list-style negative indices stay valid
    assert torch.equal(bn_layout.flatten(out.load_into(bn_mlp_factory(seed=0), -1)), out.params[2])
    assert torch.equal(bn_layout.flatten(out.load_into(bn_mlp_factory(seed=0), np.int64(0))), out.params[0])


def test_callback_on_step_end_sees_every_step(tiny_pipeline):
    seen = []

    def record(pipe, i, t, callback_kwargs):
        assert pipe is tiny_pipeline and set(callback_kwargs) == {"latents"}
        seen.append((i, int(t), callback_kwargs["latents"].clone()))
        return callback_kwargs

    out = _sample(tiny_pipeline, callback_on_step_end=record, output_type="latent")
    expected_timesteps = type(tiny_pipeline.scheduler).from_config(tiny_pipeline.scheduler.config)
    expected_timesteps.set_timesteps(STEPS)
    assert [i for i, _, _ in seen] == list(range(STEPS))
    assert [t for _, t, _ in seen] == [int(t) for t in expected_timesteps.timesteps]
    # the callback saw the latents after each step: the last ones are the output
    assert torch.equal(seen[-1][2], out.params)
    assert not torch.equal(seen[0][2], seen[-1][2])
    # a callback returning its inputs unchanged changes nothing
    assert torch.equal(out.params, _sample(tiny_pipeline, output_type="latent").params)


def test_callback_on_step_end_replaces_latents(tiny_pipeline):
    shape = (3, *tiny_pipeline.autoencoder.latent_shape)

    def zero_at_end(pipe, i, t, callback_kwargs):
        return {"latents": torch.zeros(shape)} if i == STEPS - 1 else {}

    out = _sample(tiny_pipeline, callback_on_step_end=zero_at_end)
    assert torch.equal(out.params, tiny_pipeline.autoencoder.latents_to_params(torch.zeros(shape)))

    def zero_at_start(pipe, i, t, callback_kwargs):
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if i == 0 else callback_kwargs

    changed = _sample(tiny_pipeline, callback_on_step_end=zero_at_start).params
    assert not torch.equal(changed, _sample(tiny_pipeline).params)


class _ScaleLatents(PipelineCallback):
    tensor_inputs = ["latents"]

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        return {"latents": callback_kwargs["latents"] * 0.5}


def test_pipeline_callback_objects(tiny_pipeline):
    calls = []

    def count(pipe, i, t, callback_kwargs):
        calls.append(i)
        return callback_kwargs

    # a PipelineCallback names its own tensor inputs; the argument is ignored, as in diffusers
    halved = _sample(tiny_pipeline, callback_on_step_end=_ScaleLatents(), callback_on_step_end_tensor_inputs=[])
    assert not torch.equal(halved.params, _sample(tiny_pipeline).params)
    both = _sample(tiny_pipeline, callback_on_step_end=MultiPipelineCallbacks([_ScaleLatents()]))
    assert torch.equal(both.params, halved.params)
    _sample(tiny_pipeline, callback_on_step_end=count, callback_on_step_end_tensor_inputs=[])
    assert calls == list(range(STEPS))


def test_callback_must_return_a_dict(tiny_pipeline):
    with pytest.raises(PipelineInputError, match="return a dict"):
        _sample(tiny_pipeline, callback_on_step_end=lambda pipe, i, t, kwargs: None)


# ----------------------------------------------------------------------------------------------- input checks
@pytest.fixture
def denoiser_calls(tiny_pipeline):
    """Counts forward calls of the tiny pipeline's denoiser."""
    calls = []
    handle = tiny_pipeline.denoiser.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def _latents(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


BAD_INPUTS = {
    "num_models=0": dict(num_models=0),
    "num_models=-1": dict(num_models=-1),
    "num_models=1.0": dict(num_models=1.0),
    "num_models=True": dict(num_models=True),
    "num_models='3'": dict(num_models="3"),
    "steps=0": dict(num_inference_steps=0),
    "steps=-5": dict(num_inference_steps=-5),
    "steps=1001": dict(num_inference_steps=1001),
    "steps=4.0": dict(num_inference_steps=4.0),
    "steps=True": dict(num_inference_steps=True),
    "generator list too short": dict(generator=[torch.Generator().manual_seed(0)] * 2),
    "generator list too long": dict(generator=[torch.Generator().manual_seed(0)] * 4),
    "generator list of ints": dict(generator=[0, 1, 2]),
    "generator int": dict(generator=0),
    "latents batch": dict(latents=_latents(2, 2, 4)),
    "latents 2d": dict(latents=_latents(3, 8)),
    "latents int": dict(latents="int"),
    "latents numpy": dict(latents=np.zeros((3, 2, 4), dtype=np.float32)),
    "output_type pil": dict(output_type="pil"),
    "output_type PT": dict(output_type="PT"),
    "output_type None": dict(output_type=None),
    "callback not callable": dict(callback_on_step_end=5),
    "callback unknown tensor": dict(
        callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise_pred"]
    ),
    "callback tensor inputs str": dict(callback_on_step_end_tensor_inputs="latents"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_fail_before_denoising(tiny_pipeline, denoiser_calls, name):
    kwargs = dict(num_models=3, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    kwargs.update(BAD_INPUTS[name])
    if isinstance(kwargs.get("latents"), str):  # an integer tensor of the right shape
        kwargs["latents"] = _latents(3, *tiny_pipeline.autoencoder.latent_shape, dtype=torch.int64)
    with pytest.raises(PipelineInputError, match="expected"):
        tiny_pipeline(**kwargs)
    assert not denoiser_calls, f"{name}: the denoiser ran before the input check"


def test_bad_input_messages_name_the_limits(tiny_pipeline):
    with pytest.raises(PipelineInputError, match=r"\[1, 1000\].*found 1001"):
        tiny_pipeline(num_inference_steps=1001)
    with pytest.raises(PipelineInputError, match=r"found \['noise_pred'\]"):
        tiny_pipeline(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise_pred"])
    with pytest.raises(PipelineInputError, match=r"\(3, 2, \d+\).*found \(2, 2, 4\)"):
        tiny_pipeline(num_models=3, latents=_latents(2, 2, 4))


def test_scheduler_set_after_construction_is_checked(tiny_pipeline, denoiser_calls):
    pipe = PDiffPipeline(tiny_pipeline.autoencoder, tiny_pipeline.denoiser, tiny_pipeline.scheduler)
    pipe.set_progress_bar_config(disable=True)
    for name, scheduler in _bad_schedulers(tiny_pipeline.denoiser).items():
        if name == "not_a_scheduler":  # diffusers itself refuses to register it
            continue
        pipe.scheduler = scheduler
        with pytest.raises(SchedulerError):
            _sample(pipe)
            pytest.fail(f"{name} was accepted")
    assert not denoiser_calls
    pipe.scheduler = DDIMScheduler.from_config(tiny_pipeline.scheduler.config)
    assert _sample(pipe).params.shape[0] == 3


def test_max_inference_steps_follow_the_scheduler(tiny_pipeline_factory, bn_layout):
    pipe, _ = tiny_pipeline_factory(bn_layout)
    denoiser = pipe.denoiser
    denoiser.register_to_config(num_train_timesteps=8)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, num_train_timesteps=8)
    assert _sample(pipe, num_models=1, steps=8).params.shape[0] == 1
    with pytest.raises(PipelineInputError, match=r"\[1, 8\]"):
        _sample(pipe, num_models=1, steps=9)


# ------------------------------------------------------------------------------------ schedule, threads, seeds
def test_initial_noise_uses_the_inference_schedule(tiny_pipeline):
    """Euler with "leading" spacing has a different initial sigma once its timesteps are set; the first model
    input must be the unit-variance noise, scaled by that sigma and back."""
    scheduler = EulerDiscreteScheduler.from_config(tiny_pipeline.scheduler.config, timestep_spacing="leading")
    pipe = PDiffPipeline(tiny_pipeline.autoencoder, tiny_pipeline.denoiser, scheduler)
    pipe.set_progress_bar_config(disable=True)
    inputs = []
    handle = pipe.denoiser.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    try:
        ones = torch.ones(1, *pipe.autoencoder.latent_shape)
        pipe(num_models=1, num_inference_steps=STEPS, latents=ones)
    finally:
        handle.remove()
    torch.testing.assert_close(inputs[0], ones, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "scheduler_cls",
    [DPMSolverMultistepScheduler, EulerDiscreteScheduler, DDIMScheduler, DDPMScheduler, UniPCMultistepScheduler],
)
def test_concurrent_calls_equal_serial_calls(tiny_pipeline, scheduler_cls):
    """4 threads x 3 calls on one pipeline (multistep history, stochastic steps) give the serial results."""
    pipe = PDiffPipeline(
        tiny_pipeline.autoencoder, tiny_pipeline.denoiser, scheduler_cls.from_config(tiny_pipeline.scheduler.config)
    )
    pipe.set_progress_bar_config(disable=True)
    jobs = [(seed, STEPS + seed % 3) for seed in range(12)]  # different seeds and step counts
    serial = [_sample(pipe, seed=seed, num_models=2, steps=steps).params for seed, steps in jobs]
    start = threading.Barrier(4)

    def run(worker):
        start.wait()
        return [
            (seed, _sample(pipe, seed=seed, num_models=2, steps=steps).params)
            for seed, steps in jobs[worker::4]
        ]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [r for rs in pool.map(run, range(4)) for r in rs]
    assert len(results) == len(jobs)
    for seed, params in results:
        assert torch.equal(params, serial[seed]), f"seed {seed} differs from the serial call"


def test_call_leaves_pipeline_scheduler_untouched(tiny_pipeline):
    before = dict(tiny_pipeline.scheduler.config)
    _sample(tiny_pipeline)
    assert tiny_pipeline.scheduler.step_index is None
    assert dict(tiny_pipeline.scheduler.config) == before


@pytest.mark.parametrize("output_type", ["pt", "np", "latent"])
def test_same_seed_same_output(tiny_pipeline, output_type):
    a = _sample(tiny_pipeline, seed=3, output_type=output_type).params
    b = _sample(tiny_pipeline, seed=3, output_type=output_type).params
    c = _sample(tiny_pipeline, seed=4, output_type=output_type).params
    assert (a == b).all() and not (a == c).all()

