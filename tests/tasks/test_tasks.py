"""The task registry (pdiff_hf.tasks): lookup by name, named error for unknown names, networks built for the data."""

import pytest
import torch
from torch import nn

from pdiff_hf import ClassificationSplits
from pdiff_hf.errors import PDiffError
from pdiff_hf.tasks import TASKS, Task, UnknownTaskError, get_task


def _splits(length=24, num_classes=5, n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, length, generator=g)
    y = torch.arange(n) % num_classes
    return ClassificationSplits(x[:20], y[:20], x[20:30], y[20:30], x[30:], y[30:])


def test_mnist1d_task_builds_its_network_for_the_data():
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN, load_mnist1d

    task = get_task("mnist1d")
    assert task.model_class is MNIST1DCNN and task.load_data is load_mnist1d and task.description
    data = _splits(length=24, num_classes=5)
    model = task.build_model(data, channels=4)
    assert isinstance(model, MNIST1DCNN)
    assert (model.config.in_length, model.config.num_classes, model.config.channels) == (24, 5, 4)
    assert model(data.test_x).shape == (10, 5)
    assert task.build_model(data, num_classes=7).config.num_classes == 7  # the caller's arguments win


def test_unknown_task_is_a_named_error_listing_the_known_ones():
    with pytest.raises(UnknownTaskError, match=r"expected one of .*mnist1d.*found 'mnist2d'") as err:
        get_task("mnist2d")
    assert isinstance(err.value, PDiffError)


def test_registered_tasks_are_found_everywhere(monkeypatch):
    from pdiff_hf.commands import evaluate

    class Tiny(nn.Module):
        def __init__(self, width=3):
            super().__init__()
            self.net = nn.Linear(width, 2)

    monkeypatch.setitem(TASKS, "tiny", lambda: Task(_splits, Tiny, "tiny task"))
    assert get_task("tiny").build_model(_splits(), width=5).net.in_features == 5
    assert evaluate.TASKS is TASKS and evaluate.Task is Task  # one registry for the CLI and the scripts


def test_lazy_names():
    import pdiff_hf.tasks as tasks
    from pdiff_hf.tasks import mnist1d

    assert tasks.MNIST1DCNN is mnist1d.MNIST1DCNN and tasks.load_mnist1d is mnist1d.load_mnist1d
    assert {"MNIST1DCNN", "load_mnist1d", "get_task"} <= set(dir(tasks))
    with pytest.raises(AttributeError):
        tasks.nope  # noqa: B018
