"""pdiff_hf.novelty.metrics: analyze_novelty's metrics against a brute-force loop, its summary, options and errors."""

import json
import math

import pytest
import torch
from torch import nn

from pdiff_hf import CheckpointDatasetError, DimensionMismatchError, PDiffError
from pdiff_hf.evaluation.batched import summarize_accuracies
from pdiff_hf.novelty import NOISE_LEVELS, StatsNormalizer, analyze_novelty

from .helpers import NUM_GEN, NUM_TRAIN, memorizing_params


def test_summary_fields_and_json(novel_report):
    d = novel_report.to_dict()
    text = json.dumps(d, allow_nan=False)  # no NaN / inf anywhere
    assert "NaN" not in text
    assert set(d) == {"original", "generated", "baselines", "novelty", "verdict"}
    expected = [f"noise_{a:g}" for a in NOISE_LEVELS] + ["average_k16", "gaussian"]
    assert list(d["baselines"]) == expected == ["noise_0.01", "noise_0.05", "noise_0.1", "noise_0.15", "average_k16", "gaussian"]
    accuracy_keys = set(summarize_accuracies(torch.tensor([1.0, 2.0])))
    novelty_keys = {"nn_distance_median", "max_iou_median", "max_iou_mean", "max_agreement_mean", "good_and_novel_fraction"}
    for name, entry in d["baselines"].items():
        assert accuracy_keys | novelty_keys | {"kind"} <= set(entry), name
        assert entry["count"] == NUM_GEN
    assert d["baselines"]["noise_0.05"]["amplitude"] == 0.05 and d["baselines"]["average_k16"]["k"] == 16
    assert d["original"]["count"] == NUM_TRAIN and d["generated"]["count"] == NUM_GEN
    assert "best_by_val" in d["original"] and "best_by_val" in d["generated"]

    nov = d["novelty"]
    for key in ("original_pairwise_mean_iou", "generated_pairwise_mean_iou"):
        assert 0.0 <= nov[key] <= 1.0
    th = nov["thresholds"]
    assert th["good_test_accuracy"] == pytest.approx(d["original"]["mean"] - 1.0, abs=1e-3)
    assert th["novel_max_iou"] == nov["original_pairwise_mean_iou"]
    for name in ["original", "generated"] + expected:
        g = nov["groups"][name]
        for metric in ("nn_distance", "max_iou", "max_agreement", "nn_agreement", "distance_to_mean", "mean_model_agreement"):
            assert set(g[metric]) == {"mean", "median", "min", "max"}
            assert g[metric]["min"] <= g[metric]["median"] <= g[metric]["max"]
        assert 0.0 <= g["good_and_novel_fraction"] <= min(g["good_fraction"], g["novel_fraction"]) + 1e-12
    assert len(novel_report.table().splitlines()) == 2 + 2 + len(expected)  # header, rule, original, generated


def test_metrics_match_a_brute_force_loop(task):
    model, layout, data, train, fresh, _ = task
    train, gen = train[:12], fresh(5)
    report = analyze_novelty(model, layout, train, gen, data, num_baseline=3, noise_levels=(0.1,), average_k=4)
    norm = StatsNormalizer.from_checkpoints(train, layout)
    zt, zg = norm.normalize(train).double(), norm.normalize(gen).double()
    with torch.no_grad():
        def predict(p):
            layout.load_into(model, p)
            return model(data.test_x).argmax(1)

        pt = [predict(p) for p in train]
        pg = [predict(p) for p in gen]

    def iou(a, b):
        ea, eb = a != data.test_y, b != data.test_y
        union = (ea | eb).sum().item()
        return 1.0 if union == 0 else (ea & eb).sum().item() / union

    for i in range(len(gen)):
        d = [((zg[i] - zt[j]).norm() / math.sqrt(layout.dim)).item() for j in range(len(train))]
        ious = [iou(pg[i], pt[j]) for j in range(len(train))]
        agree = [(pg[i] == pt[j]).float().mean().item() for j in range(len(train))]
        g = report.generated
        assert g.nn_distance[i].item() == pytest.approx(min(d), rel=1e-4)
        assert g.nn_index[i].item() == min(range(len(d)), key=d.__getitem__)
        assert g.max_iou[i].item() == pytest.approx(max(ious), abs=1e-6)
        assert g.max_agreement[i].item() == pytest.approx(max(agree), abs=1e-6)
        assert g.nn_agreement[i].item() == pytest.approx(agree[g.nn_index[i]], abs=1e-6)
    # originals exclude themselves
    for i in range(len(train)):
        d = [((zt[i] - zt[j]).norm() / math.sqrt(layout.dim)).item() for j in range(len(train)) if j != i]
        ious = [iou(pt[i], pt[j]) for j in range(len(train)) if j != i]
        assert report.original.nn_distance[i].item() == pytest.approx(min(d), rel=1e-4)
        assert report.original.max_iou[i].item() == pytest.approx(max(ious), abs=1e-6)
    pairs = [iou(pt[i], pt[j]) for i in range(len(train)) for j in range(len(train)) if i != j]
    assert report.summary["novelty"]["original_pairwise_mean_iou"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    acc = torch.stack([(p == data.test_y).float().mean() * 100 for p in pg])
    assert torch.allclose(report.generated.test_accuracy, acc)


def test_counts_and_options(task):
    model, layout, data, train, fresh, _ = task
    r = analyze_novelty(model, layout, train, fresh(4), data, num_baseline=6, noise_levels=(0.2,), average_k=3, gaussian=False)
    assert list(r.summary["baselines"]) == ["noise_0.2", "average_k3"]
    assert all(v["count"] == 6 for v in r.summary["baselines"].values())
    none = analyze_novelty(model, layout, train, fresh(1), data, num_baseline=0)
    assert none.summary["baselines"] == {}
    assert none.summary["novelty"]["generated_pairwise_mean_iou"] is None  # one model has no pairs
    assert none.verdict[-1].startswith("Verdict:")
    json.dumps(none.to_dict(), allow_nan=False)
    again = analyze_novelty(model, layout, train, fresh(1), data, num_baseline=0)
    assert none.summary["original"] == again.summary["original"]


def test_same_seed_same_summary(task):
    model, layout, data, train, _, _ = task
    gen = memorizing_params(train, torch.Generator().manual_seed(9))
    a = analyze_novelty(model, layout, train, gen, data, seed=5, num_baseline=8)
    b = analyze_novelty(model, layout, train, gen, data, seed=5, num_baseline=8)
    c = analyze_novelty(model, layout, train, gen, data, seed=6, num_baseline=8)
    assert a.to_dict() == b.to_dict()
    assert not torch.equal(a.groups["gaussian"].params, c.groups["gaussian"].params)


def test_train_val_accuracy_is_used_for_selection_only(task):
    model, layout, data, train, fresh, _ = task
    gen = fresh(6)
    r = analyze_novelty(model, layout, train, gen, data, num_baseline=2)
    given = analyze_novelty(model, layout, train, gen, data, num_baseline=2, train_val_accuracy=r.original.val_accuracy)
    assert given.summary["original"] == r.summary["original"]
    with pytest.raises(DimensionMismatchError, match="validation accuracies"):
        analyze_novelty(model, layout, train, gen, data, train_val_accuracy=torch.zeros(3))


# ---------------------------------------------------------------------------------------------- bad input
def test_too_few_checkpoints_is_a_clear_error(task):
    model, layout, data, train, fresh, _ = task
    for bad in (train[:1], train[:0]):
        with pytest.raises(CheckpointDatasetError, match="at least 2 training checkpoints"):
            analyze_novelty(model, layout, bad, fresh(3), data)
    with pytest.raises(CheckpointDatasetError, match="identical"):
        analyze_novelty(model, layout, train[:1].repeat(5, 1), fresh(3), data)


def test_dimension_mismatches_are_clear_errors(task, tiny_pipeline_factory, bn_layout):
    model, layout, data, train, fresh, _ = task
    with pytest.raises(DimensionMismatchError, match="generated parameters"):
        analyze_novelty(model, layout, train, fresh(3)[:, :-1], data)
    with pytest.raises(DimensionMismatchError):
        analyze_novelty(model, layout, train, fresh(0), data)
    other_pipe, _ = tiny_pipeline_factory(bn_layout)
    with pytest.raises(DimensionMismatchError, match="normalizer"):
        analyze_novelty(model, layout, train, fresh(3), data, normalizer=other_pipe)
    with pytest.raises(PDiffError, match="normalizer"):
        analyze_novelty(model, layout, train, fresh(3), data, normalizer="stats")
    with pytest.raises(PDiffError):
        analyze_novelty(nn.Linear(8, 4), layout, train, fresh(3), data)
