"""p-diff's settings, defined once: :class:`PDiffConfig` holds the model sizes and training settings that
:func:`pdiff_hf.fit_pdiff` and the training scripts in ``training/`` share (the scripts' flags default to its fields),
and :func:`choose_autoencoder_type` picks the autoencoder for a vector length ``D``."""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

AUTOENCODER_TYPES = ("auto", "learned", "conv", "token", "linear")
# "auto" builds the token autoencoder from this D on; chosen by measurement, see build_autoencoder
TOKEN_AUTOENCODER_MIN_DIM = 50_000



@dataclass
class PDiffConfig:
    """Model sizes and training settings of p-diff; the training scripts' flags default to these values (a test
    checks it), and the model fields equal the model classes' own defaults.

    Measured on the MNIST-1D demo (D = 128, 200 checkpoints, 2-core CPU):

    * ``prediction_type="sample"`` (the denoiser predicts the clean latent): with a few hundred training steps,
      epsilon prediction left about 8% of the samples off the checkpoint manifold (minimum accuracy 62% against
      95% for the originals), sample prediction none.
    * an EMA of the denoiser's weights (``ema_max_decay=0.995`` with warm-up) samples markedly better after short
      training; the autoencoder is used without EMA.
    * 500 autoencoder and 600 denoiser steps at batch 64 reach the originals' accuracy; more steps did not help.
    """

    # autoencoder (ParameterAutoencoder). None: chosen by D as the demo does (conv_autoencoder_sizes): patches of
    # about D / 512 entries above D = 1024 with channels (32, 64, 64, 64), else patch 1 with (16, 32, 32)
    ae_block_out_channels: Optional[Tuple[int, ...]] = None
    ae_patch_size: Optional[int] = None
    latent_channels: int = 4
    input_noise: float = 0.001
    latent_noise: float = 0.1
    norm_mode: str = "per_dimension"
    # which autoencoder: "conv" (ParameterAutoencoder), "token" (TokenParameterAutoencoder), "linear"
    # (LinearParameterAutoencoder: whitened principal coefficients, fitted exactly), "learned" (conv for
    # D < TOKEN_AUTOENCODER_MIN_DIM, token from there on: p-diff's trained autoencoders), or "auto": linear when the
    # training checkpoints span its latent (N - 1 >= latent_channels * ae_linear_latent_length), else "learned"
    # (choose_autoencoder_type; chosen by the held-out generalization test)
    autoencoder_type: str = "auto"
    # token autoencoder: entries per token; None: default_token_size(D), 256 below D = 5e4, 1024 below 5e5, else 4096
    ae_token_size: Optional[int] = None
    ae_token_hidden_dim: int = 128
    ae_token_latent_channels: int = 8
    # linear autoencoder: a (latent_channels, ae_linear_latent_length) latent of principal coefficients, fitted exactly
    # (no ae_* training) and whitened (unit variance per component) with ae_linear_whiten; needs
    # latent_channels * ae_linear_latent_length <= N - 1 training checkpoints
    ae_linear_latent_length: int = 16
    ae_linear_whiten: bool = True
    # autoencoder training
    ae_steps: int = 500
    ae_learning_rate: float = 2e-3
    ae_train_batch_size: int = 64
    ae_use_ema: bool = False
    # denoiser (LatentUNet1DModel) and diffusion objective
    denoiser_block_out_channels: Tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "sample"
    # training objective: "ddpm" (noise along the beta schedule above, the denoiser predicts prediction_type) or
    # "flow_matching" (rectified flow with diffusers' FlowMatchEulerDiscreteScheduler: the denoiser predicts the
    # velocity noise - x0 at timestep sigma * num_train_timesteps; beta_schedule and prediction_type are unused).
    # Recorded in the denoiser's config and the pipeline's scheduler, so a loaded pipeline samples the same way.
    objective: str = "ddpm"
    # conditioning: num_conditions K > 0 makes the denoiser conditional on ids 0 … K-1 (fit_pdiff infers K from its
    # ``conditions`` when left at 0); in training each id is replaced by the null id with probability
    # condition_dropout, which classifier-free guidance needs
    num_conditions: int = 0
    condition_dropout: float = 0.1
    # denoiser training
    denoiser_steps: int = 600
    denoiser_learning_rate: float = 3e-3
    denoiser_train_batch_size: int = 64
    use_ema: bool = True
    ema_max_decay: float = 0.995
    ema_power: float = 2 / 3
    ema_inv_gamma: float = 1.0
    # both stages
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 50
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 2e-6
    adam_epsilon: float = 1e-8
    seed: int = 0

    @classmethod
    def paper(cls, **overrides) -> "PDiffConfig":
        """p-diff's recipe (Wang et al. 2024) as this library first shipped it, kept by name so its behaviour can be
        reproduced and compared: the 1D-convolution autoencoder trained with p-diff's noise augmentation (input noise
        0.001, latent noise 0.1) and the DDPM objective. ``overrides``: other fields."""
        recipe = dict(autoencoder_type="learned", input_noise=0.001, latent_noise=0.1, objective="ddpm")
        return cls(**{**recipe, **overrides})

    def validate(self, dim: Optional[int] = None) -> "PDiffConfig":
        """Raise :class:`~pdiff_hf.errors.PDiffConfigError` naming the field, its expected range and its value for
        any field out of type or range, a broken rule between fields, or (with ``dim``, the vector length ``D``) a
        token or patch longer than ``D``; returns ``self``. The rules, one line per field, are in
        :mod:`pdiff_hf.training.config_checks` (add one there with a new field)."""
        from .config_checks import validate_config

        validate_config(self, dim)
        return self



# conv autoencoder sizes chosen by D (ae_patch_size / ae_block_out_channels None): about this many positions per
# vector once D exceeds PATCH_MIN_DIM, wider blocks once patches are used
PATCH_POSITIONS = 512
PATCH_MIN_DIM = 1024
CONV_CHANNELS = (16, 32, 32)
PATCHED_CONV_CHANNELS = (32, 64, 64, 64)


def default_patch_size(dim: int) -> int:
    """The conv autoencoder's patch for ``dim`` entries when ``ae_patch_size`` is None: 1 up to ``D = 1024``, then
    the power of two that leaves at most 512 positions (D = 2,048 -> 4, 4,810 -> 16, 12,810 -> 32), the demo's rule.
    ``fit_pdiff`` with the defaults, one thread, 200 synthetic checkpoints, CPU seconds (``OMP_NUM_THREADS=1 python
    benchmarks/bench_default_sizes.py --dims 2048 4810``; patch 1 with channels 16 32 32, the earlier default, from
    a tenth of the steps x 10): D = 2,048: 200 s -> 59 s; D = 4,810: 443 s -> 45 s."""
    return 2 ** math.ceil(math.log2(dim / PATCH_POSITIONS)) if dim > PATCH_MIN_DIM else 1


def conv_autoencoder_sizes(config: "PDiffConfig", dim: int) -> Tuple[Tuple[int, ...], int]:
    """``(block_out_channels, patch_size)`` of the conv autoencoder that ``config`` builds for ``dim`` entries:
    the fields where set, else chosen by ``dim`` (:func:`default_patch_size`; channels
    :data:`PATCHED_CONV_CHANNELS` with patches, :data:`CONV_CHANNELS` without). ``fit_pdiff`` and the training
    scripts size the conv autoencoder through this function; the demo's own sizes equal it at every D
    (tests/training/test_defaults.py)."""
    patch = config.ae_patch_size if config.ae_patch_size is not None else default_patch_size(dim)
    channels = config.ae_block_out_channels
    if channels is None:
        channels = PATCHED_CONV_CHANNELS if patch > 1 else CONV_CHANNELS
    return tuple(channels), patch


def choose_autoencoder_type(
    dim: int, autoencoder_type: str = "auto", num_rows: Optional[int] = None, linear_size: Optional[int] = None
) -> str:
    """``"conv"``, ``"token"`` or ``"linear"`` for vectors of ``dim`` entries. ValueError for an unknown type.

    * ``"learned"``: p-diff's trained autoencoders: conv below :data:`TOKEN_AUTOENCODER_MIN_DIM`, token from there on;
    * ``"auto"`` (the default): the linear code (whitened principal coefficients) when the ``num_rows`` training
      checkpoints span its ``linear_size`` latent values (``num_rows - 1 >= linear_size``) and the vectors are at least
      that long (``dim >= linear_size``), else ``"learned"``. Chosen
      by the held-out generalization test (README, "Results"): on every demo selection and seed measured the linear
      code's samples were indistinguishable from held-out checkpoints while the conv autoencoder's were AVERAGING.
      Without ``num_rows`` (a model built before the data is known) ``"auto"`` is ``"learned"``.
    """
    if autoencoder_type not in AUTOENCODER_TYPES:
        raise ValueError(f"expected autoencoder_type in {AUTOENCODER_TYPES}, found {autoencoder_type!r}")
    spans = num_rows is not None and linear_size is not None and num_rows - 1 >= linear_size
    if autoencoder_type == "auto" and spans and dim >= linear_size:  # a code longer than the vector would be padding
        return "linear"
    if autoencoder_type in ("auto", "learned"):
        return "conv" if dim < TOKEN_AUTOENCODER_MIN_DIM else "token"
    return autoencoder_type


def resolve_autoencoder_type(config: "PDiffConfig", dim: int, num_rows: Optional[int]) -> "PDiffConfig":
    """``config`` with ``autoencoder_type`` made concrete (``"conv"``, ``"token"`` or ``"linear"``) for ``num_rows``
    training checkpoints of ``dim`` entries (:func:`choose_autoencoder_type`); ``fit_pdiff`` and
    ``train_autoencoder.py`` call it once the data is known, so both build the same autoencoder."""
    import dataclasses

    linear_size = config.latent_channels * config.ae_linear_latent_length
    kind = choose_autoencoder_type(dim, config.autoencoder_type, num_rows, linear_size)
    return config if kind == config.autoencoder_type else dataclasses.replace(config, autoencoder_type=kind)
