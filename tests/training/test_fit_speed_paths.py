"""fit_pdiff's faster update paths train bit for bit what the plain ones train: the foreach AdamW and the foreach EMA
step against torch's default AdamW loop and diffusers' ``EMAModel.step``."""

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn

from pdiff_hf.training.config import PDiffConfig
from pdiff_hf.training.fit import _ema, _optimizer_and_schedule


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), nn.Conv1d(8, 4, 3, padding=1))
    model[1].weight.requires_grad_(False)  # a frozen tensor is copied, not averaged
    return model


def _steps(model, optimizer, schedule, ema, steps: int = 12):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 4, 16, generator=gen)
        loss = (model(x) - x).pow(2).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())


def test_foreach_adamw_and_ema_step_equal_the_plain_ones_bit_for_bit():
    config = PDiffConfig(lr_warmup_steps=3)
    fast = _model(0)
    optimizer, schedule = _optimizer_and_schedule(fast, 1e-2, 12, config)
    assert optimizer.defaults["foreach"] is True
    fast_ema = _ema(fast, config)
    _steps(fast, optimizer, schedule, fast_ema)

    plain = _model(0)
    plain_opt = torch.optim.AdamW(
        plain.parameters(), lr=1e-2, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )  # fmt: skip
    plain_ema = EMAModel(
        plain.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
    )  # fmt: skip
    plain_schedule = get_scheduler(config.lr_scheduler, optimizer=plain_opt, num_warmup_steps=config.lr_warmup_steps,
                                   num_training_steps=12)  # fmt: skip
    _steps(plain, plain_opt, plain_schedule, plain_ema)

    for a, b in zip(fast.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(fast_ema.shadow_params, plain_ema.shadow_params):
        assert torch.equal(a, b)
    assert fast_ema.optimization_step == plain_ema.optimization_step == 12
    assert not torch.equal(fast_ema.shadow_params[0], fast[0].weight)  # an average, not a copy
