"""Collection settings and data are checked before any training (CollectionError naming the value), and a diverging
collection stops at its first non-finite SGD step, naming the step."""

import pytest
import torch
from torch import nn

from pdiff_hf import ClassificationSplits, ParamLayout
from pdiff_hf.checkpoints import collect as collect_module
from pdiff_hf.checkpoints.collect import collect_checkpoints
from pdiff_hf.errors import CollectionError, PDiffError

torch.set_num_threads(1)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def make_data(n=40, y=None, x=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g) if x is None else x
    y = torch.randint(0, 3, (n,), generator=g) if y is None else y
    return ClassificationSplits(x, y, x[:10], y[:10], x[:10], y[:10])


@pytest.fixture
def never_trained(monkeypatch):
    """The first SGD step fails the test: the input must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the input was checked")

    monkeypatch.setattr(collect_module, "train_classifier", refuse)
    monkeypatch.setattr(torch.optim.SGD, "step", refuse)


def collect(data=None, model=None, **kwargs):
    model = model or make_model()
    layout = ParamLayout.from_module(model, last_norm_layers=1)
    options = dict(num_checkpoints=3, batch_size=8, progress=False)
    options.update(kwargs)
    return collect_checkpoints(model, data if data is not None else make_data(), layout, **options)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(learning_rate=float("nan")), "learning_rate to be a finite number > 0, found nan"),
        (dict(learning_rate=-0.1), "learning_rate to be a finite number > 0, found -0.1"),
        (dict(learning_rate=0), "found 0"),
        (dict(momentum=-0.5), r"momentum in \[0, 1\), found -0.5"),
        (dict(momentum=1.0), "found 1.0"),
        (dict(batch_size=0), "batch_size to be an int >= 1, found 0"),
        (dict(batch_size=8.0), "found 8.0"),
        (dict(train_epochs=1, train_learning_rate=float("inf")), "train_learning_rate to be a finite number > 0, found inf"),
    ],
)
def test_settings_refused_before_training(never_trained, kwargs, match):
    with pytest.raises(CollectionError, match=match):
        collect(**kwargs)


def test_float_labels_refused(never_trained):
    data = make_data(y=torch.full((40,), 0.5))
    with pytest.raises(CollectionError, match="train: expected integer class ids as labels, found torch.float32 labels"):
        collect(data)


def test_labels_beyond_the_classes_refused(never_trained):
    y = torch.randint(0, 3, (40,))
    y[7] = 5
    with pytest.raises(CollectionError, match=r"train: expected class ids in \[0, 2\] \(or -100\), found ids in \[0, 5\]"):
        collect(make_data(y=y))


def test_inputs_of_the_wrong_length_refused(never_trained):
    with pytest.raises(CollectionError, match=r"train: expected inputs the network takes, found inputs of shape \[\(2, 7\)\]"):
        collect(make_data(x=torch.randn(40, 7)))


def test_empty_train_split_refused(never_trained):
    empty = {"train": {"x": torch.zeros(0, 5), "labels": torch.zeros(0, dtype=torch.long)}}
    with pytest.raises(PDiffError, match="train: expected at least one example, found none"):
        collect(empty)


def test_divergence_stops_at_the_first_non_finite_step(monkeypatch):
    """A squared-logit loss on the last layer at lr 10 grows without bound: the collection stops at the first step
    whose loss or parameters are not finite, and no later step runs."""
    model = make_model()
    layout = ParamLayout.from_module(model, include="3.*")
    steps = []
    original = collect_module.check_finite_step
    monkeypatch.setattr(collect_module, "check_finite_step", lambda *a: (steps.append(a[2]), original(*a)))
    with pytest.raises(CollectionError, match=r"at SGD step \d+: the collection diverged") as info:
        collect_checkpoints(model, make_data(), layout, num_checkpoints=500, batch_size=8, learning_rate=10.0,
                            momentum=0.0, progress=False, loss_fn=lambda logits, labels: logits.pow(2).mean())  # fmt: skip
    assert f"step {steps[-1]}:" in str(info.value) and steps == list(range(1, steps[-1] + 1)) and steps[-1] > 1


def test_a_good_collection_is_unchanged():
    ds = collect()
    assert len(ds) == 3 and ds["step"] == [1, 2, 3]
