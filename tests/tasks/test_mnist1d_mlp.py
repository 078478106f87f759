"""MNIST1DMLP: shapes, parameter count and names, save/load, bad configs."""

import pytest
import torch

from pdiff_hf import ParamLayout
from pdiff_hf.tasks.mnist1d_mlp import MNIST1DMLP, mlp_num_parameters


def test_forward_shapes_and_parameter_count():
    model = MNIST1DMLP(in_length=12, hidden_sizes=(8, 6), num_classes=3)
    assert model(torch.randn(5, 1, 12)).shape == (5, 3) and model(torch.randn(5, 12)).shape == (5, 3)
    count = mlp_num_parameters(12, (8, 6), 3)
    assert sum(p.numel() for p in model.parameters()) == count == 12 * 8 + 8 + 8 * 6 + 6 + 6 * 3 + 3
    names = [f"layers.{i}.{k}" for i in (0, 2, 4) for k in ("weight", "bias")]
    assert [n for n, _ in model.named_parameters()] == names
    assert mlp_num_parameters(40, (512, 128), 10) == 87_946 and mlp_num_parameters(40, (1024, 1024), 10) == 1_101_834
    assert ParamLayout.from_module(MNIST1DMLP(hidden_sizes=())).dim == 410  # a linear classifier


def test_save_load_gives_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = MNIST1DMLP(in_length=12, hidden_sizes=(8,), num_classes=3).eval()
    model.save_pretrained(tmp_path)
    loaded = MNIST1DMLP.from_pretrained(tmp_path).eval()
    x = torch.randn(4, 1, 12)
    assert torch.equal(model(x), loaded(x)) and list(loaded.config.hidden_sizes) == [8]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"in_length": 0}, "in_length to be an integer >= 1, found 0"), ({"hidden_sizes": (4, 0)}, r"found \[4, 0\]"),
     ({"num_classes": 1.5}, "num_classes to be an integer >= 1, found 1.5")],  # fmt: skip
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNIST1DMLP(**kwargs)


def test_wrong_input_length_is_refused():
    with pytest.raises(ValueError, match=r"inputs of length 40, found shape \(2, 1, 39\)"):
        MNIST1DMLP()(torch.randn(2, 1, 39))
