"""pdiff_hf.novelty.baselines: the normalized space and the noise / average / Gaussian baselines."""

import math

import pytest
import torch

from pdiff_hf import DimensionMismatchError, PDiffError
from pdiff_hf.novelty import StatsNormalizer, make_baselines, resolve_normalizer


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


def test_baseline_options_and_bad_values(task):
    _, layout, _, train, _, _ = task
    z = StatsNormalizer.from_checkpoints(train, layout).normalize(train)
    assert make_baselines(z, 0) == {}
    only = make_baselines(z, 3, noise_levels=(0.2,), average_k=None, gaussian=False)
    assert list(only) == ["noise_0.2"] and only["noise_0.2"][1] == {"kind": "noise", "amplitude": 0.2}
    with pytest.raises(PDiffError, match="non-negative noise levels"):
        make_baselines(z, 3, noise_levels=(-0.1,))
    with pytest.raises(PDiffError, match="average_k >= 1"):
        make_baselines(z, 3, average_k=0)


def test_pipeline_normalizer_is_used(task, tiny_pipeline_factory):
    from pdiff_hf.novelty import analyze_novelty

    model, layout, data, train, fresh, _ = task
    pipe, _ = tiny_pipeline_factory(layout, num_checkpoints=12)
    norm = resolve_normalizer(pipe, layout, train)
    assert norm.source == "pipeline autoencoder"
    assert resolve_normalizer(pipe.autoencoder, layout, train).source == "pipeline autoencoder"
    assert resolve_normalizer(norm, layout, train) is norm
    assert torch.allclose(norm.normalize(train), pipe.autoencoder.normalize(train))
    assert torch.allclose(norm.denormalize(norm.normalize(train)), train, atol=1e-4)
    r = analyze_novelty(model, layout, train, fresh(4), data, normalizer=pipe, num_baseline=3)
    assert r.summary["novelty"]["normalization"] == "pipeline autoencoder"
    default = analyze_novelty(model, layout, train, fresh(4), data, num_baseline=3)
    assert default.summary["novelty"]["normalization"] == "training checkpoint statistics"


def test_normalizer_mismatches_are_clear_errors(task, tiny_pipeline_factory, bn_layout):
    _, layout, _, train, _, _ = task
    other_pipe, _ = tiny_pipeline_factory(bn_layout)
    with pytest.raises(DimensionMismatchError, match="normalizer standardizes D="):
        resolve_normalizer(other_pipe, layout, train)
    with pytest.raises(PDiffError, match="expected normalizer to be None"):
        resolve_normalizer("stats", layout, train)
