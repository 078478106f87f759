"""pdiff_hf.novelty.generalization: the held-out generalization test on synthetic collections with known answers.

A "collection" is 200 draws of a linear 4-class classifier's weights (D = 32) around one solution; every 10th is held
out. Generated models are then: fresh draws of the same distribution (GENERALIZING), copies of training rows
(MEMORIZING), draws shrunk halfway towards the mean (AVERAGING), or draws shifted by half a standard deviation per
entry (OFF-DISTRIBUTION). Function space: the classifiers' test predictions on 600 examples.
"""

import json
import math
from fractions import Fraction

import pytest
import torch

from pdiff_hf.errors import (
    DimensionMismatchError,
    GeneralizationTestError,
    NonFiniteParametersError,
)
from pdiff_hf.novelty import StatsNormalizer, make_baselines
from pdiff_hf.novelty.generalization import (
    AVERAGING,
    GENERALIZING,
    INCONCLUSIVE,
    MEMORIZING,
    OFF_DISTRIBUTION,
    GeneralizationResult,
    generalization_test,
    generalization_verdict,
    heldout_split,
)

C, F, N = 4, 8, 200


class World:
    """A collection of linear classifiers, its exchangeable split, and the model of its distribution."""

    def __init__(self, seed: int = 0, spread: float = 0.3):
        self.g = torch.Generator().manual_seed(seed)
        self.w0 = torch.randn(C, F, generator=self.g)
        self.spread = spread
        self.x = torch.randn(600, F, generator=self.g)
        self.labels = (self.x @ self.w0.T + 0.8 * torch.randn(600, C, generator=self.g)).argmax(1)
        collection = self.sample(N)
        train_idx, held_idx = heldout_split(N)
        self.train, self.heldout = collection[train_idx], collection[held_idx]

    def sample(self, n: int) -> torch.Tensor:
        return (self.w0 + self.spread * torch.randn(n, C, F, generator=self.g)).flatten(1)

    def predict(self, params: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nf,mcf->mnc", self.x, params.view(-1, C, F)).argmax(-1)

    def test(self, generated, baselines=None, function_space=True, **kwargs):
        preds = None
        if function_space:
            preds = {"training": self.predict(self.train), "heldout": self.predict(self.heldout),
                     "generated": self.predict(generated)}
            preds.update({k: self.predict(v) for k, v in (baselines or {}).items()})
        mean = self.predict(self.train.mean(0, keepdim=True))[0]
        return generalization_test(
            self.train, self.heldout, generated, baselines, predictions=preds, labels=self.labels if preds else None,
            mean_prediction=mean if preds else None, **kwargs,
        )

    def cases(self):
        mean = self.train.mean(0)
        return {
            GENERALIZING: self.sample(100),
            MEMORIZING: self.train[torch.randint(0, len(self.train), (100,), generator=self.g)],
            AVERAGING: mean + 0.5 * (self.sample(100) - mean),
            OFF_DISTRIBUTION: self.sample(100) + 0.5 * self.train.std(0),
        }


@pytest.fixture(scope="module")
def world():
    return World(0)


# ------------------------------------------------------------------------------------------------------- split
def test_heldout_split_holds_out_every_kth_of_each_run():
    train, held = heldout_split(200)
    assert held.tolist() == list(range(9, 200, 10))
    assert sorted(train.tolist() + held.tolist()) == list(range(200))
    # two interleaved runs, rows out of step order: positions counted per run, by step
    runs = ["a", "b"] * 30
    steps = [s for s in range(30) for _ in range(2)][::-1]
    train, held = heldout_split(60, every=5, run_ids=runs, steps=steps)
    assert held.numel() == 12 and train.numel() == 48
    for run in ("a", "b"):
        ranks = {s: r for r, s in enumerate(sorted(steps[i] for i in range(60) if runs[i] == run))}
        held_steps = sorted(ranks[steps[i]] for i in held.tolist() if runs[i] == run)
        assert held_steps == [4, 9, 14, 19, 24, 29]  # every 5th, not the last ones
    # a fraction spreads a count evenly: 220 checkpoints, 20 held out = every 11th; 32 with 20 held out
    assert heldout_split(220, every=Fraction(220, 20))[1].tolist() == list(range(10, 220, 11))
    train, held = heldout_split(32, every=Fraction(32, 20), min_training=0)
    assert (train.numel(), held.numel()) == (12, 20) and held[-1] == 31 and 0 in train.tolist()
    assert torch.equal(heldout_split(32, every=1.6, min_training=0)[1], held)


def test_heldout_split_errors_before_any_work():
    assert [t.numel() for t in heldout_split(15, every=3)] == [10, 5]  # the smallest accepted split
    with pytest.raises(GeneralizationTestError, match="expected at least 10 training and 5 held-out.*found 10 "
                       "training and 4 held-out in 14"):
        heldout_split(14, every=3)
    with pytest.raises(GeneralizationTestError, match="found 5 training and 5 held-out"):
        heldout_split(10, every=2)
    with pytest.raises(GeneralizationTestError, match="every > 1"):
        heldout_split(200, every=1)
    with pytest.raises(GeneralizationTestError, match="expected 200 run_ids.*found 3"):
        heldout_split(200, run_ids=[0, 1, 2])


# ---------------------------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("function_space", [True, False])
def test_verdicts_of_known_distributions(world, function_space):
    for expected, generated in world.cases().items():
        result = world.test(generated, function_space=function_space, num_bootstrap=300, num_permutations=300)
        assert result.verdict == expected, (expected, result.summary)
        assert len(result.summary) == 3 and result.summary[0].startswith(expected + ":")
        gen = result.comparisons["generated"]
        if expected == GENERALIZING:
            assert gen["energy_distance"]["outcome"] == "within" and result.decided_by == "energy_distance"
            assert all(gen[k]["outcome"] == "within" for k in ("nn_distance", "diversity", "distance_to_mean"))
            assert gen["nn_distance"]["band"] == [0.666667, None]  # one-sided: farther than held-out is no fault
            assert gen["diversity"]["band"] == [0.666667, 1.5]
        if expected == MEMORIZING:
            assert result.decided_by == "nn_distance" and gen["nn_distance"]["high"] < 1e-6
            if function_space:
                assert gen["error_overlap_gap"]["value"] == 0.0  # functional copies
        if expected == AVERAGING:
            assert result.decided_by == "diversity" and 0.4 < gen["diversity"]["value"] < 0.6
        if expected == OFF_DISTRIBUTION:
            assert gen["energy_distance"]["value"] > gen["energy_distance"]["threshold"]
        assert result.settings["function_space"] is function_space
        # the training subsample is the reference: new draws of the collection, generalizing
        assert result.groups["training"]["verdict"] == GENERALIZING


def test_baselines_are_measured_like_generated_models(world):
    stats = StatsNormalizer(world.train.mean(0), world.train.std(0), torch.zeros(C * F, dtype=torch.bool))
    z = stats.normalize(world.train)
    made = make_baselines(z, 100, noise_levels=(0.01,), generator=torch.Generator().manual_seed(1),
                          pca_gaussian=True, resampled=True)
    assert list(made) == ["noise_0.01", "average_k16", "gaussian", "pca_gaussian", "resampled"]
    baselines = {k: stats.denormalize(v) for k, (v, _) in made.items()}
    result = world.test(world.sample(100), baselines=baselines, normalizer=stats, num_bootstrap=300,
                        num_permutations=300)
    verdicts = {k: result.groups[k]["verdict"] for k in baselines}
    assert verdicts["resampled"] == MEMORIZING  # the perfect memorizer
    assert verdicts["noise_0.01"] == MEMORIZING
    assert verdicts["average_k16"] == AVERAGING
    assert verdicts["pca_gaussian"] == GENERALIZING  # the collection is Gaussian: its own model generalizes
    assert result.best_baseline in ("pca_gaussian", "gaussian", "resampled")
    assert "best baseline" in result.summary[2]
    assert result.settings["normalization"] == "statistics"


def test_pca_gaussian_has_the_training_covariance_within_the_subspace():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(40, 3, generator=g)).Q.T  # (3, 40) orthonormal rows
    z = torch.randn(400, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0]) @ basis + 5.0
    samples = make_baselines(z, 20000, noise_levels=(), average_k=None, gaussian=False, pca_gaussian=True,
                             generator=g)["pca_gaussian"][0]
    assert samples.shape == (20000, 40)
    assert torch.allclose(samples.mean(0), z.mean(0), atol=0.06)
    assert torch.allclose(torch.cov(samples.T), torch.cov(z.T), atol=0.15)
    outside = (samples - z.mean(0)) - (samples - z.mean(0)) @ basis.T @ basis
    assert float(outside.abs().max()) < 1e-4  # nothing outside the checkpoints' span
    few = make_baselines(z, 5, noise_levels=(), average_k=None, gaussian=False, pca_gaussian=True, pca_components=1,
                         generator=g)["pca_gaussian"]
    assert few[1] == {"kind": "pca_gaussian", "components": 1}
    resampled = make_baselines(z, 50, noise_levels=(), average_k=None, gaussian=False, resampled=True,
                               generator=g)["resampled"][0]
    assert bool((resampled[:, None] == z[None]).all(-1).any(1).all())  # exact training rows


# --------------------------------------------------------------------------------------- determinism, JSON, errors
def test_same_seed_same_result_and_json_round_trip(world):
    generated = world.cases()[AVERAGING]
    a = world.test(generated, seed=3, num_bootstrap=200, num_permutations=200).to_dict()
    b = world.test(generated, seed=3, num_bootstrap=200, num_permutations=200).to_dict()
    c = world.test(generated, seed=4, num_bootstrap=200, num_permutations=200).to_dict()
    assert a == b
    assert a["comparisons"]["generated"]["diversity"]["low"] != c["comparisons"]["generated"]["diversity"]["low"]
    text = json.dumps(a, allow_nan=False)  # no NaN / Infinity: infinite ratios are null
    assert json.loads(text) == a
    back = GeneralizationResult.from_dict(json.loads(text))
    assert back.to_dict() == a and back.verdict == AVERAGING
    assert generalization_verdict(a["comparisons"]["generated"]) == (a["verdict"], a["decided_by"])
    tampered = json.loads(text)
    tampered["verdict"] = GENERALIZING
    with pytest.raises(GeneralizationTestError, match="recomputed"):
        GeneralizationResult.from_dict(tampered)
    md = back.markdown({"generalization_energy": "plots/generalization_energy.png"})
    assert md.startswith("## Held-out generalization test\n\n**AVERAGING: ")
    assert "![generalization_energy](plots/generalization_energy.png)" in md


def test_verdict_rules_on_stored_comparisons():
    def entry(outcome):
        return {"outcome": outcome}

    base = {k: entry("within") for k in ("nn_distance", "diversity", "distance_to_mean", "energy_distance")}
    assert generalization_verdict(base) == (GENERALIZING, "energy_distance")
    assert generalization_verdict({**base, "diversity": entry("straddles")}) == (INCONCLUSIVE, "diversity")
    # a straddling accuracy spread alone is reported, not decisive; outside its band it decides
    assert generalization_verdict({**base, "accuracy_std": entry("straddles")})[0] == GENERALIZING
    assert generalization_verdict({**base, "accuracy_std": entry("below")}) == (AVERAGING, "accuracy_std")
    assert generalization_verdict({**base, "accuracy_median": entry("below")}) == (OFF_DISTRIBUTION, "accuracy_median")
    # memorizing before averaging before off-distribution
    both = {**base, "nn_distance": entry("below"), "diversity": entry("below"), "energy_distance": entry("above")}
    assert generalization_verdict(both) == (MEMORIZING, "nn_distance")
    assert generalization_verdict({**both, "nn_distance": entry("within")}) == (AVERAGING, "diversity")


def test_bad_inputs_are_named_errors(world):
    gen = world.sample(20)
    with pytest.raises(GeneralizationTestError, match="at least 10 training checkpoints, found 9"):
        generalization_test(world.train[:9], world.heldout, gen)
    with pytest.raises(GeneralizationTestError, match="at least 5 held-out checkpoints, found 4"):
        generalization_test(world.train, world.heldout[:4], gen)
    with pytest.raises(DimensionMismatchError, match=r"generated models of shape \(N, 32\), found \(20, 31\)"):
        generalization_test(world.train, world.heldout, gen[:, :31])
    with pytest.raises(GeneralizationTestError, match="baseline names other than the groups'"):
        generalization_test(world.train, world.heldout, gen, {"heldout": gen})
    with pytest.raises(GeneralizationTestError, match="labels and mean_prediction"):
        generalization_test(world.train, world.heldout, gen, predictions={"generated": world.predict(gen)})
    preds = {"training": world.predict(world.train), "heldout": world.predict(world.heldout),
             "generated": world.predict(gen)[:, :10]}
    with pytest.raises(DimensionMismatchError, match=r"predictions\['generated'\] of shape \(20, 600\)"):
        generalization_test(world.train, world.heldout, gen, predictions=preds, labels=world.labels,
                            mean_prediction=world.labels)
    with pytest.raises(GeneralizationTestError, match="num_bootstrap >= 100"):
        generalization_test(world.train, world.heldout, gen, num_bootstrap=10)
    bad = gen.clone()
    bad[3, 0] = math.nan
    with pytest.raises(NonFiniteParametersError):
        generalization_test(world.train, world.heldout, bad)


def test_plots_are_written(world, tmp_path):
    result = world.test(world.sample(60), num_bootstrap=100, num_permutations=100)
    paths = result.save_plots(tmp_path / "plots")
    assert set(paths) == {"generalization_energy", "generalization_pca", "generalization_accuracy"}
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(GeneralizationTestError, match="read back from JSON"):
        GeneralizationResult.from_dict(result.to_dict()).save_plots(tmp_path / "again")


# ------------------------------------------------------------------------------------------------- on a network
def test_evaluate_generalization_on_a_network_reuses_the_novelty_predictions(task):
    """On a tiny MLP: every baseline by default, and the predictions of analyze_novelty (GroupMetrics.test_predictions)
    give the same result as computing them again."""
    from pdiff_hf.novelty import analyze_novelty, evaluate_generalization

    model, layout, data, train, fresh, _ = task
    heldout, generated = fresh(10), fresh(20)
    result = evaluate_generalization(model, layout, train, heldout, generated, data, seed=0, num_bootstrap=200,
                                     num_permutations=200)
    assert list(result.groups) == ["generated", "heldout", "training", "noise_0.01", "noise_0.05", "noise_0.1",
                                   "noise_0.15", "average_k16", "gaussian", "pca_gaussian", "resampled"]
    assert result.settings["function_space"] and result.groups["resampled"]["verdict"] == MEMORIZING
    assert result.test_accuracy["generated"].shape == (20,)

    report = analyze_novelty(model, layout, train, generated, data, seed=0, pca_gaussian=True, resampled=True)
    assert report.original.test_predictions.shape == (train.shape[0], data.test_y.numel())
    assert list(report.baselines)[-2:] == ["pca_gaussian", "resampled"]
    known = {"training": report.original.test_predictions, "generated": report.generated.test_predictions}
    known.update({k: g.test_predictions for k, g in report.baselines.items()})
    baselines = {k: g.params for k, g in report.baselines.items()}
    again = evaluate_generalization(model, layout, train, heldout, generated, data, baselines=baselines,
                                    predictions=known, seed=0, num_bootstrap=200, num_permutations=200)
    fresh_preds = evaluate_generalization(model, layout, train, heldout, generated, data, baselines=baselines,
                                          seed=0, num_bootstrap=200, num_permutations=200)
    assert again.to_dict() == fresh_preds.to_dict()
    with pytest.raises(GeneralizationTestError, match="at least 5 held-out checkpoints, found 3"):
        evaluate_generalization(model, layout, train, heldout[:3], generated, data)
