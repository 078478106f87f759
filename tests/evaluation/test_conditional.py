"""Conditional checkpoint datasets (condition column, condition_names) and per-condition evaluation
(pdiff_hf.evaluation.conditional): collection over tasks, accuracies per requested task, cross-task matrix, shuffled control,
novelty within each task, and named errors for bad condition ids or a missing column."""

import datasets
import pytest
import torch
from torch import nn

from pdiff_hf import ClassificationSplits, ParamLayout, checkpoint_params, get_layout
from pdiff_hf.checkpoints.conditional import (
    check_conditions,
    collect_conditional_checkpoints,
)
from pdiff_hf.checkpoints.dataset import (
    checkpoint_conditions,
    get_condition_names,
    make_checkpoint_dataset,
    set_condition_names,
    set_layout,
    summary,
)
from pdiff_hf.errors import ConditionError
from pdiff_hf.evaluation.conditional import (
    cross_task_matrix,
    generate_per_condition,
    per_condition_summary,
    solved_shares,
    task_accuracies,
)
from pdiff_hf.novelty.conditional import novelty_per_condition
from pdiff_hf.training.shuffled_control import shuffle_conditions


def _layout(dim=6):
    return ParamLayout.from_list([{"name": "w", "shape": [dim], "dtype": "float32", "kind": "parameter"}])


def _tasks(num_tasks=3, n=90, num_classes=3):
    """Separable 2-d data with ``num_classes`` classes; task t shifts the labels by t."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % num_classes
    centers = torch.tensor([[3.0, 0.0], [-3.0, 3.0], [-3.0, -3.0]])[:num_classes]
    x = centers[y] + 0.3 * torch.randn(n, 2, generator=g)
    base = ClassificationSplits(x[:60], y[:60], x[60:75], y[60:75], x[75:], y[75:])
    out = []
    for t in range(num_tasks):
        out.append(ClassificationSplits(
            base.train_x, (base.train_y + t) % num_classes, base.val_x, (base.val_y + t) % num_classes,
            base.test_x, (base.test_y + t) % num_classes,
        ))  # fmt: skip
    return out


def _reset(model, t):
    torch.manual_seed(10 + t)
    model.reset_parameters()


def _collect(tasks, **kwargs):
    model = nn.Linear(2, 3)
    layout = ParamLayout.from_module(model)
    kwargs = {"num_checkpoints": 6, "learning_rate": 0.05, "train_epochs": 20, "train_learning_rate": 0.05,
              "batch_size": 16, "progress": False, **kwargs}  # fmt: skip
    ds = collect_conditional_checkpoints(model, tasks, layout, ["a", "b", "c"][: len(tasks)], reset=_reset, **kwargs)
    return model, layout, ds


# ----------------------------------------------------------------------------------- condition column, names
def test_condition_names_live_with_the_layout_and_survive_save_and_load(tmp_path):
    ds = make_checkpoint_dataset(torch.randn(4, 6), _layout(), {"condition": [0, 1, 1, 0]}, condition_names=["x", "y"])
    assert get_condition_names(ds) == ["x", "y"] and get_layout(ds) == _layout()
    set_layout(ds, _layout())  # re-attaching the layout keeps the names
    assert get_condition_names(ds) == ["x", "y"]
    ds.save_to_disk(str(tmp_path / "ds"))
    back = datasets.load_from_disk(str(tmp_path / "ds"))
    assert get_condition_names(back) == ["x", "y"] and get_layout(back) == _layout()
    assert torch.equal(checkpoint_conditions(back), torch.tensor([0, 1, 1, 0]))
    assert checkpoint_conditions(back).dtype == torch.long
    assert summary(back)["conditions"] == 2


def test_unconditional_datasets_are_unchanged():
    ds = make_checkpoint_dataset(torch.randn(3, 6), _layout(), {"step": [1, 2, 3]})
    assert get_condition_names(ds) is None and "conditions" not in summary(ds)
    assert ds.column_names == ["params", "step"]


def test_missing_condition_column_is_a_named_error():
    ds = make_checkpoint_dataset(torch.randn(3, 6), _layout(), {"step": [1, 2, 3]})
    with pytest.raises(ConditionError, match=r"expected a condition column 'condition'.*found columns \['params', 'step'\]"):
        checkpoint_conditions(ds)
    with pytest.raises(ConditionError, match="expected a condition column 'task'"):
        checkpoint_conditions(ds, column="task")


@pytest.mark.parametrize(
    "values, names, num, message",
    [
        ([0, 2, 1], ["x", "y"], None, r"expected condition ids in \[0, 2\) in column 'condition', found \[2\]"),
        ([0, -1, 1], None, None, r"found \[-1\]"),
        ([0, 1, 1], None, 1, r"expected condition ids in \[0, 1\).*found \[1\]"),
        ([0.5, 1.0, 0.0], None, None, r"expected integer condition ids in column 'condition', found type double"),
        (["a", "b", "a"], None, None, r"expected integer condition ids.*found type string"),
    ],
)
def test_condition_ids_out_of_range_or_not_integers_are_named_errors(values, names, num, message):
    ds = make_checkpoint_dataset(torch.randn(3, 6), _layout(), {"condition": values})
    if names:
        set_condition_names(ds, names)
    with pytest.raises(ConditionError, match=message):
        checkpoint_conditions(ds, num_conditions=num)


def test_condition_names_are_checked():
    with pytest.raises(ConditionError, match=r"condition ids in \[0, 1\)"):
        make_checkpoint_dataset(torch.randn(2, 6), _layout(), {"condition": [0, 1]}, condition_names=["only"])
    ds = make_checkpoint_dataset(torch.randn(2, 6), _layout())
    for bad in ([], ["a", "a"], ["a", 3], [""]):
        with pytest.raises(ConditionError, match="distinct condition names"):
            set_condition_names(ds, bad)


def test_check_conditions():
    assert torch.equal(check_conditions([1, 0], 2, 2), torch.tensor([1, 0]))
    with pytest.raises(ConditionError, match=r"ids in \[0, 2\), found \[2, 5\]"):
        check_conditions(torch.tensor([2, 5, 0]), 2)
    with pytest.raises(ConditionError, match="one condition id per row \\(3\\), found 2"):
        check_conditions(torch.tensor([0, 1]), 2, 3)
    with pytest.raises(ConditionError, match="integer condition ids"):
        check_conditions(torch.tensor([0.0, 1.0]), 2)


# ------------------------------------------------------------------------------------ collection over tasks
def test_collection_over_tasks_gives_one_conditional_dataset():
    tasks = _tasks()
    model, layout, ds = _collect(tasks)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(ds) == 18 and get_condition_names(ds) == ["a", "b", "c"] and get_layout(ds) == layout
    conditions = checkpoint_conditions(ds)
    assert torch.equal(conditions, torch.arange(3).repeat_interleave(6))
    assert ds["run_id"] == conditions.tolist()
    # every task's checkpoints solve that task and fail the others
    params = checkpoint_params(ds)
    acc = task_accuracies(model, layout, params, tasks, split="test")
    assert acc.shape == (18, 3)
    assert torch.allclose(acc.gather(1, conditions[:, None])[:, 0], torch.tensor(ds["test_accuracy"]))
    matrix = cross_task_matrix(acc, conditions)
    assert bool((matrix.diagonal() == 100).all())
    assert float(matrix[~torch.eye(3, dtype=torch.bool)].max()) == 0.0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # the model ends as it was
    _, _, again = _collect(tasks)
    assert torch.equal(checkpoint_params(again), params)  # deterministic under the seed
    with pytest.raises(ConditionError, match=r"one name per task \(3\), found 2"):
        collect_conditional_checkpoints(model, tasks, layout, ["a", "b"])


def test_per_condition_summary_scores_each_model_on_its_task_and_selects_on_val():
    test = torch.tensor([[90.0, 1.0], [80.0, 2.0], [3.0, 70.0], [4.0, 60.0], [5.0, 50.0]])
    val = torch.tensor([[10.0, 0.0], [20.0, 0.0], [0.0, 5.0], [0.0, 9.0], [0.0, 1.0]])
    conditions = torch.tensor([0, 0, 1, 1, 1])
    out = per_condition_summary(test, conditions, ["a", "b"], val)
    assert out["a"]["count"] == 2 and out["a"]["median"] == 85.0 and out["a"]["best_by_val"] == 80.0
    assert out["b"]["median"] == 60.0 and out["b"]["best"] == 70.0 and out["b"]["best_by_val"] == 60.0
    assert "b" not in per_condition_summary(test[:2], conditions[:2], ["a", "b"])
    matrix = cross_task_matrix(test, conditions)
    assert torch.equal(matrix, torch.tensor([[85.0, 1.5], [4.0, 60.0]]))
    assert torch.isnan(cross_task_matrix(test[:2], conditions[:2])[1]).all()  # no models for task 1
    with pytest.raises(ConditionError, match="expected 2 task names, found 1"):
        per_condition_summary(test, conditions, ["a"])
    with pytest.raises(ConditionError, match=r"ids in \[0, 2\), found \[2\]"):
        cross_task_matrix(test, torch.tensor([0, 0, 1, 1, 2]))


def test_shuffle_conditions_keeps_the_counts_and_breaks_the_pairing():
    conditions = torch.arange(4).repeat_interleave(50)
    shuffled = shuffle_conditions(conditions, seed=0)
    assert torch.equal(shuffled.bincount(), conditions.bincount())
    assert float((shuffled == conditions).float().mean()) < 0.5
    assert torch.equal(shuffled, shuffle_conditions(conditions, seed=0))
    assert not torch.equal(shuffled, shuffle_conditions(conditions, seed=1))


def test_novelty_is_measured_within_each_task():
    tasks = _tasks()
    model, layout, ds = _collect(tasks)
    params, conditions = checkpoint_params(ds), checkpoint_conditions(ds)
    generated = params + 0.01 * torch.randn(params.shape, generator=torch.Generator().manual_seed(0))
    reports = novelty_per_condition(model, layout, params, conditions, generated[:12], conditions[:12], tasks,
                                    ["a", "b", "c"], num_baseline=0)  # fmt: skip
    assert sorted(reports) == ["a", "b"]  # no models generated for c
    for t, name in enumerate(["a", "b"]):
        orig = reports[name].original
        assert orig.count == 6 and torch.equal(orig.params, params[conditions == t])
        assert bool((reports[name].generated.test_accuracy == 100).all())  # scored on its own task
    with pytest.raises(ConditionError, match=r"ids in \[0, 3\)"):
        novelty_per_condition(model, layout, params, conditions + 1, generated, conditions, tasks, ["a", "b", "c"])


class _FakePipe:
    """Records the call; returns rows equal to the condition id."""

    def __init__(self, k):
        self.denoiser = type("D", (), {"config": {"num_conditions": k}})()
        self.calls = []

    def __call__(self, num_models, condition, generator, **kwargs):
        self.calls.append((num_models, condition.tolist(), kwargs))
        return type("Out", (), {"params": condition[:, None].float().repeat(1, 3)})()


def test_generate_per_condition_asks_for_every_condition_in_one_call():
    pipe = _FakePipe(3)
    params, conditions = generate_per_condition(pipe, 2, guidance_scale=2.0)
    assert pipe.calls == [(6, [0, 0, 1, 1, 2, 2], {"guidance_scale": 2.0})]
    assert torch.equal(params[:, 0], conditions.float())
    with pytest.raises(ConditionError, match="expected a conditional pipeline"):
        generate_per_condition(_FakePipe(0), 2)
    with pytest.raises(ConditionError, match="at least one model per condition, found 0"):
        generate_per_condition(pipe, 0)


def test_solved_shares_tell_a_mixture_from_broken_models():
    # 4 models, 2 tasks: a mixture (each solves one task, half of them the requested one) and broken models
    mixture = torch.tensor([[95.0, 1.0], [1.0, 95.0], [95.0, 1.0], [1.0, 95.0]])
    conditions = torch.tensor([0, 0, 1, 1])
    assert solved_shares(mixture, conditions) == {"threshold": 50.0, "requested": 0.5, "any": 1.0}
    assert solved_shares(torch.ones(4, 2), conditions) == {"threshold": 50.0, "requested": 0.0, "any": 0.0}
    assert solved_shares(mixture, torch.tensor([0, 1, 0, 1]), threshold=96.0)["any"] == 0.0
    with pytest.raises(ConditionError):
        solved_shares(mixture, torch.tensor([0, 0, 1, 2]))
