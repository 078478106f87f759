"""The demo's report sections: the intro under the title, the spread of the original checkpoints, and the BatchNorm
recalibration measurement with its table (:func:`pdiff_hf.demos.demo.run_demo` writes them into ``report.md``)."""

from typing import Dict, List

import torch

from ..evaluation.batched import evaluate_parameters, summarize_accuracies


def nearest_neighbour_distances(params: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each row of ``(N, D)`` to its nearest other row."""
    d = torch.cdist(params, params)
    d.fill_diagonal_(float("inf"))
    return d.min(1).values



def report_intro(results: Dict, collect_lr: float) -> List[str]:
    """The lines under the title of ``report.md``: the selection and the run's sizes."""
    cfg = results["config"]
    sel = results["selection"]
    return [
        f"Selection: **{sel['name']}** (D = {sel['D']:,}): "
        + ", ".join(f"`{t['name']}` {t['shape']}" for t in sel["layout"]),
        "",
        f"{cfg['num_checkpoints']} checkpoints (SGD lr {collect_lr}, "
        f"one every {cfg['save_every']} step(s)"
        + (
            f"; {cfg['branches']} branches of a {cfg['trunk_epochs']}-epoch target, each trained {cfg['branch_epochs']} "
            "more epochs with its own data order" if cfg.get("branches") else ""
        )
        + (
            f"; the last checkpoints of {cfg['runs']} independent {cfg['target_epochs']}-epoch runs of a "
            f"{cfg.get('channels', 32)}-channel network aligned to one another by weight matching (MergeMany), the "
            "linear autoencoder" if cfg.get("recipe") == "aligned-runs" else ""
        )
        + f"); {cfg['num_models']} generated models "
        f"({cfg['num_inference_steps']} DPM-Solver steps). Test accuracy in percent; any selection is on the "
        "validation split.",
    ]



def spread_lines(spread: Dict) -> List[str]:
    """How far apart the original checkpoints are (``results["original_spread"]``), as markdown bullets."""
    return [
        f"- best − min test accuracy: {spread['best_minus_min_accuracy']:.2f} pp",
        f"- mean nearest-neighbour distance: {spread['mean_nn_distance_normalized']:.4g} (normalized), "
        f"{spread['mean_nn_distance_raw']:.4g} (raw)",
        f"- test-prediction agreement with the nearest other checkpoint (median): "
        f"{spread['median_nn_prediction_agreement']:.4f} (1.0 would mean functional copies)",
    ]



def recalibration_effect(model, layout, generated, train_params, data, num_batches: int) -> Dict:
    """Test accuracy of the generated models (and of the training checkpoints) as generated and after BatchNorm
    recalibration on the first ``num_batches`` training batches of 128 (:func:`pdiff_hf.recalibrate_parameters`)."""
    from ..evaluation.recalibration import recalibrate_parameters

    out = {"batches": num_batches, "batch_size": 128}
    for name, params in (("generated", generated), ("original", train_params)):
        recal = recalibrate_parameters(model, layout, params, data.train_x, num_batches=num_batches)
        both = torch.cat([params, recal])
        acc = evaluate_parameters(model, layout, both, data.test_x, data.test_y, batch_size=10, models_per_chunk=50)
        out[name] = summarize_accuracies(acc[: len(params)])
        out[f"{name}_recalibrated"] = summarize_accuracies(acc[len(params):])
    return out



def recalibration_lines(rec: Dict) -> List[str]:
    """The report's ``BatchNorm recalibration`` section: best / mean / median / min test accuracy, with and without."""
    lines = [
        f"Running statistics of every BatchNorm layer re-estimated on {rec['batches']} training batches of "
        f"{rec['batch_size']} (cumulative average); the generated models above are left as generated.",
        "",
        "| models | best | mean | median | min |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("original", "original"), ("original_recalibrated", "original, recalibrated"),
                       ("generated", "p-diff"), ("generated_recalibrated", "p-diff, recalibrated")):  # fmt: skip
        r = rec[key]
        lines.append(f"| {label} | {r['best']:.2f} | {r['mean']:.2f} | {r['median']:.2f} | {r['min']:.2f} |")
    return lines
