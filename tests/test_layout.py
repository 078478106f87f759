import json

import pytest
import torch
from torch import nn

from pdiff_hf import (
    LayoutMismatchError,
    NonFiniteParametersError,
    ParamLayout,
    PDiffError,
    SelectionError,
)
from pdiff_hf.layout import last_norm_layer_names


def _perturb(module: nn.Module, seed: int = 1) -> None:
    """Overwrite every floating tensor with new random values (so a load is observable)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen).to(t.dtype) + 0.1)


def _round_trip(model: nn.Module, layout: ParamLayout, fresh: nn.Module) -> None:
    """module -> vector -> other module -> vector is exact, and the loaded tensors equal the source's."""
    vec = layout.flatten(model)
    assert vec.shape == (layout.dim,) and vec.dtype == torch.float32
    _perturb(fresh)
    assert not torch.equal(layout.flatten(fresh), vec)
    layout.load_into(fresh, vec)
    assert torch.equal(layout.flatten(fresh), vec)
    src = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    dst = {**dict(fresh.named_buffers()), **dict(fresh.named_parameters())}
    for name in layout.names:
        assert torch.equal(src[name], dst[name]), name
        assert dst[name].dtype == src[name].dtype


# ------------------------------------------------------------------------------------------------------ round trips
def test_round_trip_sequential_with_batchnorm(bn_mlp, bn_mlp_factory):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2, include_buffers=True)
    assert layout.names == [
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
        "1.running_mean",
        "1.running_var",
        "4.running_mean",
        "4.running_var",
    ]
    assert layout.dim == 8 * 8
    _round_trip(bn_mlp, layout, bn_mlp_factory(seed=5))


def test_round_trip_all_parameters(bn_mlp, bn_mlp_factory):
    layout = ParamLayout.from_module(bn_mlp)
    assert layout.names == [n for n, _ in bn_mlp.named_parameters()]
    assert layout.dim == sum(p.numel() for p in bn_mlp.parameters())
    assert all(s.kind == "parameter" for s in layout.specs)
    _round_trip(bn_mlp, layout, bn_mlp_factory(seed=3))


def test_include_buffers_selects_running_stats_but_not_num_batches_tracked(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, include_buffers=True)
    buffers = [s.name for s in layout.specs if s.kind == "buffer"]
    assert buffers == ["1.running_mean", "1.running_var", "4.running_mean", "4.running_var"]
    assert not any("num_batches_tracked" in n for n in layout.names)
    # explicitly asking for the counter alone matches nothing flattenable
    with pytest.raises(SelectionError, match="num_batches_tracked"):
        ParamLayout.from_module(bn_mlp, include="*.num_batches_tracked", include_buffers=True)
    # without include_buffers, no buffer is selected
    assert all(s.kind == "parameter" for s in ParamLayout.from_module(bn_mlp, last_norm_layers=1).specs)


def test_vit_last_norm_layers_and_classifier(tiny_vit):
    norms = [n for n, m in tiny_vit.named_modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) >= 3
    assert last_norm_layer_names(tiny_vit, 2) == norms[-2:]
    layout = ParamLayout.from_module(tiny_vit, last_norm_layers=2)
    assert layout.names == [f"{norms[-2]}.weight", f"{norms[-2]}.bias", f"{norms[-1]}.weight", f"{norms[-1]}.bias"]
    assert layout.dim == 4 * 16

    head = ParamLayout.from_module(tiny_vit, include="classifier.*")
    assert head.names == ["classifier.weight", "classifier.bias"]
    assert [s.shape for s in head.specs] == [(3, 16), (3,)]

    union = ParamLayout.from_module(tiny_vit, include="classifier.*", last_norm_layers=2)
    assert set(union.names) == set(layout.names) | set(head.names)
    assert union.names == [n for n, _ in tiny_vit.named_parameters() if n in set(union.names)]

    fresh = type(tiny_vit)(tiny_vit.config)
    for sel in (layout, head, union, ParamLayout.from_module(tiny_vit)):
        _round_trip(tiny_vit, sel, fresh)


def test_bert_last_norm_layers_classifier_and_int_buffers(tiny_bert):
    norms = [n for n, m in tiny_bert.named_modules() if isinstance(m, nn.LayerNorm)]
    layout = ParamLayout.from_module(tiny_bert, last_norm_layers=2)
    assert layout.names == [f"{norms[-2]}.weight", f"{norms[-2]}.bias", f"{norms[-1]}.weight", f"{norms[-1]}.bias"]
    assert not any("embeddings" in n for n in layout.names)

    head = ParamLayout.from_module(tiny_bert, include="classifier.*")
    assert head.names == ["classifier.weight", "classifier.bias"]

    # BERT's integer buffers (position_ids, token_type_ids) are never selected
    everything = ParamLayout.from_module(tiny_bert, include_buffers=True)
    assert everything == ParamLayout.from_module(tiny_bert)

    fresh = type(tiny_bert)(tiny_bert.config)
    for sel in (layout, head, everything):
        _round_trip(tiny_bert, sel, fresh)

    # the loaded network computes exactly what the source computes on the selection
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    fresh = type(tiny_bert)(tiny_bert.config).eval()
    ParamLayout.from_module(tiny_bert).load_into(fresh, ParamLayout.from_module(tiny_bert).flatten(tiny_bert))
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, tiny_bert(input_ids=ids).logits)


def test_order_is_module_order_not_pattern_order(bn_mlp):
    a = ParamLayout.from_module(bn_mlp, include=["6.*", "0.*", "4.*"])
    b = ParamLayout.from_module(bn_mlp, include=["0.*", "4.*", "6.*"])
    assert a == b and hash(a) == hash(b)
    assert a.names == ["0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"]
    # the JSON form round-trips to an equal layout
    assert ParamLayout.from_list(json.loads(json.dumps(a.to_list()))) == a
    # offsets tile [0, D)
    offsets = a.offsets()
    assert offsets[0][0] == 0 and offsets[-1][1] == a.dim
    assert all(prev[1] == cur[0] for prev, cur in zip(offsets, offsets[1:]))


def test_exclude_patterns(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, include="*", exclude=["*.bias", "0.*"])
    assert layout.names == ["1.weight", "3.weight", "4.weight", "6.weight"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_preserved(dtype, bn_mlp_factory):
    model = bn_mlp_factory(seed=0).to(dtype)
    layout = ParamLayout.from_module(model, last_norm_layers=2, include_buffers=True)
    assert {s.dtype for s in layout.specs} == {str(dtype).replace("torch.", "")}
    vec = layout.flatten(model)
    assert vec.dtype == torch.float32
    for name, value in layout.unflatten(vec).items():
        assert value.dtype == dtype, name
    fresh = bn_mlp_factory(seed=9).to(dtype)
    layout.load_into(fresh, vec)
    assert torch.equal(layout.flatten(fresh), vec)
    for name, tensor in fresh.named_parameters():
        assert tensor.dtype == dtype
    if dtype != torch.float64:  # half precision is exact in float32
        assert torch.equal(fresh[1].weight, model[1].weight)
        assert torch.equal(fresh[4].running_var, model[4].running_var)


def test_mixed_dtypes_round_trip(bn_mlp, bn_mlp_factory):
    bn_mlp[1].half()
    bn_mlp[4].bfloat16()
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2, include_buffers=True)
    fresh = bn_mlp_factory(seed=4)
    fresh[1].half()
    fresh[4].bfloat16()
    _round_trip(bn_mlp, layout, fresh)
    assert fresh[1].weight.dtype == torch.float16 and fresh[4].running_var.dtype == torch.bfloat16


def test_state_dict_flatten_equals_module_flatten(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2, include_buffers=True)
    state = bn_mlp.state_dict()
    assert torch.equal(layout.flatten(state), layout.flatten(bn_mlp))
    # and unflatten gives back the state dict's tensors
    for name, value in layout.unflatten(layout.flatten(state)).items():
        assert torch.equal(value, state[name])
    # a state dict with extra keys is fine
    assert torch.equal(layout.flatten({**state, "extra": torch.ones(3)}), layout.flatten(bn_mlp))


def test_unflatten_batched_stacks(bn_mlp, bn_mlp_factory):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2, include_buffers=True)
    models = [bn_mlp_factory(seed=s) for s in range(3)]
    for i, m in enumerate(models):
        _perturb(m, seed=10 + i)
    vectors = torch.stack([layout.flatten(m) for m in models])
    stacked = layout.unflatten(vectors)
    assert list(stacked) == layout.names
    for spec in layout.specs:
        assert stacked[spec.name].shape == (3,) + spec.shape
        for i in range(3):
            assert torch.equal(stacked[spec.name][i], layout.unflatten(vectors[i])[spec.name])
    assert torch.equal(stacked["4.running_var"][2], models[2][4].running_var)


def test_log_space_mask_marks_running_var_only(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2, include_buffers=True)
    mask = layout.log_space_mask()
    assert mask.dtype == torch.bool and mask.shape == (layout.dim,)
    expected = torch.zeros(layout.dim, dtype=torch.bool)
    for spec, (a, b) in zip(layout.specs, layout.offsets()):
        if spec.name.endswith("running_var"):
            expected[a:b] = True
    assert torch.equal(mask, expected) and int(mask.sum()) == 16
    assert not ParamLayout.from_module(bn_mlp, last_norm_layers=2).log_space_mask().any()


# ------------------------------------------------------------------------------------------------------------ errors
def test_selection_matching_nothing(bn_mlp):
    with pytest.raises(SelectionError, match="matched no floating-point"):
        ParamLayout.from_module(bn_mlp, include="nonexistent.*")
    with pytest.raises(SelectionError, match="matched no floating-point"):
        ParamLayout.from_module(bn_mlp, include="*", exclude="*")
    with pytest.raises(SelectionError, match="normalization layers"):
        ParamLayout.from_module(bn_mlp, last_norm_layers=3)
    with pytest.raises(SelectionError):
        ParamLayout.from_module(nn.Linear(3, 3), last_norm_layers=1)
    with pytest.raises(SelectionError):  # 0 layers is not "everything"
        ParamLayout.from_module(bn_mlp, last_norm_layers=0)
    assert issubclass(SelectionError, PDiffError) and issubclass(SelectionError, ValueError)


def test_wrong_vector_length(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2)
    for bad in (torch.zeros(layout.dim + 1), torch.zeros(layout.dim - 1), torch.zeros(2, layout.dim + 3)):
        with pytest.raises(LayoutMismatchError, match=f"D={layout.dim}"):
            layout.unflatten(bad)
    with pytest.raises(LayoutMismatchError):
        layout.load_into(bn_mlp, torch.zeros(layout.dim + 1))
    with pytest.raises(LayoutMismatchError):  # load_into takes one vector, not a batch
        layout.load_into(bn_mlp, torch.zeros(2, layout.dim))
    with pytest.raises(LayoutMismatchError):
        layout.unflatten(torch.zeros(1, 1, layout.dim))


def test_module_missing_tensor_or_different_shape(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2, include_buffers=True)
    vec = layout.flatten(bn_mlp)
    smaller = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))  # no module "4"
    with pytest.raises(LayoutMismatchError, match="missing"):
        layout.load_into(smaller, vec)
    with pytest.raises(LayoutMismatchError, match="missing"):
        layout.flatten(smaller)
    wider = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)
    )
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(LayoutMismatchError, match="shape mismatch"):
        layout.load_into(wider, vec)
    # nothing was written on failure
    for k, v in wider.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(LayoutMismatchError):
        layout.flatten(wider.state_dict())


def test_from_list_errors():
    with pytest.raises(LayoutMismatchError):
        ParamLayout.from_list([])
    with pytest.raises(LayoutMismatchError):
        ParamLayout.from_list([{"shape": [3]}])


@pytest.mark.parametrize(
    "entry, needle",
    [
        ({"name": "w", "shape": [-4]}, "shape of 'w' to be a list of positive integers, found [-4]"),
        ({"name": "w", "shape": [3, 0]}, "found [3, 0]"),
        ({"name": "w", "shape": [2.5]}, "found [2.5]"),
        ({"name": "w", "shape": "12"}, "found '12'"),
        ({"name": "w", "shape": [True]}, "found [True]"),
        ({"name": "w", "shape": [3], "dtype": "int64"}, "dtype of 'w' to be one of"),
        ({"name": "w", "shape": [3], "kind": "weights"}, "'parameter' or 'buffer', found 'weights'"),
        ("w", "expected layout entries with 'name' and 'shape', found 'w'"),
    ],
)
def test_from_list_refuses_shapes_dtypes_and_kinds_it_cannot_hold(entry, needle):
    with pytest.raises(LayoutMismatchError) as info:
        ParamLayout.from_list([{"name": "b", "shape": [2]}, entry])
    assert needle in str(info.value)


def test_from_list_refuses_repeated_names_and_a_non_list():
    with pytest.raises(LayoutMismatchError, match="found 'w' twice"):
        ParamLayout.from_list([{"name": "w", "shape": [2]}, {"name": "w", "shape": [3]}])
    with pytest.raises(LayoutMismatchError, match="expected a list of layout entries, found a dict"):
        ParamLayout.from_list({"name": "w", "shape": [2]})
    assert ParamLayout.from_list([{"name": "s", "shape": []}]).dim == 1  # a scalar tensor is a valid entry


def test_non_finite_vectors_are_not_loaded(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2)
    before = layout.flatten(bn_mlp)
    for bad_value in (float("nan"), float("inf"), float("-inf")):
        vec = before.clone()
        vec[3] = bad_value
        with pytest.raises(NonFiniteParametersError):
            layout.load_into(bn_mlp, vec)
        assert torch.equal(layout.flatten(bn_mlp), before)
    batch = torch.stack([before, before, before])
    batch[1, 0] = float("nan")
    with pytest.raises(NonFiniteParametersError, match=r"1 of 3 rows"):
        layout.unflatten(batch)
