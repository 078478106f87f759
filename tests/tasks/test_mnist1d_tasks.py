"""Conditional MNIST-1D tasks (pdiff_hf.tasks.mnist1d_tasks): class shifts that disagree everywhere, pooled features of
a frozen backbone, the head network, the registry entry, and named errors for bad task ids."""

import pytest
import torch

from pdiff_hf import ClassificationSplits
from pdiff_hf.errors import ConditionError
from pdiff_hf.tasks import MNIST1DCNN, MNIST1DHead, get_task, model_classes
from pdiff_hf.tasks.mnist1d_tasks import (
    feature_splits,
    load_mnist1d_tasks,
    pooled_features,
    relabel,
    shift_permutations,
)


def _splits(length=16, num_classes=10, n=60):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, length, generator=g)
    y = torch.arange(n) % num_classes
    return ClassificationSplits(x[:30], y[:30], x[30:45], y[30:45], x[45:], y[45:])


def test_shift_permutations_disagree_on_every_class():
    perms = shift_permutations(4)
    assert perms.shape == (4, 10) and perms.dtype == torch.long
    assert torch.equal(perms[0], torch.arange(10))
    assert torch.equal(perms[3], (torch.arange(10) + 3) % 10)
    for a in range(4):
        assert sorted(perms[a].tolist()) == list(range(10))  # a permutation
        for b in range(a + 1, 4):
            assert bool((perms[a] != perms[b]).all())  # a head for task a is wrong on every class of task b


@pytest.mark.parametrize("bad", [0, 11, -1, 2.0, True])
def test_bad_number_of_tasks_is_a_condition_error(bad):
    with pytest.raises(ConditionError, match=r"expected a number of tasks in \[1, 10\]"):
        shift_permutations(bad)


def test_relabel_maps_every_split_and_keeps_inputs():
    data = _splits()
    out = relabel(data, shift_permutations(3)[2])
    for split in ("train", "val", "test"):
        assert getattr(out, f"{split}_x") is getattr(data, f"{split}_x")
        assert torch.equal(getattr(out, f"{split}_y"), (getattr(data, f"{split}_y") + 2) % 10)
    with pytest.raises(ConditionError, match="label permutation of length >= 10"):
        relabel(data, torch.arange(5))


def test_pooled_features_are_the_mean_feature_map_and_leave_the_mode():
    torch.manual_seed(0)
    backbone = MNIST1DCNN(in_length=16, channels=4).train()
    x = _splits().test_x
    feats = pooled_features(backbone, x, batch_size=4)  # several batches
    backbone.eval()
    with torch.no_grad():
        expected = backbone.features(x).mean(-1)
    backbone.train()
    assert feats.shape == (15, 4) and torch.allclose(feats, expected)
    assert backbone.training  # restored
    assert feature_splits(backbone, _splits()).train_x.shape == (30, 4)


def test_load_tasks_trains_a_frozen_backbone_and_keeps_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    tasks = load_mnist1d_tasks(num_tasks=3, data=_splits(), backbone_epochs=1)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG state is untouched
    assert tasks.names == ["shift-0", "shift-1", "shift-2"] and len(tasks) == 3
    assert not tasks.backbone.training and not any(p.requires_grad for p in tasks.backbone.parameters())
    assert tasks.splits[0].train_x.shape == (30, 32)
    assert tasks.splits[1].test_x is tasks.splits[0].test_x  # one feature tensor, shared
    assert torch.equal(tasks.splits[2].val_y, (tasks.splits[0].val_y + 2) % 10)
    again = load_mnist1d_tasks(num_tasks=3, data=_splits(), backbone_epochs=1)
    assert torch.equal(again.splits[0].train_x, tasks.splits[0].train_x)  # deterministic under the seeds
    assert tasks.check_condition(2) == 2
    for bad in (3, -1, "1", 1.0):
        with pytest.raises(ConditionError, match=r"expected a task id in \[0, 3\)"):
            tasks.check_condition(bad)


def test_head_has_330_parameters_and_maps_features_to_logits():
    head = MNIST1DHead()
    assert sum(p.numel() for p in head.parameters()) == 330
    assert head(torch.randn(5, 32)).shape == (5, 10)


def test_registry_entry_builds_the_head_for_the_features(monkeypatch):
    from pdiff_hf.tasks import mnist1d_tasks

    calls = []

    def fake_cached(num_tasks, seed, backbone_epochs, backbone_seed):
        calls.append((num_tasks, seed))
        return load_mnist1d_tasks(num_tasks, data=_splits(), backbone_epochs=1)

    monkeypatch.setattr(mnist1d_tasks, "_cached_tasks", fake_cached)
    task = get_task("mnist1d-shift")
    assert task.model_class is MNIST1DHead and "shifted labels" in task.description
    data = task.load_data(condition=1, num_tasks=2)
    assert calls == [(2, 42)]
    model = task.build_model(data)
    assert (model.config.in_features, model.config.num_classes) == (32, 10)
    with pytest.raises(ConditionError, match=r"expected a task id in \[0, 2\), found 2"):
        task.load_data(condition=2, num_tasks=2)
    assert model_classes()["MNIST1DHead"] is MNIST1DHead  # loadable as a pipeline target
