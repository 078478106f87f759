#!/usr/bin/env python
"""Collect a p-diff checkpoint dataset: train the target network, then keep training only a selection of its
parameters and save that selection every ``--save_every`` steps (p-diff's recipe, :func:`pdiff_hf.collect_checkpoints`).

    python training/collect_checkpoints.py --task mnist1d --output_dir pdiff-checkpoints \
        --selection last_norm_layers --num_checkpoints 200 --save_every 1

Defaults are the library's (``collect_checkpoints``, ``train_classifier``); tests/training/test_collect_checkpoints.py
keeps them equal. Tasks come from :mod:`pdiff_hf.tasks` (``--task``).

Output folder (the same layout as ``pdiff-hf demo``; each folder is written to a hidden sibling folder and renamed
into place when complete):

* ``target/`` — the trained target network (``<task model>.from_pretrained``), i.e. the base that generated
  parameters are loaded into;
* ``checkpoints/`` — the checkpoint dataset (``datasets.load_from_disk``; columns ``params``, ``run_id``, ``seed``,
  ``step``, ``val_accuracy``, ``test_accuracy``; the parameter layout in ``info.description``). Pass it to
  ``training/train_ldm.py --dataset_name <output_dir>/checkpoints``;
* ``collect_args.json`` — the flags used (without ``--hub_token``).

With ``--push_to_hub`` the checkpoint dataset goes to the dataset repo ``--hub_model_id`` (parquet shards and a
dataset card, :func:`pdiff_hf.hub.push_checkpoint_dataset`); train on it with ``--dataset_name <hub_model_id>
--dataset_config_name <config>`` (the config is logged).

Conditional datasets (for ``train_ldm.py --condition_column condition``): ``--num_tasks K`` collects over the task's
conditions ``0 … K-1`` (``load_data(condition=t, num_tasks=K)``, e.g. ``--task mnist1d-shift``)::

    python training/collect_checkpoints.py --task mnist1d-shift --num_tasks 4 --selection '*' \
        --output_dir pdiff-shift --num_train_epochs 30 --train_learning_rate 0.01 --learning_rate 0.05

The target is trained on task 0 (the shared base); for each task the modules whose parameters are all selected are
re-initialized and trained ``--num_train_epochs`` on that task, then collected (``collect_conditional_checkpoints``:
a ``condition`` column and ``--condition_names``, default ``<task>-0`` …). ``target/`` is the base.

Under ``accelerate launch`` with several processes only the main process collects (the work is sequential).
Bad input ends with one line ``collect_checkpoints.py: error: …`` on stderr and exit code 2.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

import torch
from accelerate import PartialState
from accelerate.logging import get_logger

from pdiff_hf.checkpoints.collect import collect_checkpoints, train_classifier
from pdiff_hf.checkpoints.collect_runs import collect_from_runs
from pdiff_hf.checkpoints.conditional import collect_conditional_checkpoints, task_data
from pdiff_hf.errors import ConditionError, PDiffError, TrainingScriptError
from pdiff_hf.evaluation.batched import evaluate_parameters, summarize_accuracies
from pdiff_hf.hub.secrets import install_log_redaction
from pdiff_hf.layout import ParamLayout
from pdiff_hf.tasks import TASKS, get_task
from pdiff_hf.training.resume import output_dir_lock
from pdiff_hf.training.script_args import ScriptHelpFormatter
from pdiff_hf.utils.atomic_dir import atomic_folder, owns_entries
from pdiff_hf.utils.io_utils import write_json_atomic

PROG = "collect_checkpoints.py"
logger = get_logger(__name__)


class ArgumentParser(argparse.ArgumentParser):
    """Errors raise :class:`TrainingScriptError` (one line, exit code 2 in :func:`cli`) instead of printing the usage
    block; abbreviated flags are refused (a typo such as ``--learning_rat`` must not mean ``--learning_rate``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise TrainingScriptError(f"{message} (see --help)")


def parse_args(input_args: Optional[List[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog=PROG, description="Collect a p-diff checkpoint dataset.", formatter_class=ScriptHelpFormatter
    )
    parser.add_argument("--task", type=str, default="mnist1d", help=f"pdiff_hf.tasks name: {', '.join(sorted(TASKS))}.")
    parser.add_argument(
        "--output_dir", type=str, default="pdiff-checkpoints", help="Gets target/, checkpoints/ and collect_args.json."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seeds the target's init, training and collection.")
    parser.add_argument("--data_seed", type=int, default=42, help="Seed of generated task data (MNIST-1D).")
    # selection
    parser.add_argument(
        "--selection",
        type=str,
        default="last_norm_layers",
        help="'last_norm_layers' (p-diff's default), 'classifier', or comma-separated glob patterns over parameter "
        "names (e.g. 'features.7.*,classifier.bias').",
    )
    parser.add_argument("--num_norm_layers", type=int, default=2, help="Norm layers selected by last_norm_layers.")
    parser.add_argument("--exclude", type=str, default=None, help="Comma-separated globs removed from the selection.")
    parser.add_argument(
        "--include_buffers", action="store_true", help="Also collect float buffers (BatchNorm running statistics)."
    )
    # target model
    parser.add_argument("--channels", type=int, default=None, help="Width of the task's network (default: its own).")
    parser.add_argument("--num_layers", type=int, default=None, help="Depth of the task's network (default: its own).")
    parser.add_argument(
        "--pretrained_target_model", type=str, default=None, help="A trained target network folder; skips training."
    )
    parser.add_argument("--num_train_epochs", type=int, default=15, help="Epochs of full training of the target model.")
    parser.add_argument("--train_learning_rate", type=float, default=3e-3, help="AdamW step size of full training.")
    parser.add_argument("--train_batch_size", type=int, default=128, help="Batch size of training and collection.")
    # collection
    parser.add_argument("--num_checkpoints", type=int, default=200, help="Checkpoints per run.")
    parser.add_argument("--save_every", type=int, default=1, help="SGD steps on the selection between checkpoints.")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=0.2,
        help="SGD step size on the selection; small ones make near-identical checkpoints (see collect_checkpoints).",
    )
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum on the selection.")
    parser.add_argument("--num_runs", type=int, default=1, help="Runs (seeds seed, seed+1, …) from the same base.")
    parser.add_argument(
        "--num_tasks",
        type=int,
        default=0,
        help="0: one task. K > 0: a conditional dataset over the task's conditions 0 … K-1 (load_data(condition=t), "
        "e.g. --task mnist1d-shift), with a 'condition' column and condition names (collect_conditional_checkpoints).",
    )
    parser.add_argument(
        "--condition_names", type=str, default=None, help="Comma-separated task names (default: <task>-0, …)."
    )
    # Hub
    parser.add_argument("--push_to_hub", action="store_true", help="Push the checkpoint dataset to the Hub.")
    parser.add_argument("--hub_model_id", type=str, default=None, help="Dataset repo 'owner/name' for the checkpoints.")
    parser.add_argument("--hub_token", type=str, default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument("--hub_private_repo", action="store_true", help="Create the dataset repo private.")

    args = parser.parse_args(input_args)
    for name in ("num_checkpoints", "save_every", "num_runs", "train_batch_size", "num_norm_layers"):
        if getattr(args, name) < 1:
            raise TrainingScriptError(f"--{name}: expected >= 1, found {getattr(args, name)}")
    for name in ("channels", "num_layers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TrainingScriptError(f"--{name}: expected >= 1, found {getattr(args, name)}")
    if args.num_tasks < 0:
        raise TrainingScriptError(f"--num_tasks: expected >= 0, found {args.num_tasks}")
    if args.num_tasks and args.num_runs != 1:
        raise TrainingScriptError(f"--num_runs: expected 1 with --num_tasks (one run per task), found {args.num_runs}")
    if args.condition_names is not None:
        names = [n.strip() for n in args.condition_names.split(",")]
        if not args.num_tasks or len(names) != args.num_tasks or not all(names):
            raise TrainingScriptError(
                f"--condition_names: expected {args.num_tasks} non-empty names (one per --num_tasks), found "
                f"{args.condition_names!r}"
            )
    if args.num_train_epochs < 0:
        raise TrainingScriptError(f"--num_train_epochs: expected >= 0, found {args.num_train_epochs}")
    if not args.learning_rate > 0:
        raise TrainingScriptError(f"--learning_rate: expected > 0, found {args.learning_rate}")
    if args.pretrained_target_model and not Path(args.pretrained_target_model).is_dir():
        raise TrainingScriptError(
            f"--pretrained_target_model: expected a folder, found none at {args.pretrained_target_model!r}"
        )
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise TrainingScriptError(f"--output_dir: expected a folder, found a file: {args.output_dir!r}")
    if args.push_to_hub and not args.hub_model_id:
        raise TrainingScriptError("--push_to_hub needs --hub_model_id (the dataset repo 'owner/name')")
    get_task(args.task)  # an unknown name is an UnknownTaskError listing the known tasks
    return args


def condition_names(args: argparse.Namespace) -> List[str]:
    if args.condition_names is not None:
        return [n.strip() for n in args.condition_names.split(",")]
    return [f"{args.task}-{t}" for t in range(args.num_tasks)]


def reset_selection(layout: ParamLayout, seed: int):
    """``reset(model, t)`` for :func:`collect_conditional_checkpoints`: re-initialize (``reset_parameters``, seeded
    with ``seed + 100 + t``) every module whose parameters are all in the selection, so each task's selection is
    trained from a fresh start, not from the base's solution of task 0 (which a shifted task must first unlearn)."""
    selected = set(layout.names)

    def reset(model: torch.nn.Module, t: int) -> None:
        torch.manual_seed(seed + 100 + t)
        for prefix, module in model.named_modules():
            own = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
            if own and hasattr(module, "reset_parameters") and all(n in selected for n in own):
                module.reset_parameters()

    return reset


def load_task_data(task, args: argparse.Namespace) -> list:
    """``[data]`` of the task, or with ``--num_tasks K`` the data of conditions ``0 … K-1``
    (:func:`pdiff_hf.checkpoints.conditional.task_data`)."""
    if not args.num_tasks:
        return [task.load_data(seed=args.data_seed)]
    try:
        return [task_data(task, t, args.num_tasks, seed=args.data_seed) for t in range(args.num_tasks)]
    except ConditionError as err:
        raise TrainingScriptError(f"--num_tasks: {err}") from None


def select(model: torch.nn.Module, args: argparse.Namespace) -> ParamLayout:
    def split(s):
        return [p.strip() for p in s.split(",") if p.strip()] if s else []

    exclude = split(args.exclude)
    if args.selection == "last_norm_layers":
        return ParamLayout.from_module(
            model, last_norm_layers=args.num_norm_layers, exclude=exclude, include_buffers=args.include_buffers
        )
    include = ["classifier.*"] if args.selection == "classifier" else split(args.selection)
    if not include:
        raise TrainingScriptError("--selection: expected 'last_norm_layers', 'classifier' or globs, found nothing")
    return ParamLayout.from_module(model, include=include, exclude=exclude, include_buffers=args.include_buffers)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    install_log_redaction()  # no token (--hub_token, hf_…) in any log line
    out = Path(args.output_dir).resolve()
    state = PartialState()
    logger.info("accelerate: num_processes=%d distributed_type=%s", state.num_processes, state.distributed_type)
    if state.num_processes > 1:
        logger.info("collection is sequential: only the main process works, the others wait")

    if state.is_main_process:
        # 1. task data and target network
        task = get_task(args.task)
        tasks = load_task_data(task, args)
        data = tasks[0]
        if args.pretrained_target_model:
            try:
                model = task.model_class.from_pretrained(args.pretrained_target_model)
            except (OSError, ValueError) as err:
                raise TrainingScriptError(
                    f"--pretrained_target_model: expected a saved {task.model_class.__name__} in "
                    f"{args.pretrained_target_model!r}, found none ({type(err).__name__})"
                ) from None
        else:
            overrides = {k: getattr(args, k) for k in ("channels", "num_layers") if getattr(args, k) is not None}
            torch.manual_seed(args.seed)
            try:
                model = task.build_model(data, **overrides)
            except TypeError as err:
                raise TrainingScriptError(
                    f"expected flags that the network of task {args.task!r} takes, found {sorted(overrides)} ({err})"
                ) from None
        layout = select(model, args)
        logger.info("task %s; selection: %s", args.task, layout.describe())

        # 2. full training of the target (p-diff's step 1)
        if args.num_train_epochs > 0 and not args.pretrained_target_model:
            logger.info("training the target model for %d epochs", args.num_train_epochs)
            train_classifier(
                model,
                data,
                epochs=args.num_train_epochs,
                learning_rate=args.train_learning_rate,
                batch_size=args.train_batch_size,
                seed=args.seed,
            )
        base = layout.flatten(model)[None]
        base_test = float(evaluate_parameters(model, layout, base, data.test_x, data.test_y)[0])
        logger.info("target model test accuracy: %.2f%%", base_test)

        # 3. keep training only the selection, one checkpoint every --save_every steps
        kwargs = dict(
            num_checkpoints=args.num_checkpoints,
            save_every=args.save_every,
            learning_rate=args.learning_rate,
            batch_size=args.train_batch_size,
            momentum=args.momentum,
        )
        if args.num_tasks:
            ds = collect_conditional_checkpoints(
                model, tasks, layout, condition_names(args), reset=reset_selection(layout, args.seed), seed=args.seed,
                train_epochs=args.num_train_epochs, train_learning_rate=args.train_learning_rate, **kwargs,
            )  # fmt: skip
        elif args.num_runs == 1:
            ds = collect_checkpoints(model, data, layout, seed=args.seed, **kwargs)
        else:
            ds = collect_from_runs(model, data, layout, seeds=[args.seed + i for i in range(args.num_runs)], **kwargs)
        # collect_checkpoints leaves the model at the last checkpoint; save the base the checkpoints share, which
        # only differs from it inside the selection.
        layout.load_into(model, base[0])
        for split in ("val", "test"):
            stats = summarize_accuracies(torch.tensor(ds[f"{split}_accuracy"]))
            logger.info("checkpoint %s accuracy: %s", split, stats)

        # 4. save target/, checkpoints/ and collect_args.json as one set (the output folder is swapped in one rename:
        # a kill leaves the earlier set or this one, never a mix; other files in it are kept), then push
        settings = {k: v for k, v in vars(args).items() if k != "hub_token"}
        with atomic_folder(out, owns=owns_entries("target", "checkpoints", "collect_args.json")) as tmp:
            model.save_pretrained(str(tmp / "target"))
            ds.save_to_disk(str(tmp / "checkpoints"))
            write_json_atomic(tmp / "collect_args.json", settings)
        logger.info(
            "saved %d checkpoints (D=%d) to %s and the target model to %s",
            len(ds),
            layout.dim,
            out / "checkpoints",
            out / "target",
        )

        if args.push_to_hub:
            import pdiff_hf.hub as hub

            config = {k: v for k, v in model.config.items() if not k.startswith("_")}
            architecture = f"{type(model).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"
            info = hub.push_checkpoint_dataset(
                ds, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo, architecture=architecture
            )
            config_name = getattr(info, "config_name", None)
            logger.info("pushed the checkpoint dataset to %s (config %s)", args.hub_model_id, config_name)
    state.wait_for_everyone()
    return 0


def cli(input_args: Optional[List[str]] = None) -> int:
    """Run the script: bad input ends with ``collect_checkpoints.py: error: <one line>`` on stderr and exit code 2,
    Ctrl-C with exit code 130. Usable in-process (``input_args``) and as ``__main__``."""
    try:
        args = parse_args(input_args)
        with output_dir_lock(args.output_dir):  # a second run into the same folder stops at once
            return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except (PDiffError, FileNotFoundError, NotADirectoryError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
