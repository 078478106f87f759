"""Built-in tasks: a classification data set and the network that p-diff generates parameters for.

One registry for everything that needs a task by name (``training/collect_checkpoints.py --task``,
``pdiff-hf evaluate --task``)::

    task = get_task("mnist1d")
    data = task.load_data()                      # ClassificationSplits (train / val / test tensors)
    model = task.build_model(data, channels=32)  # a new network for these splits (ModelMixin)
    target = task.model_class.from_pretrained("out/target")

``TASKS`` maps a name to a factory returning a :class:`Task`; factories import the task's code only when called, so
``import pdiff_hf.tasks`` stays cheap. Register your own with ``TASKS["name"] = lambda: Task(...)``.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from ..errors import UnknownTaskError

if TYPE_CHECKING:
    from torch import nn

    from ..evaluation.data import ClassificationSplits
    from .mnist1d import MNIST1DCNN, load_mnist1d


@dataclass(frozen=True)
class Task:
    """A classification task and its network.

    Args:
        load_data: ``load_data(**kwargs) -> ClassificationSplits`` (e.g. ``seed=`` for generated data).
        model_class: the network's class, a ``ModelMixin`` / ``ConfigMixin`` (``from_pretrained`` loads a saved one).
        description: one line for ``--help`` and reports.
        model_kwargs: ``model_kwargs(data) -> dict`` of constructor arguments that follow from the data (input
            length, number of classes); ``build_model`` merges the caller's arguments over them.
    """

    load_data: Callable[..., "ClassificationSplits"]
    model_class: Callable[..., "nn.Module"]
    description: str = ""
    model_kwargs: Optional[Callable[["ClassificationSplits"], Dict[str, Any]]] = None

    def build_model(self, data: "ClassificationSplits", **kwargs) -> "nn.Module":
        """A new (untrained) network for ``data``; ``kwargs`` override the data-derived constructor arguments."""
        derived = self.model_kwargs(data) if self.model_kwargs is not None else {}
        return self.model_class(**{**derived, **kwargs})


def _mnist1d() -> Task:
    from . import mnist1d  # looked up at call time, so tests can swap mnist1d.load_mnist1d for a small stand-in

    return Task(
        load_data=mnist1d.load_mnist1d,
        model_class=mnist1d.MNIST1DCNN,
        description="MNIST-1D (generated locally, no download) with MNIST1DCNN",
        model_kwargs=lambda data: {"in_length": int(data.train_x.shape[-1]), "num_classes": data.num_classes},
    )


def _mnist1d_shift() -> Task:
    from . import mnist1d_tasks

    return Task(
        load_data=mnist1d_tasks.load_task_split,
        model_class=mnist1d_tasks.MNIST1DHead,
        description="MNIST-1D with shifted labels (load_data(condition=t): y -> (y + t) mod 10) on the pooled "
        "features of a frozen MNIST1DCNN, with MNIST1DHead",
        model_kwargs=lambda data: {"in_features": int(data.train_x.shape[-1]), "num_classes": data.num_classes},
    )


# name -> factory returning a Task (factories keep imports lazy)
TASKS: Dict[str, Callable[[], Task]] = {"mnist1d": _mnist1d, "mnist1d-shift": _mnist1d_shift}


def get_task(name: str) -> Task:
    """The :class:`Task` registered as ``name``; :class:`UnknownTaskError` names the known tasks otherwise."""
    if name not in TASKS:
        raise UnknownTaskError(f"task: expected one of {', '.join(sorted(TASKS))}, found {name!r}")
    return TASKS[name]()


def model_classes() -> Dict[str, type]:
    """``{class name: class}`` of every registered task's network: the classes that
    ``PDiffPipeline.from_pretrained`` may build a ``target/`` component with (besides transformers and diffusers
    model classes). Imports each task's code."""
    out = {}
    for name in sorted(TASKS):
        cls = TASKS[name]().model_class
        if isinstance(cls, type):
            out[cls.__name__] = cls
    return out


_LAZY = {
    "MNIST1DCNN": "mnist1d_cnn",
    "MNIST1DHead": "mnist1d_head",
    "load_mnist1d": "mnist1d",
    "load_mnist1d_tasks": "mnist1d_tasks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "TASKS",
    "Task",
    "UnknownTaskError",
    "get_task",
    "model_classes",
    "MNIST1DCNN",
    "MNIST1DHead",
    "load_mnist1d",
    "load_mnist1d_tasks",
]
