"""PDiffPipeline: noise → reverse latent diffusion → parameter decoder → new network parameters."""

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from pdiff_hf.errors import DimensionMismatchError, LayoutMismatchError, SchedulerError
from pdiff_hf.layout import ParamLayout, check_finite
from pdiff_hf.models.autoencoder import ParameterAutoencoder
from pdiff_hf.models.denoiser import LatentUNet1DModel

# Config keys that define the forward (noising) process; a sampling scheduler must agree with training on them.
OBJECTIVE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


@dataclass
class PDiffPipelineOutput(BaseOutput):
    """
    Args:
        params (`torch.Tensor` of shape `(num_models, D)`): generated parameter vectors, de-normalized (float32).
        layout (`ParamLayout`): how each vector maps onto named tensors of the target network.
    """

    params: torch.Tensor
    layout: Optional[ParamLayout] = None

    def state_dicts(self) -> List[Dict[str, torch.Tensor]]:
        """One partial state dict per generated model (only the selected tensors), for ``load_state_dict(strict=False)``."""
        return [self._layout().unflatten(p) for p in self.params]

    def load_into(self, module: nn.Module, index: int = 0) -> nn.Module:
        """Write generated model ``index`` into ``module`` (in place) and return it."""
        return self._layout().load_into(module, self.params[index])

    def _layout(self) -> ParamLayout:
        if self.layout is None:
            raise LayoutMismatchError("this pipeline's autoencoder has no parameter layout in its config")
        return self.layout


def check_scheduler(scheduler, denoiser: LatentUNet1DModel) -> None:
    """Raise :class:`SchedulerError` unless ``scheduler`` is a diffusers noise scheduler whose forward process
    matches the one ``denoiser`` was trained with, and whose sample clipping cannot cut off real latents."""
    if not isinstance(scheduler, SchedulerMixin) or not hasattr(scheduler, "step"):
        raise SchedulerError(f"expected a diffusers noise scheduler, found {type(scheduler).__name__}")
    config = scheduler.config
    if "beta_schedule" not in config or "num_train_timesteps" not in config:
        raise SchedulerError(
            f"{type(scheduler).__name__} is not a DDPM-family (beta schedule) scheduler; the denoiser was trained "
            f"with a {denoiser.config.beta_schedule} beta schedule and {denoiser.config.prediction_type} prediction"
        )
    wrong = {
        key: (denoiser.config[key], config.get(key))
        for key in OBJECTIVE_KEYS
        if key in config and config.get(key) != denoiser.config[key]
    }
    if wrong:
        details = ", ".join(f"{k}: trained {a!r}, scheduler {b!r}" for k, (a, b) in wrong.items())
        raise SchedulerError(
            f"{type(scheduler).__name__} does not match the denoiser's training objective ({details}); load it with "
            f"{type(scheduler).__name__}.from_config(pipe.scheduler.config)"
        )
    if config.get("clip_sample", False):
        clip = float(config.get("clip_sample_range", 1.0))
        if clip < denoiser.config.sample_abs_max:
            raise SchedulerError(
                f"{type(scheduler).__name__} clips samples to ±{clip}, but training latents reach "
                f"±{denoiser.config.sample_abs_max:.3f}; set clip_sample=False or "
                f"clip_sample_range>={denoiser.config.sample_abs_max:.3f}"
            )
    if config.get("trained_betas") is not None or config.get("rescale_betas_zero_snr", False):
        raise SchedulerError(
            f"{type(scheduler).__name__} overrides the beta schedule (trained_betas / rescale_betas_zero_snr), so its "
            f"forward process differs from the denoiser's {denoiser.config.beta_schedule} training schedule"
        )
    if config.get("thresholding", False):
        raise SchedulerError(f"{type(scheduler).__name__} uses dynamic thresholding, which is meant for images")


class PDiffPipeline(DiffusionPipeline):
    r"""Generate parameters of a target network with p-diff (Wang et al. 2024, arXiv 2402.13144).

    Components:
        autoencoder ([`ParameterAutoencoder`]): maps parameter vectors to latents and back; carries the layout and
            normalization statistics.
        denoiser ([`LatentUNet1DModel`]): predicts the noise (or ``x0`` / ``v``) of noisy latents.
        scheduler ([`SchedulerMixin`]): any DDPM-family diffusers scheduler matching the training objective
            (DDPM, DDIM, DPMSolverMultistep, EulerDiscrete, …).
    """

    model_cpu_offload_seq = "denoiser->autoencoder"

    def __init__(self, autoencoder: ParameterAutoencoder, denoiser: LatentUNet1DModel, scheduler: SchedulerMixin):
        super().__init__()
        check_scheduler(scheduler, denoiser)
        self.register_modules(autoencoder=autoencoder, denoiser=denoiser, scheduler=scheduler)

    @property
    def layout(self) -> Optional[ParamLayout]:
        """Parameter layout of the generated vectors (from the autoencoder's config)."""
        return self.autoencoder.param_layout

    @torch.no_grad()
    def __call__(
        self,
        num_models: int = 1,
        num_inference_steps: int = 25,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[PDiffPipelineOutput, tuple]:
        r"""
        Args:
            num_models (`int`): how many parameter vectors to generate.
            num_inference_steps (`int`): denoising steps (25 suits DPM-Solver/DDIM; DDPM is trained for 1000).
            generator (`torch.Generator`, *optional*): makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): initial noise ``(num_models, C, L)``; drawn from ``generator`` if absent.

        Returns:
            [`PDiffPipelineOutput`] (or a tuple ``(params,)``) with ``params`` of shape ``(num_models, D)``; its
            ``state_dicts()`` and ``load_into(module, i)`` give the same as state dicts or a loaded module.
            Raises :class:`NonFiniteParametersError` if any generated vector contains NaN or Inf.
        """
        device = self._execution_device
        dtype = self.denoiser.dtype

        # 1. Prepare latents
        shape = (num_models,) + tuple(self.autoencoder.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise DimensionMismatchError(f"expected latents of shape {shape}, found {tuple(latents.shape)}")
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

        # 2. Reverse diffusion
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        # Only stochastic schedulers take a generator (PNDM, LMS, Heun, UniPC, DEIS, KDPM2 … reject the keyword).
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self.denoiser(model_input, t).sample
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

        # 3. Decode to parameters
        params = self.autoencoder.latents_to_params(latents.to(self.autoencoder.dtype)).float().cpu()
        check_finite(params, "generated parameters")
        self.maybe_free_model_hooks()

        if not return_dict:
            return (params,)
        return PDiffPipelineOutput(params=params, layout=self.layout)

    # ------------------------------------------------------------------------------------------------ Hub
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""Load from a Hub repo id (``"owner/name"``) or a local folder.

        Hub repos are fetched with ``huggingface_hub.snapshot_download`` (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download``), JSON and safetensors files only, and built with pdiff_hf's own
        classes (code files in the repo are never run). ``target_module=`` checks the parameter layout against the
        network the parameters are for. Hub and layout problems raise :class:`~pdiff_hf.errors.HubError` /
        :class:`~pdiff_hf.errors.LayoutMismatchError` naming the repo. See :func:`pdiff_hf.hub.load_pipeline`.
        """
        from pdiff_hf.hub import load_pipeline

        return load_pipeline(pretrained_model_name_or_path, pipeline_class=cls, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: Optional[str] = None,
        private: Optional[bool] = None,
        token: Optional[str] = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        **kwargs,
    ):
        r"""Upload the pipeline with a model card (and code for ``trust_remote_code=True`` loading) to ``repo_id``.

        Extra keyword arguments (``checkpoint_dataset_id``, ``results``, ``training_args``, ``target_architecture``,
        ``revision``, ``license`` …) go to :func:`pdiff_hf.hub.push_pipeline`. Returns its ``CommitInfo``.
        """
        from pdiff_hf.errors import HubError
        from pdiff_hf.hub import push_pipeline

        if not safe_serialization or variant is not None:
            raise HubError("push_to_hub uploads safetensors weights without variants (safe_serialization=True, variant=None)")
        return push_pipeline(
            self,
            repo_id,
            token=token,
            private=bool(private),
            commit_message=commit_message or "Upload p-diff pipeline",
            create_pr=create_pr,
            **kwargs,
        )
