"""collect_from_runs(..., align=True): independent runs aligned to the first (alignment="first") or to one another
(alignment="merge_many", the default), checked before any training."""

import warnings

import pytest
import torch
from torch import nn

from pdiff_hf import ParamLayout, checkpoint_params
from pdiff_hf.alignment import apply_permutation, merge_many, spec_from_module, weight_matching
from pdiff_hf.checkpoints.collect_runs import collect_from_runs, get_alignment, reinitialize
from pdiff_hf.checkpoints.run_mixing import MixedRunsWarning
from pdiff_hf.errors import AlignmentError, CollectionError
from pdiff_hf.evaluation.batched import evaluate_parameters

torch.set_num_threads(1)
SEEDS = [3, 4, 5]


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10), nn.BatchNorm1d(10),
                         nn.ReLU(), nn.Linear(10, 3)).eval()  # fmt: skip


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    return {"train": (x, y), "validation": (x[:128], y[:128])}


def _collect(model, layout, **kw):
    args = dict(train_epochs=2, num_checkpoints=3, learning_rate=0.01, batch_size=64, progress=False)
    return collect_from_runs(model, _data(), layout, SEEDS, **{**args, **kw})


def test_aligned_runs_are_the_unaligned_runs_permuted_onto_the_first():
    model = _mlp()
    layout = ParamLayout.from_module(model, include_buffers=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixedRunsWarning)  # aligned runs are no unaligned mixture
        aligned = _collect(model, layout, align=True, alignment="first")
    with pytest.warns(MixedRunsWarning):  # the warning stays for unaligned whole-network runs
        plain = _collect(_mlp(), layout, reset=reinitialize)
    assert aligned["run_id"] == [0] * 3 + [1] * 3 + [2] * 3 and aligned["seed"] == plain["seed"]
    assert aligned["val_accuracy"] == plain["val_accuracy"]  # the same functions, measured before alignment
    record = get_alignment(aligned)
    assert record["method"] == "weight_matching" and record["reference_run_id"] == 0 and record["reference_seed"] == 3
    assert record["alignment"] == "first" and record["seconds"] >= 0
    assert record["groups"] == {"0": 12, "3": 10} and get_alignment(plain) is None

    a, p = checkpoint_params(aligned), checkpoint_params(plain)
    assert torch.equal(a[:3], p[:3])  # the reference run is not moved
    assert not torch.equal(a[3:], p[3:])  # the others are
    x = _data()["validation"]
    torch.testing.assert_close(evaluate_parameters(model, layout, a, x), evaluate_parameters(model, layout, p, x))
    spec = spec_from_module(model, torch.randn(2, 6))
    reference_last = {**model.state_dict(), **layout.unflatten(a[2])}
    for run in (1, 2):
        last = {**model.state_dict(), **layout.unflatten(a[3 * run + 2])}
        # the aligned run is a fixed point of weight matching: it is already aligned to the reference
        perms = weight_matching(spec, reference_last, last)
        assert all(torch.equal(q, torch.arange(len(q))) for q in perms.values())
        # and it is the unaligned run under one permutation, the same for each of its checkpoints
        unaligned_last = {**model.state_dict(), **layout.unflatten(p[3 * run + 2])}
        found = weight_matching(spec, reference_last, unaligned_last)
        for row in range(3 * run, 3 * run + 3):
            moved = apply_permutation(spec, {**model.state_dict(), **layout.unflatten(p[row])}, found)
            torch.testing.assert_close(layout.flatten(moved), a[row], rtol=0, atol=0)
        closer = sum(((a[3 * run + 2] - a[2]) ** 2)), sum(((p[3 * run + 2] - p[2]) ** 2))
        assert closer[0] < closer[1]


def test_merge_many_aligns_each_run_by_one_permutation_found_from_the_final_states():
    model = _mlp()
    layout = ParamLayout.from_module(model, include_buffers=True)
    aligned = _collect(model, layout, align=True)  # alignment="merge_many" by default
    with pytest.warns(MixedRunsWarning):
        plain = _collect(_mlp(), layout, reset=reinitialize)
    assert get_alignment(aligned)["alignment"] == "merge_many"
    a, p = checkpoint_params(aligned), checkpoint_params(plain)
    assert torch.equal(a[:3], p[:3])  # run 0 is the frame: never moved
    assert aligned["val_accuracy"] == plain["val_accuracy"]
    spec = spec_from_module(model, torch.randn(2, 6))
    finals = [{**model.state_dict(), **layout.unflatten(p[3 * run + 2])} for run in range(3)]
    perms = merge_many(spec, finals, max_rounds=50, seed=0)
    for run in range(3):
        for row in range(3 * run, 3 * run + 3):
            moved = apply_permutation(spec, {**model.state_dict(), **layout.unflatten(p[row])}, perms[run])
            torch.testing.assert_close(layout.flatten(moved), a[row], rtol=0, atol=0)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + self.b(h))


def _never_train(logits, labels):
    raise AssertionError("training started before the alignment checks")


def _widen_third_run(model, seed):
    reinitialize(model, seed)
    if seed == SEEDS[-1]:
        model[0] = nn.Linear(6, 13)


@pytest.mark.parametrize("build, layout_kw, kw, message", [
    (_mlp, {"include_buffers": True}, {"seeds": [3]}, "at least two seeds"),
    (_mlp, {"include_buffers": True}, {"alignment": "mean"}, "expected alignment in"),
    (Residual, {}, {}, "residual add"),
    (_mlp, {}, {}, "every tensor the alignment permutes"),  # running statistics left out
    (_mlp, {"include_buffers": True}, {"reset": _widen_third_run}, r"expected '0.weight' of shape \(12, 6\)"),
])  # fmt: skip
def test_bad_aligned_runs_fail_before_any_training(build, layout_kw, kw, message):
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = ParamLayout.from_module(model, **layout_kw)
    seeds = kw.pop("seeds", SEEDS)
    with pytest.raises(AlignmentError, match=message):
        collect_from_runs(model, _data(), layout, seeds, align=True, train_epochs=1, num_checkpoints=2,
                          loss_fn=_never_train, progress=False, **kw)  # fmt: skip
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_keyword_batches_need_an_example_input():
    model = _mlp()
    layout = ParamLayout.from_module(model, include_buffers=True)
    x, y = _data()["train"]
    data = {"train": {"input": x, "labels": y}}
    with pytest.raises(AlignmentError, match="example_input="):
        collect_from_runs(model, data, layout, SEEDS, align=True, loss_fn=_never_train, progress=False)


def test_two_processes_collect_what_one_process_collects():
    """Runs trained in two spawned processes (one thread each) give the same aligned dataset, bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layout = ParamLayout.from_module(_mlp(), include_buffers=True)
        one = _collect(_mlp(), layout, align=True)
        two = _collect(_mlp(), layout, align=True, num_processes=2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(checkpoint_params(one), checkpoint_params(two))
    assert one["run_id"] == two["run_id"] and one["val_accuracy"] == two["val_accuracy"]
    assert get_alignment(two)["alignment"] == "merge_many"


@pytest.mark.parametrize("kw, message", [
    ({"num_processes": 0}, "num_processes to be an int >= 1"),
    ({"num_processes": 2, "loss_fn": lambda logits, labels: logits.sum()}, "picklable"),
])  # fmt: skip
def test_bad_process_settings_fail_before_any_training(kw, message):
    model = _mlp()
    layout = ParamLayout.from_module(model, include_buffers=True)
    with pytest.raises(CollectionError, match=message):
        collect_from_runs(model, _data(), layout, SEEDS, align=True, train_epochs=1, num_checkpoints=2,
                          progress=False, **kw)  # fmt: skip
