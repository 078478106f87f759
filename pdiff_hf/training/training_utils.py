"""What the training scripts in ``training/`` and :func:`pdiff_hf.fit_pdiff` share: the default settings (defined
once, in :class:`PDiffConfig`), the model builders, the two losses, the data loader and the schedulers.

The training loops themselves live in the scripts (``training/train_autoencoder.py``, ``training/train_ldm.py``,
with Accelerate) and in :mod:`pdiff_hf.training.fit` (a plain single-process loop). Both draw batches from
:func:`make_dataloader` and noise from the global torch RNG seeded with ``seed``, so for the same settings a
one-process script run and ``fit_pdiff`` train the same weights.
"""

import logging
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
