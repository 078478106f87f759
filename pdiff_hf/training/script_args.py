"""The command-line side of the training scripts in ``training/``: flags they share (defaults read from
:class:`~pdiff_hf.training.config.PDiffConfig`), the help formatter that shows defaults, checks of flags and local
paths before anything is looked up on the Hub, the tracker choice (``--report_to auto``) and loading a saved
autoencoder of any class."""

import argparse
import logging
import math
from typing import Optional

from .config import PDiffConfig

logger = logging.getLogger(__name__)


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
