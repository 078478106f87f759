import pytest
import torch

from pdiff_hf import DimensionMismatchError, LatentUNet1DModel


def _tiny(**kwargs) -> LatentUNet1DModel:
    torch.manual_seed(0)
    config = dict(in_channels=2, sample_length=5, block_out_channels=(8, 16), norm_num_groups=4)
    config.update(kwargs)
    return LatentUNet1DModel(**config).eval()


@torch.no_grad()
def test_per_sample_timesteps():
    model = _tiny()
    x = torch.randn(2, 2, 5, generator=torch.Generator().manual_seed(0))
    batched = model(x, torch.tensor([0, 999])).sample
    alone0 = model(x[:1], torch.tensor([0])).sample
    alone1 = model(x[1:], torch.tensor([999])).sample
    torch.testing.assert_close(batched[:1], alone0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched[1:], alone1, rtol=1e-5, atol=1e-6)
    # sample 0 really depends on its own timestep: running it at t=999 gives something else
    other = model(x[:1], torch.tensor([999])).sample
    assert (other - alone0).abs().max() > 1e-3
    # swapping the timesteps swaps the outputs
    swapped = model(x.flip(0), torch.tensor([999, 0])).sample
    torch.testing.assert_close(swapped.flip(0), batched, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_scalar_timestep_broadcast():
    model = _tiny()
    x = torch.randn(3, 2, 5)
    expected = model(x, torch.full((3,), 250)).sample
    for t in (250, torch.tensor(250), torch.tensor([250]), 250.0):
        torch.testing.assert_close(model(x, t).sample, expected, rtol=1e-6, atol=1e-6)
    assert model(x, 250, return_dict=False)[0].shape == (3, 2, 5)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 16, 33])
@torch.no_grad()
def test_odd_latent_lengths(length):
    model = _tiny(block_out_channels=(8, 8, 16), sample_length=length)
    x = torch.randn(2, 2, length)
    out = model(x, torch.tensor([10, 500])).sample
    assert out.shape == (2, 2, length)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_layers_per_block_and_single_level():
    for kwargs in ({"layers_per_block": 2}, {"block_out_channels": (8,)}):
        model = _tiny(**kwargs)
        assert model(torch.randn(2, 2, 5), 3).sample.shape == (2, 2, 5)


def test_trainable_gradient_flows():
    model = _tiny().train()
    x = torch.randn(4, 2, 5)
    loss = model(x, torch.tensor([1, 2, 3, 4])).sample.pow(2).mean()
    loss.backward()
    assert model.conv_in.weight.grad is not None and model.conv_in.weight.grad.abs().sum() > 0
    assert model.time_embedding.linear_1.weight.grad.abs().sum() > 0


def test_shape_errors():
    model = _tiny()
    with pytest.raises(DimensionMismatchError, match="one timestep per sample"):
        model(torch.randn(3, 2, 5), torch.tensor([1, 2]))
    with pytest.raises(DimensionMismatchError, match="latents"):
        model(torch.randn(3, 3, 5), 1)
    with pytest.raises(DimensionMismatchError):
        model(torch.randn(2, 5), 1)


def test_config_records_objective(tmp_path):
    model = _tiny(num_train_timesteps=500, prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    model.register_to_config(sample_abs_max=3.5)
    model.save_pretrained(str(tmp_path))
    loaded = LatentUNet1DModel.from_pretrained(str(tmp_path))
    for key in ("num_train_timesteps", "prediction_type", "beta_schedule", "sample_abs_max", "block_out_channels"):
        expected = model.config[key]
        assert loaded.config[key] == (list(expected) if isinstance(expected, tuple) else expected), key
    x = torch.randn(2, 2, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([3, 400])).sample, model(x, torch.tensor([3, 400])).sample)


@pytest.mark.parametrize("kwargs", [dict(block_out_channels=(6, 12)), dict(block_out_channels=()),
                                    dict(block_out_channels=(8, 0)), dict(prediction_type="x0")])  # fmt: skip
def test_bad_config_is_refused_with_the_valid_options(kwargs):
    with pytest.raises(ValueError, match="expected"):
        _tiny(**kwargs)


@torch.no_grad()
def test_unconditional_denoiser_initializes_as_before_conditioning():
    """num_conditions=0 builds no embedding and draws the same initial weights; old configs load unchanged."""
    plain, conditional = _tiny(), _tiny(num_conditions=3)
    assert plain.class_embedding is None and conditional.class_embedding.num_embeddings == 4  # 3 + null row
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, conditional.state_dict()[name])
    assert "num_conditions" in plain.config and plain.config.num_conditions == 0


@torch.no_grad()
def test_condition_changes_the_prediction_and_none_is_the_null_row(tmp_path):
    model = _tiny(num_conditions=3, condition_names=["a", "b", "c"])
    torch.nn.init.normal_(model.class_embedding.weight)
    x, t = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 500, 900])
    out0 = model(x, t, condition=torch.tensor([0, 0, 0])).sample
    out1 = model(x, t, condition=torch.tensor([1, 1, 1])).sample
    assert (out0 - out1).abs().max() > 1e-3
    null = model(x, t, condition=torch.tensor([3, 3, 3])).sample
    assert torch.equal(model(x, t).sample, null)
    # per-sample conditions: sample i depends only on its own id
    mixed = model(x, t, condition=torch.tensor([0, 1, 0])).sample
    torch.testing.assert_close(mixed[1], out1[1], rtol=1e-5, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = LatentUNet1DModel.from_pretrained(tmp_path)
    assert loaded.config.condition_names == ["a", "b", "c"]
    assert torch.equal(loaded(x, t, condition=torch.tensor([2, 0, 1])).sample,
                       model(x, t, condition=torch.tensor([2, 0, 1])).sample)  # fmt: skip


@pytest.mark.parametrize(
    "condition, match",
    [(torch.tensor([0, 4]), r"ids in \[0, 3\]"), (torch.tensor([0, -1]), r"ids in \[0, 3\]"),
     (torch.tensor([0.0, 1.0]), "int64"), (torch.tensor([0, 1, 2]), r"shape \(2,\)")],  # fmt: skip
)
def test_bad_conditions_are_named_errors(condition, match):
    from pdiff_hf import ConditionError

    with pytest.raises(ConditionError, match=match):
        _tiny(num_conditions=3)(torch.randn(2, 2, 5), 5, condition=condition)
    with pytest.raises(ConditionError, match="unconditional"):
        _tiny()(torch.randn(2, 2, 5), 5, condition=torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs", [dict(num_conditions=-1), dict(num_conditions=2, condition_names=["a"]),
                                    dict(num_conditions=2, condition_names=["a", "a"])])  # fmt: skip
def test_bad_condition_config_is_refused(kwargs):
    with pytest.raises(ValueError, match="expected"):
        _tiny(**kwargs)
