import pytest
import torch
from torch import nn

from pdiff_hf import (
    DimensionMismatchError,
    LayoutMismatchError,
    NonFiniteParametersError,
    ParamLayout,
    evaluate_parameters,
    predict_with_parameters,
    select_best,
    summarize_accuracies,
)
from pdiff_hf.errors import MissingLabelsError, ModelOutputError
from pdiff_hf.evaluation.batched import accuracy_from_predictions


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def _perturbed_vectors(model, layout, n=7, scale=0.3, seed=0):
    """``n`` vectors around the model's own selection (so accuracies differ between models)."""
    gen = torch.Generator().manual_seed(seed)
    base = layout.flatten(model)
    vectors = base + scale * torch.randn(n, layout.dim, generator=gen) * base.abs().clamp_min(0.1)
    mask = layout.log_space_mask()
    vectors[:, mask] = vectors[:, mask].abs() + 0.05  # variances stay positive
    return vectors


def _loop_predictions(model, layout, vectors, x):
    """The plain reference: load each vector into the module and run it."""
    preds = []
    with torch.no_grad():
        for v in vectors:
            layout.load_into(model, v)
            preds.append(model(x).argmax(-1))
    return torch.stack(preds)


@pytest.mark.parametrize(
    "selection",
    [
        {"last_norm_layers": 2, "include_buffers": True},
        {"last_norm_layers": 2},
        {"include": "6.*"},
        {"include": ["0.*", "6.*"]},
    ],
)
def test_matches_plain_loop(bn_mlp_factory, selection):
    model = bn_mlp_factory(seed=0).eval()
    layout = ParamLayout.from_module(model, **selection)
    vectors = _perturbed_vectors(model, layout)
    x, y = _data()
    original = {k: v.clone() for k, v in model.state_dict().items()}

    # small chunks and batches so that the chunking paths are exercised
    preds = predict_with_parameters(model, layout, vectors, x, batch_size=20, models_per_chunk=3)
    acc = evaluate_parameters(model, layout, vectors, x, y, batch_size=20, models_per_chunk=3)
    assert preds.shape == (7, 64) and preds.dtype == torch.long
    assert acc.shape == (7,)
    # evaluation does not modify the network
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k

    reference = _loop_predictions(model, layout, vectors, x)
    assert torch.equal(preds, reference)
    expected_acc = (reference == y).float().mean(-1) * 100
    assert torch.equal(acc, expected_acc)
    assert torch.unique(acc).numel() > 1  # the perturbations really change the models

    # the whole set in one chunk gives the same, and a single (D,) vector works
    assert torch.equal(evaluate_parameters(model, layout, vectors, x, y), acc)
    assert torch.equal(evaluate_parameters(model, layout, vectors[2], x, y), acc[2:3])


def test_repeated_parameter_vectors_are_run_once(bn_mlp_factory, monkeypatch):
    import pdiff_hf.evaluation.batched as batched

    model = bn_mlp_factory(seed=0).eval()
    layout = ParamLayout.from_module(model, last_norm_layers=2)
    vectors = _perturbed_vectors(model, layout)
    x, _ = _data()
    expected = predict_with_parameters(model, layout, vectors, x, batch_size=20, models_per_chunk=3)
    order = torch.tensor([3, 0, 3, 5, 0, 0, 1])
    run = []
    forward_chunks = batched._forward_chunks

    def recording(model, layout, params, *args, **kwargs):
        run.append(params.clone())
        return forward_chunks(model, layout, params, *args, **kwargs)

    monkeypatch.setattr(batched, "_forward_chunks", recording)
    preds = predict_with_parameters(model, layout, vectors[order], x, batch_size=20, models_per_chunk=3)
    assert torch.equal(preds, expected[order])
    assert torch.equal(run[0], vectors[torch.tensor([3, 0, 5, 1])])  # each distinct vector once, first-seen order


def test_model_mode_restored_and_eval_used(bn_mlp_factory):
    model = bn_mlp_factory(seed=0).train()
    layout = ParamLayout.from_module(model, last_norm_layers=2, include_buffers=True)
    vectors = _perturbed_vectors(model, layout, n=3)
    x, _ = _data(n=16)
    preds = predict_with_parameters(model, layout, vectors, x)
    assert model.training  # restored
    reference = _loop_predictions(model.eval(), layout, vectors, x)  # BatchNorm in eval mode
    assert torch.equal(preds, reference)


def test_wrong_dimension_and_non_finite(bn_mlp):
    layout = ParamLayout.from_module(bn_mlp, last_norm_layers=2)
    x, y = _data(n=8)
    with pytest.raises(LayoutMismatchError, match=f"D={layout.dim}"):
        evaluate_parameters(bn_mlp, layout, torch.zeros(2, layout.dim + 1), x, y)
    bad = torch.ones(2, layout.dim)
    bad[1, 0] = float("nan")
    with pytest.raises(NonFiniteParametersError):
        evaluate_parameters(bn_mlp, layout, bad, x, y)
    with pytest.raises(DimensionMismatchError):
        evaluate_parameters(bn_mlp, layout, torch.ones(2, layout.dim), x, y[:5])
    # a layout of another network
    other = ParamLayout.from_module(nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4)), include="1.*")
    with pytest.raises(LayoutMismatchError):
        evaluate_parameters(bn_mlp, other, torch.ones(2, other.dim), x, y)


def test_summarize_accuracies():
    s = summarize_accuracies(torch.tensor([50.0, 70.0, 60.0, 90.0]))
    assert set(s) == {"count", "best", "mean", "median", "min", "std"}
    assert s["count"] == 4 and s["best"] == 90.0 and s["min"] == 50.0
    assert s["mean"] == pytest.approx(67.5) and s["median"] == pytest.approx(65.0)
    assert s["std"] == pytest.approx(float(torch.tensor([50.0, 70.0, 60.0, 90.0]).std(unbiased=False)), abs=1e-4)
    assert summarize_accuracies([42.0]) == {"count": 1, "best": 42.0, "mean": 42.0, "median": 42.0, "min": 42.0, "std": 0.0}
    with pytest.raises(DimensionMismatchError):
        summarize_accuracies(torch.tensor([]))
    with pytest.raises(NonFiniteParametersError):
        summarize_accuracies(torch.tensor([1.0, float("nan")]))


def test_accuracy_and_select_best():
    preds = torch.tensor([[0, 1, 2, 2], [0, 0, 0, 0]])
    labels = torch.tensor([0, 1, 2, 0])
    assert accuracy_from_predictions(preds, labels).tolist() == [75.0, 50.0]
    val = torch.tensor([10.0, 80.0, 30.0, 70.0])
    assert select_best(val, 2).tolist() == [1, 3]
    assert select_best(val, 10).tolist() == [1, 3, 2, 0]
    assert select_best(val).numel() == 4


# ------------------------------------------------------------------------------ sources, outputs, metrics, fallback
class _DictNet(nn.Module):
    """Called with keywords like a transformers model; returns a dict with ``logits`` (or, with ``key``, without)."""

    def __init__(self, key="logits"):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)
        self.key = key

    def forward(self, features, mask=None):
        h = self.norm(torch.relu(self.body(features)))  # (B, 8)
        if mask is not None:
            h = h * mask[:, None]
        return {self.key: self.head(h)}  # (B, 3)


def test_every_source_gives_the_same_scores(bn_mlp_factory):
    import datasets

    model = _DictNet()
    layout = ParamLayout.from_module(model, include="head.*", last_norm_layers=1)
    vectors = _perturbed_vectors(model, layout, n=5)
    x, y = _data(n=40)
    mask = (torch.arange(40) % 3 != 0).float()
    columns = {"features": x, "mask": mask, "labels": y}
    reference = evaluate_parameters(model, layout, vectors, columns, batch_size=16)
    # the plain loop on the same calls
    expected = []
    for v in vectors:
        layout.load_into(model, v)
        with torch.no_grad():
            expected.append((model(x, mask)["logits"].argmax(-1) == y).float().mean() * 100)
    torch.testing.assert_close(reference, torch.stack(expected))
    ds = datasets.Dataset.from_dict(
        {"features": x.tolist(), "mask": mask.tolist(), "label": y.tolist(), "text": ["unused"] * 40}
    )
    loader = torch.utils.data.DataLoader(ds.with_format("torch"), batch_size=7)
    for source in (ds, loader, [columns]):
        torch.testing.assert_close(evaluate_parameters(model, layout, vectors, source, batch_size=9), reference)
    # tuple batches (inputs, labels) of a plain network
    net = bn_mlp_factory(seed=0)
    bn = ParamLayout.from_module(net, last_norm_layers=2, include_buffers=True)
    v = _perturbed_vectors(net, bn, n=3)
    pairs = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    torch.testing.assert_close(evaluate_parameters(net, bn, v, pairs), evaluate_parameters(net, bn, v, x, y))
    assert torch.equal(predict_with_parameters(net, bn, v, pairs), predict_with_parameters(net, bn, v, x))


def test_score_fn_and_outputs_without_logits():
    model = _DictNet(key="scores")
    layout = ParamLayout.from_module(model, include="head.*")
    vectors = _perturbed_vectors(model, layout, n=4)
    x, y = _data(n=20)
    with pytest.raises(ModelOutputError, match=r"expected the model to return logits.*found dict with keys \['scores'\]"):
        evaluate_parameters(model, layout, vectors, {"features": x, "labels": y})

    def neg_loss(output, labels):  # (B,)
        return -nn.functional.cross_entropy(output["scores"], labels, reduction="none")

    scores = evaluate_parameters(model, layout, vectors, {"features": x, "labels": y}, score_fn=neg_loss)
    expected = []
    for v in vectors:
        layout.load_into(model, v)
        with torch.no_grad():
            expected.append(neg_loss(model(x), y).mean())
    torch.testing.assert_close(scores, torch.stack(expected))
    with pytest.raises(DimensionMismatchError, match=r"one score per example, shape \(20,\), found \(\)"):
        evaluate_parameters(model, layout, vectors, {"features": x, "labels": y}, batch_size=20,
                            score_fn=lambda out, labels: out["scores"].sum())  # fmt: skip


def test_batches_without_labels_are_named():
    model = _DictNet()
    layout = ParamLayout.from_module(model, include="head.*")
    vectors = _perturbed_vectors(model, layout, n=2)
    x, _ = _data(n=10)
    with pytest.raises(MissingLabelsError, match=r"expected every batch to carry labels.*found a batch with keys \['features'\]"):
        evaluate_parameters(model, layout, vectors, {"features": x})
    with pytest.raises(MissingLabelsError, match="found a batch with 1 tensor"):
        evaluate_parameters(model, layout, vectors, [x])
    assert predict_with_parameters(model, layout, vectors, {"features": x}).shape == (2, 10)  # no labels needed


def test_per_position_accuracy_ignores_minus_100():
    from pdiff_hf.evaluation.scoring import accuracy_scores

    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # (2, 3, 2)
    labels = torch.tensor([[1, 1, -100], [0, -100, -100]])
    assert accuracy_scores(logits, labels).tolist() == [0.5, 1.0]
    with pytest.raises(DimensionMismatchError, match=r"expected labels of shape \(2, 3\).*found \(2,\)"):
        accuracy_scores(logits, labels[:, 0])


class _Branchy(nn.Module):
    """Data-dependent control flow on a parameter: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 3)
        self.gate = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.lin(x) if self.gate > 0 else -self.lin(x)


def test_models_that_cannot_be_vmapped_fall_back_and_say_so_once(caplog):
    from pdiff_hf.evaluation import batched as evaluation

    model = _Branchy()
    layout = ParamLayout.from_module(model)
    vectors = _perturbed_vectors(model, layout, n=5, scale=2.0)
    x, y = _data(n=30)
    evaluation._SEQUENTIAL_LOGGED.discard("_Branchy")
    with caplog.at_level("WARNING", logger="pdiff_hf.evaluation.batched"):
        acc = evaluate_parameters(model, layout, vectors, x, y, batch_size=8, models_per_chunk=2)
        preds = predict_with_parameters(model, layout, vectors, x, batch_size=8)
    messages = [r.getMessage() for r in caplog.records if "one model at a time" in r.getMessage()]
    assert len(messages) == 1 and "_Branchy" in messages[0]
    reference = _loop_predictions(model, layout, vectors, x)
    assert torch.equal(preds, reference)
    assert torch.equal(acc, (reference == y).float().mean(-1) * 100)


def test_labels_outside_the_models_classes_are_a_named_error():
    from pdiff_hf.errors import DimensionMismatchError
    from pdiff_hf.evaluation.scoring import accuracy_scores

    logits = torch.zeros(4, 3)
    assert accuracy_scores(logits, torch.tensor([0, 1, 2, -100])).tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(DimensionMismatchError, match=r"expected labels in \[0, 3\).*found 3"):
        accuracy_scores(logits, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(DimensionMismatchError, match="found -1"):
        accuracy_scores(logits, torch.tensor([0, -1, 1, 2]))
