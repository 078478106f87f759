"""BatchNorm recalibration: statistics equal the data's, modes and momenta restored, named errors before any change."""

import pytest
import torch
from torch import nn

from pdiff_hf.errors import RecalibrationError
from pdiff_hf.evaluation.recalibration import (
    batchnorm_layers,
    recalibrate_batchnorm,
    recalibrate_parameters,
)
from pdiff_hf.layout import ParamLayout


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                         nn.Linear(4 * 8, 3), nn.BatchNorm1d(3))


def _inputs(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, generator=torch.Generator().manual_seed(seed)) * 3 + 2


def test_statistics_are_those_of_the_batches():
    net, x = _net(), _inputs()
    net[1].running_mean.fill_(100.0)
    recalibrate_batchnorm(net, x, num_batches=None, batch_size=16)
    h = net[0](x)  # (64, 4, 8): what the first BatchNorm sees
    per_batch = h.detach().reshape(4, 16, 4, 8)
    expected_mean = per_batch.mean(dim=(1, 3)).mean(0)  # cumulative average of the 4 batch means
    expected_var = per_batch.var(dim=(1, 3), unbiased=True).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, expected_var, rtol=1e-5, atol=1e-5)
    assert int(net[1].num_batches_tracked) == 4


def test_modes_and_momentum_restored_and_dropout_off_during_recalibration():
    net = _net()
    net.train()
    net[6].eval()
    recalibrate_batchnorm(net, _inputs(), num_batches=2, batch_size=16)
    assert net.training and net[1].training and not net[6].training
    assert net[1].momentum == 0.1 and net[6].momentum == 0.1
    # dropout off: two recalibrations on the same data give identical statistics (dropout would randomize them)
    other = _net()
    recalibrate_batchnorm(other, _inputs(), num_batches=2, batch_size=16)
    torch.testing.assert_close(net[6].running_var, other[6].running_var, rtol=0, atol=0)


def test_num_batches_limits_the_batches_used():
    a, b, x = _net(), _net(), _inputs()
    recalibrate_batchnorm(a, x, num_batches=1, batch_size=16)
    recalibrate_batchnorm(b, x[:16], num_batches=None, batch_size=16)
    torch.testing.assert_close(a[1].running_mean, b[1].running_mean, rtol=0, atol=0)
    assert int(a[1].num_batches_tracked) == 1


def test_dataloader_of_pairs_and_weights_untouched():
    net, x = _net(), _inputs()
    before = {k: v.clone() for k, v in net.named_parameters()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=32)
    recalibrate_batchnorm(net, loader, num_batches=None)
    assert int(net[1].num_batches_tracked) == 2
    for k, v in net.named_parameters():
        assert torch.equal(v, before[k])


def test_no_batchnorm_is_a_named_error():
    with pytest.raises(RecalibrationError, match="expected a model with BatchNorm layers"):
        recalibrate_batchnorm(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 3))
    frozen = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False))
    with pytest.raises(RecalibrationError, match="found none"):
        recalibrate_batchnorm(frozen, torch.randn(4, 3))


@pytest.mark.parametrize("num_batches", [0, -1, 1.5, True])
def test_bad_num_batches(num_batches):
    with pytest.raises(RecalibrationError, match="expected num_batches"):
        recalibrate_batchnorm(_net(), _inputs(), num_batches=num_batches)


def test_no_batch_is_an_error_before_any_change():
    net = _net()
    net[1].running_mean.fill_(7.0)
    with pytest.raises(RecalibrationError, match="at least one batch"):
        recalibrate_batchnorm(net, [], num_batches=None)
    assert torch.all(net[1].running_mean == 7.0) and net[1].momentum == 0.1


def test_recalibrate_parameters_matches_per_model_recalibration():
    net, x = _net(), _inputs()
    layout = ParamLayout.from_module(net, include_buffers=True)
    params = torch.stack([layout.flatten(_net(s)) for s in range(3)])
    params[:, :4] += torch.randn(3, 4)  # change the conv weights so the statistics differ per model
    out = recalibrate_parameters(net, layout, params, x, num_batches=2, batch_size=16)
    for i in range(3):
        one = layout.load_into(_net(), params[i])
        recalibrate_batchnorm(one, x, num_batches=2, batch_size=16)
        torch.testing.assert_close(out[i], layout.flatten(one), rtol=0, atol=0)
    stats = [i for i, name in enumerate(layout.names) if "running" in name]
    assert stats and not torch.equal(out, params)
    unchanged = torch.ones(layout.dim, dtype=torch.bool)
    for name, (start, end) in zip(layout.names, layout.offsets()):
        if "running" in name:
            unchanged[start:end] = False
    assert torch.equal(out[:, unchanged], params[:, unchanged])
    assert len(batchnorm_layers(net)) == 2


def test_recalibrate_parameters_needs_the_statistics_in_the_layout():
    net = _net()
    layout = ParamLayout.from_module(net)  # parameters only, no running statistics
    with pytest.raises(RecalibrationError, match="every BatchNorm running statistic"):
        recalibrate_parameters(net, layout, layout.flatten(net)[None], _inputs())


def test_generated_models_recalibrate_when_built():
    from pdiff_hf.pipelines.pipeline_output import GeneratedModels

    net, x = _net(), _inputs()
    layout = ParamLayout.from_module(net, include_buffers=True)
    vectors = torch.stack([layout.flatten(_net(s)) for s in range(3)])
    vectors[:, :4] += 1.0
    plain = GeneratedModels(net, layout, vectors)
    recal = GeneratedModels(net, layout, vectors, recalibrate_batchnorm=(x, torch.zeros(64)), recalibration_batches=2)
    expected = recalibrate_parameters(net, layout, vectors, x, num_batches=2, batch_size=128)
    for i in range(3):
        assert torch.equal(layout.flatten(plain[i]), vectors[i])
        model = recal[i]
        assert not model.training
        torch.testing.assert_close(layout.flatten(model), expected[i], rtol=0, atol=0)
    torch.testing.assert_close(layout.flatten(recal[1:][0]), expected[1], rtol=0, atol=0)  # slices keep it
    assert torch.equal(recal.vectors, vectors)  # the vectors stay the generated ones


def test_generated_models_refuse_recalibration_without_batchnorm():
    from pdiff_hf.pipelines.pipeline_output import GeneratedModels

    net = nn.Sequential(nn.Linear(3, 2))
    layout = ParamLayout.from_module(net)
    with pytest.raises(RecalibrationError, match="expected a model with BatchNorm layers"):
        GeneratedModels(net, layout, layout.flatten(net)[None], recalibrate_batchnorm=torch.randn(4, 3))
