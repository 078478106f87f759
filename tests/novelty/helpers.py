"""A synthetic 4-class task for the novelty tests, so no training is needed.

A tiny MLP whose classifier head is the generated selection (D = 132); checkpoints are draws around one "trained"
head:

* memorizing: generated = training checkpoints + tiny noise;
* novel: generated = fresh, independent draws from the checkpoint distribution (new checkpoints of the same runs);
* collapsed: generated = the mean checkpoint + small noise.

Also the helpers that read a report folder.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pdiff_hf import ClassificationSplits, ParamLayout

NUM_TRAIN = 40
NUM_GEN = 30
PLOTS = {"accuracy_vs_novelty", "nn_distance_hist", "accuracy_distribution"}


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


def memorizing_params(train, g, n=NUM_GEN):
    idx = torch.randint(0, train.shape[0], (n,), generator=g)
    return train[idx] + 1e-3 * train.std(0) * torch.randn(n, train.shape[1], generator=g)


def collapsed_params(train, g, n=NUM_GEN):
    return train.mean(0) + 0.05 * train.std(0) * torch.randn(n, train.shape[1], generator=g)


# ---------------------------------------------------------------------------------------------- report folders
def headings(markdown: str, level: str = "## "):
    """The headings of one level of a markdown text, in order."""
    return [line[len(level):] for line in markdown.splitlines() if line.startswith(level)]


def files(folder):
    """Every file under ``folder``, as sorted relative POSIX paths."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
