"""Permutation specs: derived from nn.Sequential MLPs / CNNs and MNIST1DCNN, hand-written for transformers' ResNet,
and named errors for everything that cannot be aligned safely."""

import pytest
import torch
from torch import nn

from pdiff_hf.alignment import Axis, PermutationSpec, permutation_spec, resnet_spec, spec_from_module
from pdiff_hf.errors import AlignmentError, PDiffError
from pdiff_hf.tasks import MNIST1DCNN


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5), nn.LayerNorm(5), nn.GELU(),
                         nn.Dropout(0.1), nn.Linear(5, 3))  # fmt: skip


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.SiLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, 2))  # fmt: skip


def small_resnet(**kw):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = dict(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)
    return ResNetForImageClassification(ResNetConfig(**{**config, **kw})).eval()


def test_mlp_spec_ties_layer_norm_and_next_input():
    spec = spec_from_module(mlp(), torch.randn(4, 6))
    assert spec.group_sizes == {"0": 8, "3": 5}  # the last Linear reaches the output: not permuted
    assert spec.axes["0.weight"] == (Axis("0"), None) and spec.axes["0.bias"] == (Axis("0"),)
    for t in ("weight", "bias", "running_mean", "running_var"):
        assert spec.axes[f"1.{t}"] == (Axis("0"),)
    assert spec.axes["1.num_batches_tracked"] == ()
    assert spec.axes["3.weight"] == (Axis("3"), Axis("0"))
    assert spec.axes["4.weight"] == (Axis("3"),) and spec.axes["4.bias"] == (Axis("3"),)
    assert spec.axes["7.weight"] == (None, Axis("3")) and spec.axes["7.bias"] == (None,)
    assert [n for n, _ in spec.group_axes("0")] == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                    "1.running_var", "3.weight"]  # fmt: skip


def test_cnn_spec_flatten_ties_channels_times_positions():
    spec = spec_from_module(cnn(), torch.randn(2, 3, 8, 8))
    assert spec.group_sizes == {"0": 4, "4": 6, "8": 7}
    assert spec.axes["4.weight"] == (Axis("4"), Axis("0"), None, None)
    assert "4.bias" not in spec.axes  # bias=False
    assert spec.axes["8.weight"] == (Axis("8"), Axis("4", inner=16))  # 6 channels x (4 x 4) positions


def test_mnist1d_cnn_spec_classifier_input_is_channels_times_positions():
    model = MNIST1DCNN(channels=8)
    spec = spec_from_module(model, torch.randn(2, 1, 40))
    assert spec.group_sizes == {"features.0": 8, "features.3": 8, "features.6": 8}
    assert spec.axes["features.0.weight"] == (Axis("features.0"), None, None)  # input channels: the data
    assert spec.axes["features.6.weight"] == (Axis("features.6"), Axis("features.3"), None)
    assert spec.axes["classifier.weight"] == (None, Axis("features.6", inner=40))
    assert set(spec.shapes) == set(model.state_dict())
    assert spec.buffers == {n for n, _ in model.named_buffers()}  # running statistics: permuted, not matched
    assert spec.summary() == {"groups": spec.group_sizes, "permuted_tensors": 19}  # 3 x (conv w, b, 4 BN) + classifier.weight


def test_derivation_leaves_the_model_as_it_was():
    model = MNIST1DCNN(channels=8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec_from_module(model, torch.randn(5, 1, 40))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # no running statistic updated by the shape pass
        assert torch.equal(v, before[k]), k


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + self.b(h))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.attn, self.head = nn.Linear(4, 4), nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        h = self.proj(x)
        return self.head(self.attn(h, h, h)[0])


class OwnParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.scale, self.head = nn.Linear(4, 4), nn.Parameter(torch.ones(4)), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.a(x) * self.scale)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.a(torch.relu(self.a(x)))))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
            h = h * 2
        return self.head(h)


@pytest.mark.parametrize("model, x, message", [
    (Residual(), torch.randn(2, 4), "residual add"),
    (Concat(), torch.randn(2, 4), "residual add, concatenation"),
    (Attention(), torch.randn(2, 3, 4), "MultiheadAttention"),
    (nn.Sequential(nn.Conv1d(4, 8, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)), torch.randn(2, 4, 3),
     "grouped convolution"),
    (OwnParameter(), torch.randn(2, 4), "used directly in forward"),
    (Shared(), torch.randn(2, 4), "called twice"),
    (Branchy(), torch.randn(2, 4), "torch.fx can trace"),
    (nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3)), nn.Flatten(), nn.Linear(6, 2)), torch.randn(2, 4),
     "Unflatten"),
    (nn.Sequential(nn.Linear(4, 6), nn.PReLU(6), nn.Linear(6, 2)), torch.randn(2, 4), "PReLU"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(8, 2)), torch.randn(2, 1, 4),
     "GroupNorm"),
])  # fmt: skip
def test_unsafe_architectures_are_named_errors(model, x, message):
    with pytest.raises(AlignmentError, match=message):
        spec_from_module(model, x)


def test_transformers_vit_is_refused(tiny_vit):
    with pytest.raises(AlignmentError):
        spec_from_module(tiny_vit, torch.randn(1, 3, 8, 8))
    with pytest.raises(AlignmentError, match="example_input"):
        permutation_spec(tiny_vit)


def test_error_type_is_a_pdiff_error():
    assert issubclass(AlignmentError, PDiffError)
    from pdiff_hf import errors

    assert errors.AlignmentError is AlignmentError


def test_tied_axes_of_different_sizes_fail_at_construction():
    shapes = {"a.weight": (4, 3), "b.weight": (2, 5)}
    with pytest.raises(AlignmentError, match="tied axes of one size"):
        PermutationSpec.from_axes(shapes, {"a.weight": ("h", None), "b.weight": (None, "h")})
    with pytest.raises(AlignmentError, match="tied axes of one size"):
        PermutationSpec(group_sizes={"h": 4}, axes={"a.weight": ("h", None), "b.weight": (None, Axis("h", 2))},
                        shapes=shapes)  # fmt: skip
    with pytest.raises(AlignmentError, match="axes only for tensors of the state dict"):
        PermutationSpec.from_axes(shapes, {"c.weight": ("h",)})
    with pytest.raises(AlignmentError, match="one axis entry per dimension"):
        PermutationSpec.from_axes(shapes, {"a.weight": ("h",)})
    with pytest.raises(AlignmentError, match="unused"):
        PermutationSpec(group_sizes={"h": 4, "g": 2}, axes={"a.weight": ("h", None), "b.weight": (None, None)},
                        shapes=shapes)  # fmt: skip
    with pytest.raises(AlignmentError, match="buffers among the spec's tensors"):
        PermutationSpec.from_axes(shapes, {"a.weight": ("h", None)}, buffers=["a.running_mean"])
    ok = PermutationSpec.from_axes({"a.weight": (4, 3), "b.weight": (2, 8)}, {"a.weight": ("h", None),
                                                                              "b.weight": (None, Axis("h", 2))})
    assert ok.group_sizes == {"h": 4} and ok.group_axes("h") == (("a.weight", 0), ("b.weight", 1))


def test_check_state_dict_names_other_architectures():
    spec = spec_from_module(mlp(), torch.randn(4, 6))
    spec.check_state_dict(mlp().state_dict())
    with pytest.raises(AlignmentError, match="missing tensors"):
        spec.check_state_dict(cnn().state_dict())
    wider = mlp().state_dict()
    wider["0.weight"] = torch.zeros(9, 6)
    with pytest.raises(AlignmentError, match=r"expected '0.weight' of shape \(8, 6\)"):
        spec.check_state_dict(wider)


def test_resnet_spec_ties_each_residual_stream_and_shortcut():
    model = small_resnet()
    spec = permutation_spec(model)  # the hand-written spec, no example input needed
    stem, s1 = "resnet.embedder", "resnet.encoder.stages.1.layers.0.shortcut"
    assert spec.group_sizes == {stem: 16, "resnet.encoder.stages.0.layers.0.layer.0": 16, s1: 32,
                                "resnet.encoder.stages.1.layers.0.layer.0": 32}  # fmt: skip
    # stage 0 (identity shortcut): the layer's last convolution adds into the stem's stream
    assert spec.axes["resnet.encoder.stages.0.layers.0.layer.1.convolution.weight"][0] == Axis(stem)
    # stage 1: the shortcut projection reads the stem stream and starts a new one with the layer's last convolution
    assert spec.axes[f"{s1}.convolution.weight"] == (Axis(s1), Axis(stem), None, None)
    assert spec.axes[f"{s1}.normalization.running_var"] == (Axis(s1),)
    assert spec.axes["resnet.encoder.stages.1.layers.0.layer.1.convolution.weight"][0] == Axis(s1)
    assert spec.axes["resnet.encoder.stages.1.layers.0.layer.0.convolution.weight"][1] == Axis(stem)
    assert spec.axes["classifier.1.weight"] == (None, Axis(s1))
    assert set(spec.shapes) == set(model.state_dict())


def test_resnet_spec_variants():
    deep = resnet_spec(small_resnet(depths=[2, 2], layer_type="bottleneck", hidden_sizes=[16, 32]))
    streams = [g for g in deep.group_sizes if g == "resnet.embedder" or g.endswith("shortcut")]
    # bottleneck stage 0 (16 -> 16 channels, stride 1) has no projection; stage 1 has one: two streams
    assert streams == ["resnet.embedder", "resnet.encoder.stages.1.layers.0.shortcut"]
    assert len(deep.group_sizes) == 2 + 2 * 2 * 2  # plus two inner groups per bottleneck layer
    projected = resnet_spec(small_resnet(embedding_size=8))  # stage 0 projects 8 -> 16: a stream of its own
    assert projected.group_sizes["resnet.embedder"] == 8
    assert projected.group_sizes["resnet.encoder.stages.0.layers.0.shortcut"] == 16
    headless = resnet_spec(small_resnet(num_labels=0))  # the last stream is the output: not permuted
    assert "resnet.encoder.stages.1.layers.0.shortcut" not in headless.group_sizes
    with pytest.raises(AlignmentError, match="ResNetForImageClassification"):
        resnet_spec(mlp())
    with pytest.raises(AlignmentError):  # fx cannot prove the residual adds safe
        spec_from_module(small_resnet(), torch.randn(1, 3, 16, 16))
