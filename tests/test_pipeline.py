import json
import os
import subprocess
import sys

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
from diffusers.utils.torch_utils import randn_tensor

from pdiff_hf import (
    DimensionMismatchError,
    LayoutMismatchError,
    NonFiniteParametersError,
    ParameterAutoencoder,
    PDiffPipeline,
    PDiffPipelineOutput,
    SchedulerError,
)
from pdiff_hf.pipelines.pipeline_pdiff import check_scheduler

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
    with pytest.raises(DimensionMismatchError, match="latents"):
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
    index = json.loads((saved_dir / "model_index.json").read_text())
    assert index["_class_name"] == "PDiffPipeline"
    assert index["autoencoder"] == ["pdiff_hf.models.autoencoder", "ParameterAutoencoder"]
    assert index["denoiser"] == ["pdiff_hf.models.denoiser", "LatentUNet1DModel"]
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    for key in ("autoencoder", "denoiser", "scheduler"):
        library = index[key][0]
        assert library == "diffusers" or library.startswith("pdiff_hf."), library
        assert "pipelines" not in library and "pipeline_pdiff" not in library
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
    [
        EulerAncestralDiscreteScheduler,
        PNDMScheduler,
        LMSDiscreteScheduler,
        HeunDiscreteScheduler,
        KDPM2DiscreteScheduler,
        UniPCMultistepScheduler,
        DEISMultistepScheduler,
    ],
)
def test_other_ddpm_family_schedulers_run(tiny_pipeline, bn_layout, scheduler_cls):
    """Schedulers whose ``step`` takes no ``generator`` keyword must work too."""
    pipe = PDiffPipeline(
        tiny_pipeline.autoencoder, tiny_pipeline.denoiser, scheduler_cls.from_config(tiny_pipeline.scheduler.config)
    )
    pipe.set_progress_bar_config(disable=True)
    out = _sample(pipe, num_models=2)
    assert out.params.shape == (2, bn_layout.dim) and torch.isfinite(out.params).all()


def _bad_schedulers(denoiser):
    clip_max = denoiser.config.sample_abs_max
    assert clip_max > 0.5
    return {
        "timesteps": DDPMScheduler(num_train_timesteps=500, clip_sample=False),
        "prediction": DDPMScheduler(prediction_type="v_prediction", clip_sample=False),
        "beta_schedule": DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False),
        "beta_end": DPMSolverMultistepScheduler(beta_end=0.012),
        "flow_match": FlowMatchEulerDiscreteScheduler(),
        "clip": DDPMScheduler(clip_sample=True, clip_sample_range=clip_max / 2),
        "default_clip": DDPMScheduler(),  # clip_sample=True, range 1.0 < sample_abs_max
        "thresholding": DDPMScheduler(clip_sample=False, thresholding=True),
        "zero_snr": DDPMScheduler(clip_sample=False, rescale_betas_zero_snr=True),
        "trained_betas": DDPMScheduler(clip_sample=False, trained_betas=torch.linspace(1e-4, 0.02, 1000).tolist()),
        "not_a_scheduler": object(),
    }


def test_incompatible_schedulers_rejected(tiny_pipeline):
    ae, denoiser = tiny_pipeline.autoencoder, tiny_pipeline.denoiser
    for name, scheduler in _bad_schedulers(denoiser).items():
        with pytest.raises(SchedulerError):
            PDiffPipeline(ae, denoiser, scheduler)
            pytest.fail(f"{name} was accepted")
    # a clip range that covers the training latents is fine
    ok = DDPMScheduler(clip_sample=True, clip_sample_range=denoiser.config.sample_abs_max + 1)
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
