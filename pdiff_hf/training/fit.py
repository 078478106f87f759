"""``fit_pdiff``: train p-diff's autoencoder and latent denoiser in this process and return a ``PDiffPipeline``.

The Python counterpart of ``training/train_autoencoder.py`` followed by ``training/train_ldm.py``: the same
builders, losses, data loader, optimizer, learning-rate schedule, EMA and seeds (see
:mod:`pdiff_hf.training.training_utils`), in a plain single-process loop without checkpointing. For the same settings a
one-process script run trains the same weights.
"""

import dataclasses
import math
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from ..checkpoints.condition_ids import check_conditions
from ..checkpoints.rows import CheckpointRows, NormalizedRows, fit_normalization
from ..errors import (
    CheckpointDatasetError,
    ConditionError,
    DimensionMismatchError,
    LayoutMismatchError,
    PDiffConfigError,
)
from ..layout import ParamLayout, check_finite
from .config import PDiffConfig, choose_autoencoder_type, resolve_autoencoder_type
from .training_utils import (
    autoencoder_loss,
    build_autoencoder,
    build_denoiser,
    check_objective,
    denoiser_loss,
    make_dataloader,
    noise_scheduler_for,
    sampling_scheduler_for,
)


def _is_dataset(params) -> bool:
    import datasets

    return isinstance(params, datasets.Dataset)


def _optimizer_and_schedule(model, learning_rate: float, max_train_steps: int, config: PDiffConfig):
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        foreach=True,  # one call per update step for all tensors; the same weights bit for bit as the default loop
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=max_train_steps,
    )
    return optimizer, lr_scheduler


def _ema(model, config: PDiffConfig):
    """diffusers' ``EMAModel`` of ``model``'s weights whose ``step`` updates every shadow tensor with the same three
    elementwise ops as ``EMAModel.step`` (``s -= (1 - decay) * (s - p)``), as ``torch._foreach_*`` calls instead of a
    Python loop over the parameters (that loop also asks for DeepSpeed ZeRO-3 once per parameter): the same shadow
    weights bit for bit, a fraction of the time per step for a small model."""
    from diffusers.training_utils import EMAModel

    class _ForeachStepEMA(EMAModel):
        @torch.no_grad()
        def step(self, parameters):
            parameters = list(parameters)
            self.optimization_step += 1
            decay = self.get_decay(self.optimization_step)
            self.cur_decay_value = decay
            pairs = [(s, p) for s, p in zip(self.shadow_params, parameters) if p.requires_grad]
            for s, p in zip(self.shadow_params, parameters):
                if not p.requires_grad:
                    s.copy_(p)
            if pairs:
                shadow, params = [s for s, _ in pairs], [p for _, p in pairs]
                delta = torch._foreach_sub(shadow, params)  # s - p
                torch._foreach_mul_(delta, 1 - decay)  # (1 - decay) * (s - p)
                torch._foreach_sub_(shadow, delta)

    return _ForeachStepEMA(
        model.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
    )


def _train(
    model, data, loss_fn, learning_rate, max_train_steps, batch_size, config, ema=None, desc="", progress=True,
    conditions=None,
):
    """Optimize ``loss_fn(model, batch)`` over shuffled batches of ``data`` (with ``conditions``: pairs
    ``[rows, conditions]``) for ``max_train_steps`` steps."""
    optimizer, lr_scheduler = _optimizer_and_schedule(model, learning_rate, max_train_steps, config)
    loader = make_dataloader(data, batch_size, seed=config.seed, conditions=conditions)
    losses: List[float] = []
    bar = tqdm(total=max_train_steps, desc=desc, disable=not progress, leave=False)
    model.train()
    epoch = 0
    while len(losses) < max_train_steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = loss_fn(model, batch)
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(model.parameters())
            losses.append(loss.item())
            bar.update(1)
            if len(losses) >= max_train_steps:
                break
        epoch += 1
    bar.close()
    if ema is not None:
        ema.copy_to(model.parameters())
    model.eval()
    return losses


def train_autoencoder(
    autoencoder, params: torch.Tensor, config: Optional[PDiffConfig] = None, progress: bool = True, *, check: bool = True
) -> List[float]:
    """Fit normalization statistics and train ``autoencoder`` on raw checkpoints ``(N, D)`` with
    ``config.ae_*`` settings (an EMA of its weights with ``ae_use_ema``); sets the latent scaling factor at the end.
    ``params`` may also be :class:`~pdiff_hf.checkpoints.rows.CheckpointRows` (a checkpoint dataset read a block at a time).
    Batches are normalized when read, so no normalized copy of all checkpoints is made. Returns the loss of every
    step. The statistics come from :func:`pdiff_hf.checkpoints.rows.fit_normalization`, which checks each block of
    columns for NaN/Inf; ``check=False`` skips that scan for checkpoints already checked (``fit_pdiff`` checks a
    tensor where it enters).

    A :class:`~pdiff_hf.models.LinearParameterAutoencoder` is fitted instead of trained: normalization statistics,
    then its principal directions (``fit_basis``, exact, a block of columns at a time), then the latent scaling; no
    ``ae_*`` training setting applies and the returned list of losses is empty."""
    return _fit_autoencoder(autoencoder, params, config or PDiffConfig(), progress, check)[0]


def _fit_autoencoder(autoencoder, params, config: PDiffConfig, progress: bool, check: bool):
    """:func:`train_autoencoder`, returning ``(losses, latents)``: the scaled diffusion latents ``(N, C, L)`` of the
    training checkpoints that ``set_latent_scaling`` computed (each checkpoint is encoded once)."""
    from ..models.linear_autoencoder import LinearParameterAutoencoder

    if len(params.shape) != 2 or params.shape[1] != autoencoder.config.in_dim:
        raise DimensionMismatchError(
            f"expected checkpoints of shape (N, {autoencoder.config.in_dim}), found {tuple(params.shape)}"
        )
    linear = isinstance(autoencoder, LinearParameterAutoencoder)
    if linear:  # a latent larger than the checkpoints span is refused before any work
        autoencoder.check_num_checkpoints(params.shape[0])
    rows = params if isinstance(params, CheckpointRows) else CheckpointRows(params)
    fit_normalization(autoencoder, rows, check=check)  # block by block of columns, NaN/Inf checked per block
    if linear:
        autoencoder.fit_basis(params)
        return [], autoencoder.set_latent_scaling(params)
    # batches are normalized when read (pdiff_hf.checkpoints.rows): no normalized copy of the whole (N, D) matrix
    data = NormalizedRows(rows, autoencoder)
    ema = _ema(autoencoder, config) if config.ae_use_ema else None
    torch.manual_seed(config.seed)
    losses = _train(
        autoencoder, data, autoencoder_loss, config.ae_learning_rate, config.ae_steps, config.ae_train_batch_size,
        config, ema=ema, desc="train autoencoder", progress=progress,
    )
    return losses, autoencoder.set_latent_scaling(params)


def train_denoiser(
    denoiser,
    latents: torch.Tensor,
    config: Optional[PDiffConfig] = None,
    progress: bool = True,
    conditions: Optional[torch.Tensor] = None,
) -> List[float]:
    """Train ``denoiser`` on clean latents ``(N, C, L)`` with ``config``'s denoiser settings; with ``use_ema`` it
    ends with the EMA of its weights. Records ``sample_abs_max`` in the denoiser's config. A conditional denoiser
    needs ``conditions`` ``(N,)``: ids in ``[0, num_conditions)``, dropped to the null id with probability
    ``config.condition_dropout``."""
    config = config or PDiffConfig()
    if latents.dim() != 3 or latents.shape[1] != denoiser.config.in_channels:
        raise DimensionMismatchError(
            f"expected latents of shape (N, {denoiser.config.in_channels}, L), found {tuple(latents.shape)}"
        )
    check_finite(latents, "latents")
    conditions = checked_conditions(conditions, denoiser.config.num_conditions, latents.shape[0])
    noise_scheduler = noise_scheduler_for(denoiser)
    ema = _ema(denoiser, config) if config.use_ema else None
    torch.manual_seed(config.seed)
    if conditions is None:
        loss_fn = lambda model, batch: denoiser_loss(model, noise_scheduler, batch)  # noqa: E731
    else:
        loss_fn = lambda model, batch: denoiser_loss(  # noqa: E731
            model, noise_scheduler, batch[0], batch[1], config.condition_dropout
        )
    losses = _train(
        denoiser, latents, loss_fn, config.denoiser_learning_rate, config.denoiser_steps,
        config.denoiser_train_batch_size, config, ema=ema, desc="train denoiser", progress=progress,
        conditions=conditions,
    )
    denoiser.register_to_config(sample_abs_max=round(float(latents.abs().max()), 4))
    return losses


def checked_conditions(conditions, num_conditions: int, num_rows: int) -> Optional[torch.Tensor]:
    """``None`` for an unconditional denoiser (``num_conditions == 0``), else ``conditions`` as int64 ids ``(num_rows,)``
    checked by :func:`pdiff_hf.checkpoints.condition_ids.check_conditions`; :class:`ConditionError` when conditions are
    missing for a conditional denoiser or given for an unconditional one."""
    if conditions is None:
        if num_conditions:
            raise ConditionError(
                f"expected conditions (one id per checkpoint) for a denoiser with num_conditions={num_conditions}, "
                "found none"
            )
        return None
    if not num_conditions:
        raise ConditionError("expected no conditions for an unconditional denoiser (num_conditions=0), found some")
    return check_conditions(conditions, num_conditions, num_rows)


_POSITIVE_INT_FIELDS = (
    "ae_steps", "ae_train_batch_size", "denoiser_steps", "denoiser_train_batch_size", "latent_channels",
)
_POSITIVE_FLOAT_FIELDS = ("ae_learning_rate", "denoiser_learning_rate")


def check_fit_inputs(params, layout, config: PDiffConfig) -> None:
    """Everything ``fit_pdiff`` can check before training: a float tensor ``(N, D)`` with ``N >= 2`` finite rows and
    ``D == layout.dim``, a :class:`ParamLayout`, and step counts, batch sizes and learning rates in range."""
    if not isinstance(layout, ParamLayout):
        raise LayoutMismatchError(f"expected a ParamLayout, found a {type(layout).__name__}")
    rows = isinstance(params, CheckpointRows)  # a checkpoint dataset, read a block at a time
    if not rows and (not isinstance(params, torch.Tensor) or not params.is_floating_point()):
        found = f"a {params.dtype} tensor" if isinstance(params, torch.Tensor) else f"a {type(params).__name__}"
        raise DimensionMismatchError(f"expected a float tensor of checkpoints (N, {layout.dim}), found {found}")
    if len(params.shape) != 2 or params.shape[1] != layout.dim:
        raise DimensionMismatchError(
            f"expected checkpoints of shape (N, {layout.dim}) for the layout, found {tuple(params.shape)}"
        )
    if params.shape[0] < 2:
        raise CheckpointDatasetError(
            f"expected at least 2 checkpoints (rows) to fit normalization statistics, found {params.shape[0]}"
        )
    if not rows:  # CheckpointRows are checked block by block when the statistics are computed
        check_finite(params, "training checkpoints")
    if not isinstance(config, PDiffConfig):
        raise PDiffConfigError(f"expected a PDiffConfig, found a {type(config).__name__}")
    for field in _POSITIVE_INT_FIELDS:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PDiffConfigError(f"expected config.{field} to be a positive integer, found {value!r}")
    for field in _POSITIVE_FLOAT_FIELDS:
        value = getattr(config, field)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise PDiffConfigError(f"expected config.{field} to be a finite number > 0, found {value!r}")
    dropout = config.condition_dropout
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise PDiffConfigError(f"expected config.condition_dropout in [0, 1), found {dropout!r}")
    k = config.num_conditions
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise PDiffConfigError(f"expected config.num_conditions to be an int >= 0, found {k!r}")
    if not isinstance(config.num_train_timesteps, int) or config.num_train_timesteps < 2:
        raise PDiffConfigError(
            f"expected config.num_train_timesteps to be an integer >= 2, found {config.num_train_timesteps!r}"
        )
    config.validate(dim=layout.dim)  # every field's type and range, rules between fields, token size <= D
    check_objective(config.objective)  # "ddpm" or "flow_matching", before the autoencoder trains
    check_linear_latent_size(config, layout.dim, params.shape[0])


def check_linear_latent_size(config: PDiffConfig, dim: int, num_checkpoints: int) -> None:
    """For ``autoencoder_type="linear"``: :class:`PDiffConfigError` unless the latent of ``latent_channels x
    ae_linear_latent_length`` values fits in the ``N - 1`` directions that ``num_checkpoints`` checkpoints span."""
    if choose_autoencoder_type(dim, config.autoencoder_type) != "linear":
        return
    c, length = config.latent_channels, config.ae_linear_latent_length
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise PDiffConfigError(f"expected config.ae_linear_latent_length to be a positive integer, found {length!r}")
    if c * length > num_checkpoints - 1:
        raise PDiffConfigError(
            f"expected config.latent_channels x config.ae_linear_latent_length <= N - 1 = {num_checkpoints - 1} for "
            f"the linear autoencoder (N = {num_checkpoints} training checkpoints span at most N - 1 directions around "
            f"their mean), found {c} x {length} = {c * length}"
        )


def fit_pdiff(
    params: torch.Tensor,
    layout: ParamLayout,
    config: Optional[PDiffConfig] = None,
    progress: bool = True,
    target=None,
    conditions: Optional[torch.Tensor] = None,
    condition_names: Optional[List[str]] = None,
):
    """Train an autoencoder and a latent denoiser on checkpoints ``(N, D)`` and return a ready ``PDiffPipeline``
    with a DPM-Solver++ sampling scheduler. ``progress=False`` hides the progress bars. ``target``: the network the
    parameters are for (a transformers ``PreTrainedModel`` or diffusers ``ModelMixin``), set with ``pipe.set_target``
    so that ``output_type="model"`` works and the network is saved and pushed with the pipeline.

    ``conditions`` ``(N,)``: a condition id per checkpoint (the task it was trained on) for a conditional pipeline,
    sampled with ``pipe(condition=c, guidance_scale=s)``. The autoencoder is shared by all conditions; the denoiser
    learns ``p(latent | condition)`` with ``config.condition_dropout``. ``config.num_conditions`` 0 means
    ``max(conditions) + 1``; ``condition_names`` gives each id a name.

    ``params``: a float tensor ``(N, D)``, or a checkpoint dataset (``datasets.Dataset`` with the ``params`` column
    of :func:`~pdiff_hf.make_checkpoint_dataset`), read from its Arrow buffers a block at a time
    (:mod:`pdiff_hf.checkpoints.rows`): after ``datasets.load_from_disk`` it is memory-mapped, so 200 checkpoints at
    ``D = 10^6`` are never all copied into memory; NaN/Inf in a dataset are found when the statistics are computed.

    Seeds the global torch RNG with ``config.seed`` (model initialization and training noise come from it).
    Bad inputs raise a named error before anything is built (see :func:`check_fit_inputs`)."""
    from ..pipelines.pipeline_pdiff import PDiffPipeline, check_target

    config = config or PDiffConfig()
    if _is_dataset(params):  # read from its Arrow column a block at a time (memory-mapped after load_from_disk)
        params = CheckpointRows(params)
    check_fit_inputs(params, layout, config)
    config = resolve_autoencoder_type(config, layout.dim, params.shape[0])  # "auto": linear when N allows
    if conditions is not None and not config.num_conditions and isinstance(conditions, torch.Tensor) and conditions.numel():
        config = dataclasses.replace(config, num_conditions=int(conditions.max()) + 1)
    conditions = checked_conditions(conditions, config.num_conditions, params.shape[0])
    if condition_names is not None and len(condition_names) != config.num_conditions:
        raise ConditionError(
            f"expected {config.num_conditions} condition_names (one per condition id), found {len(condition_names)}"
        )
    check_target(target, layout)  # a target that lacks a selected tensor fails before training
    torch.manual_seed(config.seed)
    autoencoder = build_autoencoder(layout, config)
    # a tensor was checked for NaN/Inf by check_fit_inputs; a dataset is checked a block at a time here
    _, latents = _fit_autoencoder(autoencoder, params, config, progress, check=isinstance(params, CheckpointRows))
    latents = latents.float()  # encoded once, by set_latent_scaling (a chunk of rows at a time for large N * D)
    torch.manual_seed(config.seed)
    denoiser = build_denoiser(autoencoder, config, condition_names=condition_names)
    train_denoiser(denoiser, latents, config, progress=progress, conditions=conditions)
    pipe = PDiffPipeline(autoencoder=autoencoder, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
    return pipe.set_target(target) if target is not None else pipe
