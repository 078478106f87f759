"""The rules :meth:`PDiffConfig.validate` checks, one table entry per field.

``RULES`` maps a field name to a check: a function ``value -> None`` that raises ``_Bad(expected)`` when the value
is out of its type or range. Adding a field to :class:`~pdiff_hf.PDiffConfig` means adding one line here, e.g.
``"new_field": one_of(("a", "b"))``; a field without a line still gets a type check against
its default (:func:`default_type_rule`), so nothing goes unchecked. Rules between fields are in ``CROSS_RULES``;
rules that need the vector length ``D`` are in :func:`check_config_for_dim`, called by the builders.

Every failure is a :class:`~pdiff_hf.errors.PDiffConfigError` "expected config.<field> to be <range>, found <value>",
raised before any model is built. Scheduler names are checked against what diffusers accepts (the beta schedule by
building the DDPM and DPM-Solver++ schedulers with 10 steps, which costs microseconds).
"""

import dataclasses
import math
from functools import lru_cache
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ..errors import PDiffConfigError

# sane limits: a config asking for more is a typo or an attack, not a model (the Hub loader uses the same ones)
MAX_STEPS = 10**8
MAX_BATCH_SIZE = 10**6
MAX_CHANNELS = 4096
MAX_BLOCKS = 8
MAX_LAYERS_PER_BLOCK = 64
MAX_TRAIN_TIMESTEPS = 100_000
MAX_CONDITIONS = 1_000_000
MAX_PATCH_OR_TOKEN_SIZE = 2**24
MAX_SEED = 2**64 - 1
# prediction types the denoiser and denoiser_loss implement (all three are known to diffusers' schedulers)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# beta schedules offered in error messages; the check itself asks diffusers
_BETA_SCHEDULE_CANDIDATES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace", "exp")


class _Bad(Exception):
    """Raised by a rule with the expected range; turned into a PDiffConfigError naming the field and value."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


Rule = Callable[[Any], None]


# ----------------------------------------------------------------------------------------------- rule builders
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int, high: int) -> Rule:
    """An int (not a bool) in ``[low, high]``."""
    expected = "a positive integer" if low == 1 else f"an integer >= {low}"
    expected += f" (at most {high})"

    def check(value):
        if not _is_int(value) or not low <= value <= high:
            raise _Bad(expected)

    return check


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite int or float (not a bool) in the interval from ``low`` to ``high`` (open ends as flagged)."""
    left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"
    expected = f"a finite number in {left}{low:g}, {high:g}{right}"

    def check(value):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise _Bad(expected)
        if value < low or (low_open and value == low) or value > high or (high_open and value == high):
            raise _Bad(expected)

    return check


def boolean() -> Rule:
    def check(value):
        if not isinstance(value, bool):
            raise _Bad("True or False")

    return check


def one_of(choices: Iterable[str]) -> Rule:
    choices = tuple(choices)

    def check(value):
        if not isinstance(value, str) or value not in choices:
            raise _Bad(f"one of {', '.join(repr(c) for c in choices)}")

    return check


def optional(rule: Rule) -> Rule:
    """``None`` or a value ``rule`` accepts."""

    def check(value):
        if value is None:
            return
        try:
            rule(value)
        except _Bad as bad:
            raise _Bad(f"None or {bad.expected}") from None

    return check


def channel_list(low: int, high: int, max_len: int, multiple_of: Optional[Callable[[], int]] = None) -> Rule:
    """A non-empty tuple/list of at most ``max_len`` ints in ``[low, high]``, each a multiple of ``multiple_of()``."""

    def check(value):
        groups = multiple_of() if multiple_of is not None else 1
        expected = f"a tuple of 1 to {max_len} integers in [{low}, {high}]"
        if groups > 1:
            expected += f", each a multiple of the denoiser's {groups} group-norm groups"
        if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= max_len:
            raise _Bad(expected)
        if any(not _is_int(v) or not low <= v <= high or v % groups for v in value):
            raise _Bad(expected)

    return check


def known_beta_schedule() -> Rule:
    def check(value):
        if not isinstance(value, str) or not _diffusers_accepts_beta_schedule(value):
            known = [c for c in _BETA_SCHEDULE_CANDIDATES if _diffusers_accepts_beta_schedule(c)]
            raise _Bad(f"a beta schedule that diffusers' DDPM and DPM-Solver++ schedulers know ({', '.join(known)})")

    return check


def known_lr_scheduler() -> Rule:
    def check(value):
        names = _diffusers_lr_schedulers()
        if not isinstance(value, str) or value not in names:
            raise _Bad(f"a diffusers learning-rate schedule ({', '.join(names)})")

    return check


@lru_cache(maxsize=None)
def _diffusers_accepts_beta_schedule(name: str) -> bool:
    """Whether the training (DDPM) and sampling (DPM-Solver++) schedulers of diffusers build with ``name``."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    try:
        DDPMScheduler(num_train_timesteps=10, beta_schedule=name)
        DPMSolverMultistepScheduler(num_train_timesteps=10, beta_schedule=name)
    except (NotImplementedError, ValueError, TypeError, KeyError):
        return False
    return True


@lru_cache(maxsize=None)
def _diffusers_lr_schedulers() -> Tuple[str, ...]:
    """diffusers' ``SchedulerType`` names that ``get_scheduler`` builds from a warm-up and a step count alone
    (``piecewise_constant`` also needs step rules)."""
    from diffusers.optimization import SchedulerType

    return tuple(s.value for s in SchedulerType if s is not SchedulerType.PIECEWISE_CONSTANT)


def _denoiser_norm_groups() -> int:
    """The group-norm groups of the denoiser that ``build_denoiser`` builds (LatentUNet1DModel's default)."""
    import inspect

    from ..models.denoiser import LatentUNet1DModel

    return inspect.signature(LatentUNet1DModel.__init__).parameters["norm_num_groups"].default


def _autoencoder_types() -> Tuple[str, ...]:
    from .config import AUTOENCODER_TYPES

    return tuple(AUTOENCODER_TYPES)


def _norm_modes() -> Tuple[str, ...]:
    from ..models.normalization import NORM_MODES

    return tuple(NORM_MODES)


def _training_objectives() -> Tuple[str, ...]:
    from ..models.denoiser import TRAINING_OBJECTIVES

    return tuple(TRAINING_OBJECTIVES)


def _lazy_one_of(choices: Callable[[], Iterable[str]]) -> Rule:
    def check(value):
        one_of(choices())(value)

    return check


# ----------------------------------------------------------------------------------------------- the table
_steps, _batch = integer(1, MAX_STEPS), integer(1, MAX_BATCH_SIZE)
_learning_rate = number(0, 1e3, low_open=True)
RULES: Dict[str, Rule] = {
    # autoencoder
    "ae_block_out_channels": optional(channel_list(1, MAX_CHANNELS, MAX_BLOCKS)),  # None: chosen by D
    "ae_patch_size": optional(integer(1, MAX_PATCH_OR_TOKEN_SIZE)),  # None: chosen by D
    "latent_channels": integer(1, MAX_CHANNELS),
    "input_noise": number(0, 10),
    "latent_noise": number(0, 10),
    "norm_mode": _lazy_one_of(_norm_modes),
    "autoencoder_type": _lazy_one_of(_autoencoder_types),
    "ae_token_size": optional(integer(1, MAX_PATCH_OR_TOKEN_SIZE)),
    "ae_token_hidden_dim": integer(1, 65_536),
    "ae_token_latent_channels": integer(1, MAX_CHANNELS),
    "ae_linear_latent_length": integer(1, MAX_PATCH_OR_TOKEN_SIZE),  # <= (N - 1) / latent_channels: fit_pdiff checks
    "ae_linear_whiten": boolean(),
    "ae_steps": _steps,
    "ae_learning_rate": _learning_rate,
    "ae_train_batch_size": _batch,
    "ae_use_ema": boolean(),
    # denoiser and objective
    "denoiser_block_out_channels": channel_list(1, MAX_CHANNELS, MAX_BLOCKS, multiple_of=_denoiser_norm_groups),
    "layers_per_block": integer(1, MAX_LAYERS_PER_BLOCK),
    "num_train_timesteps": integer(2, MAX_TRAIN_TIMESTEPS),
    "beta_schedule": known_beta_schedule(),
    "prediction_type": one_of(PREDICTION_TYPES),
    "objective": _lazy_one_of(_training_objectives),
    "num_conditions": integer(0, MAX_CONDITIONS),
    "condition_dropout": number(0, 1, high_open=True),
    "denoiser_steps": _steps,
    "denoiser_learning_rate": _learning_rate,
    "denoiser_train_batch_size": _batch,
    "use_ema": boolean(),
    "ema_max_decay": number(0, 1, low_open=True, high_open=True),
    "ema_power": number(0, 100, low_open=True),
    "ema_inv_gamma": number(0, 1e6, low_open=True),
    # both stages
    "lr_scheduler": known_lr_scheduler(),
    "lr_warmup_steps": integer(0, MAX_STEPS),
    "adam_beta1": number(0, 1, high_open=True),
    "adam_beta2": number(0, 1, high_open=True),
    "adam_weight_decay": number(0, 1e3),
    "adam_epsilon": number(0, 1, low_open=True),
    "seed": integer(0, MAX_SEED),
}


def default_type_rule(default: Any) -> Optional[Rule]:
    """A type check for a field without a line in ``RULES``, from its default value (None: nothing to check)."""
    if isinstance(default, bool):
        return boolean()
    if _is_int(default):
        return integer(-(2**63), 2**63 - 1)
    if isinstance(default, float):
        return number(-math.inf, math.inf)
    if isinstance(default, str):

        def check(value):
            if not isinstance(value, str):
                raise _Bad("a string")

        return check
    if isinstance(default, (tuple, list)):

        def check(value):
            if not isinstance(value, (tuple, list)):
                raise _Bad("a tuple")

        return check
    return None


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def rule_for(field: dataclasses.Field) -> Optional[Rule]:
    return RULES.get(field.name) or default_type_rule(_field_default(field))


# ----------------------------------------------------------------------------------------------- across fields
# (config) -> None functions raising PDiffConfigError; the group-norm rule of the denoiser's channels is in its
# field rule above. A warm-up longer than training is allowed: short test and demo runs use it on purpose.
CROSS_RULES: Tuple[Callable[[Any], None], ...] = ()


# ----------------------------------------------------------------------------------------------- entry points
def validate_config(config, dim: Optional[int] = None) -> None:
    """Raise :class:`PDiffConfigError` naming the first field of ``config`` (a :class:`~pdiff_hf.PDiffConfig`) out
    of type or range, then the first broken rule between fields; with ``dim`` (the vector length ``D``) also the
    rules that need it (:func:`check_config_for_dim`). Allocates nothing."""
    from .config import PDiffConfig

    if not isinstance(config, PDiffConfig):
        raise PDiffConfigError(f"expected a PDiffConfig, found a {type(config).__name__}")
    for field in dataclasses.fields(config):
        rule = rule_for(field)
        if rule is None:
            continue
        value = getattr(config, field.name)
        try:
            rule(value)
        except _Bad as bad:
            raise PDiffConfigError(f"expected config.{field.name} to be {bad.expected}, found {value!r}") from None
    for cross in CROSS_RULES:
        cross(config)
    if dim is not None:
        check_config_for_dim(config, dim)


def check_config_for_dim(config, dim: int) -> None:
    """Rules that need ``D = dim``: a token or patch no longer than the vector (a token of 4096 entries for
    D = 100 would be 97.6% padding: a typo, not a choice)."""
    from .config import choose_autoencoder_type

    if not _is_int(dim) or dim < 1:
        raise PDiffConfigError(f"expected the vector length D to be a positive integer, found {dim!r}")
    kind = choose_autoencoder_type(dim, config.autoencoder_type)
    if kind == "token" and config.ae_token_size is not None and config.ae_token_size > dim:
        raise PDiffConfigError(
            f"expected config.ae_token_size to be at most D = {dim} (entries per token), found {config.ae_token_size}"
        )
    if kind == "conv" and config.ae_patch_size is not None and config.ae_patch_size > dim:
        raise PDiffConfigError(
            f"expected config.ae_patch_size to be at most D = {dim} (entries per patch), found {config.ae_patch_size}"
        )
