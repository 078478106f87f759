"""The Accelerate training loop shared by the scripts in ``training/``.

The scripts (``collect_checkpoints.py``, ``train_autoencoder.py``, ``train_ldm.py``) follow the layout of diffusers'
example scripts, ``parse_args() -> main(args)``, and keep only what is specific to them; everything else lives here:

* command-line flags in diffusers' style (:func:`add_data_args`, :func:`add_stage_args`, :func:`add_accelerate_args`,
  :func:`add_hub_args`) and their validation (:func:`validate_args`);
* loading a checkpoint dataset with one-line errors (:func:`load_checkpoint_dataset`);
* :func:`train_stage`: one data-parallel training run of one model with AdamW, a diffusers LR schedule, gradient
  accumulation, mixed precision, optional EMA, ``checkpoint-<step>`` folders written with ``accelerator.save_state``
  (plus the EMA state) and pruned to ``--checkpoints_total_limit``, resumption (``--resume_from_checkpoint``), and a
  Ctrl-C handler that saves a resumable checkpoint at the next step boundary and exits with code 130;
* :func:`run_autoencoder_stage` / :func:`run_denoiser_stage`: the two p-diff stages on top of :func:`train_stage`;
* :func:`save_pretrained_atomically`: final artifacts are written to a hidden sibling folder and renamed into place,
  so an interrupted run never leaves a folder that looks complete;
* :func:`run_script`: the ``__main__`` wrapper that turns bad input into a one-line message and exit code 2.

Data parallelism: every process holds the whole (small) training tensor and reads its own disjoint slice of one
deterministic shuffled index stream (:class:`ShardedBatchStream`), so batches differ across ranks and a resumed run
sees exactly the batches an uninterrupted run would have seen. Normalization statistics and the latent scaling are
computed from the full dataset on every rank and then broadcast from the main process.
"""

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from torch import nn

from .errors import CheckpointDatasetError, DimensionMismatchError, PDiffError
from .io_utils import write_json_atomic


class _Logger:
    """Accelerate's multi-process logger (main process only) once Accelerate is initialized, else plain logging."""

    def __init__(self, name: str):
        self._plain = logging.getLogger(name)
        self._accelerate = get_logger(name)

    def _pick(self):
        from accelerate.state import PartialState

        return self._accelerate if PartialState._shared_state else self._plain

    def info(self, msg, *args, **kwargs):
        self._pick().info(msg, *args, **kwargs)

    def warning(self, msg, *args, **kwargs):
        self._pick().warning(msg, *args, **kwargs)


logger = _Logger(__name__)

CHECKPOINT_MARKER = "pdiff_checkpoint.json"
EMA_STATE_NAME = "ema_state.pt"
TEST_CRASH_ENV = "PDIFF_HF_TEST_CRASH_AT"  # "<stage>:<step>": raise _TestCrash after that step (tests only)
TEST_SIGINT_ENV = "PDIFF_HF_TEST_SIGINT_AT"  # "<stage>:<step>": send SIGINT to self after that step (tests only)
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


class TrainingScriptError(PDiffError):
    """Bad command-line input for a training script (missing path, contradicting flags, …)."""


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C / SIGTERM; ``checkpoint`` is the folder to resume from (or None)."""

    def __init__(self, step: int, checkpoint: Optional[str]):
        self.step = step
        self.checkpoint = checkpoint
        where = f"saved {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"interrupted at step {step}; {where}; rerun with --resume_from_checkpoint latest")


class _TestCrash(BaseException):
    """Raised by the test-only crash hook; deliberately not an ``Exception`` so nothing cleans up after it."""


# ---------------------------------------------------------------------------------------------------- arguments
class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors raise :class:`TrainingScriptError` (one line, exit code 2 via
    :func:`run_script`) instead of printing the usage block. Abbreviated flags are not accepted (a typo such as
    ``--learning_rat`` must not silently mean ``--learning_rate``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise TrainingScriptError(f"{message} (see --help)")


def add_data_args(parser: argparse.ArgumentParser, default_output_dir: str) -> None:
    group = parser.add_argument_group("data and output")
    group.add_argument(
        "--checkpoint_dataset",
        type=str,
        required=True,
        help="Folder of a checkpoint dataset written with `datasets.Dataset.save_to_disk` (e.g. by "
        "training/collect_checkpoints.py).",
    )
    group.add_argument(
        "--checkpoint_dataset_split",
        type=str,
        default=None,
        help="Split to train on when --checkpoint_dataset holds a DatasetDict (default: 'train').",
    )
    group.add_argument("--output_dir", type=str, default=default_output_dir, help="Where models and checkpoints go.")
    group.add_argument(
        "--logging_dir",
        type=str,
        default="logs",
        help="TensorBoard log directory, relative to --output_dir unless absolute.",
    )


def add_autoencoder_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("autoencoder model")
    group.add_argument("--ae_block_out_channels", type=int, nargs="+", default=[16, 32, 32])
    group.add_argument(
        "--ae_patch_size", type=int, default=1,
        help="Entries per position of the first convolution; use ~D/512 (e.g. 32 for D=12,810) for long vectors.",
    )
    group.add_argument("--latent_channels", type=int, default=4)
    group.add_argument("--input_noise", type=float, default=0.001, help="p-diff's input noise augmentation std.")
    group.add_argument("--latent_noise", type=float, default=0.1, help="p-diff's latent noise augmentation std.")
    group.add_argument("--norm_mode", type=str, default="per_dimension", choices=["per_dimension", "per_tensor"])


def add_stage_args(
    parser: argparse.ArgumentParser,
    prefix: str = "",
    what: str = "",
    learning_rate: float = 1e-3,
    max_train_steps: int = 2000,
    lr_warmup_steps: int = 50,
    full: bool = True,
) -> None:
    """Optimization flags of one training stage; ``prefix="ae_"`` gives ``--ae_learning_rate`` etc. With
    ``full=False`` only the step count, learning rate, schedule and warm-up get a prefixed copy (the rest is shared)."""
    group = parser.add_argument_group(f"{what or 'training'} optimization")
    group.add_argument(f"--{prefix}max_train_steps", type=int, default=max_train_steps, help="Optimizer steps.")
    group.add_argument(f"--{prefix}learning_rate", type=float, default=learning_rate)
    group.add_argument(
        f"--{prefix}lr_scheduler",
        type=str,
        default="cosine",
        choices=LR_SCHEDULERS,
        help="A `diffusers.optimization.get_scheduler` schedule.",
    )
    group.add_argument(f"--{prefix}lr_warmup_steps", type=int, default=lr_warmup_steps)
    group.add_argument(
        f"--{prefix}checkpointing_steps",
        type=int,
        default=None if prefix else 500,
        help="Save a resumable checkpoint-<step> folder every this many steps"
        + (" (default: --checkpointing_steps)." if prefix else "."),
    )
    if not full:
        return
    group.add_argument("--train_batch_size", type=int, default=50, help="Batch size per process.")
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=2e-6)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=None, help="Clip gradients to this norm (off by default).")


def add_accelerate_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("accelerate, EMA and checkpointing")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Defaults to the value of `accelerate config` / `accelerate launch --mixed_precision`.",
    )
    group.add_argument("--use_ema", action="store_true", help="Keep an EMA of the weights; the EMA weights are saved.")
    group.add_argument("--ema_decay", type=float, default=0.999)
    group.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep at most this many checkpoint-<step> folders (oldest are deleted).",
    )
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="'latest' (the newest complete checkpoint under --output_dir; starts fresh if there is none) or the "
        "path (or name, e.g. checkpoint-500) of a checkpoint folder.",
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--report_to",
        type=str,
        default="tensorboard",
        help="'tensorboard', 'wandb', 'all' or 'none'.",
    )


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument("--push_to_hub", action="store_true", help="Push the result to the Hub at the end.")
    group.add_argument("--hub_model_id", type=str, default=None, help="Repository id, e.g. user/pdiff-mnist1d.")
    group.add_argument("--hub_token", type=str, default=None, help="Token (default: the cached login).")
    group.add_argument("--hub_private_repo", action="store_true")
    group.add_argument(
        "--checkpoint_dataset_id", type=str, default=None, help="Hub id of the checkpoint dataset, for the model card."
    )


def validate_args(
    args: argparse.Namespace, stage_prefixes: Sequence[str] = ("",), needs_hub_module: bool = True
) -> argparse.Namespace:
    """Reject contradicting or out-of-range flags with :class:`TrainingScriptError`; with ``needs_hub_module``,
    ``--push_to_hub`` also needs :mod:`pdiff_hf.hub` to be installed."""

    def positive(name: str, allow_none: bool = False):
        value = getattr(args, name, None)
        if value is None and allow_none:
            return
        if value is None or value < 1:
            raise TrainingScriptError(f"--{name} must be >= 1, found {value}")

    for prefix in stage_prefixes:
        positive(f"{prefix}max_train_steps")
        positive(f"{prefix}checkpointing_steps", allow_none=True)
        if getattr(args, f"{prefix}lr_warmup_steps") < 0:
            raise TrainingScriptError(f"--{prefix}lr_warmup_steps must be >= 0")
        if not getattr(args, f"{prefix}learning_rate") > 0:
            raise TrainingScriptError(f"--{prefix}learning_rate must be > 0")
    positive("train_batch_size")
    positive("gradient_accumulation_steps")
    positive("checkpoints_total_limit", allow_none=True)
    if not 0.0 < args.ema_decay < 1.0:
        raise TrainingScriptError(f"--ema_decay must be in (0, 1), found {args.ema_decay}")
    if getattr(args, "push_to_hub", False):
        if not args.hub_model_id:
            raise TrainingScriptError("--push_to_hub needs --hub_model_id (e.g. --hub_model_id user/pdiff-mnist1d)")
        if needs_hub_module and importlib.util.find_spec("pdiff_hf.hub") is None:
            raise TrainingScriptError(
                "--push_to_hub needs pdiff_hf.hub (push_pipeline), which is not installed in this version of pdiff_hf"
            )
    if args.report_to not in ("tensorboard", "wandb", "all", "none", "comet_ml", "mlflow", "aim", "clearml"):
        raise TrainingScriptError(f"--report_to: unknown tracker {args.report_to!r}")
    return args


def training_args_dict(args: argparse.Namespace) -> Dict:
    """``vars(args)`` without secrets, for trackers and model cards."""
    return {k: v for k, v in vars(args).items() if "token" not in k}


def tracker_config(args: argparse.Namespace) -> Dict:
    """Tracker hyper-parameters: scalars only (TensorBoard rejects lists and None)."""
    out = {}
    for k, v in training_args_dict(args).items():
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        if v is None:
            v = "None"
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------------ data
def load_checkpoint_dataset(path: str, split: Optional[str] = None):
    """Load a checkpoint dataset saved with ``save_to_disk``; return ``(dataset, params (N, D), layout)``.

    Raises :class:`TrainingScriptError` for a missing path and :class:`CheckpointDatasetError` for a folder that is
    not a checkpoint dataset.
    """
    import datasets

    from .checkpoints import checkpoint_params, get_layout

    if not path:
        raise TrainingScriptError("--checkpoint_dataset is empty")
    if not os.path.exists(path):
        raise TrainingScriptError(
            f"--checkpoint_dataset {path!r} does not exist; expected a folder written by datasets' save_to_disk "
            "(e.g. the --output_dir of training/collect_checkpoints.py)"
        )
    if not os.path.isdir(path):
        raise TrainingScriptError(f"--checkpoint_dataset {path!r} is a file; expected a save_to_disk folder")
    try:
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointDatasetError(
            f"--checkpoint_dataset {path!r} is not a dataset saved with save_to_disk ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if isinstance(ds, datasets.DatasetDict):
        name = split or "train"
        if name not in ds:
            raise CheckpointDatasetError(
                f"--checkpoint_dataset {path!r} holds splits {sorted(ds)}; pick one with --checkpoint_dataset_split"
            )
        ds = ds[name]
    elif split not in (None, "train"):
        raise TrainingScriptError(f"--checkpoint_dataset_split {split!r}: {path!r} holds a single Dataset, not splits")
    layout = get_layout(ds)
    params = checkpoint_params(ds)
    if params.shape[1] != layout.dim:
        raise DimensionMismatchError(
            f"--checkpoint_dataset {path!r}: its layout describes D={layout.dim}, its params column has "
            f"{params.shape[1]} values per row"
        )
    if params.shape[0] < 2:
        raise CheckpointDatasetError(
            f"--checkpoint_dataset {path!r}: expected at least 2 checkpoints to fit normalization statistics, "
            f"found {params.shape[0]}"
        )
    return ds, params, layout


class ShardedBatchStream:
    """Deterministic, endless stream of index batches for data-parallel training.

    The indices ``0..N-1`` are shuffled once per epoch with a generator seeded from ``(seed, epoch)`` and the
    permutations are concatenated into one stream. Global micro-batch ``k`` of process ``r`` (of ``W``) is the slice
    ``[(k * W + r) * B, (k * W + r + 1) * B)`` of that stream, so processes read disjoint batches, all processes
    agree on the stream without communicating, and batch ``k`` does not depend on what happened before it (a
    resumed run reads exactly the batches of an uninterrupted one).
    """

    def __init__(self, num_samples: int, batch_size: int, num_processes: int = 1, process_index: int = 0, seed: int = 0):
        if num_samples < 1:
            raise ValueError("expected at least one sample")
        self.n = num_samples
        self.batch_size = max(1, min(batch_size, num_samples))
        self.world = num_processes
        self.rank = process_index
        self.seed = seed
        self._perms: Dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def batch(self, k: int) -> torch.Tensor:
        start = (k * self.world + self.rank) * self.batch_size
        out, pos = [], start
        while pos < start + self.batch_size:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, start + self.batch_size - pos)
            out.append(self._perm(epoch)[offset : offset + take])
            pos += take
        return torch.cat(out)


# ---------------------------------------------------------------------------------------------- checkpoints
def _checkpoint_step(path: Path) -> Optional[int]:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(checkpoint_dir: str, complete_only: bool = True) -> List[Path]:
    """``checkpoint-<step>`` folders under ``checkpoint_dir``, oldest first; with ``complete_only`` only those whose
    marker file was written (the marker is written last)."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _checkpoint_step(p) is not None]
    if complete_only:
        found = [p for p in found if (p / CHECKPOINT_MARKER).is_file()]
    return sorted(found, key=_checkpoint_step)


def read_checkpoint_marker(path: Path) -> Dict:
    try:
        return json.loads((Path(path) / CHECKPOINT_MARKER).read_text())
    except (OSError, ValueError) as err:
        raise TrainingScriptError(
            f"--resume_from_checkpoint {str(path)!r} is not a complete checkpoint folder (no readable "
            f"{CHECKPOINT_MARKER}); it may be from an interrupted save"
        ) from err


def resolve_resume(resume: Optional[str], checkpoint_dir: str) -> Optional[Path]:
    """Map ``--resume_from_checkpoint`` to a checkpoint folder: ``None`` → ``None``; ``"latest"`` → the newest
    complete checkpoint in ``checkpoint_dir`` or ``None``; a path or a folder name under ``checkpoint_dir`` → that
    folder (:class:`TrainingScriptError` when it does not exist or is incomplete)."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(checkpoint_dir)
        return found[-1] if found else None
    candidates = [Path(resume), Path(checkpoint_dir) / resume]
    for path in candidates:
        if path.is_dir():
            read_checkpoint_marker(path)
            return path
    raise TrainingScriptError(
        f"--resume_from_checkpoint {resume!r} does not exist (looked at {', '.join(str(c) for c in candidates)}); "
        f"pass 'latest' or an existing checkpoint-<step> folder"
    )


def prune_checkpoints(checkpoint_dir: str, total_limit: Optional[int], keep_free: int = 1) -> List[Path]:
    """Delete the oldest checkpoints so that ``keep_free`` more fit under ``total_limit``; incomplete checkpoint
    folders are deleted too. Returns the deleted folders."""
    removed = []
    for p in list_checkpoints(checkpoint_dir, complete_only=False):
        if not (p / CHECKPOINT_MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if total_limit is not None:
        found = list_checkpoints(checkpoint_dir)
        excess = len(found) + keep_free - total_limit
        for p in found[: max(0, excess)]:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed:
        logger.info("removed checkpoints: %s", ", ".join(p.name for p in removed))
    return removed


def save_pretrained_atomically(obj, final_dir: str, **kwargs) -> Path:
    """``obj.save_pretrained`` into a hidden sibling folder, then rename it to ``final_dir`` (replacing an old one),
    so ``final_dir`` is either absent, the previous complete version, or the new complete version. Temporary folders
    left by a killed run are removed first."""
    from .io_utils import atomic_directory

    final = Path(final_dir).resolve()
    if final.parent.is_dir():
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(final) as tmp:
        obj.save_pretrained(str(tmp), **kwargs)
    return final


# ------------------------------------------------------------------------------------------------ interrupts
class _DeferredInterrupt:
    """While active, SIGINT/SIGTERM only set ``requested``; the loop stops at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def _handler(self, signum, frame):
        if not self.requested:
            print(
                f"\nreceived {signal.Signals(signum).name}: saving a checkpoint at the end of this step, then exiting",
                file=sys.stderr,
                flush=True,
            )
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # pragma: no cover - unusual platforms
                    pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


def _test_hook(env: str, stage: str, step: int) -> bool:
    value = os.environ.get(env, "")
    if not value:
        return False
    name, _, at = value.rpartition(":")
    return name == stage and at.isdigit() and int(at) == step


# ---------------------------------------------------------------------------------------------- the loop
@dataclass
class StageConfig:
    """Optimization settings of one training stage (see :func:`stage_config`)."""

    name: str
    checkpoint_dir: str
    max_train_steps: int = 2000
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 50
    train_batch_size: int = 50
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 2e-6
    adam_epsilon: float = 1e-8
    max_grad_norm: Optional[float] = None
    use_ema: bool = False
    ema_decay: float = 0.999
    checkpointing_steps: int = 500
    checkpoints_total_limit: Optional[int] = None
    seed: int = 0
    resume_from: Optional[Path] = None


def stage_config(args: argparse.Namespace, name: str, checkpoint_dir: str, prefix: str = "") -> StageConfig:
    """A :class:`StageConfig` from parsed flags (``prefix`` selects e.g. the ``--ae_*`` copies)."""

    def get(key):
        value = getattr(args, prefix + key, None)
        return getattr(args, key) if value is None else value

    return StageConfig(
        name=name,
        checkpoint_dir=checkpoint_dir,
        max_train_steps=get("max_train_steps"),
        learning_rate=get("learning_rate"),
        lr_scheduler=get("lr_scheduler"),
        lr_warmup_steps=get("lr_warmup_steps"),
        train_batch_size=args.train_batch_size,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_weight_decay=args.adam_weight_decay,
        adam_epsilon=args.adam_epsilon,
        max_grad_norm=args.max_grad_norm,
        use_ema=args.use_ema,
        ema_decay=args.ema_decay,
        checkpointing_steps=get("checkpointing_steps"),
        checkpoints_total_limit=args.checkpoints_total_limit,
        seed=args.seed,
    )


def _save_checkpoint(accelerator, cfg: StageConfig, step: int, ema) -> Path:
    """Write ``checkpoint-<step>`` with ``accelerator.save_state`` (model, optimizer, LR scheduler, per-process RNG
    states), the EMA state and, last, a marker file. Must be called on every process."""
    path = Path(cfg.checkpoint_dir) / f"checkpoint-{step}"
    if accelerator.is_main_process:
        prune_checkpoints(cfg.checkpoint_dir, cfg.checkpoints_total_limit, keep_free=1)
        if path.exists():
            shutil.rmtree(path)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        if ema is not None:
            torch.save(ema.state_dict(), path / EMA_STATE_NAME)
        write_json_atomic(
            path / CHECKPOINT_MARKER,
            {
                "stage": cfg.name,
                "global_step": step,
                "max_train_steps": cfg.max_train_steps,
                "use_ema": ema is not None,
                "num_processes": accelerator.num_processes,
            },
        )
        logger.info("saved state to %s", path)
    accelerator.wait_for_everyone()
    return path


def _load_checkpoint(accelerator, cfg: StageConfig, path: Path, ema) -> int:
    marker = read_checkpoint_marker(path)
    if marker.get("stage") != cfg.name:
        raise TrainingScriptError(
            f"--resume_from_checkpoint {str(path)!r} is a {marker.get('stage')!r} checkpoint, expected a "
            f"{cfg.name!r} checkpoint"
        )
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, KeyError, ValueError, FileNotFoundError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingScriptError(
            f"could not resume from {str(path)!r} (were the model sizes or flags changed?): {first}"
        ) from err
    if ema is not None:
        ema_file = path / EMA_STATE_NAME
        if ema_file.is_file():
            ema.load_state_dict(torch.load(ema_file, map_location="cpu", weights_only=True))
            ema.to(accelerator.device)
        else:
            logger.warning("%s has no EMA state (saved without --use_ema); the EMA restarts from the current weights", path)
    return int(marker["global_step"])


def train_stage(
    accelerator,
    model: nn.Module,
    data: torch.Tensor,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    cfg: StageConfig,
    release: bool = True,
) -> nn.Module:
    """Train ``model`` on the rows of ``data`` (the full training tensor, identical on every process) and return
    the unwrapped model in eval mode, holding the EMA weights when ``cfg.use_ema``.

    ``loss_fn(model, batch)`` gets the prepared (possibly DDP-wrapped) model. Raises :class:`TrainingInterrupted`
    after saving a checkpoint when SIGINT/SIGTERM arrives. With ``release`` (needed when another stage follows on
    the same ``Accelerator``) the accelerator forgets this stage's model, optimizer and scheduler, so the next
    stage's checkpoints hold only its own objects.
    """
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    world = accelerator.num_processes
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    # The prepared scheduler steps once per process per optimizer step (diffusers' examples scale the same way).
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * world,
        num_training_steps=cfg.max_train_steps * world,
    )
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay) if cfg.use_ema else None
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    data = data.to(accelerator.device)
    stream = ShardedBatchStream(
        data.shape[0], cfg.train_batch_size, world, accelerator.process_index, seed=cfg.seed + zlib.crc32(cfg.name.encode())
    )
    accum = accelerator.gradient_accumulation_steps

    # Different noise on every process; restored exactly from the checkpoint's RNG states when resuming.
    set_seed(cfg.seed, device_specific=True)
    global_step = 0
    if cfg.resume_from is not None:
        logger.info("resuming %s training from %s", cfg.name, cfg.resume_from)
        global_step = _load_checkpoint(accelerator, cfg, Path(cfg.resume_from), ema)
        logger.info("resumed %s training from step %d", cfg.name, global_step)

    logger.info(
        "***** training %s: %d samples, %d steps, batch %d per process x %d processes x %d accumulation *****",
        cfg.name,
        data.shape[0],
        cfg.max_train_steps,
        stream.batch_size,
        world,
        accum,
    )
    progress = tqdm(
        total=cfg.max_train_steps,
        initial=min(global_step, cfg.max_train_steps),
        desc=f"train {cfg.name}",
        disable=not accelerator.is_local_main_process,
    )
    if cfg.resume_from is None and accelerator.is_main_process and list_checkpoints(cfg.checkpoint_dir):
        logger.warning(
            "%s already holds checkpoints of an earlier run (%s); this run's checkpoints will be mixed with them. "
            "Pass --resume_from_checkpoint latest to continue that run, or use a new --output_dir",
            cfg.checkpoint_dir,
            ", ".join(p.name for p in list_checkpoints(cfg.checkpoint_dir)),
        )
    last_saved = global_step if cfg.resume_from is not None else None
    interrupt = _DeferredInterrupt()
    in_step = False
    model.train()
    try:
        with interrupt:
            while global_step < cfg.max_train_steps:
                in_step = True
                loss_sum = 0.0
                for micro in range(accum):
                    batch = data[stream.batch(global_step * accum + micro).to(accelerator.device)]
                    with accelerator.accumulate(model):
                        loss = loss_fn(model, batch)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and cfg.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    loss_sum += float(loss.detach())
                if not accelerator.sync_gradients:  # pragma: no cover - guarded by construction
                    raise RuntimeError("gradient accumulation went out of step with the optimizer steps")
                if ema is not None:
                    ema.step(accelerator.unwrap_model(model).parameters())
                global_step += 1
                in_step = False

                # One small all-reduce per step: the mean loss and whether any process got a stop signal.
                stats = torch.tensor([loss_sum / accum, float(interrupt.requested)], device=accelerator.device)
                if world > 1:
                    stats = accelerator.reduce(stats, reduction="sum")
                    stats[0] /= world
                loss_value, stop = float(stats[0]), bool(stats[1] > 0)
                lr = lr_scheduler.get_last_lr()[0]
                progress.update(1)
                progress.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.3g}")
                accelerator.log({f"{cfg.name}/loss": loss_value, f"{cfg.name}/lr": lr}, step=global_step)

                if global_step % cfg.checkpointing_steps == 0:
                    _save_checkpoint(accelerator, cfg, global_step, ema)
                    last_saved = global_step
                if _test_hook(TEST_CRASH_ENV, cfg.name, global_step):
                    raise _TestCrash(f"test crash after {cfg.name} step {global_step}")
                if _test_hook(TEST_SIGINT_ENV, cfg.name, global_step) and accelerator.is_main_process:
                    os.kill(os.getpid(), signal.SIGINT)
                    stop = stop or (world == 1 and interrupt.requested)
                if stop:
                    path = None
                    if last_saved != global_step:
                        path = _save_checkpoint(accelerator, cfg, global_step, ema)
                    else:
                        path = Path(cfg.checkpoint_dir) / f"checkpoint-{global_step}"
                    raise TrainingInterrupted(global_step, str(path))
    except KeyboardInterrupt:
        # SIGINT arrived while the deferred handler was not installed (e.g. training off the main thread).
        path = None
        if not in_step and world == 1:
            if last_saved != global_step:
                path = str(_save_checkpoint(accelerator, cfg, global_step, ema))
            else:
                path = str(Path(cfg.checkpoint_dir) / f"checkpoint-{global_step}")
        raise TrainingInterrupted(global_step, path)
    finally:
        progress.close()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if ema is not None:
        ema.copy_to(unwrapped.parameters())
    unwrapped.eval()
    if release:
        accelerator.free_memory()
    return unwrapped


# ------------------------------------------------------------------------------------------- p-diff stages
def build_autoencoder(args: argparse.Namespace, layout):
    from .models.autoencoder import ParameterAutoencoder

    return ParameterAutoencoder(
        in_dim=layout.dim,
        block_out_channels=tuple(args.ae_block_out_channels),
        patch_size=args.ae_patch_size,
        latent_channels=args.latent_channels,
        input_noise=args.input_noise,
        latent_noise=args.latent_noise,
        norm_mode=args.norm_mode,
        param_layout=layout.to_list(),
    )


def load_pretrained_autoencoder(path: str, layout):
    """Load a trained :class:`ParameterAutoencoder` and check that it was trained for ``layout``."""
    from .models.autoencoder import ParameterAutoencoder

    if not os.path.isdir(path):
        raise TrainingScriptError(f"--pretrained_autoencoder {path!r} does not exist or is not a folder")
    try:
        ae = ParameterAutoencoder.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        if isinstance(err, PDiffError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingScriptError(f"--pretrained_autoencoder {path!r} is not a ParameterAutoencoder folder: {first}") from err
    if ae.config.in_dim != layout.dim:
        raise DimensionMismatchError(
            f"--pretrained_autoencoder {path!r} encodes D={ae.config.in_dim} parameters, the checkpoint dataset has "
            f"D={layout.dim} [{layout.describe()}]"
        )
    if ae.param_layout is not None and ae.param_layout != layout:
        raise DimensionMismatchError(
            f"--pretrained_autoencoder {path!r} was trained on [{ae.param_layout.describe()}], the checkpoint "
            f"dataset holds [{layout.describe()}]"
        )
    return ae.eval()


def _broadcast_(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` in place with the main process's values."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast

        tensor.copy_(broadcast(tensor.detach().clone().to(accelerator.device), from_process=0).to(tensor.device))
    return tensor


def _autoencoder_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """:func:`pdiff_hf.training.autoencoder_loss` through the tuple output: under mixed precision Accelerate rebuilds
    dict-like model outputs from a single dict argument, which ``ParameterAutoencoderOutput`` (two required fields)
    does not accept."""
    sample = model(batch, return_dict=False)[0]
    return F.mse_loss(sample.float(), batch.float())


def run_autoencoder_stage(
    accelerator,
    args: argparse.Namespace,
    params: torch.Tensor,
    layout,
    cfg: StageConfig,
    final_dir: str,
    release: bool = True,
):
    """Fit normalization, train the autoencoder, set the latent scaling and save it atomically to ``final_dir``
    (main process). Returns the trained autoencoder (eval mode, on ``accelerator.device``)."""
    torch.manual_seed(args.seed)
    ae = build_autoencoder(args, layout)
    ae.fit_normalization(params)
    _broadcast_(accelerator, ae.norm_mean)
    _broadcast_(accelerator, ae.norm_std)
    data = ae.normalize(params)
    ae = train_stage(accelerator, ae, data, _autoencoder_loss, cfg, release=release)
    ae.to(accelerator.device)
    factor = ae.set_latent_scaling(params.to(accelerator.device))
    factor = float(_broadcast_(accelerator, torch.tensor([factor], dtype=torch.float64))[0])
    ae.register_to_config(scaling_factor=factor)
    if accelerator.is_main_process:
        save_pretrained_atomically(ae, final_dir)
        logger.info("saved the autoencoder (latent scaling %.4g) to %s", factor, final_dir)
    accelerator.wait_for_everyone()
    return ae


def run_denoiser_stage(
    accelerator, args: argparse.Namespace, autoencoder, params: torch.Tensor, cfg: StageConfig, release: bool = False
):
    """Train the latent denoiser on the autoencoder's latents of ``params``; returns it (eval mode) with
    ``sample_abs_max`` recorded."""
    from .models.denoiser import LatentUNet1DModel
    from .training import denoiser_loss, noise_scheduler_for

    autoencoder.to(accelerator.device).eval()
    latents = autoencoder.params_to_latents(params.to(accelerator.device)).float()
    _broadcast_(accelerator, latents)
    torch.manual_seed(args.seed)
    denoiser = LatentUNet1DModel(
        in_channels=autoencoder.config.latent_channels,
        sample_length=autoencoder.latent_length,
        block_out_channels=tuple(args.denoiser_block_out_channels),
        layers_per_block=args.layers_per_block,
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
    )
    noise_scheduler = noise_scheduler_for(denoiser)

    def loss_fn(model, batch):
        return denoiser_loss(model, noise_scheduler, batch)

    denoiser = train_stage(accelerator, denoiser, latents, loss_fn, cfg, release=release)
    denoiser.register_to_config(sample_abs_max=round(float(latents.abs().max()), 4))
    return denoiser


# ---------------------------------------------------------------------------------------------- accelerator
def make_accelerator(args: argparse.Namespace, project_name: str):
    """``Accelerator`` with the script's accumulation, precision, tracker and project folders; logs the
    distributed setup (number of processes and distributed type) on the main process."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    logging_dir = args.logging_dir if os.path.isabs(args.logging_dir) else os.path.join(args.output_dir, args.logging_dir)
    project_config = ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir)
    log_with = None if args.report_to == "none" else args.report_to
    try:
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=log_with,
            project_config=project_config,
        )
    except (ValueError, ImportError) as err:
        raise TrainingScriptError(f"could not set up Accelerate: {str(err).strip().splitlines()[0]}") from err
    if not accelerator.is_main_process:
        import datasets
        import diffusers

        datasets.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    logger.info(
        "accelerate: num_processes=%d distributed_type=%s device=%s mixed_precision=%s",
        accelerator.num_processes,
        accelerator.distributed_type,
        accelerator.device,
        accelerator.mixed_precision,
    )
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
    if log_with is not None:
        accelerator.init_trackers(project_name, config=tracker_config(args))
    return accelerator


def push_to_hub(pipe, args: argparse.Namespace, results: Optional[Dict] = None):
    """Push with ``pdiff_hf.hub.push_pipeline`` (imported lazily; it is optional). Never logs the token."""
    try:
        from pdiff_hf.hub import push_pipeline
    except ImportError as err:
        raise TrainingScriptError(
            f"--push_to_hub needs pdiff_hf.hub.push_pipeline, which could not be imported ({err.__class__.__name__})"
        ) from err
    logger.info("pushing the pipeline to the Hub repository %s", args.hub_model_id)
    return push_pipeline(
        pipe,
        args.hub_model_id,
        token=args.hub_token,
        private=args.hub_private_repo,
        checkpoint_dataset_id=args.checkpoint_dataset_id,
        results=results,
        training_args=training_args_dict(args),
    )


# -------------------------------------------------------------------------------------------------- entry
def _reset_accelerate_state() -> None:
    """Forget the process-wide Accelerate singletons, so that a script can run again in the same process."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except Exception:  # pragma: no cover - best effort across accelerate versions
        pass


def run_script(
    main: Callable[[argparse.Namespace], Optional[int]],
    parse_args: Callable[[Optional[List[str]]], argparse.Namespace],
    argv: Optional[List[str]] = None,
    prog: Optional[str] = None,
) -> int:
    """Run a training script: bad input ends with ``<prog>: error: <one line>`` on stderr and exit code 2,
    Ctrl-C with a resumable checkpoint and exit code 130. Usable in-process (``argv``) as well as from
    ``if __name__ == "__main__"``."""
    prog = prog or os.path.basename(sys.argv[0] or "train")
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        level=logging.INFO,
    )
    try:
        args = parse_args(argv)
        return int(main(args) or 0)
    except TrainingInterrupted as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except (PDiffError, FileNotFoundError, NotADirectoryError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return 2
    finally:
        _reset_accelerate_state()
