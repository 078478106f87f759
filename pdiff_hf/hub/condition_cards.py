"""The parts of the Hub cards that only conditional p-diff has (pipelines and checkpoint datasets of several tasks).

* dataset card: :func:`conditions_sentence` tells which task each condition id of a config is;
* model card: :func:`conditional_results_context` fills the evaluation table with the originals and the generated
  models of every task (a ``pdiff-hf demo --conditional`` results.json) and the verdict with each task's novelty
  verdict and the shuffled-condition control.
"""

from collections.abc import Mapping
from typing import Any

from .card_format import SUMMARY_KEYS, format_cell, format_summary_value


def conditions_sentence(doc: Mapping) -> str:
    """For a conditional config (``condition_names`` in its layout document): which task each id of its condition
    column is, e.g. "Conditional: column `condition` holds the task id, 0 = `shift-0`, 1 = `shift-1`." Empty for an
    unconditional config."""
    names = doc.get("condition_names")
    if not names:
        return ""
    column = doc.get("condition_column") or "condition"
    ids = ", ".join(f"{i} = `{name}`" for i, name in enumerate(names))
    return (
        f"Conditional ({len(names)} conditions): column `{column}` holds the task id of each checkpoint, {ids}; "
        "train with `fit_pdiff(..., conditions=checkpoint_conditions(ds))` or "
        f"`train_ldm.py --condition_column {column}`."
    )


def is_conditional_results(results: Mapping) -> bool:
    """A results.json of ``pdiff-hf demo --conditional``: per-task summaries under ``original`` / ``generated``."""
    names = (results.get("tasks") or {}).get("names") if isinstance(results.get("tasks"), Mapping) else None
    return bool(names) and all(isinstance(results.get("original", {}).get(n), Mapping) for n in names)


def conditional_results_context(results: Mapping) -> dict[str, Any]:
    """Per task: the originals and the models generated for it, scored on it; the verdict line of each task's
    novelty analysis, and whether the targets and the shuffled-condition control were met."""
    rows, verdict = [], []
    scale = results.get("guidance_scale")
    for name in results["tasks"]["names"]:
        generated = (results.get("generated") or {}).get(name)
        original = {k: format_summary_value(results["original"][name], k) for k in SUMMARY_KEYS}
        rows.append({"label": f"Original checkpoints, task `{name}`", **original})
        if isinstance(generated, Mapping):
            label = f"p-diff generated for `{name}`" + (f" (guidance {format_cell(scale)})" if scale is not None else "")
            rows.append({"label": label, **{k: format_summary_value(generated, k) for k in SUMMARY_KEYS}})
        lines = (results.get("novelty") or {}).get(name, {}).get("verdict") or []
        collapsed = ((results.get("diversity") or {}).get(name) or {}).get("collapsed")
        if lines:
            note = " The generated models of this task are near-copies of one another (COLLAPSED within the task)."
            verdict.append(f"Task `{name}`: {str(lines[-1])}".replace("\n", " ") + (note if collapsed else ""))
    targets = results.get("targets")
    if isinstance(targets, Mapping) and "control_ok" in targets:
        verdict.append(
            f"Shuffled-condition control (the same training with the condition ids permuted): "
            f"{'at least' if targets['control_ok'] else 'NOT'} {format_cell(targets.get('control_gap_pp'))} pp below the "
            "generated models on every task."
        )
    return {"results_rows": rows, "more_baselines": 0, "verdict": verdict}
