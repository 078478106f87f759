"""Resumable training for the scripts in ``training/``: ``checkpoint-<step>`` folders written atomically and pruned
only after the new one is complete, save/load hooks that store models as ``save_pretrained`` folders (safetensors),
resumption at the exact batch, and Ctrl-C handling that stops at a step boundary on every process."""

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import TrainingScriptError, first_line

logger = logging.getLogger(__name__)
FINGERPRINT_FILE = "pdiff_run.json"


def checkpoint_folders(output_dir: str) -> List[str]:
    """Complete ``checkpoint-<step>`` folders under ``output_dir``, oldest first (a checkpoint is renamed into
    place only once complete, see :func:`save_checkpoint`)."""
    if not os.path.isdir(output_dir):
        return []
    found = [d for d in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", d)]
    return [os.path.join(output_dir, d) for d in sorted(found, key=lambda d: int(d.split("-")[1]))]


def resolve_resume_checkpoint(output_dir: str, resume_from_checkpoint: str):
    """``--resume_from_checkpoint`` → a checkpoint folder, or None to start fresh. ``"latest"`` is the newest
    complete checkpoint in ``output_dir`` (None if there is none); anything else must be an existing checkpoint
    folder (a path, or a name under ``output_dir``)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoint_folders(output_dir)
        return found[-1] if found else None
    for path in (resume_from_checkpoint, os.path.join(output_dir, resume_from_checkpoint)):
        if os.path.isdir(path) and os.path.basename(os.path.normpath(path)).startswith("checkpoint-"):
            return path
    raise TrainingScriptError(
        f"--resume_from_checkpoint: expected 'latest' or an existing checkpoint-<step> folder, found "
        f"{resume_from_checkpoint!r} (looked in {output_dir!r} too)"
    )


def check_output_dir(output_dir: str, resume_from_checkpoint) -> None:
    """Refuse to start a new run in a folder that holds another run's checkpoints: a later ``latest`` would
    resume from them."""
    if not resume_from_checkpoint and checkpoint_folders(output_dir):
        names = ", ".join(os.path.basename(p) for p in checkpoint_folders(output_dir))
        raise TrainingScriptError(
            f"--output_dir {output_dir!r}: expected no checkpoints of an earlier run, found {names}; pass "
            "--resume_from_checkpoint latest to continue it, or choose a new --output_dir"
        )


def run_fingerprint(args, flags: Sequence[str], data: torch.Tensor) -> Dict:
    """What makes a checkpoint belong to a run: the values of ``flags`` (those that shape the model, the batches and
    the noise) and a hash of the training data ``data`` (checkpoints or latents). Written into every checkpoint and
    compared on resume; the step count and learning rate may change between runs, these may not."""
    digest = hashlib.blake2b(data.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
    return json.loads(json.dumps({**{flag: getattr(args, flag) for flag in flags}, "data": digest}))


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit=None, fingerprint: Optional[Dict] = None) -> str:
    """``accelerator.save_state`` into a hidden folder, renamed to ``checkpoint-<step>`` once every process has
    written its part; only then are the oldest checkpoints beyond ``total_limit`` deleted (a crash during a save
    never leaves fewer complete checkpoints than before). ``fingerprint`` (:func:`run_fingerprint`) goes with it.
    Call on every process."""
    path = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".checkpoint-{step}.tmp")
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if fingerprint is not None:
            with open(os.path.join(tmp, FINGERPRINT_FILE), "w", encoding="utf-8") as f:
                json.dump(fingerprint, f, indent=2)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        if total_limit is not None:
            for old in checkpoint_folders(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def save_pretrained_into(obj, output_dir: str, marker: str) -> None:
    """``obj.save_pretrained`` into ``output_dir`` (which may hold checkpoints too): written to a hidden folder
    first, then moved in entry by entry with ``marker`` (``config.json`` / ``model_index.json``) last, so a folder
    with the marker is complete."""
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".save-", dir=output_dir)
    try:
        obj.save_pretrained(tmp)
        marker_path = os.path.join(output_dir, marker)
        if os.path.exists(marker_path):
            os.remove(marker_path)
        names = sorted(os.listdir(tmp), key=lambda name: name == marker)
        for name in names:
            dest = os.path.join(output_dir, name)
            if os.path.isdir(dest):
                shutil.rmtree(dest)
            os.replace(os.path.join(tmp, name), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register_checkpoint_hooks(accelerator, model_cls, subfolder: str, ema_model=None) -> None:
    """Make ``accelerator.save_state``/``load_state`` store the model in ``<checkpoint>/<subfolder>`` and its EMA in
    ``<checkpoint>/<subfolder>_ema`` as ``save_pretrained`` folders (safetensors, loadable without the script)
    instead of a second, pickled copy. Saving never moves the global RNG (``EMAModel.save_pretrained`` builds a
    model), so a run with checkpoints trains exactly what a run without them trains."""
    from diffusers.training_utils import EMAModel

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            with torch.random.fork_rng(devices=[]):
                if ema_model is not None:
                    ema_model.save_pretrained(os.path.join(output_dir, f"{subfolder}_ema"))
                for model in models:
                    model.save_pretrained(os.path.join(output_dir, subfolder))
                    weights.pop()

    def load_model_hook(models, input_dir):
        if ema_model is not None:
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, f"{subfolder}_ema"), model_cls)
            ema_model.load_state_dict(loaded.state_dict())
            ema_model.to(accelerator.device)
        while models:
            model = models.pop()
            model.load_state_dict(model_cls.from_pretrained(input_dir, subfolder=subfolder).state_dict())

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def _check_fingerprint(path: str, fingerprint: Optional[Dict]) -> None:
    found_file = os.path.join(path, FINGERPRINT_FILE)
    if fingerprint is None or not os.path.isfile(found_file):
        return
    with open(found_file, encoding="utf-8") as f:
        found = json.load(f)
    differ = {k: (found.get(k), v) for k, v in fingerprint.items() if found.get(k) != v}
    if differ:
        details = "; ".join(
            f"{k}: checkpoint {a!r}, this run {b!r}" if k != "data" else "the training data differ"
            for k, (a, b) in differ.items()
        )
        raise TrainingScriptError(
            f"--resume_from_checkpoint: expected a checkpoint of this run, found {path!r} from another run ({details}); "
            "resume with the flags and data it was trained with, or start a new --output_dir"
        )


def load_checkpoint(
    accelerator,
    output_dir: str,
    resume_from_checkpoint: str,
    num_update_steps_per_epoch: int,
    gradient_accumulation_steps: int,
    fingerprint: Optional[Dict] = None,
) -> Tuple[int, int, int]:
    """Resume: ``accelerator.load_state`` (model, EMA, optimizer, LR schedule, every process's RNG) and where to go
    on, ``(global_step, first_epoch, batches to skip in that epoch)``.

    ``"latest"`` takes the newest complete checkpoint in ``output_dir`` and falls back to the one before, with a
    warning, when it cannot be read. A checkpoint written with another ``fingerprint`` (:func:`run_fingerprint`) is
    refused; a named checkpoint that cannot be read is a :class:`~pdiff_hf.errors.TrainingScriptError` naming it."""
    if resume_from_checkpoint == "latest":
        candidates = checkpoint_folders(output_dir)[::-1]
    else:
        candidates = [resolve_resume_checkpoint(output_dir, resume_from_checkpoint)]
    for i, path in enumerate(candidates):
        _check_fingerprint(path, fingerprint)
        try:
            accelerator.load_state(path)
        except Exception as err:  # safetensors, torch and accelerate each raise their own types for a broken folder
            first = first_line(err)
            if i + 1 < len(candidates):
                logger.warning(f"cannot resume from {path} ({type(err).__name__}: {first}); trying {candidates[i + 1]}")
                continue
            raise TrainingScriptError(
                f"--resume_from_checkpoint: expected a complete checkpoint of this run's models, found {path!r} "
                f"unreadable ({type(err).__name__}: {first})"
            ) from err
        global_step = int(os.path.basename(os.path.normpath(path)).split("-")[1])
        resume_step = (global_step % num_update_steps_per_epoch) * gradient_accumulation_steps
        return global_step, global_step // num_update_steps_per_epoch, resume_step
    return 0, 0, 0


def output_dir_lock(output_dir: str):
    """An exclusive lock on ``output_dir`` for the main process of a training script
    (:func:`pdiff_hf.utils.io_utils.locked_dir`): a second run into the same folder stops at once with
    :class:`~pdiff_hf.errors.OutputFolderInUseError`. Other processes of the same launch get a no-op."""
    import contextlib

    from ..utils.io_utils import locked_dir

    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return locked_dir(output_dir, "--output_dir")


class StopOnSignal:
    """While active, SIGINT/SIGTERM only make :attr:`requested` true; the training loop then saves a checkpoint at
    the end of the step on every process (through ``accelerator.set_trigger``/``check_trigger``) and exits with 130.
    A worker started by ``accelerate launch``/``torchrun`` also stops so when its launcher dies (it is re-parented):
    killing only the launcher must not leave workers writing into the folder. The previous handlers come back on
    exit."""

    def __init__(self):
        self._signalled = False
        self._previous = {}
        self._launcher = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ else None

    @property
    def requested(self) -> bool:
        return self._signalled or (self._launcher is not None and os.getppid() != self._launcher)

    def _handler(self, signum, frame):
        self._signalled = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
