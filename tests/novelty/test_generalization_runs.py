"""The held-out generalization test when whole runs are held out (train_runs / heldout_runs): each run's checkpoints
are near copies, so the energy-distance null holds out whole runs too. A generator of new runs of the same recipe is
then within the null (it is rejected by a null of single checkpoints); a shifted one stays above it."""

import pytest
import torch

from pdiff_hf.errors import GeneralizationTestError
from pdiff_hf.novelty.generalization import generalization_test

D, PER_RUN = 32, 5


def _runs(g, center, n_runs, per_run=PER_RUN):
    """``(n_runs * per_run, D)``: runs scattered around ``center``, each a tight cluster of checkpoints."""
    centers = center + 0.3 * torch.randn(n_runs, D, generator=g)
    return (centers.repeat_interleave(per_run, 0) + 0.01 * torch.randn(n_runs * per_run, D, generator=g)).float()


@pytest.fixture(scope="module")
def collection():
    g = torch.Generator().manual_seed(0)
    center = torch.randn(D, generator=g)
    train, held = _runs(g, center, 32), _runs(g, center, 4)
    new_runs = _runs(g, center, 60, per_run=1)  # what a perfect generator gives: new runs of the recipe
    ids = torch.arange(36).repeat_interleave(PER_RUN)
    return {"train": train, "held": held, "new": new_runs, "train_runs": ids[:160], "heldout_runs": ids[160:]}


def _energy(c, generated, **kw):
    out = generalization_test(c["train"], c["held"], generated, num_bootstrap=100, num_permutations=200, **kw)
    return out.comparisons["generated"]["energy_distance"], out.settings


def test_new_runs_are_within_a_whole_run_null_and_outside_a_checkpoint_null(collection):
    by_checkpoint, settings = _energy(collection, collection["new"])
    assert by_checkpoint["outcome"] == "above" and settings["null_holds_out"] == "checkpoints"
    by_run, settings = _energy(collection, collection["new"], train_runs=collection["train_runs"],
                               heldout_runs=collection["heldout_runs"])  # fmt: skip
    assert by_run["outcome"] == "within" and settings["null_holds_out"] == "whole runs"
    assert by_run["null_holds_out"] == "whole runs" and by_checkpoint["null_holds_out"] == "checkpoints"
    assert by_run["value"] == by_checkpoint["value"]  # the statistic is the same; only its null changes
    assert by_run["threshold"] > by_checkpoint["threshold"]


def test_a_shifted_generator_stays_above_the_whole_run_null(collection):
    shifted = collection["new"] + 1.0
    out = generalization_test(collection["train"], collection["held"], shifted, num_bootstrap=100,
                              num_permutations=200, train_runs=collection["train_runs"],
                              heldout_runs=collection["heldout_runs"])  # fmt: skip
    assert out.comparisons["generated"]["energy_distance"]["outcome"] == "above"
    assert out.verdict == "OFF-DISTRIBUTION"
    assert "(held-out vs training runs, whole runs held out, 200 permutations" in " ".join(out.summary)


def test_the_whole_run_null_is_deterministic_under_the_seed(collection):
    kw = dict(train_runs=collection["train_runs"], heldout_runs=collection["heldout_runs"])
    assert _energy(collection, collection["new"], **kw)[0] == _energy(collection, collection["new"], **kw)[0]


@pytest.mark.parametrize("change, message", [
    ({"heldout_runs": None}, "together"),
    ({"train_runs": torch.arange(159)}, r"train_runs to be \(160,\) integer run ids"),
    ({"heldout_runs": torch.zeros(20)}, r"heldout_runs to be \(20,\) integer run ids"),
    ({"heldout_runs": torch.zeros(20, dtype=torch.long)}, r"not training runs, found shared runs \[0\]"),
    ({"train_runs": torch.full((160,), 99)}, "more training runs than held-out runs"),
])  # fmt: skip
def test_run_ids_that_do_not_describe_whole_held_out_runs_are_named_errors(collection, change, message):
    kw = {"train_runs": collection["train_runs"], "heldout_runs": collection["heldout_runs"], **change}
    kw = {k: v for k, v in kw.items() if v is not None}
    with pytest.raises(GeneralizationTestError, match=message):
        generalization_test(collection["train"], collection["held"], collection["new"], **kw)
