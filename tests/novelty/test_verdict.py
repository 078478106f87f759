"""pdiff_hf.novelty.verdict: the rules say memorizing / novel / collapsed where they should, from the JSON alone;
INCONCLUSIVE when a comparison's bootstrap interval straddles its threshold; the same verdict with 1 and 2 threads."""

import json

import pytest
import torch

from pdiff_hf.novelty import (
    BOOTSTRAP_RESAMPLES,
    COMPARISONS,
    CONFIDENCE,
    DEFINITIONS,
    GOOD_MARGIN_PP,
    analyze_novelty,
    noise_reference,
    novelty_verdict,
    reference_noise,
    verdict_thresholds,
)

from .helpers import NUM_GEN, collapsed_params, make_task, memorizing_params


@pytest.mark.parametrize("seed", [0, 1])
def test_memorizing_case_says_memorizing(seed):
    model, layout, data, train, _, g = make_task(seed)
    report = analyze_novelty(model, layout, train, memorizing_params(train, g), data)
    text = "\n".join(report.verdict)
    assert report.verdict[-1].startswith("Verdict: MEMORIZING")
    assert "Memorization: MEMORIZING" in text
    assert "NOT MORE novel than noise_" in text
    assert "no collapse to the checkpoint average" in text
    gen, orig = report.summary["novelty"]["groups"]["generated"], report.summary["novelty"]["groups"]["original"]
    assert gen["nn_distance"]["median"] < 0.01 * orig["nn_distance"]["median"]
    assert gen["max_iou"]["median"] > 0.99


@pytest.mark.parametrize("seed", [0, 1])
def test_novel_case_says_novel(seed):
    model, layout, data, train, fresh, _ = make_task(seed)
    report = analyze_novelty(model, layout, train, fresh(NUM_GEN), data)
    text = "\n".join(report.verdict)
    assert report.verdict[-1].startswith("Verdict: NOVEL"), text
    assert "Memorization: not memorizing" in text
    assert "no collapse to the checkpoint average" in text
    assert "generated models are MORE novel than noise_" in text
    assert "MEMORIZING" not in text and "COLLAPSED" not in text


def test_collapsed_case_says_collapsed(task):
    model, layout, data, train, _, g = task
    report = analyze_novelty(model, layout, train, collapsed_params(train, g), data)
    text = "\n".join(report.verdict)
    assert "Average collapse: COLLAPSED to the checkpoint average" in text
    assert "COLLAPSED TO THE CHECKPOINT AVERAGE" in report.verdict[-1]
    groups = report.summary["novelty"]["groups"]
    assert groups["generated"]["distance_to_mean"]["median"] < 0.1 * groups["original"]["distance_to_mean"]["median"]


def test_verdict_is_a_function_of_the_json_summary(novel_report):
    summary = json.loads(json.dumps(novel_report.to_dict(), allow_nan=False))
    assert novelty_verdict(summary) == novel_report.verdict == summary["verdict"]


def test_thresholds_and_definitions_are_recorded(novel_report):
    nov = novel_report.summary["novelty"]
    assert nov["thresholds"] == verdict_thresholds(nov["thresholds"]["good_test_accuracy"], nov["thresholds"]["novel_max_iou"])
    assert nov["thresholds"]["good_margin_pp"] == GOOD_MARGIN_PP
    assert nov["definitions"] == DEFINITIONS


def test_reference_noise_is_the_largest_amplitude_at_equal_accuracy():
    def summary(gen_mean, noise):
        return {
            "generated": {"mean": gen_mean},
            "baselines": {f"noise_{a:g}": {"kind": "noise", "amplitude": a, "mean": m} for a, m in noise.items()},
        }

    assert reference_noise(summary(80.0, {0.01: 80.5, 0.05: 80.2, 0.1: 79.3, 0.15: 75.0})) == "noise_0.1"
    # all noise more accurate than generated: the strongest (largest) amplitude that is not worse
    assert reference_noise(summary(70.0, {0.01: 80.5, 0.05: 80.2})) == "noise_0.05"
    # all noise much worse: the closest one
    assert reference_noise(summary(80.0, {0.01: 70.0, 0.05: 60.0})) == "noise_0.01"
    assert reference_noise(summary(80.0, {})) is None


# ---------------------------------------------------------------------------------------------------- uncertainty
def test_every_decisive_comparison_has_a_bootstrap_interval(novel_report):
    intervals = novel_report.summary["novelty"]["intervals"]
    assert set(intervals) == set(COMPARISONS)
    for key, e in intervals.items():
        assert e["low"] <= e["value"] <= e["high"], (key, e)
        assert e["resamples"] == BOOTSTRAP_RESAMPLES and e["confidence"] == CONFIDENCE
        assert e["outcome"] == ("below" if key == "novelty_vs_noise" else "above"), (key, e)  # the novel case decides
    assert "95% interval [" in "\n".join(novel_report.verdict)
    markdown = novel_report.markdown()
    assert "### Uncertainty of the verdict" in markdown and "| memorization_distance |" in markdown


def test_half_copies_half_new_models_are_inconclusive_not_a_coin_flip():
    """Half the generated models copy training checkpoints, half are new: the median nearest-checkpoint distance
    falls between the two modes, and resampling the models moves it from one to the other. A point comparison
    would call it one way or the other; the interval straddles the threshold, so the verdict says INCONCLUSIVE and
    names the comparison."""
    model, layout, data, train, fresh, g = make_task(0)
    generated = torch.cat([memorizing_params(train, g, n=NUM_GEN // 2), fresh(NUM_GEN // 2)])
    report = analyze_novelty(model, layout, train, generated, data)
    intervals = report.summary["novelty"]["intervals"]
    assert intervals["memorization_distance"]["outcome"] == "straddles", intervals["memorization_distance"]
    assert intervals["memorization_distance"]["low"] < 0.5 < intervals["memorization_distance"]["high"]
    text = "\n".join(report.verdict)
    assert report.verdict[-1].startswith("Verdict: INCONCLUSIVE - memorization_distance: "), report.verdict[-1]
    assert "straddles 0.5" in report.verdict[-1]
    assert "Memorization: INCONCLUSIVE" in text
    assert "straddles: INCONCLUSIVE" in report.markdown()


def test_interval_straddling_a_threshold_is_inconclusive_from_the_json(novel_report):
    summary = json.loads(json.dumps(novel_report.to_dict(), allow_nan=False))
    summary["novelty"]["intervals"]["collapse_disagreement"].update(low=0.4, high=0.6)
    verdict = novelty_verdict(summary)
    assert verdict[-1].startswith("Verdict: INCONCLUSIVE - collapse_disagreement: "), verdict[-1]
    assert "Average collapse: INCONCLUSIVE" in verdict[3]
    summary["novelty"]["intervals"]["memorization_distance"].update(low=0.1, high=0.3)  # a definite flag decides
    verdict = novelty_verdict(summary)
    assert verdict[-1].startswith("Verdict: MEMORIZING (undecided: collapse_disagreement"), verdict[-1]


def _noise_summary(gen_mean, gen_iou, noise):
    """A summary judged on point values (no intervals): generated and noise ``{amplitude: (mean, median max-IoU)}``."""
    groups = {
        "original": {"nn_distance": {"median": 1.0}, "max_iou": {"median": 0.75}, "distance_to_mean": {"median": 1.0},
                     "mean_model_agreement": {"median": 0.7}, "good_fraction": 1.0, "good_and_novel_fraction": 0.5},
        "generated": {"nn_distance": {"median": 1.0}, "max_iou": {"median": gen_iou}, "distance_to_mean": {"median": 1.0},
                      "mean_model_agreement": {"median": 0.7}, "good_fraction": 1.0, "good_and_novel_fraction": 0.5},
    }  # fmt: skip
    baselines = {}
    for a, (mean, iou) in noise.items():
        baselines[f"noise_{a:g}"] = {"kind": "noise", "amplitude": a, "mean": mean, "good_and_novel_fraction": 0.0}
        groups[f"noise_{a:g}"] = {"max_iou": {"median": iou}, "nn_distance": {"median": 0.1}}
    return {
        "original": {"mean": 80.0, "best": 81.0},
        "generated": {"mean": gen_mean, "best": 81.0},
        "baselines": baselines,
        "novelty": {"groups": groups, "thresholds": verdict_thresholds(79.0, 0.6)},
    }


def test_noise_reference_moves_continuously_with_the_generated_accuracy():
    """The generated mean accuracy a hair above or below the point where the largest amplitude within 1 pp changes
    (noise_0.1 at exactly mean - 1 pp): picking one amplitude compared with noise_0.1 (max-IoU 0.7) on one side and
    noise_0.05 (0.9) on the other, so a generated max-IoU of 0.8 flipped between NOT MORE and MORE novel. The
    interpolated reference is about 0.7 on both sides."""
    noise = {0.05: (80.5, 0.9), 0.1: (79.0, 0.7), 0.15: (75.0, 0.5)}
    below, above = _noise_summary(80.0 - 1e-9, 0.8, noise), _noise_summary(80.0 + 1e-9, 0.8, noise)
    assert reference_noise(below) == "noise_0.1" and reference_noise(above) == "noise_0.05"  # the old pick flips
    refs = [noise_reference(s) for s in (below, above)]
    assert refs[0]["max_iou"] == pytest.approx(0.7, abs=1e-6) and refs[1]["max_iou"] == pytest.approx(0.7, abs=1e-6)
    assert refs[1]["names"] == ["noise_0.05", "noise_0.1"]
    verdicts = [novelty_verdict(s) for s in (below, above)]
    assert all("NOT MORE novel than noise_" in v[1] for v in verdicts), verdicts
    assert verdicts[0][-1] == verdicts[1][-1] and verdicts[0][-1].startswith("Verdict: NOT MORE NOVEL THAN NOISE")
    # halfway between noise_0.1 and noise_0.15 in accuracy: halfway in max-IoU
    assert noise_reference(_noise_summary(78.0, 0.8, noise))["max_iou"] == pytest.approx(0.6)


def test_same_verdict_and_intervals_with_1_and_2_threads():
    model, layout, data, train, fresh, _ = make_task(1)
    generated = fresh(NUM_GEN)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            report = analyze_novelty(model, layout, train, generated, data, seed=3)
            results.append((report.verdict, report.summary["novelty"]["intervals"]))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1]


def test_originals_that_are_functional_copies_are_named_not_an_infinite_ratio(novel_report):
    summary = json.loads(json.dumps(novel_report.to_dict(), allow_nan=False))
    groups = summary["novelty"]["groups"]
    groups["original"]["max_iou"]["median"] = 1.0
    groups["original"]["mean_model_agreement"]["median"] = 1.0
    text = " ".join(novelty_verdict(summary))
    assert "inf" not in text
    assert "the originals are functional copies of one another, so no ratio" in text
    assert "the originals all agree with it, so no ratio." in text
