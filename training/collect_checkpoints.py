#!/usr/bin/env python
"""Collect a p-diff checkpoint dataset: train the target network, then keep training only a selection of its
parameters and save that selection every ``--save_every`` steps (p-diff's recipe, :func:`pdiff_hf.collect_checkpoints`).

    python training/collect_checkpoints.py --task mnist1d --output_dir pdiff-checkpoints \
        --selection last_norm_layers --num_checkpoints 200 --save_every 1

Output folder (the same layout as ``pdiff-hf demo``; each folder is written to a hidden sibling folder and renamed
into place when complete):

* ``target/`` — the trained target network (``MNIST1DCNN.from_pretrained``), i.e. the base that generated
  parameters are loaded into;
* ``checkpoints/`` — the checkpoint dataset (``datasets.load_from_disk``; columns ``params``, ``run_id``, ``seed``,
  ``step``, ``val_accuracy``, ``test_accuracy``; the parameter layout in ``info.description``). Pass it to
  ``training/train_ldm.py --checkpoint_dataset <output_dir>/checkpoints``;
* ``collect_args.json`` — the flags used.

Under ``accelerate launch`` with several processes only the main process collects (the work is sequential).
"""

import os
import sys
from pathlib import Path
from typing import List, Optional

import torch
from accelerate import PartialState
from accelerate.logging import get_logger

from pdiff_hf.accelerate_loop import ArgumentParser, TrainingScriptError, run_script

logger = get_logger(__name__)
TASKS = ("mnist1d",)


def parse_args(argv: Optional[List[str]] = None):
    parser = ArgumentParser(prog="collect_checkpoints.py", description="Collect a p-diff checkpoint dataset.")
    parser.add_argument("--task", type=str, default="mnist1d", choices=TASKS)
    parser.add_argument(
        "--output_dir", type=str, default="pdiff-checkpoints", help="Gets target/, checkpoints/ and collect_args.json."
    )
    group = parser.add_argument_group("selection")
    group.add_argument(
        "--selection",
        type=str,
        default="last_norm_layers",
        help="'last_norm_layers' (p-diff's default), 'classifier', or comma-separated glob patterns over parameter "
        "names (e.g. 'features.7.*,classifier.bias').",
    )
    group.add_argument("--num_norm_layers", type=int, default=2, help="How many normalization layers for last_norm_layers.")
    group.add_argument("--exclude", type=str, default=None, help="Comma-separated glob patterns removed from the selection.")
    group.add_argument(
        "--include_buffers", action="store_true", help="Also collect float buffers (BatchNorm running statistics)."
    )
    group = parser.add_argument_group("target model")
    group.add_argument("--channels", type=int, default=32)
    group.add_argument("--num_layers", type=int, default=3)
    group.add_argument(
        "--pretrained_target_model", type=str, default=None, help="A trained MNIST1DCNN folder; skips full training."
    )
    group.add_argument("--num_train_epochs", type=int, default=30, help="Epochs of full training of the target model.")
    group.add_argument("--train_learning_rate", type=float, default=3e-3)
    group.add_argument("--train_batch_size", type=int, default=128)
    group = parser.add_argument_group("collection")
    group.add_argument("--num_checkpoints", type=int, default=200, help="Checkpoints per run.")
    group.add_argument("--save_every", type=int, default=1, help="SGD steps on the selection between checkpoints.")
    group.add_argument("--learning_rate", type=float, default=1e-3, help="SGD step size on the selection.")
    group.add_argument("--momentum", type=float, default=0.9)
    group.add_argument("--num_runs", type=int, default=1, help="Collection runs (seeds seed, seed+1, …) from the same base.")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--data_seed", type=int, default=42, help="Seed of the generated MNIST-1D data.")
    args = parser.parse_args(argv)
    for name in ("num_checkpoints", "save_every", "num_runs", "train_batch_size", "channels", "num_layers"):
        if getattr(args, name) < 1:
            raise TrainingScriptError(f"--{name} must be >= 1, found {getattr(args, name)}")
    if args.num_train_epochs < 0:
        raise TrainingScriptError(f"--num_train_epochs must be >= 0, found {args.num_train_epochs}")
    if args.pretrained_target_model and not os.path.isdir(args.pretrained_target_model):
        raise TrainingScriptError(f"--pretrained_target_model {args.pretrained_target_model!r} is not a folder")
    return args


def load_task(args):
    """``(model, data)`` for ``--task``."""
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    data = load_mnist1d(seed=args.data_seed)
    if args.pretrained_target_model:
        model = MNIST1DCNN.from_pretrained(args.pretrained_target_model)
    else:
        torch.manual_seed(args.seed)
        model = MNIST1DCNN(in_length=data.train_x.shape[-1], channels=args.channels, num_layers=args.num_layers)
    return model, data


def select(model, args):
    from pdiff_hf.layout import ParamLayout

    split = lambda s: [p.strip() for p in s.split(",") if p.strip()] if s else []  # noqa: E731
    exclude = split(args.exclude)
    if args.selection == "last_norm_layers":
        return ParamLayout.from_module(
            model, last_norm_layers=args.num_norm_layers, exclude=exclude, include_buffers=args.include_buffers
        )
    include = ["classifier.*"] if args.selection == "classifier" else split(args.selection)
    if not include:
        raise TrainingScriptError("--selection is empty")
    return ParamLayout.from_module(model, include=include, exclude=exclude, include_buffers=args.include_buffers)


def main(args) -> int:
    from pdiff_hf.collect import collect_checkpoints, collect_from_runs, train_classifier
    from pdiff_hf.evaluation import evaluate_parameters, summarize_accuracies

    from pdiff_hf.io_utils import atomic_directory, write_json_atomic

    out = Path(args.output_dir).resolve()
    if out.exists() and not out.is_dir():
        raise TrainingScriptError(f"--output_dir {args.output_dir!r} is a file")
    state = PartialState()
    logger.info("accelerate: num_processes=%d distributed_type=%s", state.num_processes, state.distributed_type)
    if state.num_processes > 1:
        logger.info("collection is sequential: only the main process works, the others wait")
    if state.is_main_process:
        model, data = load_task(args)
        layout = select(model, args)
        logger.info("selection: %s", layout.describe())
        if args.num_train_epochs > 0 and not args.pretrained_target_model:
            logger.info("training the target model for %d epochs", args.num_train_epochs)
            train_classifier(
                model,
                data,
                epochs=args.num_train_epochs,
                learning_rate=args.train_learning_rate,
                batch_size=args.train_batch_size,
                seed=args.seed,
                progress=True,
            )
        base = layout.flatten(model)[None]
        base_test = float(evaluate_parameters(model, layout, base, data.test_x, data.test_y)[0])
        logger.info("target model test accuracy: %.2f%%", base_test)
        kwargs = dict(
            num_checkpoints=args.num_checkpoints,
            save_every=args.save_every,
            learning_rate=args.learning_rate,
            batch_size=args.train_batch_size,
            momentum=args.momentum,
            progress=True,
        )
        if args.num_runs == 1:
            ds = collect_checkpoints(model, data, layout, seed=args.seed, **kwargs)
        else:
            ds = collect_from_runs(model, data, layout, seeds=[args.seed + i for i in range(args.num_runs)], **kwargs)
        # collect_checkpoints leaves the model at the last checkpoint; save the base the checkpoints share, which
        # only differs from it inside the selection.
        layout.load_into(model, base[0])
        for split in ("val", "test"):
            stats = summarize_accuracies(torch.tensor(ds[f"{split}_accuracy"]))
            logger.info("checkpoint %s accuracy: %s", split, stats)

        with atomic_directory(out / "target") as tmp:
            model.save_pretrained(str(tmp))
        with atomic_directory(out / "checkpoints") as tmp:
            ds.save_to_disk(str(tmp))
        write_json_atomic(out / "collect_args.json", vars(args))
        logger.info(
            "saved %d checkpoints (D=%d) to %s and the target model to %s",
            len(ds),
            layout.dim,
            out / "checkpoints",
            out / "target",
        )
    state.wait_for_everyone()
    return 0


def cli(argv: Optional[List[str]] = None) -> int:
    return run_script(main, parse_args, argv, prog="collect_checkpoints.py")


if __name__ == "__main__":
    sys.exit(cli())
