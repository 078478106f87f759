"""Thresholds, definitions and the verdict rules: is a set of generated models good, novel, memorized or collapsed?

Every rule compares the generated models' median with the originals' own (leave-one-out) median, so that new,
independent checkpoints of the same runs pass as novel whatever the scale of the task:

* **good**: test accuracy ``>=`` the originals' mean test accuracy minus :data:`GOOD_MARGIN_PP` (1 pp);
* **novel**: max-IoU below the originals' mean pairwise IoU (how alike two distinct training checkpoints fail on
  average);
* **memorizing**: the nearest-checkpoint distance, or ``1 - max-IoU`` (functional copies), well below the originals';
* **collapsed to the checkpoint average**: the distance to the mean checkpoint, or the disagreement with the
  mean-checkpoint model, well below the originals';
* **at equal accuracy**: the noise baseline compared with is the strongest one within :data:`NOISE_MATCH_PP` of the
  generated models' mean accuracy (:func:`reference_noise`).

The verdict (:func:`novelty_verdict`) is a function of the JSON summary alone, so it can be recomputed from any
``results.json``. Thresholds and definitions are stored in every summary under ``novelty.thresholds`` and
``novelty.definitions``.
"""

from typing import Dict, List, Mapping, Optional

ORIGINAL = "original"
GENERATED = "generated"

GOOD_MARGIN_PP = 1.0
MEMORIZATION_DISTANCE_RATIO = 0.5  # memorizing: generated NN distance < ratio * originals' NN distance, or
MEMORIZATION_IOU_GAP_RATIO = 0.5  # 1 - generated max-IoU < ratio * (1 - originals' max-IoU) (functional copies)
COLLAPSE_DISTANCE_RATIO = 0.5  # collapsed: generated distance to the mean checkpoint < ratio * originals', or
COLLAPSE_DISAGREEMENT_RATIO = 0.5  # 1 - agreement with the mean-checkpoint model < ratio * originals' (1 - agreement)
NOISE_MATCH_PP = 1.0  # a noise baseline is "at equal accuracy" when its mean is within this many pp of generated

DEFINITIONS = {
    "normalized_space": "per-dimension standardization of the pipeline's autoencoder (log space for BatchNorm "
    "running variances), or of the training checkpoints when no pipeline is given",
    "distance": "RMS distance in normalized space, ||z_a - z_b||_2 / sqrt(D'), D' = entries not constant over the "
    "training checkpoints",
    "nn_distance": "distance to the nearest training checkpoint (for training checkpoints: the nearest other one)",
    "max_iou": "max over training checkpoints (other than itself) of the IoU of the sets of wrongly predicted test "
    "examples; 1 when both sets are empty",
    "max_agreement": "max over training checkpoints (other than itself) of the fraction of identical test predictions",
    "nn_agreement": "fraction of identical test predictions with the weight-space nearest training checkpoint",
    "distance_to_mean": "distance to the mean training checkpoint (mean in normalized space)",
    "mean_model_agreement": "fraction of identical test predictions with the mean-checkpoint model",
    "pairwise_mean_iou": "mean error-set IoU over pairs of distinct models of the same group",
    "good": "test accuracy >= originals' mean test accuracy - 1 pp",
    "novel": "max_iou < originals' mean pairwise IoU",
    "best_by_val": "test accuracy of the model with the highest validation accuracy",
}


# ----------------------------------------------------------------------------------------------------- thresholds
def verdict_thresholds(good_test_accuracy: float, novel_max_iou: float) -> Dict:
    """The ``novelty.thresholds`` entry of a summary: the two data-dependent thresholds (the originals' mean test
    accuracy minus :data:`GOOD_MARGIN_PP`, the originals' mean pairwise IoU) and every fixed ratio, with the rules
    in words."""
    return {
        "good_test_accuracy": good_test_accuracy,
        "good_margin_pp": GOOD_MARGIN_PP,
        "good_rule": f"test accuracy >= original mean - {GOOD_MARGIN_PP:g} pp",
        "novel_max_iou": novel_max_iou,
        "novel_rule": "max-IoU < originals' mean pairwise IoU",
        "memorization_distance_ratio": MEMORIZATION_DISTANCE_RATIO,
        "memorization_iou_gap_ratio": MEMORIZATION_IOU_GAP_RATIO,
        "memorization_rule": f"generated median nn_distance < {MEMORIZATION_DISTANCE_RATIO:g} x originals' median "
        f"nn_distance, or 1 - generated median max_iou < {MEMORIZATION_IOU_GAP_RATIO:g} x (1 - originals' median "
        "max_iou)",
        "collapse_distance_ratio": COLLAPSE_DISTANCE_RATIO,
        "collapse_disagreement_ratio": COLLAPSE_DISAGREEMENT_RATIO,
        "collapse_rule": f"generated median distance_to_mean < {COLLAPSE_DISTANCE_RATIO:g} x originals', or 1 - "
        f"generated median mean_model_agreement < {COLLAPSE_DISAGREEMENT_RATIO:g} x (1 - originals' median "
        "mean_model_agreement)",
        "noise_match_pp": NOISE_MATCH_PP,
    }


# -------------------------------------------------------------------------------------------------------- verdict
def reference_noise(summary: Mapping) -> Optional[str]:
    """The noise baseline to compare the generated models with "at equal accuracy": the largest amplitude whose mean
    test accuracy is at least the generated mean minus :data:`NOISE_MATCH_PP` (within 1 pp, or more accurate: more
    noise is more novel, so this is the strongest noise baseline that is not worse); if every amplitude is worse,
    the one with the closest mean accuracy."""
    gen_mean = summary[GENERATED]["mean"]
    noise = [
        (float(v.get("amplitude", 0.0)), k, float(v["mean"]))
        for k, v in summary.get("baselines", {}).items()
        if v.get("kind") == "noise"
    ]
    if not noise:
        return None
    at_least = [n for n in noise if n[2] >= gen_mean - NOISE_MATCH_PP]
    if at_least:
        return max(at_least)[1]
    return min(noise, key=lambda n: (abs(n[2] - gen_mean), n[0]))[1]


def _ratio(a: float, b: float) -> float:
    if b <= 0:
        return 0.0 if a <= 0 else float("inf")
    return a / b


def novelty_verdict(summary: Mapping) -> List[str]:
    """Plain-text verdict lines from a summary (``NoveltyReport.summary`` or the same keys of a ``results.json``):
    accuracy; novelty against the noise baseline at equal accuracy; memorization; collapse to the checkpoint
    average; the good-and-novel fraction; and a one-line overall verdict (``MEMORIZING``, ``COLLAPSED TO THE
    CHECKPOINT AVERAGE``, ``NOVEL`` or ``NOT MORE NOVEL THAN NOISE``)."""
    orig, gen = summary[ORIGINAL], summary[GENERATED]
    nov = summary["novelty"]
    th = nov["thresholds"]
    groups = nov["groups"]
    go, gg = groups[ORIGINAL], groups[GENERATED]
    lines = []

    gap = orig["mean"] - gen["mean"]
    best = gen.get("best_by_val", gen["best"])
    lines.append(
        f"Accuracy: generated mean {gen['mean']:.2f}% (best by validation {best:.2f}%) vs original mean "
        f"{orig['mean']:.2f}%; {gg['good_fraction']:.0%} of generated models are good (test accuracy >= "
        f"{th['good_test_accuracy']:.2f}%)."
    )

    g_nn, o_nn = gg["nn_distance"]["median"], go["nn_distance"]["median"]
    g_iou, o_iou = gg["max_iou"]["median"], go["max_iou"]["median"]

    more_novel = None
    ref_within = False
    ref = nov.get("reference_noise") or reference_noise(summary)
    if ref is not None:
        rb, rn = summary["baselines"][ref], groups[ref]
        n_iou, n_nn = rn["max_iou"]["median"], rn["nn_distance"]["median"]
        more_novel = g_iou < n_iou
        ref_within = abs(rb["mean"] - gen["mean"]) <= th["noise_match_pp"]
        if ref_within:
            how = f"the largest noise amplitude within {th['noise_match_pp']:g} pp of their mean accuracy"
        elif rb["mean"] > gen["mean"]:
            how = f"the largest noise amplitude, still more accurate by over {th['noise_match_pp']:g} pp"
        else:
            how = f"the most accurate noise amplitude, less accurate by over {th['noise_match_pp']:g} pp"
        lines.append(
            f"Novelty vs noise: generated models are {'MORE' if more_novel else 'NOT MORE'} novel than {ref} "
            f"({how}: mean {rb['mean']:.2f}% vs {gen['mean']:.2f}%): median max-IoU {g_iou:.3f} vs {n_iou:.3f}, "
            f"median nearest-checkpoint distance {g_nn:.4g} vs {n_nn:.4g}."
        )

    ratio = _ratio(g_nn, o_nn)
    iou_ratio = _ratio(1.0 - g_iou, 1.0 - o_iou) if o_iou < 1.0 else float("inf")
    weight_copy = ratio < th["memorization_distance_ratio"]
    function_copy = iou_ratio < th["memorization_iou_gap_ratio"]
    memorizing = weight_copy or function_copy
    lines.append(
        f"Memorization: {'MEMORIZING' if memorizing else 'not memorizing'} - median distance to the nearest "
        f"training checkpoint {g_nn:.4g} = {ratio:.2f}x the originals' own nearest-neighbour distance {o_nn:.4g} "
        f"(memorizing below {th['memorization_distance_ratio']:g}x); median max-IoU {g_iou:.3f} vs originals "
        f"{o_iou:.3f} (functional copies when 1 - max-IoU is below {th['memorization_iou_gap_ratio']:g}x the "
        f"originals')"
        + (": generated models are near-copies of training checkpoints." if memorizing else ".")
    )

    g_dm, o_dm = gg["distance_to_mean"]["median"], go["distance_to_mean"]["median"]
    g_ag, o_ag = gg["mean_model_agreement"]["median"], go["mean_model_agreement"]["median"]
    d_ratio = _ratio(g_dm, o_dm)
    ag_ratio = _ratio(1.0 - g_ag, 1.0 - o_ag) if o_ag < 1.0 else float("inf")
    collapsed = d_ratio < th["collapse_distance_ratio"] or ag_ratio < th["collapse_disagreement_ratio"]
    lines.append(
        f"Average collapse: {'COLLAPSED to the checkpoint average' if collapsed else 'no collapse to the checkpoint average'}"
        f" - median distance to the mean checkpoint {g_dm:.4g} = {d_ratio:.2f}x the originals' {o_dm:.4g} "
        f"(collapse below {th['collapse_distance_ratio']:g}x); median prediction agreement with the mean-checkpoint "
        f"model {g_ag:.3f} vs originals {o_ag:.3f} (collapse when 1 - agreement is below "
        f"{th['collapse_disagreement_ratio']:g}x the originals')."
    )

    baseline_gn = {k: v["good_and_novel_fraction"] for k, v in summary.get("baselines", {}).items()}
    best_base = max(baseline_gn, key=baseline_gn.get) if baseline_gn else None
    lines.append(
        f"Good and novel: {gg['good_and_novel_fraction']:.0%} of generated models vs {go['good_and_novel_fraction']:.0%} "
        f"of originals"
        + (f" and {baseline_gn[best_base]:.0%} of {best_base} (best baseline)" if best_base else "")
        + f" (good: test accuracy >= {th['good_test_accuracy']:.2f}%; novel: max-IoU < {th['novel_max_iou']:.3f}, "
        f"the originals' mean pairwise IoU)."
    )

    flags = []
    if memorizing:
        flags.append("MEMORIZING")
    if collapsed:
        flags.append("COLLAPSED TO THE CHECKPOINT AVERAGE")
    notes = []
    if flags:
        overall = " and ".join(flags)
    elif more_novel is False:
        overall = "NOT MORE NOVEL THAN NOISE - generated models fail like noisy copies of training checkpoints"
    else:
        overall = "NOVEL - neither copies of training checkpoints nor their average"
        if more_novel:
            overall += ", and more novel than noise" + (" at equal accuracy" if ref_within else "")
            if not ref_within:
                notes.append("no noise amplitude matches their accuracy, so the noise comparison is not at equal accuracy")
    if gap > GOOD_MARGIN_PP:
        notes.append(f"at lower accuracy: mean {gap:.2f} pp below the originals")
    if best_base is not None and baseline_gn[best_base] > gg["good_and_novel_fraction"]:
        notes.append(
            f"the {best_base} baseline gives more good-and-novel models ({baseline_gn[best_base]:.0%} vs "
            f"{gg['good_and_novel_fraction']:.0%})"
        )
    lines.append(f"Verdict: {overall}" + (f" ({'; '.join(notes)})" if notes else "") + ".")
    return lines
