"""PDiffPipeline: noise → reverse latent diffusion → parameter decoder → new network parameters."""

import copy
import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from pdiff_hf.errors import PipelineInputError
from pdiff_hf.evaluation.recalibration import prepare_batches
from pdiff_hf.layout import ParamLayout, check_finite
from pdiff_hf.models.autoencoder import ParameterAutoencoder
from pdiff_hf.models.denoiser import LatentUNet1DModel

from .pipeline_checks import (
    check_callback,
    check_noise,
    check_output_request,
    check_scheduler,
    check_target,
)
from .pipeline_call_state import PipelineCallState, current_call_state, pipeline_call
from .pipeline_conditions import _is_int, check_conditioning, condition_ids
from .pipeline_memory import check_sampling_memory
from .pipeline_target import check_fingerprint, target_fingerprint
from .pipeline_output import (
    OUTPUT_TYPES,
    GeneratedModels,
    PDiffPipelineOutput,
    postprocess,
)


pipeline_logger = diffusers_logging.get_logger(__name__)


def safetensors_instead_of_pickle(safe_serialization: bool) -> bool:
    """``True``, with a logged warning when ``safe_serialization=False`` asked for pickled ``.bin`` weights:
    pdiff_hf writes and loads safetensors only (a pickle can run code when loaded), so the folder is the same as
    with ``safe_serialization=True`` and loads everywhere."""
    if not safe_serialization:
        pipeline_logger.warning(
            "safe_serialization=False: pdiff_hf writes safetensors weights only (pickled .bin weights can run code "
            "when loaded), so the weights are saved as safetensors"
        )
    return True


def batch_size_of(condition, generator, latents) -> int:
    """How many models a call without ``num_models`` generates: one per condition of a list (or 1-D tensor) of
    conditions, else one per generator of a list, else one per row of ``latents`` ``(N, C, L)``, else 1."""
    if isinstance(condition, (list, tuple)) or (isinstance(condition, torch.Tensor) and condition.dim() == 1):
        return len(condition)
    if isinstance(generator, list):
        return len(generator)
    if isinstance(latents, torch.Tensor) and latents.dim() == 3:
        return latents.shape[0]
    return 1


class PDiffPipeline(DiffusionPipeline):
    r"""Generate parameters of a target network with p-diff (Wang et al. 2024, arXiv 2402.13144).

    Components:
        autoencoder ([`ParameterAutoencoder`]): maps parameter vectors to latents and back; carries the layout and
            normalization statistics.
        denoiser ([`LatentUNet1DModel`]): predicts the noise (or ``x0`` / ``v``) of noisy latents.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler of the denoiser's training objective
            (``denoiser.config.objective``): for ``"ddpm"`` any DDPM-family scheduler (DDPM, DDIM,
            DPMSolverMultistep, EulerDiscrete, …), for ``"flow_matching"`` ``FlowMatchEulerDiscreteScheduler`` (or
            Heun, or a multistep solver with ``use_flow_sigmas=True``); checked by
            :func:`~pdiff_hf.pipelines.pipeline_schedulers.check_scheduler`.
        target (`nn.Module`, *optional*): the network the parameters are for, saved in ``target/`` with the
            pipeline: a transformers ``PreTrainedModel`` (``ViTForImageClassification`` …), a diffusers
            ``ModelMixin`` (``pdiff_hf.tasks.MNIST1DCNN``), a ``huggingface_hub.PyTorchModelHubMixin`` module or any
            other ``nn.Module`` (its weights as safetensors). Its tensors outside the selection are those of every
            generated model, and their fingerprint is saved with the pipeline (``set_target`` checks later targets
            against it); ``output_type="model"`` needs it. Checked against the autoencoder's layout
            (:class:`LayoutMismatchError` naming missing tensors).
    """

    model_cpu_offload_seq = "denoiser->autoencoder"
    _optional_components = ["target"]
    # Tensors a `callback_on_step_end` may read and replace (by returning them in its dict).
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        autoencoder: ParameterAutoencoder,
        denoiser: LatentUNet1DModel,
        scheduler: SchedulerMixin,
        target: Optional[nn.Module] = None,
    ):
        super().__init__()
        check_scheduler(scheduler, denoiser)
        check_target(target, autoencoder.param_layout)
        self.register_modules(autoencoder=autoencoder, denoiser=denoiser, scheduler=scheduler, target=target)

    def set_target(self, target: Optional[nn.Module], check_weights: bool = True) -> "PDiffPipeline":
        """Check ``target`` against the layout and make it the pipeline's target network (``None`` removes it);
        returns the pipeline, e.g. ``fit_pdiff(params, layout).set_target(model)``.

        Once the pipeline knows its network (a target given before, or the ``target_fingerprint.json`` of a loaded
        pipeline), a ``target`` whose tensors outside the selection differ from that network's — a fresh, untrained
        copy — raises :class:`TargetMismatchError` naming them, since the generated parameters would give
        chance-level models in it. ``check_weights=False`` accepts it anyway (its weights become the record)."""
        check_target(target, self.layout)
        recorded = self.target_fingerprint
        if target is not None and check_weights:
            if recorded is None and getattr(self, "_target_record_missing", False):
                warnings.warn(
                    f"this pipeline was saved without its target network, so nothing records the weights outside the "
                    f"generated selection: {type(target).__name__} must hold the trained weights of the network the "
                    "checkpoints came from, or the generated models are at chance level (save pipelines with "
                    "fit_pdiff(..., target=net) to have this checked)",
                    UserWarning,
                    stacklevel=2,
                )
            check_fingerprint(
                recorded, target, self.layout, f"the target {type(target).__name__}",
                advice="; load the trained weights into it first (PDiffPipeline.from_pretrained(path, target=net) "
                "fills net from the saved target/), or pass check_weights=False to use it anyway",
            )  # fmt: skip
        self._target_fingerprint = recorded if target is None else None
        self._unbuilt_target = None  # a loaded target left unbuilt (see pdiff_hf.hub.target) is replaced
        self.register_modules(target=target)
        return self

    @property
    def target_fingerprint(self) -> Optional[Dict[str, Dict]]:
        """``{tensor name: {"shape", "dtype", "sha256"}}`` of the target's tensors outside the selection (see
        :mod:`pdiff_hf.pipelines.pipeline_target`): of ``pipe.target`` when there is one, else the record kept from a
        removed or saved target (``None``: the pipeline never knew its network)."""
        target = getattr(self, "target", None)
        if target is not None:
            return target_fingerprint(target, self.layout)
        return getattr(self, "_target_fingerprint", None)

    @property
    def device(self) -> torch.device:
        """diffusers' ``device`` (the first component off the CPU, else the first one's), for any target: a plain
        ``nn.Module`` has no ``.device``, so a module's device is that of its first parameter or buffer."""
        devices = []
        for module in (self.autoencoder, self.denoiser, getattr(self, "target", None)):
            tensor = None if module is None else next(iter(module.state_dict().values()), None)
            devices.append(tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu"))
        return next((d for d in devices if d.type not in ("cpu", "meta")), devices[0])

    @property
    def layout(self) -> Optional[ParamLayout]:
        """Parameter layout of the generated vectors (from the autoencoder's config)."""
        return self.autoencoder.param_layout

    @property
    def num_conditions(self) -> int:
        """Number of conditions the denoiser was trained on (0: an unconditional pipeline)."""
        return self.denoiser.config.num_conditions

    @property
    def condition_names(self) -> Optional[List[str]]:
        """A name per condition id, if the denoiser's config records them."""
        return self.denoiser.config.condition_names

    # Per-call state that step callbacks read (and may change), as on diffusers' pipelines; kept per call and per
    # thread (pipeline_call_state), so concurrent calls from several threads never see each other's values.
    @property
    def guidance_scale(self) -> float:
        """The classifier-free guidance weight of the running call (inside ``callback_on_step_end``; the loop
        reads it at every step), else of this thread's last call."""
        return current_call_state(self).guidance_scale

    @property
    def _guidance_scale(self) -> float:
        return current_call_state(self).guidance_scale

    @_guidance_scale.setter
    def _guidance_scale(self, value: float) -> None:
        """``pipe._guidance_scale = s`` in a step callback sets the guidance of the remaining steps (diffusers'
        convention)."""
        current_call_state(self).guidance_scale = value

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the running call, else of this thread's last call (0 before any)."""
        return current_call_state(self).num_timesteps

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running call's next step evaluates the denoiser with and without the condition: a conditional
        call with ``guidance_scale != 1`` (``s = 0`` ignores the condition, ``s > 1`` strengthens it)."""
        state = current_call_state(self)
        return state.conditional and state.guidance_scale != 1

    def get_condition_ids(self, condition: Union[int, str, Sequence[Union[int, str]]]) -> List[int]:
        """Condition ids for ids or names (as ``DiTPipeline.get_label_ids`` maps labels), checked against
        ``num_conditions``; :class:`ConditionError` names the valid ones otherwise."""
        return condition_ids(condition, self.num_conditions, self.condition_names)

    def check_inputs(
        self,
        num_models: int,
        num_inference_steps: int,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pt",
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Optional[Sequence[str]] = None,
        condition: Optional[Union[int, str, Sequence[Union[int, str]], torch.Tensor]] = None,
        guidance_scale: float = 1.0,
        recalibrate_batchnorm: Any = None,
    ) -> None:
        """Raise :class:`PipelineInputError` for any bad argument of ``__call__`` (:class:`ConditionError` for
        conditions and guidance, and :class:`SchedulerError` for a scheduler set after construction,
        ``pipe.scheduler = ...``), before any work is done."""
        check_scheduler(self.scheduler, self.denoiser)
        if not _is_int(num_models) or num_models < 1:
            raise PipelineInputError(f"expected num_models to be an int >= 1, found {num_models!r}")
        check_conditioning(condition, guidance_scale, num_models, self.num_conditions, self.condition_names)
        max_steps = self.scheduler.config.num_train_timesteps
        if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= max_steps:
            raise PipelineInputError(
                f"expected num_inference_steps to be an int in [1, {max_steps}] (the scheduler's "
                f"num_train_timesteps), found {num_inference_steps!r}"
            )
        check_noise(generator, latents, num_models, tuple(self.autoencoder.latent_shape))
        check_sampling_memory(  # num_models=10**9 is refused with the figure, before any allocation
            num_models, tuple(self.autoencoder.latent_shape), self.autoencoder.config.in_dim, self.denoiser.config,
            self._execution_device, guidance=condition is not None and guidance_scale != 1,
            solver_order=getattr(self.scheduler.config, "solver_order", 1),
        )
        if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
            raise PipelineInputError(f"expected output_type in {OUTPUT_TYPES}, found {output_type!r}")
        check_output_request(output_type, self.layout, getattr(self, "target", None), recalibrate_batchnorm)
        check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)

    def prepare_latents(
        self,
        scheduler: SchedulerMixin,
        num_models: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]],
        latents: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Initial latents ``(num_models, C, L)``: ``latents`` if given, else Gaussian noise drawn from
        ``generator`` (one generator per model if a list), scaled by ``scheduler``'s initial noise sigma (1 for
        flow-matching schedulers, which have none)."""
        shape = (num_models, *self.autoencoder.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * getattr(scheduler, "init_noise_sigma", 1.0)

    def prepare_conditions(self, condition, num_models: int, device: torch.device) -> Optional[torch.Tensor]:
        """Condition ids ``(num_models,)`` for a checked ``condition`` (one id for all models, or one per model);
        ``None`` without a condition."""
        if condition is None:
            return None
        ids = self.get_condition_ids(condition)
        ids = ids * num_models if len(ids) == 1 else ids
        return torch.tensor(ids, dtype=torch.long, device=device)

    @torch.no_grad()
    def __call__(
        self,
        num_models: Optional[int] = None,
        num_inference_steps: int = 25,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end: Optional[Union[Callable[..., Dict[str, torch.Tensor]], PipelineCallback]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        condition: Optional[Union[int, str, Sequence[Union[int, str]], torch.Tensor]] = None,
        guidance_scale: float = 1.0,
        recalibrate_batchnorm: Any = None,
        recalibration_batches: Optional[int] = 8,
    ) -> Union[PDiffPipelineOutput, tuple]:
        r"""
        Args:
            num_models (`int`, *optional*): how many parameter vectors to generate; ``None`` (default) takes the
                batch from the other arguments as ``DiTPipeline`` does from its class labels: the length of a list
                of conditions, else of a list of generators, else of ``latents``, else 1.
            num_inference_steps (`int`): denoising steps, at most the scheduler's ``num_train_timesteps`` (25 suits
                DPM-Solver/DDIM; DDPM is trained for 1000).
            generator (`torch.Generator` or a list of `num_models` of them, *optional*): makes sampling
                deterministic; with a list, model ``i`` depends only on generator ``i``.
            latents (`torch.Tensor`, *optional*): initial noise ``(num_models, C, L)``; drawn from ``generator`` if
                absent.
            output_type (`str`): ``"pt"`` (default) a float32 tensor ``(num_models, D)`` of parameters, ``"np"`` the
                same as a numpy array, ``"state_dict"`` a list of partial state dicts, ``"model"`` working networks
                (``out.models``, copies of ``pipe.target`` built one at a time on access), ``"peft"`` PEFT adapters
                (a ``GeneratedAdapters``: ``out.params.save_pretrained(dir)`` writes one folder per model that
                ``PeftModel.from_pretrained(base, folder)`` loads; needs ``pdiff_hf[peft]`` and a
                ``peft_target`` as ``pipe.target``), ``"latent"`` the final latents ``(num_models, C, L)``, not
                decoded.
            return_dict (`bool`): return a [`PDiffPipelineOutput`] (default) or a tuple ``(params,)``.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*): called
                after each denoising step as ``callback_on_step_end(pipe, i, t, callback_kwargs)`` with
                ``callback_kwargs`` holding the tensors named in ``callback_on_step_end_tensor_inputs``; it returns a
                dict, and a ``"latents"`` entry in it replaces the latents. Each call steps its own copy of the
                scheduler, so ``pipe.scheduler`` in the callback is not the one advancing. As in diffusers, the
                callback reads ``pipe.num_timesteps``, ``pipe.guidance_scale`` and ``pipe.do_classifier_free_guidance``
                of its own call, and ``pipe._guidance_scale = s`` changes the guidance of the remaining steps (state
                of this call and thread only: concurrent calls never see it).
            callback_on_step_end_tensor_inputs (`List[str]`): names from ``pipe._callback_tensor_inputs``
                (``["latents"]``).
            condition (`int`, `str`, a list of them, or `torch.Tensor`, *optional*): for a conditional pipeline
                (``pipe.num_conditions > 0``), the condition (task/class id in ``[0, num_conditions)`` or its name in
                ``pipe.condition_names``) to generate for: one for all models, or one per model. ``None`` samples
                from the null condition (the mixture of all conditions).
            guidance_scale (`float`): classifier-free guidance weight ``s``, as in ``DiTPipeline``: with ``s != 1``
                (``s > 1`` strengthens the condition, ``s = 0`` ignores it) every step evaluates the denoiser with the
                condition and with the null condition and uses ``uncond + s * (cond - uncond)``; 1 (default) uses the
                conditional prediction alone.
            recalibrate_batchnorm (*optional*, ``output_type="model"`` only): training inputs (a tensor, an
                ``(inputs, labels)`` pair, a ``datasets.Dataset`` or a DataLoader) on which every generated model's
                BatchNorm running statistics are re-estimated when it is built (off by default; see
                :func:`pdiff_hf.evaluation.recalibration.recalibrate_batchnorm`). The batches are read once, before sampling.
            recalibration_batches (`int` or `None`): how many batches of ``recalibrate_batchnorm`` to use (8; ``None``:
                all).

        Returns:
            [`PDiffPipelineOutput`] (or a tuple ``(params,)``) whose ``params`` is what ``output_type`` asked for; for
            every type but ``"latent"``, its ``state_dicts()`` and ``load_into(module, i)`` give the same as state
            dicts or a loaded module. Raises :class:`PipelineInputError` / :class:`SchedulerError` on bad input before any
            denoising step, :class:`NonFiniteParametersError` if any generated vector contains NaN or Inf.

        Example:

        ```py
        >>> pipe = PDiffPipeline.from_pretrained("my-pdiff")
        >>> out = pipe(num_models=10, generator=torch.Generator().manual_seed(0))
        >>> out.params.shape  # (10, D)
        >>> out.load_into(model, index=0)
        >>> models = pipe(num_models=10, output_type="model").models  # needs pipe.target
        >>> models[0](x)  # a working copy of the target with generated parameters 0
        ```

        Several threads may call the same pipeline at once: the scheduler's per-call state lives in a copy.
        """
        if num_models is None:
            num_models = batch_size_of(condition, generator, latents)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 0. Check inputs: every bad argument fails here, before any work
        self.check_inputs(
            num_models,
            num_inference_steps,
            generator,
            latents,
            output_type,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            condition,
            guidance_scale,
            recalibrate_batchnorm,
        )
        recalibration = None  # the recalibration batches, read once before any work on the latents
        if recalibrate_batchnorm is not None:
            recalibration = prepare_batches(self.target, recalibrate_batchnorm, recalibration_batches)
        device = self._execution_device
        # The scheduler keeps per-call state (step index, multistep history): step a copy of it, so that concurrent
        # calls of this pipeline cannot interfere. Copying a scheduler costs well under a millisecond.
        scheduler = copy.deepcopy(self.scheduler)

        # 1. Set timesteps (before the noise: the initial noise sigma of some schedulers depends on them)
        scheduler.set_timesteps(num_inference_steps, device=device)

        # 2. Prepare latents: Gaussian noise (num_models, C, L)
        latents = self.prepare_latents(scheduler, num_models, self.denoiser.dtype, device, generator, latents)

        # 3. Prepare conditions (num_models,); with guidance the batch is doubled, the null condition second
        conditions = self.prepare_conditions(condition, num_models, device)
        guided_conditions = None
        if conditions is not None:
            guided_conditions = torch.cat([conditions, torch.full_like(conditions, self.denoiser.null_condition)])

        # 4. Denoising loop. Guidance is read from this call's state at every step: a step callback may change it
        # (pipe._guidance_scale), as in diffusers' pipelines. Flow-matching schedulers scale no model input.
        # Only stochastic schedulers take a generator (PNDM, LMS, Heun, UniPC, DEIS, KDPM2 … reject the keyword).
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        scales_input = hasattr(scheduler, "scale_model_input")
        state = PipelineCallState(guidance_scale, len(scheduler.timesteps), conditions is not None)
        with pipeline_call(self, state):
            for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
                model_input = scheduler.scale_model_input(latents, t) if scales_input else latents
                do_guidance = self.do_classifier_free_guidance
                if do_guidance:
                    model_input = torch.cat([model_input, model_input])
                model_conditions = guided_conditions if do_guidance else conditions
                if model_conditions is None:
                    model_output = self.denoiser(model_input, t).sample
                else:
                    model_output = self.denoiser(model_input, t, condition=model_conditions).sample
                if do_guidance:
                    cond_output, uncond_output = model_output.chunk(2)
                    model_output = uncond_output + state.guidance_scale * (cond_output - uncond_output)
                latents = scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    step_tensors = {"latents": latents}
                    callback_kwargs = {name: step_tensors[name] for name in callback_on_step_end_tensor_inputs or []}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    if not isinstance(callback_outputs, dict):
                        raise PipelineInputError(
                            f"expected callback_on_step_end to return a dict of tensors, found "
                            f"{type(callback_outputs).__name__}"
                        )
                    latents = callback_outputs.get("latents", latents)

        # 5. Decode to parameters (N, D), unless the latents themselves are asked for
        if output_type == "latent":
            samples = latents
        else:
            samples = self.autoencoder.latents_to_params(latents.to(self.autoencoder.dtype)).float().cpu()
            check_finite(samples, "generated parameters")
        self.maybe_free_model_hooks()

        # 6. Postprocess to what output_type asks for (vectors, state dicts, or lazily built copies of the target)
        output = postprocess(samples, output_type, self.layout, getattr(self, "target", None), recalibration)
        if not return_dict:
            return (output,)
        return PDiffPipelineOutput(
            params=output, layout=self.layout, output_type=output_type,
            conditions=None if conditions is None else conditions.cpu(),
        )

    # ------------------------------------------------------------------------------------------------ Hub
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        r"""Load from a local folder or a Hub repo id (``"owner/name"``), the same safe way for both.

        A Hub repo is fetched with ``huggingface_hub.snapshot_download`` (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download``), JSON and safetensors files only. Folder or snapshot, the components
        are built with pdiff_hf's own classes from JSON configs and safetensors weights: no ``.py`` file (not even one
        named in ``model_index.json``) is imported and no pickle (``.bin``, ``.pt``) is loaded. ``target_module=``
        checks the parameter layout against the network the parameters are for; ``autoencoder=`` / ``denoiser=`` /
        ``scheduler=`` replace a component. As in diffusers: ``dtype=`` (or ``torch_dtype=``) a dtype or a dict per
        component with a ``"default"``, ``device_map="cpu"`` / ``"cuda"`` (a device string; ``"balanced"`` is
        ``NotImplementedError``), ``variant="fp16"`` for weights saved with that variant, and one INFO line per loaded
        component on the ``diffusers.pipelines.pipeline_utils`` logger. See :func:`pdiff_hf.hub.load_pipeline`.

        ```py
        >>> pipe = PDiffPipeline.from_pretrained("my-pdiff", dtype={"default": torch.bfloat16}, device_map="cuda")
        ```
        """
        from pdiff_hf.hub import load_pipeline

        return load_pipeline(pretrained_model_name_or_path, pipeline_class=cls, **kwargs)

    def save_pretrained(
        self,
        save_directory,
        safe_serialization: bool = True,
        variant: Optional[str] = None,
        max_shard_size: Optional[Union[int, str]] = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        r"""Write the pipeline as a self-contained folder: safetensors weights, ``param_layout.json``, a model card
        ``README.md`` and the code files that let stock ``DiffusionPipeline.from_pretrained(dir,
        trust_remote_code=True)`` load it without pdiff_hf. With ``push_to_hub=True`` and ``repo_id=``, also upload
        the folder exactly as :meth:`push_to_hub` does and return the ``CommitInfo``. Card options (``results``,
        ``training_args``, ``target_architecture`` …) as for :meth:`push_to_hub`. See
        :func:`pdiff_hf.hub.save_pipeline`.

        ``safe_serialization=False`` (diffusers' option for pickled ``.bin`` weights) is accepted and writes
        safetensors all the same, with a logged warning: pdiff_hf never writes or loads pickles. ``variant="fp16"``
        names the weight files ``diffusion_pytorch_model.fp16.safetensors``; load them with
        ``from_pretrained(dir, variant="fp16")``.
        """
        from pdiff_hf.hub import save_pipeline

        return save_pipeline(
            self,
            save_directory,
            safe_serialization=safetensors_instead_of_pickle(safe_serialization),
            variant=variant,
            max_shard_size=max_shard_size,
            push_to_hub=push_to_hub,
            **kwargs,
        )

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
        r"""Upload the pipeline with a model card (and code for ``trust_remote_code=True`` loading) to ``repo_id``:
        the same folder as :meth:`save_pretrained`, uploaded in one commit (created repo, ``revision`` branch).

        Extra keyword arguments (``checkpoint_dataset_id``, ``results``, ``training_args``, ``target_architecture``,
        ``revision``, ``license`` …) go to :func:`pdiff_hf.hub.push_pipeline`. Returns its ``CommitInfo``.
        """
        from pdiff_hf.hub import save_pipeline

        return save_pipeline(
            self,
            None,
            push_to_hub=True,
            repo_id=repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            safe_serialization=safetensors_instead_of_pickle(safe_serialization),
            variant=variant,
            **kwargs,
        )


__all__ = [
    "OUTPUT_TYPES",
    "GeneratedModels",
    "PDiffPipeline",
    "PDiffPipelineOutput",
    "check_scheduler",
    "check_target",
    "postprocess",
]
