"""What the training scripts in ``training/`` and :func:`pdiff_hf.fit_pdiff` share: the default settings (defined
once, in :class:`PDiffConfig`), the model builders, the two losses, the data loader and the schedulers.

The training loops themselves live in the scripts (``training/train_autoencoder.py``, ``training/train_ldm.py``,
with Accelerate) and in :mod:`pdiff_hf.training.fit` (a plain single-process loop). Both draw batches from
:func:`make_dataloader` and noise from the global torch RNG seeded with ``seed``, so for the same settings a
one-process script run and ``fit_pdiff`` train the same weights.
"""

import argparse
import logging
import math
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ..errors import DimensionMismatchError
from ..layout import ParamLayout
from .config import PDiffConfig, choose_autoencoder_type, conv_autoencoder_sizes

logger = logging.getLogger(__name__)


def build_autoencoder(layout: ParamLayout, config: PDiffConfig):
    """An untrained autoencoder for vectors of ``D = layout.dim`` entries: a
    :class:`~pdiff_hf.models.ParameterAutoencoder` (``config.ae_*`` fields, ``latent_channels``), a
    :class:`~pdiff_hf.models.TokenParameterAutoencoder` (``config.ae_token_*`` fields) or a
    :class:`~pdiff_hf.models.LinearParameterAutoencoder` (``latent_channels``, ``config.ae_linear_*`` fields; fitted,
    not trained: see :func:`~pdiff_hf.training.fit.train_autoencoder`), by ``config.autoencoder_type``. The choice is
    logged, and the class is recorded in the saved pipeline.

    ``"auto"`` takes conv below ``D = 5 x 10^4`` and token from there on. On the demo's linear layer (D = 12,810,
    ``pdiff-hf demo --selection classifier``, seed 0, 100 models, test accuracy best/mean/median/min in %, originals
    96.70/96.35/96.40/95.80) conv with ``patch_size`` 32 gave 97.00/96.47/96.40/96.20 and token (defaults)
    96.80/96.35/96.40/95.60, so conv stays the choice up to the sizes where its patches still fit; the
    default (``ae_patch_size=None``) takes a patch of about ``D / 512`` above D = 1024, as the demo does
    (:func:`~pdiff_hf.training.config.conv_autoencoder_sizes`). Measured with
    ``OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --compare --dims 1000`` and ``... --dims 10000
    --compare_steps 20`` (synthetic rank-8 checkpoints, 200 train + 20 held out, batch 64, held-out MSE in normalized
    space where predicting the mean scores 1.0; conv with the default patch_size 1, token with the defaults; shared
    2-core machine):

    ====== ======================================= =======================================
    D      conv: held-out MSE, s/step              token: held-out MSE, s/step
    ====== ======================================= =======================================
    10^3   0.42 after 300 steps, 0.23 s            0.72 after 300 steps, 0.017 s
    10^4   (20 steps only) 3.5 s                   (20 steps only) 0.12 s
    ====== ======================================= =======================================

    At 10^3 conv reconstructs better at affordable cost; at 10^4 with ``patch_size`` 1 a conv step costs 29x a
    token step (with the demo's patch of 32 it is affordable, see above). Not measured yet: both at 10^5 after full
    training, so the threshold may move.
    """
    config.validate(dim=layout.dim)  # PDiffConfigError naming the field before anything is allocated
    kind = choose_autoencoder_type(layout.dim, config.autoencoder_type)
    logger.info("D = %d, autoencoder_type=%r: building the %s autoencoder", layout.dim, config.autoencoder_type, kind)
    if kind == "token":
        from ..models.token_autoencoder import (
            TokenParameterAutoencoder,
            default_token_size,
        )

        return TokenParameterAutoencoder(
            in_dim=layout.dim,
            token_size=config.ae_token_size if config.ae_token_size is not None else default_token_size(layout.dim),
            hidden_dim=config.ae_token_hidden_dim,
            latent_channels=config.ae_token_latent_channels,
            input_noise=config.input_noise,
            latent_noise=config.latent_noise,
            norm_mode=config.norm_mode,
            param_layout=layout.to_list(),
        )
    if kind == "linear":
        from ..models.linear_autoencoder import LinearParameterAutoencoder

        return LinearParameterAutoencoder(
            in_dim=layout.dim,
            latent_channels=config.latent_channels,
            latent_length=config.ae_linear_latent_length,
            whiten=config.ae_linear_whiten,
            norm_mode=config.norm_mode,
            param_layout=layout.to_list(),
        )
    from ..models.autoencoder import ParameterAutoencoder

    block_out_channels, patch_size = conv_autoencoder_sizes(config, layout.dim)  # None fields: chosen by D
    logger.info("conv autoencoder: patch_size %d, block_out_channels %s", patch_size, block_out_channels)
    return ParameterAutoencoder(
        in_dim=layout.dim,
        block_out_channels=block_out_channels,
        patch_size=patch_size,
        latent_channels=config.latent_channels,
        input_noise=config.input_noise,
        latent_noise=config.latent_noise,
        norm_mode=config.norm_mode,
        param_layout=layout.to_list(),
    )


def build_denoiser(autoencoder, config: PDiffConfig, condition_names: Optional[List[str]] = None):
    """An untrained :class:`~pdiff_hf.models.LatentUNet1DModel` for ``autoencoder``'s latents ``(C, L)``,
    conditional on ``config.num_conditions`` ids when that is > 0 (``condition_names``: one name per id)."""
    from ..models.denoiser import LatentUNet1DModel

    config.validate()  # PDiffConfigError naming the field before anything is allocated
    channels, length = autoencoder.latent_shape
    flow = check_objective(config.objective) == "flow_matching"  # flow matching: the denoiser predicts the velocity
    return LatentUNet1DModel(
        in_channels=channels,
        sample_length=length,
        block_out_channels=tuple(config.denoiser_block_out_channels),
        layers_per_block=config.layers_per_block,
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="flow_prediction" if flow else config.prediction_type,
        objective=config.objective,
        num_conditions=config.num_conditions,
        condition_names=list(condition_names) if condition_names is not None else None,
    )


def build_models(layout: ParamLayout, config: PDiffConfig):
    """Untrained ``(autoencoder, denoiser)`` sized for ``layout``."""
    autoencoder = build_autoencoder(layout, config)
    return autoencoder, build_denoiser(autoencoder, config)


def autoencoder_loss(autoencoder, batch: torch.Tensor) -> torch.Tensor:
    """Reconstruction MSE of normalized parameters ``(batch, D)`` (noise augmentation applies in training mode).

    Reads the tuple output: under mixed precision Accelerate rebuilds dict-like outputs from a single dict
    argument, which ``ParameterAutoencoderOutput`` (two required fields) does not accept."""
    reconstruction = autoencoder(batch, return_dict=False)[0]
    return F.mse_loss(reconstruction.float(), batch.float())


def denoiser_loss(
    denoiser,
    noise_scheduler,
    latents: torch.Tensor,
    conditions: Optional[torch.Tensor] = None,
    condition_dropout: float = 0.0,
) -> torch.Tensor:
    """Training loss on clean latents ``(batch, C, L)`` with one random timestep per sample, for the objective of
    ``noise_scheduler`` (:func:`noise_scheduler_for`); the noise and the timesteps come from the global torch RNG
    (seeded per process by the caller).

    * DDPM (a beta-schedule scheduler): ``x_t = add_noise(x0, noise, t)`` at an integer ``t`` in
      ``[0, num_train_timesteps)``, MSE to the noise, ``x0`` or ``v`` by ``prediction_type``.
    * Flow matching (``FlowMatchEulerDiscreteScheduler``, rectified flow as in diffusers'
      ``train_dreambooth_sd3.py`` with uniform timestep density): ``sigma`` drawn uniformly from the scheduler's
      training sigmas ``1/N, 2/N, … 1``, ``x_t = (1 - sigma) x0 + sigma noise``, the denoiser sees the timestep
      ``sigma * N`` (diffusers' convention) and is trained by MSE to the velocity ``noise - x0``.

    Both draw the noise first and then one integer per sample, so they use the random stream the same way.
    ``conditions`` ``(batch,)``: condition ids of a conditional denoiser; each is replaced by the null id with
    probability ``condition_dropout`` (drawn after the noise and timesteps, so unconditional training draws the
    same random numbers as before)."""
    noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    if conditions is not None and condition_dropout > 0:
        drop = torch.rand(conditions.shape[0], device=latents.device) < condition_dropout
        null = getattr(denoiser, "module", denoiser).config.num_conditions  # unwrap DDP for the config
        conditions = torch.where(drop, torch.full_like(conditions, null), conditions)
    if scheduler_objective(noise_scheduler) == "flow_matching":
        index = timesteps.cpu()  # an index into the training schedule (N sigmas, from 1 down to 1/N)
        sigmas = noise_scheduler.sigmas[index].to(device=latents.device, dtype=latents.dtype)[:, None, None]
        noisy = (1.0 - sigmas) * latents + sigmas * noise  # (batch, C, L)
        model_timesteps = noise_scheduler.timesteps[index].to(latents.device)  # sigma * N
        if conditions is None:
            prediction = denoiser(noisy, model_timesteps).sample
        else:
            prediction = denoiser(noisy, model_timesteps, condition=conditions).sample
        return F.mse_loss(prediction.float(), (noise - latents).float())
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "sample":
        target = latents
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"expected prediction_type epsilon, sample or v_prediction, found {prediction_type!r}")
    if conditions is None:
        prediction = denoiser(noisy, timesteps).sample
    else:
        prediction = denoiser(noisy, timesteps, condition=conditions).sample
    return F.mse_loss(prediction.float(), target.float())


def check_objective(objective) -> str:
    """``objective`` if it is a training objective pdiff_hf implements (``"ddpm"``, ``"flow_matching"``), else
    :class:`~pdiff_hf.errors.PDiffConfigError`."""
    from ..errors import PDiffConfigError
    from ..models.denoiser import TRAINING_OBJECTIVES

    if objective not in TRAINING_OBJECTIVES:
        raise PDiffConfigError(f"expected config.objective in {TRAINING_OBJECTIVES}, found {objective!r}")
    return objective


def denoiser_objective(denoiser) -> str:
    """The training objective recorded in ``denoiser``'s config: ``"ddpm"`` (also for configs saved before the
    field existed) or ``"flow_matching"``."""
    return getattr(denoiser, "module", denoiser).config.get("objective", "ddpm")  # unwrap DDP for the config


def scheduler_objective(scheduler) -> Optional[str]:
    """``"flow_matching"`` for diffusers' flow-matching schedulers (the time convention ``t = sigma * N``), else
    ``"ddpm"``; :func:`pdiff_hf.pipelines.pipeline_checks.check_scheduler` judges sampling schedulers in full."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return "flow_matching" if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) else "ddpm"


def noise_scheduler_for(denoiser):
    """The training noise process matching the objective recorded in ``denoiser``'s config: a ``DDPMScheduler``
    (its beta schedule and prediction type), or for ``objective="flow_matching"`` a
    ``FlowMatchEulerDiscreteScheduler`` with ``num_train_timesteps`` and ``shift=1`` (its ``sigmas`` are the training
    noise levels)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    c = denoiser.config
    if denoiser_objective(denoiser) == "flow_matching":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=c.num_train_timesteps, shift=1.0)
    return DDPMScheduler(
        num_train_timesteps=c.num_train_timesteps,
        beta_schedule=c.beta_schedule,
        beta_start=c.beta_start,
        beta_end=c.beta_end,
        prediction_type=c.prediction_type,
        clip_sample=False,
    )


SAMPLING_SCHEDULER_KINDS = {"ddpm": ("dpm", "ddpm"), "flow_matching": ("euler",)}


def sampling_scheduler_for(denoiser, kind: Optional[str] = None):
    """A sampling scheduler for the objective recorded in ``denoiser``'s config (what a pipeline saves, so that a
    loaded pipeline samples the way it was trained). DDPM: ``"dpm"`` (DPM-Solver++ multistep, the default; 25
    steps suffice) or ``"ddpm"``; flow matching: ``"euler"`` (``FlowMatchEulerDiscreteScheduler``, the default).
    ``kind=None`` takes the default; a kind of the other objective is a ValueError naming the valid ones."""
    from diffusers import DPMSolverMultistepScheduler

    objective = denoiser_objective(denoiser)
    kinds = SAMPLING_SCHEDULER_KINDS[objective]
    kind = kinds[0] if kind is None else kind
    if kind not in kinds:
        raise ValueError(f"expected a scheduler kind in {kinds} for a {objective!r} denoiser, found {kind!r}")
    training = noise_scheduler_for(denoiser)
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(training.config)
    return training  # "ddpm" or "euler": the training scheduler steps the reverse process itself


class EpochShuffleSampler(Sampler):
    """A permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Every process draws the same permutation without communicating (Accelerate then gives each process its own
    batches of it), and a resumed run reshuffles exactly as an uninterrupted one after :meth:`set_epoch`. Unlike
    ``torch.utils.data.RandomSampler`` it holds no generator state to save, so nothing is pickled in checkpoints.
    """

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_samples


def make_dataloader(
    data: torch.Tensor,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    conditions: Optional[torch.Tensor] = None,
) -> DataLoader:
    """Shuffled batches ``(min(batch_size, N), ...)`` of the rows of ``data`` ``(N, ...)``; call
    ``loader.sampler.set_epoch(epoch)`` before each epoch. The loader has its own generator, so iterating it never
    draws from the global torch RNG (which the losses use). With ``conditions`` ``(N,)`` each batch is a pair
    ``[rows, conditions]`` of the same shuffled rows."""
    if conditions is not None and tuple(conditions.shape) != (data.shape[0],):
        raise DimensionMismatchError(
            f"expected one condition per row ({data.shape[0]},), found shape {tuple(conditions.shape)}"
        )
    return DataLoader(
        data if conditions is None else TensorDataset(data, conditions),
        batch_size=min(batch_size, data.shape[0]),
        sampler=EpochShuffleSampler(data.shape[0], seed),
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


# --------------------------------------------------------------------------------- what the scripts share
TRACKERS = ("auto", "tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "all", "none")


class ScriptHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every optional flag's default, as ``argparse.ArgumentDefaultsHelpFormatter`` writes it, but
    none for required flags (a ``(default: None)`` there would only mislead)."""

    def _get_help_string(self, action):
        return action.help if action.required else super()._get_help_string(action)


def add_optimization_args(parser, defaults: PDiffConfig, *, batch_size: int, steps: int, learning_rate: float,
                          use_ema: bool, use_ema_help: str) -> None:  # fmt: skip
    """The optimization flags both training scripts take, with ``defaults``' values (a
    :class:`~pdiff_hf.training.config.PDiffConfig`; the stage's own batch size, steps, learning rate and EMA switch
    are passed in)."""
    parser.add_argument("--train_batch_size", type=int, default=batch_size, help="Batch size per process.")
    parser.add_argument("--num_train_epochs", type=int, default=None, help="Epochs, when --max_train_steps is not set.")
    parser.add_argument("--max_train_steps", type=int, default=steps, help="Optimizer steps; overrides --num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step.")
    parser.add_argument("--learning_rate", type=float, default=learning_rate, help="AdamW's peak learning rate.")
    parser.add_argument("--lr_scheduler", type=str, default=defaults.lr_scheduler,
                        help='"linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"')
    parser.add_argument("--lr_warmup_steps", type=int, default=defaults.lr_warmup_steps, help="Linear warm-up steps.")
    parser.add_argument("--adam_beta1", type=float, default=defaults.adam_beta1, help="AdamW beta1.")
    parser.add_argument("--adam_beta2", type=float, default=defaults.adam_beta2, help="AdamW beta2.")
    parser.add_argument("--adam_weight_decay", type=float, default=defaults.adam_weight_decay, help="AdamW weight decay.")
    parser.add_argument("--adam_epsilon", type=float, default=defaults.adam_epsilon, help="AdamW epsilon.")
    parser.add_argument("--max_grad_norm", type=float, default=None, help="Clip gradients to this norm (None: off).")
    parser.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=use_ema, help=use_ema_help)
    parser.add_argument("--ema_max_decay", type=float, default=defaults.ema_max_decay, help="EMA decay after warm-up.")
    parser.add_argument("--ema_power", type=float, default=defaults.ema_power, help="EMA warm-up power.")
    parser.add_argument("--ema_inv_gamma", type=float, default=defaults.ema_inv_gamma, help="EMA warm-up inverse gamma.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="None: Accelerate's configuration.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="Loader worker processes (0: main).")


def add_checkpoint_and_hub_args(parser, tracker_project_name: str) -> None:
    """The checkpoint, tracking and Hub flags both training scripts take."""
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save a checkpoint-<step> folder every N steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None,
                        help="Keep only the newest N checkpoints (None: all).")
    parser.add_argument("--resume_from_checkpoint", type=str, default=None,
                        help='"latest" or a checkpoint-<step> folder.')
    parser.add_argument("--report_to", type=str, default="auto",
                        help=f"Tracker: {', '.join(TRACKERS)}; 'auto' is tensorboard when it is installed, else none.")
    parser.add_argument("--tracker_project_name", type=str, default=tracker_project_name, help="Tracker run name.")
    parser.add_argument("--push_to_hub", action="store_true", help="Push the result to --hub_model_id.")
    parser.add_argument("--hub_model_id", type=str, default=None, help="Hub repo id 'owner/name' to push to.")
    parser.add_argument("--hub_token", type=str, default=None, help="Hub token (None: the logged-in one).")
    parser.add_argument("--hub_private_repo", action="store_true", help="Create the Hub repo private.")


def check_local_path(value: str, flag: str, error_cls=None) -> None:
    """Raise ``error_cls`` (default :class:`~pdiff_hf.errors.TrainingScriptError`) naming ``flag`` when ``value``
    is meant as a local path that does not exist, before anything looks it up on the Hub: an absolute or ``./``,
    ``../``, ``~`` path, more than one ``/``, no ``/`` at all (a Hub id has an owner), or ``owner/name`` whose
    ``owner`` is a local folder (``ckpts/checkpoint`` for ``ckpts/checkpoints``). The message lists close names."""
    import difflib
    import os

    from ..errors import TrainingScriptError

    if not value or os.path.exists(value):
        return
    parent = os.path.dirname(os.path.normpath(os.path.expanduser(value))) or "."
    local = (
        value.startswith(("/", ".", "~")) or value.endswith("/") or value.count("/") != 1 or "\\" in value
        or os.path.isdir(value.split("/", 1)[0])
    )  # fmt: skip
    if not local:
        return
    hint = ""
    if os.path.isdir(parent):
        names = sorted(n for n in os.listdir(parent) if not n.startswith("."))
        close = difflib.get_close_matches(os.path.basename(os.path.normpath(value)), names, n=3, cutoff=0.6)
        if close:
            hint = f"; did you mean {' or '.join(repr(os.path.join(parent, c)) for c in close)}?"
        elif names:
            hint = f"; {parent!r} holds {', '.join(names[:8])}" + (", …" if len(names) > 8 else "")
    else:
        hint = f"; its folder {parent!r} does not exist either"
    raise (error_cls or TrainingScriptError)(
        f"{flag}: expected an existing folder or a Hub repo id 'owner/name', found {value!r}, which is neither (no "
        f"such local path{hint})"
    )


def check_dataset_name(dataset_name: str) -> None:
    """:func:`check_local_path` for ``--dataset_name``: :class:`~pdiff_hf.errors.CheckpointDatasetError`."""
    from ..errors import CheckpointDatasetError

    check_local_path(dataset_name, "--dataset_name", CheckpointDatasetError)


def tensorboard_installed() -> bool:
    """Whether Accelerate's TensorBoard tracker can run (``tensorboard`` or ``tensorboardX`` importable)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def resolve_report_to(report_to: str):
    """``(tracker for Accelerate's log_with or "none", a line to log or None)``: ``"auto"`` is ``"tensorboard"``
    when the ``tensorboard`` (or ``tensorboardX``) package is installed, else ``"none"`` with a line saying so; any
    other value (checked by :func:`check_report_to`) is returned as is."""
    if report_to != "auto":
        return report_to, None
    if tensorboard_installed():
        return "tensorboard", None
    return "none", "--report_to auto: tensorboard is not installed, so no tracker logs (pip install tensorboard)"


def check_training_args(args) -> None:
    """Raise :class:`~pdiff_hf.errors.TrainingScriptError` for out-of-range or contradicting flags of a training
    script, before anything is loaded or trained."""
    from ..errors import TrainingScriptError

    def at_least(name: str, low: float, allow_none: bool = False):
        value = getattr(args, name)
        if value is None and allow_none:
            return
        if isinstance(value, (list, tuple)):
            bad = [v for v in value if v < low]
            if not value or bad:
                raise TrainingScriptError(f"--{name}: expected values >= {low}, found {value}")
            return
        if value is None or value < low:
            raise TrainingScriptError(f"--{name}: expected a value >= {low}, found {value}")

    for name in ("train_batch_size", "gradient_accumulation_steps"):
        at_least(name, 1)
    at_least("max_train_steps", 1, allow_none=True)
    at_least("num_train_epochs", 1, allow_none=True)
    if args.max_train_steps is None and args.num_train_epochs is None:
        raise TrainingScriptError("expected --max_train_steps or --num_train_epochs, found neither")
    at_least("checkpointing_steps", 1)
    at_least("checkpoints_total_limit", 1, allow_none=True)
    at_least("lr_warmup_steps", 0)
    at_least("dataloader_num_workers", 0)
    at_least("block_out_channels", 1, allow_none=True)  # None: the autoencoder's channels chosen by D
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise TrainingScriptError(f"--learning_rate: expected a finite value > 0, found {args.learning_rate}")
    if not 0.0 < args.ema_max_decay < 1.0:
        raise TrainingScriptError(f"--ema_max_decay: expected a value in (0, 1), found {args.ema_max_decay}")
    if args.max_grad_norm is not None and not args.max_grad_norm > 0:
        raise TrainingScriptError(f"--max_grad_norm: expected a value > 0, found {args.max_grad_norm}")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingScriptError("--push_to_hub: expected --hub_model_id (e.g. user/pdiff-mnist1d), found none")
    check_report_to(args.report_to)


def check_report_to(report_to: str) -> None:
    """Raise :class:`~pdiff_hf.errors.TrainingScriptError` unless ``--report_to`` names a tracker that is installed
    (Accelerate would only warn and then track nothing)."""
    import importlib.util

    from ..errors import TrainingScriptError

    if report_to not in TRACKERS:
        raise TrainingScriptError(f"--report_to: expected one of {', '.join(TRACKERS)}, found {report_to!r}")
    module = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
              "aim": "aim", "clearml": "clearml"}.get(report_to)
    installed = tensorboard_installed() if report_to == "tensorboard" else module and importlib.util.find_spec(module)
    if module and not installed:
        raise TrainingScriptError(
            f"--report_to {report_to}: expected the {module!r} package to be installed, found none "
            f"(pip install {module}, or pass --report_to none)"
        )


def load_autoencoder(name_or_path: str, cache_dir: Optional[str] = None, flag: str = "--pretrained_autoencoder_name_or_path"):
    """The trained autoencoder saved at ``name_or_path`` (a folder or a Hub model id), built with the class its
    ``config.json`` names (``_class_name``: :func:`pdiff_hf.models.autoencoder_class`, so conv, token and linear
    autoencoders all load). :class:`~pdiff_hf.errors.TrainingScriptError` naming ``flag`` for a folder that is not a
    saved autoencoder of pdiff_hf."""
    from ..errors import PDiffError, TrainingScriptError, first_line
    from ..models import ParameterAutoencoder, autoencoder_class

    try:
        config = ParameterAutoencoder.load_config(name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise TrainingScriptError(
            f"{flag}: expected a saved autoencoder (folder or Hub id with config.json), found {name_or_path!r} "
            f"({first_line(err, type(err).__name__)})"
        ) from err
    try:
        cls = autoencoder_class(config.get("_class_name"))
    except PDiffError as err:
        raise TrainingScriptError(f"{flag} {name_or_path!r}: {err}") from None
    try:
        return cls.from_pretrained(name_or_path, cache_dir=cache_dir, use_safetensors=True)
    except (OSError, ValueError) as err:
        if isinstance(err, PDiffError):
            raise
        raise TrainingScriptError(
            f"{flag}: expected a complete {cls.__name__} (config.json and safetensors weights), found "
            f"{name_or_path!r} ({first_line(err, type(err).__name__)})"
        ) from err


def tracker_config(args) -> dict:
    """The flags as tracker hyper-parameters: scalars only (TensorBoard rejects lists and None), no secrets."""
    out = {}
    for key, value in vars(args).items():
        if "token" in key:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = "None" if value is None else value
    return out
