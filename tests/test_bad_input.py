"""Bad input to the library's entry points is a named error before any work: ``fit_pdiff`` and output folders
(the Hub loader's cases are in ``tests/hub/test_load.py``, the layout's in ``tests/test_layout.py``)."""

import pytest
import torch

import pdiff_hf.fit
from pdiff_hf import CheckpointDatasetError, DimensionMismatchError, NonFiniteParametersError, PDiffConfig, ParamLayout
from pdiff_hf import fit_pdiff
from pdiff_hf.errors import LayoutMismatchError, PDiffConfigError

LAYOUT = ParamLayout.from_list([{"name": "w", "shape": [2, 3]}, {"name": "b", "shape": [2]}])  # D = 8


@pytest.fixture
def no_training(monkeypatch):
    """Building a model fails the test: the error must come before it."""

    def built(*args, **kwargs):
        raise AssertionError("fit_pdiff built a model before checking its inputs")

    monkeypatch.setattr(pdiff_hf.fit, "build_autoencoder", built)


@pytest.mark.parametrize(
    "params, layout, config, error, needle",
    [
        (torch.randn(1, 8), LAYOUT, None, CheckpointDatasetError, "at least 2 checkpoints (rows)"),
        (torch.randn(8), LAYOUT, None, DimensionMismatchError, "expected checkpoints of shape (N, 8) for the layout, found (8,)"),
        (torch.randn(4, 2, 4), LAYOUT, None, DimensionMismatchError, "found (4, 2, 4)"),
        (torch.randn(4, 9), LAYOUT, None, DimensionMismatchError, "found (4, 9)"),
        (torch.ones(4, 8, dtype=torch.long), LAYOUT, None, DimensionMismatchError, "found a torch.int64 tensor"),
        ([[0.0] * 8] * 4, LAYOUT, None, DimensionMismatchError, "found a list"),
        (torch.full((4, 8), float("nan")), LAYOUT, None, NonFiniteParametersError, "found NaN/Inf in 4 of 4 rows"),
        (torch.randn(4, 8), [{"name": "w"}], None, LayoutMismatchError, "expected a ParamLayout, found a list"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(ae_steps=0), PDiffConfigError, "config.ae_steps to be a positive"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(denoiser_train_batch_size=0), PDiffConfigError, "found 0"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(ae_learning_rate=float("inf")), PDiffConfigError, "found inf"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(denoiser_learning_rate=float("nan")), PDiffConfigError, "found nan"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(num_train_timesteps=1), PDiffConfigError, "integer >= 2, found 1"),
    ],
)
def test_fit_pdiff_refuses_bad_input_before_training(no_training, params, layout, config, error, needle):
    with pytest.raises(error) as info:
        fit_pdiff(params, layout, config, progress=False)
    assert needle in str(info.value)
