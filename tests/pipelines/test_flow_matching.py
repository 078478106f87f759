"""Flow matching (rectified flow, diffusers' FlowMatchEulerDiscreteScheduler) as the training objective: the loss
convention, a tiny pipeline trained end to end, the save/load round trip, and schedulers of the other objective
refused before any work."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from pdiff_hf import PDiffConfig, PDiffPipeline, SchedulerError, fit_pdiff
from pdiff_hf.errors import PDiffConfigError
from pdiff_hf.training.training_utils import (
    build_denoiser,
    build_autoencoder,
    denoiser_loss,
    noise_scheduler_for,
    sampling_scheduler_for,
)

TINY = dict(
    ae_block_out_channels=(8, 8), latent_channels=2, ae_steps=30, denoiser_block_out_channels=(8, 16),
    denoiser_steps=60, ae_train_batch_size=16, denoiser_train_batch_size=16, lr_warmup_steps=5,
)  # fmt: skip


def _checkpoints(layout, n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(n, layout.dim, generator=gen) * 0.05 + 0.5
    params[:, layout.log_space_mask()] = params[:, layout.log_space_mask()].abs() + 0.5
    return params


@pytest.fixture(scope="module")
def flow_fit(bn_layout):
    params = _checkpoints(bn_layout)
    pipe = fit_pdiff(params, bn_layout, PDiffConfig(objective="flow_matching", **TINY), progress=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, params


def _sample(pipe, seed=0, n=4, steps=8):
    return pipe(num_models=n, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).params


class _Spy(torch.nn.Module):
    """Records the denoiser's inputs and returns a fixed function of them (so the loss is reproducible)."""

    def __init__(self, config):
        super().__init__()
        self.config, self.calls = config, []

    def forward(self, sample, timestep, condition=None):
        self.calls.append((sample.clone(), torch.as_tensor(timestep).clone()))
        return type("Out", (), {"sample": sample * 0.5})()


def test_loss_is_rectified_flow_with_diffusers_timesteps(bn_layout):
    """x_t = (1 - sigma) x0 + sigma noise at timestep sigma * N (N = 1000, sigma in {1/N … 1}); target noise - x0."""
    ae = build_autoencoder(bn_layout, PDiffConfig(**TINY))
    denoiser = build_denoiser(ae, PDiffConfig(objective="flow_matching", **TINY))
    assert denoiser.config.objective == "flow_matching" and denoiser.config.prediction_type == "flow_prediction"
    scheduler = noise_scheduler_for(denoiser)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and scheduler.config.shift == 1.0
    spy = _Spy(denoiser.config)
    latents = torch.randn(64, *ae.latent_shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    loss = denoiser_loss(spy, scheduler, latents)
    # the same draws as the DDPM loss: the noise, then one integer per sample
    torch.manual_seed(3)
    noise = torch.randn(latents.shape)
    index = torch.randint(0, 1000, (64,))
    sigma = 1.0 - index.double() / 1000  # the training schedule runs from sigma 1 (index 0) to 1/N
    noisy, timesteps = spy.calls[0]
    torch.testing.assert_close(timesteps.double(), sigma * 1000, rtol=0, atol=1e-3)
    expected = (1 - sigma.float())[:, None, None] * latents + sigma.float()[:, None, None] * noise
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, F.mse_loss(noisy * 0.5, noise - latents))
    assert 1 <= timesteps.min() and timesteps.max() <= 1000


def test_ddpm_loss_unchanged(bn_layout):
    """The DDPM objective still trains on add_noise at integer timesteps 0 … 999."""
    ae = build_autoencoder(bn_layout, PDiffConfig(**TINY))
    denoiser = build_denoiser(ae, PDiffConfig(prediction_type="epsilon", **TINY))
    spy = _Spy(denoiser.config)
    latents = torch.randn(8, *ae.latent_shape)
    torch.manual_seed(3)
    loss = denoiser_loss(spy, noise_scheduler_for(denoiser), latents)
    torch.manual_seed(3)
    noise, t = torch.randn(latents.shape), torch.randint(0, 1000, (8,))
    noisy = DDPMScheduler(clip_sample=False).add_noise(latents, noise, t)
    assert torch.equal(spy.calls[0][1], t)
    torch.testing.assert_close(loss, F.mse_loss(noisy * 0.5, noise))


def test_tiny_flow_matching_pipeline_end_to_end(flow_fit, bn_layout):
    pipe, params = flow_fit
    assert pipe.denoiser.config.objective == "flow_matching"
    assert type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler
    out = _sample(pipe)
    assert out.shape == (4, bn_layout.dim) and torch.isfinite(out).all()
    assert torch.equal(out, _sample(pipe)) and not torch.equal(out, _sample(pipe, seed=1))
    # trained on checkpoints near 0.5 (running variances near 1): the samples land near them, far from the noise
    assert (out - params.mean(0)).abs().mean() < 0.5 * params.std(0).mean() + 0.2
    assert (out[:, bn_layout.log_space_mask()] > 0).all()


def test_flow_training_loss_decreases(bn_layout):
    from pdiff_hf.training.fit import train_denoiser

    ae = build_autoencoder(bn_layout, PDiffConfig(**TINY))
    config = PDiffConfig(objective="flow_matching", **{**TINY, "denoiser_steps": 80})
    denoiser = build_denoiser(ae, config)
    latents = torch.randn(32, *ae.latent_shape, generator=torch.Generator().manual_seed(0)) * 0.3 + 1.0
    losses = train_denoiser(denoiser, latents, config, progress=False)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


def test_save_load_round_trip_samples_identically(flow_fit, tmp_path):
    pipe, _ = flow_fit
    pipe.save_pretrained(tmp_path)
    loaded = PDiffPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is FlowMatchEulerDiscreteScheduler
    assert loaded.denoiser.config.objective == "flow_matching"
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert torch.equal(_sample(loaded), _sample(pipe))


def test_schedulers_of_the_other_objective_refused_before_any_work(flow_fit, tiny_pipeline, tmp_path):
    pipe, _ = flow_fit
    calls = []
    handle = pipe.denoiser.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for scheduler in (DPMSolverMultistepScheduler(), DDPMScheduler(clip_sample=False)):
            with pytest.raises(SchedulerError, match="training objective 'flow_matching'"):
                PDiffPipeline(pipe.autoencoder, pipe.denoiser, scheduler)
        swapped = PDiffPipeline(pipe.autoencoder, pipe.denoiser, pipe.scheduler)
        swapped.scheduler = DPMSolverMultistepScheduler()
        with pytest.raises(SchedulerError, match="a ddpm scheduler"):
            _sample(swapped)
    finally:
        handle.remove()
    assert not calls
    # the reverse: a flow-matching scheduler on a DDPM-trained denoiser, also when loading
    with pytest.raises(SchedulerError, match="training objective 'ddpm'.*found FlowMatchEulerDiscreteScheduler"):
        PDiffPipeline(tiny_pipeline.autoencoder, tiny_pipeline.denoiser, FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path)
    with pytest.raises(SchedulerError, match="training objective 'flow_matching'"):
        PDiffPipeline.from_pretrained(tmp_path, scheduler=DPMSolverMultistepScheduler())


def test_bad_objective_fails_before_training(bn_layout, monkeypatch):
    from pdiff_hf.training import fit

    monkeypatch.setattr(fit, "train_autoencoder", lambda *a, **k: pytest.fail("trained before the objective check"))
    with pytest.raises(PDiffConfigError, match=r"config.objective .*found 'rectified'"):
        fit_pdiff(_checkpoints(bn_layout), bn_layout, dataclasses.replace(PDiffConfig(**TINY), objective="rectified"))


def test_sampling_scheduler_kinds_follow_the_objective(flow_fit, tiny_pipeline):
    pipe, _ = flow_fit
    assert type(sampling_scheduler_for(pipe.denoiser)) is FlowMatchEulerDiscreteScheduler
    assert type(sampling_scheduler_for(tiny_pipeline.denoiser)) is DPMSolverMultistepScheduler
    assert type(sampling_scheduler_for(tiny_pipeline.denoiser, "ddpm")) is DDPMScheduler
    with pytest.raises(ValueError, match=r"\('euler',\) for a 'flow_matching' denoiser, found 'dpm'"):
        sampling_scheduler_for(pipe.denoiser, "dpm")


def test_conditional_flow_matching_with_guidance(bn_layout):
    """Conditions and classifier-free guidance work the same way under flow matching."""
    first, second = _checkpoints(bn_layout, n=16, seed=0), _checkpoints(bn_layout, n=16, seed=1) + 0.3
    conditions = torch.tensor([0] * 16 + [1] * 16)
    config = PDiffConfig(objective="flow_matching", **TINY)
    pipe = fit_pdiff(torch.cat([first, second]), bn_layout, config, progress=False, conditions=conditions)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.num_conditions == 2 and type(pipe.scheduler) is FlowMatchEulerDiscreteScheduler
    guided = pipe(num_models=3, num_inference_steps=6, condition=1, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0)).params  # fmt: skip
    plain = pipe(num_models=3, num_inference_steps=6, condition=1, generator=torch.Generator().manual_seed(0)).params
    assert torch.isfinite(guided).all() and not torch.equal(guided, plain)
