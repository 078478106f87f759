"""A small 1D UNet that predicts noise (or ``x0`` / ``v``) for latents of the parameter autoencoder.

``diffusers.UNet1DModel`` targets long audio-like signals with fixed block recipes; p-diff latents are short
``(batch, C, L)`` maps, so this module writes the same kind of UNet (ResNet blocks with a per-sample timestep
embedding, strided downsampling, skip connections) at that scale. Every sample in a batch gets its own timestep
embedding (the original p-diff code embedded one timestep for the whole batch).

With ``num_conditions = K > 0`` the denoiser is conditional, as diffusers' ``DiTPipeline`` transformer is on class
labels: an ``nn.Embedding(K + 1, temb_dim)`` whose last row (id ``K``) is the null condition is added to the
timestep embedding. Training replaces a fraction of the ids by the null id, so one model learns both
``p(latent | condition)`` and ``p(latent)``, which classifier-free guidance combines at sampling time.

The config also records the training objective (``num_train_timesteps``, ``beta_schedule``, ``prediction_type`` …),
which is what :class:`~pdiff_hf.PDiffPipeline` checks a swapped-in scheduler against.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from ..errors import ConditionError, DimensionMismatchError

# What a denoiser can be trained for (recorded in its config as ``objective``): DDPM noise prediction along a beta
# schedule, or flow matching (rectified flow) with diffusers' FlowMatchEulerDiscreteScheduler.
TRAINING_OBJECTIVES = ("ddpm", "flow_matching")


@dataclass
class LatentUNet1DOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch, channels, length)`): the model's prediction.
    """

    sample: torch.Tensor


class ResnetBlock1D(nn.Module):
    """GroupNorm → SiLU → Conv, twice, with the timestep embedding added in between and a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_channels), in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(min(groups, out_channels), out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class LatentUNet1DModel(ModelMixin, ConfigMixin):
    r"""1D UNet denoiser for p-diff latents.

    Parameters:
        in_channels (`int`): latent channels ``C``.
        sample_length (`int`): latent length ``L`` (padded inside to a multiple of ``2 ** (len(block_out_channels) - 1)``).
        block_out_channels (`Tuple[int]`): channels per resolution level.
        layers_per_block (`int`): ResNet blocks per level.
        num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type: the training objective, copied
            from the noise scheduler used in training so that the pipeline can check schedulers against it.
        sample_abs_max (`float`): largest absolute latent value seen in training; a scheduler that clips samples to
            a smaller range is rejected.
        num_conditions (`int`): number of conditions ``K`` (class/task ids ``0 … K-1``); 0 (default) builds an
            unconditional denoiser. Id ``K`` is the null condition used for classifier-free guidance.
        condition_names (`List[str]`, *optional*): a name per condition id (``K`` names), so that a pipeline can be
            asked for ``condition="task_3"``.
        objective (`str`): the training objective, ``"ddpm"`` (default: noise added along the beta schedule at integer
            timesteps ``0 … num_train_timesteps - 1``) or ``"flow_matching"`` (rectified flow, diffusers'
            ``FlowMatchEulerDiscreteScheduler``: ``x_t = (1 - sigma) x0 + sigma noise`` at timestep
            ``sigma * num_train_timesteps``, the model predicts the velocity ``noise - x0``; its ``prediction_type`` is
            ``"flow_prediction"``). Schedulers are checked against it.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        sample_length: int = 16,
        block_out_channels: Tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        prediction_type: str = "sample",
        sample_abs_max: float = 0.0,
        num_conditions: int = 0,
        condition_names: Optional[List[str]] = None,
        objective: str = "ddpm",
    ):
        super().__init__()
        if objective not in TRAINING_OBJECTIVES:
            raise ValueError(f"expected objective in {TRAINING_OBJECTIVES}, found {objective!r}")
        if (objective == "flow_matching") != (prediction_type == "flow_prediction"):
            raise ValueError(
                f"expected prediction_type 'flow_prediction' exactly with objective 'flow_matching', found "
                f"objective={objective!r} with prediction_type={prediction_type!r}"
            )
        if not isinstance(num_conditions, int) or isinstance(num_conditions, bool) or num_conditions < 0:
            raise ValueError(f"expected num_conditions to be an int >= 0, found {num_conditions!r}")
        if condition_names is not None and (
            len(condition_names) != num_conditions
            or not all(isinstance(n, str) for n in condition_names)
            or len(set(condition_names)) != len(condition_names)
        ):
            raise ValueError(
                f"expected condition_names to be {num_conditions} distinct strings (one per condition), found "
                f"{condition_names!r}"
            )
        if not block_out_channels or any(c < 1 or c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"expected block_out_channels to be positive multiples of norm_num_groups={norm_num_groups}, "
                f"found {list(block_out_channels)}"
            )
        if prediction_type not in ("epsilon", "sample", "v_prediction", "flow_prediction"):
            raise ValueError(
                f"expected prediction_type 'epsilon', 'sample', 'v_prediction' or 'flow_prediction', found "
                f"{prediction_type!r}"
            )
        temb_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], temb_dim)
        self.conv_in = nn.Conv1d(in_channels, block_out_channels[0], 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        ch = block_out_channels[0]
        skip_channels = [ch]
        for i, out_ch in enumerate(block_out_channels):
            blocks = nn.ModuleList()
            for _ in range(layers_per_block):
                blocks.append(ResnetBlock1D(ch, out_ch, temb_dim, norm_num_groups))
                ch = out_ch
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            last = i == len(block_out_channels) - 1
            self.downsamplers.append(nn.Identity() if last else nn.Conv1d(ch, ch, 3, stride=2, padding=1))
            if not last:
                skip_channels.append(ch)

        self.mid_block = nn.ModuleList(
            [ResnetBlock1D(ch, ch, temb_dim, norm_num_groups), ResnetBlock1D(ch, ch, temb_dim, norm_num_groups)]
        )

        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, out_ch in enumerate(reversed(block_out_channels)):
            blocks = nn.ModuleList()
            for _ in range(layers_per_block + 1):
                blocks.append(ResnetBlock1D(ch + skip_channels.pop(), out_ch, temb_dim, norm_num_groups))
                ch = out_ch
            self.up_blocks.append(blocks)
            last = i == len(block_out_channels) - 1
            self.upsamplers.append(nn.Identity() if last else nn.Conv1d(ch, ch, 3, padding=1))

        self.conv_norm_out = nn.GroupNorm(min(norm_num_groups, ch), ch)
        self.conv_out = nn.Conv1d(ch, in_channels, 3, padding=1)
        self.down_factor = 2 ** (len(block_out_channels) - 1)
        # Built last, so that an unconditional denoiser initializes exactly as before conditioning existed.
        self.class_embedding = nn.Embedding(num_conditions + 1, temb_dim) if num_conditions else None

    @property
    def null_condition(self) -> int:
        """The id of the null (unconditional) condition: ``num_conditions``."""
        return self.config.num_conditions

    def check_condition(self, condition: torch.Tensor, batch: int) -> None:
        """Raise :class:`ConditionError` unless ``condition`` is an integer tensor ``(batch,)`` of ids in
        ``[0, num_conditions]`` (the last one is the null condition) for a conditional model."""
        k = self.config.num_conditions
        if not k:
            raise ConditionError("expected no condition for an unconditional denoiser (num_conditions=0), found one")
        if not isinstance(condition, torch.Tensor) or condition.dtype not in (torch.int32, torch.int64):
            found = condition.dtype if isinstance(condition, torch.Tensor) else type(condition).__name__
            raise ConditionError(f"expected condition ids as an int64 tensor (batch,), found {found}")
        if tuple(condition.shape) != (batch,):
            raise ConditionError(f"expected condition ids of shape ({batch},), found {tuple(condition.shape)}")
        if condition.numel() and (int(condition.min()) < 0 or int(condition.max()) > k):
            raise ConditionError(
                f"expected condition ids in [0, {k}] ({k} = null condition), found values in "
                f"[{int(condition.min())}, {int(condition.max())}]"
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        condition: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[LatentUNet1DOutput, Tuple[torch.Tensor]]:
        """
        Args:
            sample: noisy latents ``(batch, in_channels, sample_length)``.
            timestep: one timestep per sample ``(batch,)``, or a scalar broadcast to the batch.
            condition: condition ids ``(batch,)`` in ``[0, num_conditions]`` for a conditional denoiser (``None``:
                the null condition); must be ``None`` for an unconditional one.
        """
        if sample.dim() != 3 or sample.shape[1] != self.config.in_channels:
            raise DimensionMismatchError(
                f"expected latents of shape (batch, {self.config.in_channels}, length), found {tuple(sample.shape)}"
            )
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.dim() == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(sample.shape[0]) if timesteps.shape[0] == 1 else timesteps
        if timesteps.shape[0] != sample.shape[0]:
            raise DimensionMismatchError(
                f"expected one timestep per sample ({sample.shape[0]}), found {timesteps.shape[0]}"
            )
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        if condition is not None:
            self.check_condition(condition, sample.shape[0])
        if self.class_embedding is not None:
            if condition is None:
                condition = torch.full((sample.shape[0],), self.null_condition, dtype=torch.long, device=sample.device)
            temb = temb + self.class_embedding(condition.to(sample.device)).to(temb.dtype)

        length = sample.shape[-1]
        padded = -(-length // self.down_factor) * self.down_factor
        h = self.conv_in(F.pad(sample, (0, padded - length)))
        skips: List[torch.Tensor] = [h]
        for blocks, down in zip(self.down_blocks, self.downsamplers):
            for block in blocks:
                h = block(h, temb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        for block in self.mid_block:
            h = block(h, temb)
        for blocks, up in zip(self.up_blocks, self.upsamplers):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.conv_norm_out(h)))[:, :, :length]
        if not return_dict:
            return (out,)
        return LatentUNet1DOutput(sample=out)
