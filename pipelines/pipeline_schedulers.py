"""Which diffusers schedulers can sample a denoiser: :func:`check_scheduler`.

A scheduler fits when it runs the reverse of the process the denoiser was trained on. That is judged by the
scheduler *class's own* ``__init__`` parameters and its time convention, never by whatever keys its config carries
(``EDMEulerScheduler.from_config(ddpm_config)`` keeps the DDPM keys as unused entries, but its timesteps are
``0.25 log sigma``: 1.10, 0.57, -0.19, -1.55 for a denoiser trained on 0 … 999):

* ``objective="ddpm"`` (the denoiser's config; also every config saved before the field existed): a DDPM-family
  class (``beta_schedule`` among its parameters: DDPM, DDIM, DPM-Solver, Euler, Heun, LMS, PNDM, UniPC, DEIS …)
  with the training's ``num_train_timesteps``, beta schedule and ``prediction_type``, discrete timesteps (not
  ``timestep_type="continuous"``, not ``use_flow_sigmas``), every timestep in ``[0, num_train_timesteps - 1]``;
* ``objective="flow_matching"``: diffusers' flow-matching classes (``FlowMatchEulerDiscreteScheduler``,
  ``FlowMatchHeunDiscreteScheduler``) or a DDPM-family multistep solver with ``use_flow_sigmas=True`` and
  ``prediction_type="flow_prediction"``, whose timesteps are ``sigma * num_train_timesteps`` (checked on a probe).

Then one probe step on a copy catches a prediction type the class accepts in its config but cannot step. Every
refusal is a :class:`SchedulerError` that ends with a command that works, built from the denoiser's recorded
objective (checked here before it is suggested).
"""

import copy
import inspect
from typing import Optional

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from pdiff_hf.errors import SchedulerError
from pdiff_hf.models.denoiser import LatentUNet1DModel

# Config keys that define the DDPM forward (noising) process; a sampling scheduler must agree with training on the
# ones its class takes.
OBJECTIVE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")
# diffusers' flow-matching schedulers that step a velocity prediction with timesteps sigma * num_train_timesteps
FLOW_MATCH_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_CONVENTIONS = {
    "ddpm": "DDPM: a beta schedule and the discrete timesteps 0 … num_train_timesteps - 1",
    "flow_matching": "flow matching: timesteps sigma * num_train_timesteps, a velocity prediction",
}
_IMPORT = "from pdiff_hf.training.training_utils import "


def denoiser_objective(denoiser: LatentUNet1DModel) -> str:
    """``"ddpm"`` or ``"flow_matching"``: the training objective recorded in ``denoiser``'s config (``"ddpm"`` for
    configs saved before the field existed)."""
    return denoiser.config.get("objective", "ddpm")


def _init_parameters(scheduler) -> set:
    return set(inspect.signature(type(scheduler).__init__).parameters)


def scheduler_time_convention(scheduler) -> Optional[str]:
    """``"ddpm"``, ``"flow_matching"`` or ``None`` (another convention: EDM-style noise levels, continuous
    timesteps, score SDEs …), from ``scheduler``'s class parameters and the config flags that change its time."""
    params, config = _init_parameters(scheduler), scheduler.config
    if "num_train_timesteps" not in params:
        return None
    if "beta_schedule" in params:
        if config.get("use_flow_sigmas", False):
            return "flow_matching"
        if config.get("timestep_type", "discrete") != "discrete":
            return None  # Euler's "continuous" timesteps are EDM's 0.25 log(sigma)
        return "ddpm"
    if type(scheduler).__name__ in FLOW_MATCH_SCHEDULERS:
        return "flow_matching"
    return None


def training_scheduler_config(denoiser: LatentUNet1DModel) -> dict:
    """The config of the training noise process recorded in ``denoiser``'s config (what
    ``pdiff_hf.training.training_utils.noise_scheduler_for(denoiser).config`` holds); any scheduler class of the
    matching convention builds from it with ``from_config``."""
    c = denoiser.config
    if denoiser_objective(denoiser) == "flow_matching":
        return {"num_train_timesteps": c.num_train_timesteps, "shift": 1.0}
    return {
        "num_train_timesteps": c.num_train_timesteps, "beta_schedule": c.beta_schedule, "beta_start": c.beta_start,
        "beta_end": c.beta_end, "prediction_type": c.prediction_type, "clip_sample": False,
    }  # fmt: skip


def scheduler_advice(scheduler, denoiser: LatentUNet1DModel) -> str:
    """A command that replaces ``pipe.scheduler`` with one that fits ``denoiser``: the same class rebuilt from the
    training objective when that passes :func:`check_scheduler`, else the default sampler of the objective."""
    name = type(scheduler).__name__
    objective = denoiser_objective(denoiser)
    same_class = isinstance(scheduler, SchedulerMixin) and (
        "beta_schedule" in _init_parameters(scheduler) if objective == "ddpm" else name in FLOW_MATCH_SCHEDULERS
    )
    if same_class:
        try:
            candidate = type(scheduler).from_config(training_scheduler_config(denoiser))
            check_scheduler(candidate, denoiser, advise=False)
            return (
                f"build one from the denoiser's recorded objective: `from diffusers import {name}; {_IMPORT}noise_scheduler_for; "
                f"pipe.scheduler = {name}.from_config(noise_scheduler_for(pipe.denoiser).config)`"
            )
        except (SchedulerError, ValueError, TypeError):
            pass
    return (
        f"use the default sampler of the denoiser's recorded objective ({objective!r}): `{_IMPORT}sampling_scheduler_for; "
        f"pipe.scheduler = sampling_scheduler_for(pipe.denoiser)`"
    )


def check_scheduler(scheduler, denoiser: LatentUNet1DModel, advise: bool = True) -> None:
    """Raise :class:`SchedulerError` unless ``scheduler`` is a diffusers noise scheduler with the time convention
    and forward process of ``denoiser``'s training objective (see the module docstring), whose sample clipping
    cannot cut off real latents and whose ``step`` implements the denoiser's prediction. ``advise``: end the message
    with a command that builds a fitting scheduler (:func:`scheduler_advice`)."""

    def fail(message: str):
        advice = f"; {scheduler_advice(scheduler, denoiser)}" if advise else ""
        return SchedulerError(message + advice)

    name = type(scheduler).__name__
    if not isinstance(scheduler, SchedulerMixin) or not hasattr(scheduler, "step"):
        raise fail(f"expected a diffusers noise scheduler, found {name}")
    objective = denoiser_objective(denoiser)
    convention = scheduler_time_convention(scheduler)
    if convention != objective:
        found = (
            "whose timesteps are not the trained ones (EDM-style noise levels, continuous timesteps or another "
            "convention)"
            if convention is None
            else f"a {convention} scheduler ({_CONVENTIONS[convention]})"
        )
        raise fail(
            f"expected a scheduler for the denoiser's training objective {objective!r} ({_CONVENTIONS[objective]}), "
            f"found {name}, {found}"
        )
    params, config = _init_parameters(scheduler), scheduler.config
    keys = OBJECTIVE_KEYS if objective == "ddpm" else ("num_train_timesteps", "prediction_type")
    wrong = {
        key: (denoiser.config[key], config.get(key))
        for key in keys
        if key in params and key in config and config.get(key) != denoiser.config[key]
    }
    if wrong:
        details = ", ".join(f"{k}: trained {a!r}, scheduler {b!r}" for k, (a, b) in wrong.items())
        raise fail(f"expected {name} to match the denoiser's training objective, found {details}")
    if "clip_sample" in params and config.get("clip_sample", False):
        clip = float(config.get("clip_sample_range", 1.0))
        if clip < denoiser.config.sample_abs_max:
            raise fail(
                f"{name} clips samples to ±{clip}, but training latents reach ±{denoiser.config.sample_abs_max:.3f}; "
                f"expected clip_sample=False or clip_sample_range>={denoiser.config.sample_abs_max:.3f}"
            )
    if config.get("trained_betas") is not None or config.get("rescale_betas_zero_snr", False):
        raise fail(
            f"{name} overrides the beta schedule (trained_betas / rescale_betas_zero_snr), so its forward process "
            f"differs from the denoiser's {denoiser.config.beta_schedule} training schedule"
        )
    if config.get("thresholding", False):
        raise fail(f"expected no dynamic thresholding (meant for images), found {name} with thresholding=True")
    _check_scheduler_steps(scheduler, denoiser, objective, fail)


def _check_scheduler_steps(scheduler, denoiser: LatentUNet1DModel, objective: str, fail) -> None:
    """Set 4 timesteps on a copy of ``scheduler``, check they are in the trained time convention, and take one
    step: some schedulers accept every ``prediction_type`` in their config but implement only some in ``step``
    (Euler ancestral, PNDM, KDPM2 … have no x0 / ``"sample"`` prediction), which would otherwise fail only in the
    middle of sampling."""
    name = type(scheduler).__name__
    sample = torch.zeros(1, 1, 1)
    try:
        probe = copy.deepcopy(scheduler)
        probe.set_timesteps(4)  # PNDM needs more than 2
        timesteps = torch.as_tensor(probe.timesteps, dtype=torch.float64)
        t = probe.timesteps[0]
        # a generator of its own, so that the probe never draws from the global random stream
        takes_generator = "generator" in inspect.signature(probe.step).parameters
        kwargs = {"generator": torch.Generator().manual_seed(0)} if takes_generator else {}
        model_input = probe.scale_model_input(sample, t) if hasattr(probe, "scale_model_input") else sample
        probe.step(sample, t, model_input, **kwargs)
    except Exception as err:  # whatever the scheduler raises, it cannot sample here
        raise fail(
            f"expected a scheduler that can step with the denoiser's prediction_type "
            f"{denoiser.config.prediction_type!r}, found {name}, which fails: {err}"
        ) from err
    n = denoiser.config.num_train_timesteps
    if objective == "ddpm":
        bad = timesteps[(timesteps < 0) | (timesteps > n - 1)]
        if bad.numel():
            raise fail(f"expected timesteps in the trained range [0, {n - 1}], found {name} with {bad.tolist()}")
        return
    sigmas = torch.as_tensor(getattr(probe, "sigmas", torch.full((len(timesteps),), float("nan"))), dtype=torch.float64)
    sigmas = sigmas[: len(timesteps)].cpu()
    if not ((sigmas > 0) & (sigmas <= 1) & ((timesteps.cpu() - sigmas * n).abs() <= 1)).all():
        raise fail(
            f"expected flow-matching timesteps sigma * {n} with sigma in (0, 1], found {name} with timesteps "
            f"{timesteps.tolist()} for sigmas {sigmas.tolist()}"
        )
