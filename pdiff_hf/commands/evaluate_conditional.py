"""``pdiff-hf evaluate`` on a conditional pipeline: every generated model scored on the task it was asked for.

Used by :mod:`pdiff_hf.commands.evaluate` when the pipeline's denoiser has ``num_conditions > 0`` (the checkpoint
dataset must then have a ``condition`` column with as many conditions; :func:`check_conditional_match` refuses a
mix of conditional and unconditional before any work). ``--num-models`` models are generated per condition at
``--guidance-scale``; the data of condition ``t`` is ``task.load_data(condition=t, num_tasks=K)``
(:func:`pdiff_hf.checkpoints.conditional.task_data`). The report (``report.md``, ``results.json``) has the originals vs the
generated models per task (test accuracy, best by validation), the cross-task matrices, the share of models that
solve the requested task, and novelty within each task's checkpoints
(:func:`pdiff_hf.demos.conditional_report.write_conditional_evaluation`).
"""

import argparse
import json
import time
from pathlib import Path
from typing import Optional

from ..errors import ConditionError


def pipeline_num_conditions(pipeline_dir: Path) -> int:
    """``num_conditions`` of the saved denoiser's ``config.json`` (0 when absent), read without loading weights."""
    try:
        config = json.loads((pipeline_dir / "denoiser" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0  # loading the pipeline reports what is missing
    return int(config.get("num_conditions", 0) or 0)


def check_conditional_match(num_conditions: int, dataset, guidance_scale: float) -> Optional[list]:
    """The dataset's condition names when the pipeline and the dataset are both conditional with the same number of
    conditions, ``None`` when both are unconditional; :class:`ConditionError` for any mix."""
    from ..checkpoints.dataset import CONDITION_COLUMN, get_condition_names

    has_column = CONDITION_COLUMN in dataset.column_names
    if not num_conditions:
        if has_column:
            raise ConditionError(
                f"--checkpoints: expected an unconditional checkpoint dataset for an unconditional pipeline, found a "
                f"'{CONDITION_COLUMN}' column"
            )
        if guidance_scale != 1.0:
            raise ConditionError(
                f"--guidance-scale: expected 1 for an unconditional pipeline, found {guidance_scale:g}"
            )
        return None
    if not has_column:
        raise ConditionError(
            f"--checkpoints: expected a '{CONDITION_COLUMN}' column for a conditional pipeline ({num_conditions} "
            f"conditions), found columns {dataset.column_names}"
        )
    names = get_condition_names(dataset) or [f"condition-{t}" for t in range(num_conditions)]
    if len(names) != num_conditions:
        raise ConditionError(
            f"--checkpoints: expected {num_conditions} conditions (the pipeline's), found {len(names)} ({names})"
        )
    return list(names)


def evaluate_conditional(args: argparse.Namespace, pipe, dataset, names, target, layout, paths, out) -> int:
    """Generate ``args.num_models`` models per condition, score them and the checkpoints on every task, print the
    tables and with ``out`` write the report. ``paths``: ``(pipeline_dir, checkpoints_dir, target_dir)``."""

    from ..checkpoints.conditional import check_conditions, task_data
    from ..checkpoints.dataset import checkpoint_conditions, checkpoint_params
    from ..demos.conditional_report import (
        evaluation_lines,
        within_task_diversity,
        write_conditional_evaluation,
    )
    from ..evaluation.conditional import (
        cross_task_matrix,
        generate_per_condition,
        per_condition_summary,
        solved_shares,
        task_accuracies,
    )
    from ..novelty import NOISE_LEVELS
    from ..novelty.conditional import novelty_per_condition
    from ..tasks import get_task

    start = time.perf_counter()
    k = len(names)
    params = checkpoint_params(dataset)
    conditions = check_conditions(checkpoint_conditions(dataset), k, params.shape[0])
    task = get_task(args.task)
    tasks = [task_data(task, t, k) for t in range(k)]

    t0 = time.perf_counter()
    gen, gen_cond = generate_per_condition(
        pipe, args.num_models, k, seed=args.seed, guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
    )  # fmt: skip
    generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    acc = {
        (who, split): task_accuracies(target, layout, p, tasks, split)
        for who, p in (("original", params), ("generated", gen))
        for split in ("val", "test")
    }
    results = {
        "command": "evaluate",
        "conditional": True,
        "task": args.task,
        "pipeline": str(paths[0]),
        "checkpoints": str(paths[1]),
        "target": str(paths[2]),
        "tasks": {"names": names, "checkpoints_per_task": [int((conditions == t).sum()) for t in range(k)]},
        "num_models_per_task": args.num_models,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "selection": {"D": layout.dim, "layout": layout.to_list()},
        "original": per_condition_summary(acc["original", "test"], conditions, names, acc["original", "val"]),
        "generated": per_condition_summary(acc["generated", "test"], gen_cond, names, acc["generated", "val"]),
        "cross_task": {
            "original": cross_task_matrix(acc["original", "test"], conditions).tolist(),
            "generated": cross_task_matrix(acc["generated", "test"], gen_cond).tolist(),
        },
        "solved": {
            "original": solved_shares(acc["original", "test"], conditions),
            "generated": solved_shares(acc["generated", "test"], gen_cond),
        },
    }
    reports = novelty_per_condition(
        target, layout, params, conditions, gen, gen_cond, tasks, names, seed=args.seed, average_k=args.average_k,
        noise_levels=tuple(args.noise_levels) if args.noise_levels else NOISE_LEVELS,
    )  # fmt: skip
    results["novelty"] = {name: report.to_dict() for name, report in reports.items()}
    results["diversity"] = within_task_diversity(results)
    results["timings_s"] = {"generate": round(generate_s, 3), "analyze": round(time.perf_counter() - t0, 3)}

    print(f"{len(dataset)} training checkpoints of {layout.describe()} over {k} tasks ({', '.join(names)}); "
          f"{args.num_models} generated models per task, guidance scale {args.guidance_scale:g}")  # fmt: skip
    print()
    print("\n".join(evaluation_lines(results)))
    if out is not None:
        write_conditional_evaluation(out, results, started=start)
        print(f"\nresults: {out / 'results.json'}  report: {out / 'report.md'}")
    else:
        print("\n(pass --output-dir to save results.json and report.md)")
    return 0
