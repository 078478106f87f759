"""Novelty analysis against simple baselines (pdiff_hf.novelty, pdiff_hf.plots, ``pdiff-hf evaluate``).

Everything runs on a synthetic 4-class task and a tiny MLP whose classifier head is the generated selection
(D = 132); checkpoints are draws around one "trained" head, so no training is needed:

* memorizing: generated = training checkpoints + tiny noise;
* novel: generated = fresh, independent draws from the checkpoint distribution (new checkpoints of the same runs);
* collapsed: generated = the mean checkpoint + small noise.
"""

import json
import math

import pytest
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pdiff_hf import (
    CheckpointDatasetError,
    ClassificationSplits,
    DimensionMismatchError,
    ParamLayout,
    PDiffError,
    make_checkpoint_dataset,
)
from pdiff_hf.evaluation import summarize_accuracies
from pdiff_hf.novelty import (
    NOISE_LEVELS,
    StatsNormalizer,
    analyze_novelty,
    make_baselines,
    novelty_verdict,
    reference_noise,
    resolve_normalizer,
)

NUM_TRAIN = 40
NUM_GEN = 30


class TinyMLP(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_features: int = 8, hidden: int = 32, num_classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def make_task(seed: int = 0, spread: float = 0.5, label_noise: float = 0.6):
    """``(model, layout, data, train (T, D), fresh(n) -> (n, D), generator)``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyMLP().eval()
    layout = ParamLayout.from_module(model, include="net.2.*")
    theta0 = layout.flatten(model) * 3

    def labels(x):
        layout.load_into(model, theta0)
        with torch.no_grad():
            logits = model(x)
        return (logits + label_noise * logits.std() * torch.randn(logits.shape, generator=g)).argmax(1)

    xs = [torch.randn(n, 8, generator=g) for n in (16, 300, 600)]
    data = ClassificationSplits(xs[0], labels(xs[0]), xs[1], labels(xs[1]), xs[2], labels(xs[2]))
    scale = spread * float(theta0.std())
    train = theta0 + scale * torch.randn(NUM_TRAIN, layout.dim, generator=g)

    def fresh(n):
        return theta0 + scale * torch.randn(n, layout.dim, generator=g)

    return model, layout, data, train, fresh, g


@pytest.fixture(scope="module")
def task():
    return make_task()


def memorizing_params(train, g, n=NUM_GEN):
    idx = torch.randint(0, train.shape[0], (n,), generator=g)
    return train[idx] + 1e-3 * train.std(0) * torch.randn(n, train.shape[1], generator=g)


def collapsed_params(train, g, n=NUM_GEN):
    return train.mean(0) + 0.05 * train.std(0) * torch.randn(n, train.shape[1], generator=g)


@pytest.fixture(scope="module")
def novel_report(task):
    model, layout, data, train, fresh, _ = task
    return analyze_novelty(model, layout, train, fresh(NUM_GEN), data)


# ------------------------------------------------------------------------------------------------ verdicts
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


# ------------------------------------------------------------------------------------------------ summary
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


def test_baselines_are_seeded_and_shaped(task):
    _, layout, _, train, _, _ = task
    z = StatsNormalizer.from_checkpoints(train, layout).normalize(train)
    a = make_baselines(z, 7, generator=torch.Generator().manual_seed(3))
    b = make_baselines(z, 7, generator=torch.Generator().manual_seed(3))
    c = make_baselines(z, 7, generator=torch.Generator().manual_seed(4))
    assert list(a) == ["noise_0.01", "noise_0.05", "noise_0.1", "noise_0.15", "average_k16", "gaussian"]
    for name in a:
        assert a[name][0].shape == (7, layout.dim)
        assert torch.equal(a[name][0], b[name][0])
        assert not torch.equal(a[name][0], c[name][0])
    # noise of std a in normalized space is an RMS distance of about a from the source checkpoint
    src = torch.cdist(a["noise_0.1"][0], z).min(1).values / math.sqrt(layout.dim)
    assert 0.07 < float(src.median()) < 0.13
    # an average of k checkpoints is closer to the mean checkpoint than a checkpoint
    avg_dist = (a["average_k16"][0] - z.mean(0)).norm(dim=1).median()
    assert avg_dist < 0.5 * (z - z.mean(0)).norm(dim=1).median()
    assert make_baselines(z, 5, average_k=1000)["average_k40"][0].shape == (5, layout.dim)  # k capped at T


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
    model, layout, data, train, _, g = task
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


def test_pipeline_normalizer_is_used(task, tiny_pipeline_factory):
    model, layout, data, train, fresh, _ = task
    pipe, _ = tiny_pipeline_factory(layout, num_checkpoints=12)
    norm = resolve_normalizer(pipe, layout, train)
    assert norm.source == "pipeline autoencoder"
    assert torch.allclose(norm.normalize(train), pipe.autoencoder.normalize(train))
    assert torch.allclose(norm.denormalize(norm.normalize(train)), train, atol=1e-4)
    r = analyze_novelty(model, layout, train, fresh(4), data, normalizer=pipe, num_baseline=3)
    assert r.summary["novelty"]["normalization"] == "pipeline autoencoder"
    default = analyze_novelty(model, layout, train, fresh(4), data, num_baseline=3)
    assert default.summary["novelty"]["normalization"] == "training checkpoint statistics"


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


# -------------------------------------------------------------------------------------------------- plots
def test_plots_are_written_atomically(novel_report, tmp_path):
    paths = novel_report.save_plots(tmp_path)
    assert set(paths) == {"accuracy_vs_novelty", "nn_distance_hist", "accuracy_distribution"}
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp files left
    md = novel_report.markdown(paths, relative_to=tmp_path)
    assert "![accuracy_vs_novelty](accuracy_vs_novelty.png)" in md and "Verdict:" in md


def test_plot_functions_take_plain_arrays(tmp_path):
    from pdiff_hf import plots

    p = plots.plot_accuracy_distribution([70.0, 71.5, 72.0], torch.tensor([69.0, 73.0]), tmp_path / "a.png",
                                         others={"gaussian": [60.0, 61.0]})
    q = plots.plot_nn_distance_histograms({"original": [0.5, 0.6], "noise_0.01": [0.01, 0.011], "generated": [2.0]},
                                          tmp_path / "sub" / "h.png")
    r = plots.plot_accuracy_vs_novelty({"original": ([0.9, 0.8], [70.0, 71.0]), "generated": ([0.5], [69.0])},
                                       tmp_path / "s.png", good_threshold=69.5, novel_threshold=0.7)
    for path in (p, q, r):
        assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError):
        plots.plot_accuracy_vs_novelty({"generated": ([0.5, 0.4], [69.0])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def cli_setup(tmp_path, monkeypatch, tiny_models_factory):
    """A saved tiny target, checkpoint dataset and (untrained but valid) pipeline, with a registered ``tiny`` task."""
    from pdiff_hf import PDiffPipeline
    from pdiff_hf.commands import evaluate
    from pdiff_hf.training_utils import sampling_scheduler_for

    model, layout, data, train, _, _ = make_task()
    model.save_pretrained(tmp_path / "target")
    meta = {"run_id": [0] * NUM_TRAIN, "val_accuracy": [50.0] * NUM_TRAIN}
    make_checkpoint_dataset(train, layout, meta).save_to_disk(str(tmp_path / "ckpts"))
    ae, denoiser = tiny_models_factory(layout)
    ae.fit_normalization(train)
    ae.set_latent_scaling(train)
    denoiser.register_to_config(sample_abs_max=round(float(ae.params_to_latents(train).abs().max()), 4))
    PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser)).save_pretrained(
        tmp_path / "pipe"
    )
    monkeypatch.setitem(
        evaluate.TASKS, "tiny", lambda: evaluate.Task(lambda: make_task()[2], TinyMLP, "synthetic 4-class task")
    )
    return tmp_path, layout


def _cli(tmp_path, *extra):
    from pdiff_hf.cli import main

    return main(
        ["evaluate", "--pipeline", str(tmp_path / "pipe"), "--checkpoints", str(tmp_path / "ckpts"),
         "--target", str(tmp_path / "target"), "--task", "tiny", "--num-models", "6", "--num-inference-steps", "2",
         *extra]
    )


def test_cli_evaluate_writes_results_plots_and_report(cli_setup, capsys):
    tmp_path, _ = cli_setup
    out = tmp_path / "out"
    assert _cli(tmp_path, "--output-dir", str(out)) == 0
    printed = capsys.readouterr().out
    assert "| generated | 6 |" in printed and "Verdict:" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["generated"]["count"] == 6 and results["original"]["count"] == NUM_TRAIN
    assert results["baselines"]["noise_0.01"]["count"] == 6
    assert results["novelty"]["normalization"] == "pipeline autoencoder"
    assert results["verdict"][-1].startswith("Verdict:")
    assert "best_by_val" in results["original"] and results["timings_s"]["analyze"] > 0
    for name in results["plots"].values():
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "# p-diff evaluation" in report and "Verdict:" in report
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cli_layout_mismatch_is_a_clear_error(cli_setup, capsys):
    tmp_path, layout = cli_setup
    other = ParamLayout.from_module(TinyMLP(), include="net.0.*")
    make_checkpoint_dataset(torch.randn(5, other.dim), other).save_to_disk(str(tmp_path / "ckpts2"))
    code = _cli(tmp_path, "--checkpoints", str(tmp_path / "ckpts2"))
    err = capsys.readouterr().err
    assert code == 2
    assert "does not match the pipeline" in err and "Traceback" not in err


@pytest.mark.parametrize("rows", [0, 1])
def test_cli_too_few_checkpoints_is_a_clear_error(cli_setup, capsys, rows):
    tmp_path, layout = cli_setup
    make_checkpoint_dataset(torch.randn(rows, layout.dim), layout).save_to_disk(str(tmp_path / "few"))
    code = _cli(tmp_path, "--checkpoints", str(tmp_path / "few"))
    err = capsys.readouterr().err
    assert code == 2 and "at least 2 checkpoints" in err and "nan" not in err.lower()


def test_cli_missing_folder_is_a_clear_error(cli_setup, capsys):
    tmp_path, _ = cli_setup
    assert _cli(tmp_path, "--pipeline", str(tmp_path / "nope")) == 2
    assert "--pipeline: expected an existing folder" in capsys.readouterr().err
