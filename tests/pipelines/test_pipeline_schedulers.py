"""check_scheduler judges a scheduler by its class's own parameters and time convention, and its advice is a command
that works (built from the denoiser's recorded objective)."""

import inspect
import re

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from pdiff_hf import PDiffPipeline, SchedulerError
from pdiff_hf.pipelines.pipeline_schedulers import (
    check_scheduler,
    scheduler_time_convention,
    training_scheduler_config,
)
from pdiff_hf.training.training_utils import noise_scheduler_for, sampling_scheduler_for


def _pipeline(layout, tiny_models_factory, **denoiser_kwargs):
    ae, denoiser = tiny_models_factory(layout, **denoiser_kwargs)
    params = torch.rand(10, layout.dim, generator=torch.Generator().manual_seed(0)) + 0.5
    ae.fit_normalization(params)
    ae.set_latent_scaling(params)
    denoiser.register_to_config(sample_abs_max=round(float(ae.params_to_latents(params).abs().max()), 4))
    pipe = PDiffPipeline(ae, denoiser, sampling_scheduler_for(denoiser))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flow_pipe(bn_layout, tiny_models_factory):
    return _pipeline(bn_layout, tiny_models_factory, objective="flow_matching", prediction_type="flow_prediction")


@pytest.fixture(scope="module")
def odd_betas_pipe(bn_layout, tiny_models_factory):
    """A DDPM denoiser trained with non-default betas: from_config(pipe.scheduler.config) is not enough advice."""
    return _pipeline(bn_layout, tiny_models_factory, beta_end=0.012, prediction_type="epsilon")


def _advice(message: str) -> str:
    commands = re.findall(r"`([^`]+)`", message)
    assert commands, f"no command in {message!r}"
    return commands[-1]


def _follow_advice(pipe, scheduler):
    """Set ``scheduler``, check that it is refused, run the command in the message, and sample."""
    with pytest.raises(SchedulerError) as err:
        PDiffPipeline(pipe.autoencoder, pipe.denoiser, scheduler)
    fixed = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler)
    fixed.set_progress_bar_config(disable=True)
    exec(_advice(str(err.value)), {"pipe": fixed})  # noqa: S102 - the command the message suggests
    check_scheduler(fixed.scheduler, fixed.denoiser)
    out = fixed(num_models=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.params).all()
    return str(err.value), fixed.scheduler


# ----------------------------------------------------------------------------------------------- conventions
def test_time_conventions_by_class_parameters():
    ddpm = DDPMScheduler(clip_sample=False)
    assert scheduler_time_convention(ddpm) == "ddpm"
    assert scheduler_time_convention(EDMEulerScheduler.from_config(ddpm.config)) is None  # beta keys ride along
    assert scheduler_time_convention(EDMDPMSolverMultistepScheduler()) is None
    assert scheduler_time_convention(EulerDiscreteScheduler(timestep_type="continuous")) is None
    assert scheduler_time_convention(FlowMatchEulerDiscreteScheduler()) == "flow_matching"
    assert scheduler_time_convention(UniPCMultistepScheduler(use_flow_sigmas=True)) == "flow_matching"


@pytest.mark.parametrize(
    "make",
    [lambda c: EDMEulerScheduler.from_config(c), lambda c: EDMDPMSolverMultistepScheduler.from_config(c),
     lambda c: EulerDiscreteScheduler.from_config(c, timestep_type="continuous", prediction_type="v_prediction"),
     lambda c: DPMSolverMultistepScheduler.from_config(c, use_flow_sigmas=True, prediction_type="flow_prediction"),
     lambda c: FlowMatchEulerDiscreteScheduler.from_config(c)],
    ids=["edm_euler", "edm_dpm", "continuous_euler", "flow_sigmas_dpm", "flow_match"],
)  # fmt: skip
def test_other_time_conventions_refused_on_a_ddpm_denoiser(tiny_pipeline, make):
    scheduler = make(tiny_pipeline.scheduler.config)
    with pytest.raises(SchedulerError, match=r"expected a scheduler for the denoiser's training objective 'ddpm'"):
        check_scheduler(scheduler, tiny_pipeline.denoiser)
    message, fixed = _follow_advice(tiny_pipeline, scheduler)
    # a DDPM-family class (Euler, DPM-Solver) is rebuilt in the DDPM convention, another one replaced by the default
    assert scheduler_time_convention(fixed) == "ddpm" and fixed.config.prediction_type == "sample"
    if "beta_schedule" in inspect.signature(type(scheduler).__init__).parameters:
        assert type(fixed) is type(scheduler) and "noise_scheduler_for(pipe.denoiser).config" in message
    else:
        assert type(fixed) is DPMSolverMultistepScheduler and "sampling_scheduler_for(pipe.denoiser)" in message


def test_edm_timesteps_never_reach_the_denoiser(tiny_pipeline):
    """The issue's case: EDM's timesteps (1.10, 0.57, -0.19, -1.55) for a denoiser trained on 0 … 999."""
    pipe = PDiffPipeline(tiny_pipeline.autoencoder, tiny_pipeline.denoiser, tiny_pipeline.scheduler)
    pipe.scheduler = EDMEulerScheduler.from_config(tiny_pipeline.scheduler.config)
    calls = []
    handle = pipe.denoiser.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(SchedulerError, match="timesteps are not the trained ones"):
            pipe(num_models=1, num_inference_steps=4)
    finally:
        handle.remove()
    assert not calls


@pytest.mark.parametrize(
    "scheduler",
    [DDIMScheduler(), DPMSolverMultistepScheduler(), EulerDiscreteScheduler(beta_end=0.02, prediction_type="sample"),
     DDPMScheduler(clip_sample=True, prediction_type="epsilon", beta_end=0.012, thresholding=True)],
    ids=["ddim_defaults", "dpm_defaults", "euler_wrong_betas", "ddpm_thresholding"],
)  # fmt: skip
def test_advice_keeps_the_class_and_rebuilds_it_from_the_objective(odd_betas_pipe, scheduler):
    """Built with default betas (or another wrong setting), a scheduler class that can sample the denoiser is
    rebuilt from the denoiser's recorded objective: the advice names the same class, and running it works."""
    message, fixed = _follow_advice(odd_betas_pipe, scheduler)
    assert f"{type(scheduler).__name__}.from_config(noise_scheduler_for(pipe.denoiser).config)" in message
    assert type(fixed) is type(scheduler) and fixed.config.beta_end == 0.012
    assert fixed.config.prediction_type == "epsilon"


def test_advice_for_a_class_that_cannot_step_the_prediction(tiny_pipeline):
    """Euler ancestral has no x0 ("sample") step: rebuilding it cannot help, so the default sampler is advised."""
    message, fixed = _follow_advice(tiny_pipeline, EulerAncestralDiscreteScheduler.from_config(tiny_pipeline.scheduler.config))
    assert "prediction_type 'sample'" in message and "sampling_scheduler_for(pipe.denoiser)" in message


def test_training_scheduler_config_is_what_noise_scheduler_for_builds(tiny_pipeline, flow_pipe):
    for denoiser in (tiny_pipeline.denoiser, flow_pipe.denoiser):
        built = noise_scheduler_for(denoiser).config
        assert {k: built[k] for k in training_scheduler_config(denoiser)} == training_scheduler_config(denoiser)


# ----------------------------------------------------------------------------------------------- flow matching
@pytest.mark.parametrize(
    "make",
    [lambda: FlowMatchEulerDiscreteScheduler(), lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
     lambda: FlowMatchHeunDiscreteScheduler(),
     lambda: UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"),
     lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")],
    ids=["euler", "euler_shift3", "heun", "unipc_flow", "dpm_flow"],
)  # fmt: skip
def test_flow_matching_schedulers_sample_a_flow_denoiser(flow_pipe, make):
    pipe = PDiffPipeline(flow_pipe.autoencoder, flow_pipe.denoiser, make())
    pipe.set_progress_bar_config(disable=True)
    seen = []
    handle = pipe.denoiser.register_forward_pre_hook(lambda module, args: seen.append(float(torch.as_tensor(args[1]).flatten()[0])))
    try:
        out = pipe(num_models=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert torch.isfinite(out.params).all()
    assert all(0 < t <= 1000 for t in seen) and seen[0] >= 999  # sigma * N, from pure noise (sigma 1) down


@pytest.mark.parametrize(
    "scheduler, match",
    [(DDPMScheduler(clip_sample=False), "a ddpm scheduler"), (DPMSolverMultistepScheduler(), "a ddpm scheduler"),
     (EDMEulerScheduler(), "not the trained ones"),
     (FlowMatchEulerDiscreteScheduler(num_train_timesteps=500), "num_train_timesteps: trained 1000, scheduler 500"),
     (UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="epsilon"), "prediction_type: trained 'flow_prediction'"),
     (FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), "which fails")],
    ids=["ddpm", "dpm", "edm", "timesteps", "unipc_epsilon", "dynamic_shift"],
)  # fmt: skip
def test_schedulers_refused_on_a_flow_denoiser(flow_pipe, scheduler, match):
    with pytest.raises(SchedulerError, match=match):
        check_scheduler(scheduler, flow_pipe.denoiser)
    message, fixed = _follow_advice(flow_pipe, scheduler)
    assert type(fixed) in (FlowMatchEulerDiscreteScheduler, type(scheduler))
