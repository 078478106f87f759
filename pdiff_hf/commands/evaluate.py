"""``pdiff-hf evaluate``: generate with a saved pipeline and check the models against simple baselines.

Loads the pipeline (``PDiffPipeline.from_pretrained``), the checkpoint dataset it was trained on
(``datasets.load_from_disk``) and the target network (``<task model>.from_pretrained``), generates ``--num-models``
parameter vectors, runs :func:`pdiff_hf.novelty.analyze_novelty`, prints a table and the verdict, and with
``--output-dir`` writes ``plots/``, ``report.md`` and ``results.json`` (last) with :func:`pdiff_hf.novelty.write_report`,
the report writer the demo uses too. With ``--heldout`` (checkpoints of the same collection the pipeline was not
trained on, e.g. a demo's ``heldout/``), the held-out generalization test
(:func:`pdiff_hf.novelty.generalization_from_report`) runs too, and its three-line summary opens the output.

A conditional pipeline (denoiser ``num_conditions > 0``) with a conditional checkpoint dataset is scored per task
instead (:mod:`pdiff_hf.commands.evaluate_conditional`): ``--num-models`` models per condition at
``--guidance-scale``, each scored on its task's data; a conditional pipeline with an unconditional dataset, or the
reverse, is a :class:`~pdiff_hf.errors.ConditionError` before any work.
"""

import argparse
import time
from pathlib import Path

from ..errors import CheckpointDatasetError, EvaluateError, LayoutMismatchError
from ..tasks import TASKS, Task, get_task  # noqa: F401  (the task registry; tests register tiny tasks in TASKS)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="generate with a pipeline and compare the models with noise / average / Gaussian baselines",
        description=(
            "Generate parameters with a saved p-diff pipeline, evaluate them next to the training checkpoints and "
            "simple baselines built from them (noisy checkpoints, k-averages, a per-dimension Gaussian), and report "
            "accuracy, weight-space and function-space novelty and a plain verdict."
        ),
    )
    p.add_argument("--pipeline", required=True, help="folder of a saved PDiffPipeline (save_pretrained)")
    p.add_argument("--checkpoints", required=True, help="checkpoint dataset folder (datasets save_to_disk)")
    p.add_argument("--target", required=True, help="folder of the saved target network (save_pretrained)")
    p.add_argument("--task", choices=sorted(TASKS), default="mnist1d", help="task of the target network")
    p.add_argument(
        "--data", default=None,
        help="your own data instead of --task: a datasets DatasetDict folder (save_to_disk) or Hub dataset id with "
        "'train', 'validation' and 'test' splits; the target's class is read from its config.json (a pdiff_hf.tasks "
        "network, a diffusers or transformers model)",
    )
    p.add_argument("--input-column", default="input", help="--data: the column of model inputs")
    p.add_argument("--label-column", default="label", help="--data: the column of integer class labels")
    p.add_argument("--num-models", type=int, default=100, help="models to generate (and per baseline)")
    p.add_argument("--num-inference-steps", type=int, default=25)
    p.add_argument(
        "--guidance-scale", type=float, default=1.0,
        help="classifier-free guidance of a conditional pipeline (1: none); with one, --num-models is per condition",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds generation and the baselines")
    p.add_argument("--average-k", type=int, default=16, help="checkpoints per average baseline model")
    p.add_argument(
        "--noise-levels", type=float, nargs="+", default=None,
        help="noise stds in normalized space (default: 0.01 0.05 0.1 0.15)",
    )
    p.add_argument(
        "--heldout", default=None,
        help="held-out checkpoint dataset folder (same collection, never trained on; e.g. a demo's heldout/): runs "
        "the held-out generalization test",
    )
    p.add_argument("--output-dir", default=None, help="write results.json, plots and report.md here")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads (1 is usually fastest here)")
    p.set_defaults(func=run)


def _require_dir(path: str, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise EvaluateError(f"{flag}: expected an existing folder, found nothing at {p}")
    if not p.is_dir():
        raise EvaluateError(f"{flag}: expected a folder, found a file: {p}")
    return p


def _saved_without_rows(folder: Path) -> bool:
    import json

    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("_data_files") == []


def whole_heldout_runs(dataset, heldout) -> dict:
    """``{"train_runs", "heldout_runs"}`` when the held-out checkpoints are whole runs (``run_id`` columns in both
    datasets, no run in both): the generalization test's null then holds out whole runs too. ``{}`` otherwise (the
    demo's split holds out checkpoints within each run).

    Raises:
        EvaluateError: whole runs held out, but no more training runs than held-out ones (the null draws as many
            runs as are held out from the rest), before any evaluation.
    """
    import torch

    if "run_id" not in dataset.column_names or "run_id" not in heldout.column_names:
        return {}
    train_runs, heldout_runs = torch.tensor(dataset["run_id"]), torch.tensor(heldout["run_id"])
    train_set, heldout_set = set(train_runs.tolist()), set(heldout_runs.tolist())
    if train_set & heldout_set:
        return {}
    if len(train_set) <= len(heldout_set):
        raise EvaluateError(
            f"expected more training runs than held-out runs when whole runs are held out, found {len(train_set)} "
            f"training and {len(heldout_set)} held-out runs"
        )
    return {"train_runs": train_runs, "heldout_runs": heldout_runs}


def _load_heldout(args: argparse.Namespace, num_training: int, names):
    """The ``--heldout`` checkpoint dataset, checked before any weights are loaded: one unconditional dataset with at
    least 5 rows next to at least 10 training checkpoints."""
    import datasets

    from ..errors import GeneralizationTestError
    from ..novelty.generalization import MIN_HELDOUT, MIN_TRAINING

    if names is not None:
        raise EvaluateError("--heldout: expected an unconditional pipeline, found a conditional one")
    try:
        heldout = datasets.load_from_disk(str(args.heldout))
    except (FileNotFoundError, ValueError, IndexError) as err:
        raise CheckpointDatasetError(
            f"--heldout: expected a dataset saved with save_to_disk at {args.heldout}, found none "
            f"({type(err).__name__}: {err})"
        ) from None
    if isinstance(heldout, datasets.DatasetDict):
        raise CheckpointDatasetError(f"--heldout: expected one checkpoint dataset, found a DatasetDict {list(heldout)}")
    if len(heldout) < MIN_HELDOUT or num_training < MIN_TRAINING:
        raise GeneralizationTestError(
            f"expected at least {MIN_TRAINING} training and {MIN_HELDOUT} held-out checkpoints for the held-out "
            f"generalization test, found {num_training} and {len(heldout)}"
        )
    return heldout


SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}


def load_data_splits(name: str, input_column: str, label_column: str):
    """``--data``: a ``datasets.DatasetDict`` (a ``save_to_disk`` folder or a Hub dataset id) with train, validation
    and test splits, as :class:`~pdiff_hf.evaluation.data.ClassificationSplits` of ``input_column`` tensors and
    integer ``label_column`` labels. :class:`EvaluateError` naming what is missing."""
    import datasets
    import torch

    from ..evaluation.data import ClassificationSplits

    try:
        loaded = datasets.load_from_disk(name) if Path(name).exists() else datasets.load_dataset(name)
    except Exception as err:  # datasets raises many types for a missing or foreign dataset
        raise EvaluateError(f"--data: expected a DatasetDict folder or Hub dataset id, found {name!r} ({err})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise EvaluateError(f"--data: expected a DatasetDict with train, validation and test splits, found a {type(loaded).__name__}")
    tensors = {}
    for split, candidates in SPLIT_NAMES.items():
        found = next((c for c in candidates if c in loaded), None)
        if found is None:
            raise EvaluateError(f"--data: expected a split named {' or '.join(candidates)}, found splits {sorted(loaded)}")
        part = loaded[found]
        missing = [c for c in (input_column, label_column) if c not in part.column_names]
        if missing:
            raise EvaluateError(f"--data: expected columns {missing} in split {found!r}, found {part.column_names}")
        columns = part.with_format("torch", columns=[input_column, label_column])[:]  # whole split as tensors
        x, y = columns[input_column], columns[label_column]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise EvaluateError(f"--data: expected float inputs of one shape in {input_column!r}, found {type(x).__name__}")
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dim() != 1:
            raise EvaluateError(f"--data: expected integer class labels in {label_column!r}, found {getattr(y, 'dtype', type(y))}")
        tensors[f"{split}_x"], tensors[f"{split}_y"] = x.float(), y.long()
    return ClassificationSplits(**tensors)


def run(args: argparse.Namespace) -> int:
    from ..utils.io_utils import locked_dir

    if args.num_models < 1:
        raise EvaluateError(f"--num-models: expected >= 1, found {args.num_models}")
    if args.num_inference_steps < 1:
        raise EvaluateError(f"--num-inference-steps: expected >= 1, found {args.num_inference_steps}")
    if not args.guidance_scale >= 1.0:
        raise EvaluateError(f"--guidance-scale: expected >= 1, found {args.guidance_scale}")
    if args.num_threads < 1:
        raise EvaluateError(f"--num-threads: expected >= 1, found {args.num_threads}")
    pipeline_dir = _require_dir(args.pipeline, "--pipeline")
    checkpoints_dir = _require_dir(args.checkpoints, "--checkpoints")
    target_dir = _require_dir(args.target, "--target")
    if getattr(args, "heldout", None):
        _require_dir(args.heldout, "--heldout")
    out = Path(args.output_dir) if args.output_dir else None
    if out is not None and out.exists() and not out.is_dir():
        raise EvaluateError(f"--output-dir: expected a folder, found a file: {out}")
    if out is None:
        return _evaluate(args, pipeline_dir, checkpoints_dir, target_dir, None)
    with locked_dir(out, "--output-dir"):  # writable, and no second run writing into it, before any work
        return _evaluate(args, pipeline_dir, checkpoints_dir, target_dir, out)


def _evaluate(args: argparse.Namespace, pipeline_dir: Path, checkpoints_dir: Path, target_dir: Path, out: Path | None) -> int:
    import datasets
    import torch

    from ..checkpoints.dataset import (
        check_dataset_layout,
        checkpoint_params,
        get_layout,
    )
    from ..novelty import (
        NOISE_LEVELS,
        analyze_novelty,
        tune_cpu_allocator,
        write_report,
    )
    from ..pipelines import PDiffPipeline
    from .evaluate_conditional import (
        check_conditional_match,
        evaluate_conditional,
        pipeline_num_conditions,
    )

    from ..hub.validate import check_model_folder, load_model_folder

    check_model_folder(target_dir, "--target")  # safetensors weights (never a pickle), config within limits: first
    torch.set_num_threads(args.num_threads)
    tune_cpu_allocator()  # process-wide, so the command sets it, never the library (pdiff_hf.novelty.allocator)
    start = time.perf_counter()

    try:
        dataset = datasets.load_from_disk(str(checkpoints_dir))
    except (FileNotFoundError, ValueError, IndexError) as err:
        if _saved_without_rows(checkpoints_dir):  # datasets cannot load a saved empty dataset (0 shards)
            raise CheckpointDatasetError(
                f"--checkpoints: expected at least 2 checkpoints to compare generated models with, found an empty "
                f"dataset at {checkpoints_dir}"
            ) from None
        raise CheckpointDatasetError(
            f"--checkpoints: expected a dataset saved with save_to_disk at {checkpoints_dir}, found none "
            f"({type(err).__name__}: {err})"
        ) from None
    if isinstance(dataset, datasets.DatasetDict):
        raise CheckpointDatasetError(
            f"--checkpoints: expected one checkpoint dataset, found a DatasetDict with splits {list(dataset)}; "
            "pass the folder of the training split"
        )
    if len(dataset) < 2:
        raise CheckpointDatasetError(
            f"--checkpoints: expected at least 2 checkpoints to compare generated models with, found {len(dataset)}"
        )
    get_layout(dataset)
    # a conditional pipeline needs a conditional dataset and the reverse: checked before loading any weights
    names = check_conditional_match(pipeline_num_conditions(pipeline_dir), dataset, args.guidance_scale)
    heldout = _load_heldout(args, len(dataset), names) if getattr(args, "heldout", None) else None
    heldout_runs = whole_heldout_runs(dataset, heldout) if heldout is not None else {}
    custom_data = load_data_splits(args.data, args.input_column, args.label_column) if getattr(args, "data", None) else None
    if custom_data is not None and names is not None:
        raise EvaluateError("--data: expected an unconditional pipeline (a conditional one is scored per --task), "
                            "found a conditional one")  # fmt: skip

    pipe = PDiffPipeline.from_pretrained(str(pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    layout = pipe.layout
    if layout is None:
        raise LayoutMismatchError(f"--pipeline: the autoencoder at {pipeline_dir} has no parameter layout in its config")
    check_dataset_layout(dataset, layout, what=f"the pipeline at {pipeline_dir}")
    if heldout is not None:
        check_dataset_layout(heldout, layout, what=f"the pipeline at {pipeline_dir}")
    train_params = checkpoint_params(dataset)

    if getattr(args, "data", None):  # a custom network and data set: the class named by the target's config.json
        from ..hub.target_classes import target_class_of_folder

        target = load_model_folder(target_class_of_folder(target_dir, "--target"), target_dir, "--target")
    else:
        target = load_model_folder(get_task(args.task).model_class, target_dir, "--target")  # safetensors only
    layout.check_module(target)
    if names is not None:
        paths = (pipeline_dir, checkpoints_dir, target_dir)
        return evaluate_conditional(args, pipe, dataset, names, target, layout, paths, out)
    data = custom_data if getattr(args, "data", None) else get_task(args.task).load_data()

    generator = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    generated = pipe(num_models=args.num_models, num_inference_steps=args.num_inference_steps, generator=generator).params
    generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_val = dataset["val_accuracy"] if "val_accuracy" in dataset.column_names else None
    report = analyze_novelty(
        target,
        layout,
        train_params,
        generated,
        data,
        normalizer=pipe,
        noise_levels=tuple(args.noise_levels) if args.noise_levels else NOISE_LEVELS,
        average_k=args.average_k,
        seed=args.seed,
        train_val_accuracy=torch.tensor(train_val) if train_val is not None else None,
        pca_gaussian=True,
        resampled=True,
    )
    analyze_s = time.perf_counter() - t0
    generalization, timings = None, {}
    if heldout is not None:
        from ..novelty import generalization_from_report

        t0 = time.perf_counter()
        generalization = generalization_from_report(
            target, layout, report, checkpoint_params(heldout), data, normalizer=pipe, seed=args.seed, **heldout_runs
        )
        timings["generalization"] = round(time.perf_counter() - t0, 3)
        print("\n".join(generalization.summary) + "\n")

    print(f"{len(dataset)} training checkpoints of {layout.describe()}; {args.num_models} generated models")
    print()
    print(report.table())
    print()
    for line in report.verdict:
        print(line)

    if out is not None:
        results = {
            "command": "evaluate",
            "task": None if getattr(args, "data", None) else args.task,
            "data": getattr(args, "data", None),
            "pipeline": str(pipeline_dir),
            "checkpoints": str(checkpoints_dir),
            "target": str(target_dir),
            "num_models": args.num_models,
            "num_inference_steps": args.num_inference_steps,
            "seed": args.seed,
            "selection": {"D": layout.dim, "layout": layout.to_list()},
            **report.to_dict(),
            "timings_s": {"generate": round(generate_s, 3), "analyze": round(analyze_s, 3), **timings},
        }
        intro = [
            f"- pipeline: `{pipeline_dir}`",
            f"- checkpoints: `{checkpoints_dir}` ({len(dataset)} training checkpoints, {layout.describe()})",
            f"- target: `{target_dir}` (task {args.task})",
            f"- generated: {args.num_models} models, {args.num_inference_steps} inference steps, seed {args.seed}",
        ]
        sections = {}
        if generalization is not None:
            from ..novelty.generalization import summary_markdown
            from ..novelty.report import PLOTS_DIR

            plots = {k: p.relative_to(out).as_posix() for k, p in generalization.save_plots(out / PLOTS_DIR).items()}
            results["generalization"] = {**generalization.to_dict(), "plots": plots}
            results["heldout"] = str(args.heldout)
            intro = summary_markdown(generalization.summary) + ["", f"- held-out: `{args.heldout}`"] + intro
            sections["Held-out generalization test"] = generalization.markdown(
                plots, heading=False, summary=False
            ).splitlines()
        write_report(
            out, results, title="p-diff evaluation", intro=intro, sections=sections, novelty=report, started=start
        )
        print(f"\nresults: {out / 'results.json'}  report: {out / 'report.md'}")
    else:
        print("\n(pass --output-dir to save results.json, plots and report.md)")
    return 0
