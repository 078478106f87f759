"""Collection recipes: branches of one early checkpoint (collect_branches), the warning for independent runs of a
whole network, and the weight-averaging check that detects mixed runs."""

import warnings

import pytest
import torch
from torch import nn

from pdiff_hf import ParamLayout, checkpoint_params
from pdiff_hf.checkpoints.collect_runs import collect_branches, collect_from_runs, selects_whole_network
from pdiff_hf.checkpoints.run_mixing import MixedRunsWarning, check_weight_averaging
from pdiff_hf.errors import DimensionMismatchError


def make_bn_mlp(seed: int = 0, hidden: int = 8) -> nn.Sequential:
    """Linear-BN-ReLU x2 then a linear classifier (6 inputs, 3 classes), in eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                          nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3))  # fmt: skip
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.2, 3.0)
    return model.eval()


def _data(model: nn.Module, n: int = 256, seed: int = 1):
    """Inputs and the labels ``model`` itself predicts: the teacher is 100% accurate."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return {"train": (x, y), "validation": (x[:128], y[:128])}


def _branches(model, data, layout, **kw):
    args = dict(num_branches=3, checkpoints_per_branch=4, trunk_epochs=1, branch_epochs=1, learning_rate=0.05,
                batch_size=64, evaluate=False, progress=False)  # fmt: skip
    return collect_branches(model, data, layout, **{**args, **kw})


def test_branches_share_the_trunk_and_differ_by_data_order():
    model = make_bn_mlp()
    data = _data(model)
    layout = ParamLayout.from_module(model, include="6.*")  # the classifier; the rest is the trunk's
    ds = _branches(model, data, layout)
    assert len(ds) == 12 and ds["run_id"] == [0] * 4 + [1] * 4 + [2] * 4
    assert ds["step"] == [1, 2, 3, 4] * 3 and len(set(ds["seed"])) == 3
    trunk = {k: v.clone() for k, v in model.state_dict().items()}
    params = checkpoint_params(ds)
    firsts = params[[0, 4, 8]]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])
    # the model is left at the trunk checkpoint; a second run from the same trunk state gives the same collection
    again = _branches(make_bn_mlp(), _data(make_bn_mlp()), layout)
    torch.testing.assert_close(checkpoint_params(again), params, rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, trunk[k])


def test_branches_train_only_the_selection():
    model = make_bn_mlp()
    data = _data(model)
    layout = ParamLayout.from_module(model, include="6.*")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _branches(model, data, layout, trunk_epochs=0)
    for k, v in model.state_dict().items():  # trunk_epochs=0: the model itself is the trunk, and it is unchanged
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("kw, message", [
    ({"num_branches": 0}, "num_branches >= 1"),
    ({"checkpoints_per_branch": 0}, "checkpoints_per_branch >= 1"),
    ({"branch_epochs": -1}, "branch_epochs >= 0"),
    ({"num_checkpoints": 5}, "num_checkpoints="),
    ({"seed": 3, "run_id": 1}, "run_id="),
])
def test_bad_branch_arguments(kw, message):
    model = make_bn_mlp()
    layout = ParamLayout.from_module(model, include="6.*")
    seed = kw.pop("seed", 0)
    with pytest.raises(DimensionMismatchError, match=message):
        collect_branches(model, _data(model), layout, seed=seed, progress=False, **kw)


def test_collect_from_runs_warns_for_independent_runs_of_a_whole_network():
    model = make_bn_mlp()
    data = _data(model)
    whole = ParamLayout.from_module(model, include_buffers=True)
    part = ParamLayout.from_module(model, include="6.*")
    assert selects_whole_network(model, whole) and not selects_whole_network(model, part)

    def reset(m, seed):
        torch.manual_seed(seed)
        for layer in m:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()

    kw = dict(num_checkpoints=2, learning_rate=0.01, batch_size=64, evaluate=False, progress=False)
    with pytest.warns(MixedRunsWarning, match="independent runs of a whole network"):
        collect_from_runs(model, data, whole, seeds=[0, 1], reset=reset, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixedRunsWarning)
        collect_from_runs(make_bn_mlp(), data, whole, seeds=[0, 1], **kw)  # branches of one state: no warning
        collect_from_runs(make_bn_mlp(), data, part, seeds=[0, 1], reset=reset, **kw)  # a subset on a shared base


def _permuted(model: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    """The same function with the first hidden layer's units permuted (another basin's copy of it)."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        other[0].weight.copy_(model[0].weight[perm])
        other[0].bias.copy_(model[0].bias[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(other[1], name).copy_(getattr(model[1], name)[perm])
        other[3].weight.copy_(model[3].weight[:, perm])
    return other


def test_weight_averaging_check_flags_mixed_basins_and_passes_one_basin():
    model = make_bn_mlp(hidden=32)
    data = _data(model)["train"]
    layout = ParamLayout.from_module(model, include_buffers=True)
    base = layout.flatten(model)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(32, generator=g)
    twin = layout.flatten(_permuted(model, perm))
    one_basin = base + 1e-3 * torch.randn(6, layout.dim, generator=g)
    mixed = torch.cat([one_basin[:3], twin + 1e-3 * torch.randn(3, layout.dim, generator=g)])
    run_ids = [0, 0, 0, 1, 1, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixedRunsWarning)
        ok = check_weight_averaging(model, layout, one_basin, data, run_ids=run_ids)
    assert not ok["mixed"] and ok["drop_pp"] < 10 and ok["checkpoint_median_accuracy"] > 95
    with pytest.warns(MixedRunsWarning, match="mixes independent runs"):
        bad = check_weight_averaging(model, layout, mixed, data, run_ids=run_ids)
    assert bad["mixed"] and bad["drop_pp"] > 10 and bad["run_pair_average_accuracy"] is not None
    assert bad["checkpoint_median_accuracy"] > 95  # every checkpoint works; only their averages break
    with pytest.raises(DimensionMismatchError, match="one run id per checkpoint"):
        check_weight_averaging(model, layout, mixed, data, run_ids=[0, 1])
