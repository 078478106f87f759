"""pdiff_hf.novelty.verdict: the rules say memorizing / novel / collapsed where they should, from the JSON alone."""

import json

import pytest

from pdiff_hf.novelty import (
    DEFINITIONS,
    GOOD_MARGIN_PP,
    analyze_novelty,
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
