"""Thresholds, definitions and the verdict rules: is a set of generated models good, novel, memorized or collapsed?

Every rule compares the generated models' median with the originals' own (leave-one-out) median, so that new,
independent checkpoints of the same runs pass as novel whatever the scale of the task:

* **good**: test accuracy ``>=`` the originals' mean test accuracy minus :data:`GOOD_MARGIN_PP` (1 pp);
* **novel**: max-IoU below the originals' mean pairwise IoU (how alike two distinct training checkpoints fail on
  average);
* **memorizing**: the nearest-checkpoint distance, or ``1 - max-IoU`` (functional copies), well below the originals';
* **collapsed to the checkpoint average**: the distance to the mean checkpoint, or the disagreement with the
  mean-checkpoint model, well below the originals';
* **at equal accuracy**: the noise baselines' median max-IoU, interpolated (between the two noise amplitudes whose
  mean accuracies bracket it) at the generated models' mean accuracy minus :data:`NOISE_MATCH_PP` — the strongest
  noise that is not worse by more than 1 pp (:func:`noise_reference`). Interpolating, rather than picking one
  amplitude by a hard accuracy threshold, makes the reference move continuously with the generated accuracy, so a
  difference in the last digits (1 vs 2 torch threads) cannot swap the amplitude compared with.

Each of these comparisons (except accuracy) comes with a bootstrap confidence interval over the models
(:data:`BOOTSTRAP_RESAMPLES` resamples of each group's models, medians recomputed, :data:`CONFIDENCE` percentile
interval; computed by :func:`pdiff_hf.novelty.intervals.bootstrap_intervals` and stored under ``novelty.intervals``).
A comparison whose interval lies on one side of its threshold decides; one whose interval straddles it makes the
verdict ``INCONCLUSIVE`` (naming the comparison) instead of flipping with the sample.

The verdict (:func:`novelty_verdict`) is a function of the JSON summary alone, so it can be recomputed from any
``results.json`` (a summary without ``novelty.intervals`` is judged on the point values alone). Thresholds and
definitions are stored in every summary under ``novelty.thresholds`` and ``novelty.definitions``.
"""

from typing import Dict, List, Mapping, Optional, Tuple

ORIGINAL = "original"
GENERATED = "generated"

GOOD_MARGIN_PP = 1.0
MEMORIZATION_DISTANCE_RATIO = 0.5  # memorizing: generated NN distance < ratio * originals' NN distance, or
MEMORIZATION_IOU_GAP_RATIO = 0.5  # 1 - generated max-IoU < ratio * (1 - originals' max-IoU) (functional copies)
COLLAPSE_DISTANCE_RATIO = 0.5  # collapsed: generated distance to the mean checkpoint < ratio * originals', or
COLLAPSE_DISAGREEMENT_RATIO = 0.5  # 1 - agreement with the mean-checkpoint model < ratio * originals' (1 - agreement)
NOISE_MATCH_PP = 1.0  # a noise baseline is "at equal accuracy" when its mean is within this many pp of generated
BOOTSTRAP_RESAMPLES = 1000  # resamples of each group's models for the intervals of the comparisons
CONFIDENCE = 0.95  # percentile interval of the bootstrap

# The decisive comparisons: key -> (what is compared, threshold key in ``novelty.thresholds`` or None for 0, what a
# value below the threshold means). Their intervals are in ``novelty.intervals[key]``.
COMPARISONS = {
    "memorization_distance": (
        "generated median nn_distance / originals' median nn_distance",
        "memorization_distance_ratio",
        "memorizing (near-copies in weight space)",
    ),
    "memorization_iou_gap": (
        "(1 - generated median max_iou) / (1 - originals' median max_iou)",
        "memorization_iou_gap_ratio",
        "memorizing (functional copies)",
    ),
    "collapse_distance": (
        "generated median distance_to_mean / originals' median distance_to_mean",
        "collapse_distance_ratio",
        "collapsed to the checkpoint average (in weight space)",
    ),
    "collapse_disagreement": (
        "(1 - generated median mean_model_agreement) / (1 - originals' median mean_model_agreement)",
        "collapse_disagreement_ratio",
        "collapsed to the checkpoint average (in function space)",
    ),
    "novelty_vs_noise": (
        "generated median max_iou - noise median max_iou at equal accuracy (interpolated)",
        None,
        "more novel than noise",
    ),
}

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
    "intervals": f"{CONFIDENCE:.0%} bootstrap percentile interval of each decisive comparison: the models of each "
    f"group resampled with replacement {BOOTSTRAP_RESAMPLES} times (seeded), medians recomputed (for the agreement "
    "with the mean-checkpoint model the test examples are resampled too); a ratio with a zero denominator is "
    "infinite, written null; INCONCLUSIVE when the interval straddles the threshold",
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
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "confidence": CONFIDENCE,
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


def noise_reference(summary: Mapping) -> Optional[Dict]:
    """The noise the generated models are compared with "at equal accuracy": ``{"names", "weights",
    "target_accuracy", "max_iou"}``. The target is the generated mean accuracy minus :data:`NOISE_MATCH_PP`; the
    largest amplitude at least that accurate (:func:`reference_noise`) and the next larger one, less accurate, are
    interpolated linearly in mean accuracy (their median max-IoU weighted by ``weights``). With no larger amplitude,
    or no amplitude that accurate, the one amplitude of :func:`reference_noise`. ``None`` without noise baselines."""
    ref = reference_noise(summary)
    if ref is None:
        return None
    gen_mean = float(summary[GENERATED]["mean"])
    target = gen_mean - NOISE_MATCH_PP
    baselines = summary["baselines"]
    noise = sorted(
        (float(v.get("amplitude", 0.0)), k) for k, v in baselines.items() if v.get("kind") == "noise"
    )
    names = [k for _, k in noise]
    i = names.index(ref)
    acc = float(baselines[ref]["mean"])
    pair, weights = [ref], [1.0]
    if acc >= target and i + 1 < len(names):
        nxt = names[i + 1]
        acc_next = float(baselines[nxt]["mean"])
        if acc_next < target:  # true unless the accuracy is not monotone in the amplitude
            t = (acc - target) / (acc - acc_next)
            pair, weights = [ref, nxt], [1.0 - t, t]
    groups = summary["novelty"]["groups"]
    max_iou = sum(w * float(groups[k]["max_iou"]["median"]) for k, w in zip(pair, weights))
    return {
        "names": pair,
        "weights": [float(f"{w:.6g}") for w in weights],
        "target_accuracy": float(f"{target:.6g}"),
        "max_iou": float(f"{max_iou:.6g}"),
    }


def comparison_outcome(summary: Mapping, key: str, point: float) -> Tuple[str, str]:
    """``(outcome, interval text)`` of comparison ``key``: ``"below"`` / ``"above"`` its threshold, or
    ``"straddles"`` when its interval (``novelty.intervals[key]``) contains the threshold. Without an interval, the
    point value alone decides and the text is empty."""
    nov = summary["novelty"]
    threshold = 0.0 if COMPARISONS[key][1] is None else float(nov["thresholds"][COMPARISONS[key][1]])
    entry = (nov.get("intervals") or {}).get(key)
    if entry is None:
        return ("below" if point < threshold else "above"), ""
    low = float("inf") if entry["low"] is None else float(entry["low"])
    high = float("inf") if entry["high"] is None else float(entry["high"])
    text = f"{entry.get('confidence', CONFIDENCE):.0%} interval [{_fmt(low)}, {_fmt(high)}]"
    if high < threshold:
        return "below", text
    if low >= threshold:
        return "above", text
    return "straddles", text


def _fmt(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.3g}"


def _either(*outcomes: str) -> Optional[bool]:
    """Flagged when any comparison is below its threshold, unknown (``None``) when none is but one straddles it."""
    if "below" in outcomes:
        return True
    return None if "straddles" in outcomes else False


def _ratio(a: float, b: float) -> float:
    if b <= 0:
        return 0.0 if a <= 0 else float("inf")
    return a / b


def novelty_verdict(summary: Mapping) -> List[str]:
    """Plain-text verdict lines from a summary (``NoveltyReport.summary`` or the same keys of a ``results.json``):
    accuracy; novelty against noise at equal accuracy; memorization; collapse to the checkpoint average; the
    good-and-novel fraction; and a one-line overall verdict (``MEMORIZING``, ``COLLAPSED TO THE CHECKPOINT
    AVERAGE``, ``NOVEL``, ``NOT MORE NOVEL THAN NOISE``, or ``INCONCLUSIVE`` naming the comparisons whose interval
    straddles their threshold)."""
    orig, gen = summary[ORIGINAL], summary[GENERATED]
    nov = summary["novelty"]
    th = nov["thresholds"]
    groups = nov["groups"]
    go, gg = groups[ORIGINAL], groups[GENERATED]
    lines = []
    undecided: Dict[str, str] = {}  # comparisons whose interval straddles the threshold

    def interval(text: str) -> str:
        return f" ({text})" if text else ""

    def straddles(key: str, text: str) -> None:
        what, th_key, _ = COMPARISONS[key]
        threshold = 0.0 if th_key is None else th[th_key]
        undecided[key] = f"{key}: {what}, {text}, straddles {threshold:g}"

    gap = orig["mean"] - gen["mean"]
    best = gen.get("best_by_val", gen["best"])
    lines.append(
        f"Accuracy: generated mean {gen['mean']:.2f}% (best by validation {best:.2f}%) vs original mean "
        f"{orig['mean']:.2f}%; {gg['good_fraction']:.0%} of generated models are good (test accuracy >= "
        f"{th['good_test_accuracy']:.2f}%)."
    )

    g_nn, o_nn = gg["nn_distance"]["median"], go["nn_distance"]["median"]
    g_iou, o_iou = gg["max_iou"]["median"], go["max_iou"]["median"]

    more_novel: Optional[bool] = None
    has_noise = False
    ref_within = False
    ref = nov.get("reference_noise_interpolation") or noise_reference(summary)
    if ref is not None:
        has_noise = True
        n_iou = ref["max_iou"]
        names = ref["names"]
        rb = summary["baselines"][names[0]]
        n_nn = sum(w * groups[k]["nn_distance"]["median"] for k, w in zip(names, ref["weights"]))
        outcome, text = comparison_outcome(summary, "novelty_vs_noise", g_iou - n_iou)
        more_novel = {"below": True, "above": False, "straddles": None}[outcome]
        if outcome == "straddles":
            straddles("novelty_vs_noise", text)
        if len(names) == 2:
            ref_within = True
            ref_name = f"{names[0]}/{names[1]} interpolated"
            how = (
                f"at {ref['target_accuracy']:.2f}%, {th['noise_match_pp']:g} pp below their mean accuracy; "
                f"{names[0]} {rb['mean']:.2f}%, {names[1]} {summary['baselines'][names[1]]['mean']:.2f}%"
            )
        else:
            ref_name = names[0]
            ref_within = abs(rb["mean"] - gen["mean"]) <= th["noise_match_pp"]
            if ref_within:
                how = f"the largest noise amplitude within {th['noise_match_pp']:g} pp of their mean accuracy"
            elif rb["mean"] > gen["mean"]:
                how = f"the largest noise amplitude, still more accurate by over {th['noise_match_pp']:g} pp"
            else:
                how = f"the most accurate noise amplitude, less accurate by over {th['noise_match_pp']:g} pp"
            how += f": mean {rb['mean']:.2f}% vs {gen['mean']:.2f}%"
        word = {True: "MORE", False: "NOT MORE", None: "NOT CLEARLY MORE OR LESS"}[more_novel]
        lines.append(
            f"Novelty vs noise: generated models are {word} novel than {ref_name} ({how}): median max-IoU "
            f"{g_iou:.3f} vs {n_iou:.3f}{interval(text and 'difference ' + text)}, median nearest-checkpoint "
            f"distance {g_nn:.4g} vs {n_nn:.4g}."
        )

    ratio = _ratio(g_nn, o_nn)
    iou_ratio = _ratio(1.0 - g_iou, 1.0 - o_iou) if o_iou < 1.0 else float("inf")
    weight_copy, weight_text = comparison_outcome(summary, "memorization_distance", ratio)
    function_copy, function_text = comparison_outcome(summary, "memorization_iou_gap", iou_ratio)
    memorizing = _either(weight_copy, function_copy)
    if memorizing is not True:  # a definite copy decides; otherwise each undecided comparison is named
        for key, outcome, text in (
            ("memorization_distance", weight_copy, weight_text),
            ("memorization_iou_gap", function_copy, function_text),
        ):
            if outcome == "straddles":
                straddles(key, text)
    word = {True: "MEMORIZING", False: "not memorizing", None: "INCONCLUSIVE"}[memorizing]
    lines.append(
        f"Memorization: {word} - median distance to the nearest "
        f"training checkpoint {g_nn:.4g} = {_fmt(ratio)}x{interval(weight_text)} the originals' own nearest-neighbour "
        f"distance {o_nn:.4g} (memorizing below {th['memorization_distance_ratio']:g}x); median max-IoU {g_iou:.3f} "
        + (
            f"vs originals {o_iou:.3f}, 1 - max-IoU {_fmt(iou_ratio)}x{interval(function_text)} the originals' "
            f"(functional copies below {th['memorization_iou_gap_ratio']:g}x)"
            if o_iou < 1.0
            else f"vs originals {o_iou:.3f}: the originals are functional copies of one another, so no ratio"
        )
        + (": generated models are near-copies of training checkpoints." if memorizing else ".")
    )

    g_dm, o_dm = gg["distance_to_mean"]["median"], go["distance_to_mean"]["median"]
    g_ag, o_ag = gg["mean_model_agreement"]["median"], go["mean_model_agreement"]["median"]
    d_ratio = _ratio(g_dm, o_dm)
    ag_ratio = _ratio(1.0 - g_ag, 1.0 - o_ag) if o_ag < 1.0 else float("inf")
    distance_collapse, distance_text = comparison_outcome(summary, "collapse_distance", d_ratio)
    function_collapse, agreement_text = comparison_outcome(summary, "collapse_disagreement", ag_ratio)
    collapsed = _either(distance_collapse, function_collapse)
    if collapsed is not True:
        for key, outcome, text in (
            ("collapse_distance", distance_collapse, distance_text),
            ("collapse_disagreement", function_collapse, agreement_text),
        ):
            if outcome == "straddles":
                straddles(key, text)
    word = {
        True: "COLLAPSED to the checkpoint average",
        False: "no collapse to the checkpoint average",
        None: "INCONCLUSIVE whether collapsed to the checkpoint average",
    }[collapsed]
    lines.append(
        f"Average collapse: {word} - median distance to the mean checkpoint {g_dm:.4g} = {_fmt(d_ratio)}x"
        f"{interval(distance_text)} the originals' {o_dm:.4g} (collapse below {th['collapse_distance_ratio']:g}x); "
        f"median prediction agreement with the mean-checkpoint model {g_ag:.3f} vs originals {o_ag:.3f}, "
        + (
            f"1 - agreement {_fmt(ag_ratio)}x{interval(agreement_text)} the originals' (collapse below "
            f"{th['collapse_disagreement_ratio']:g}x)."
            if o_ag < 1.0
            else "the originals all agree with it, so no ratio."
        )
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

    undecided_text = "; ".join(undecided[k] for k in COMPARISONS if k in undecided)
    flags = []
    if memorizing:
        flags.append("MEMORIZING")
    if collapsed:
        flags.append("COLLAPSED TO THE CHECKPOINT AVERAGE")
    notes = []
    if flags:
        overall = " and ".join(flags)
        if undecided:
            notes.append("undecided: " + undecided_text)
    elif memorizing is None or collapsed is None or (more_novel is None and has_noise):
        overall = "INCONCLUSIVE - " + undecided_text
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
