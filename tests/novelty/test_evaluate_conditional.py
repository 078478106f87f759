"""``pdiff-hf evaluate`` on a conditional pipeline: models generated per condition and scored on their own task's data,
the per-task report, determinism, and ConditionError before any work for a conditional / unconditional mix."""

import json

import pytest
import torch

from pdiff_hf import make_checkpoint_dataset
from pdiff_hf.evaluation.data import ClassificationSplits

from .helpers import NUM_TRAIN, TinyMLP, make_task

NAMES = ["plain", "shifted"]


def _task_split(condition=0, num_tasks=2):
    """Task ``condition``: the tiny task with labels shifted by ``condition`` classes."""
    data = make_task()[2]
    c = int(data.train_y.max()) + 1
    return ClassificationSplits(data.train_x, (data.train_y + condition) % c, data.val_x, (data.val_y + condition) % c,
                                data.test_x, (data.test_y + condition) % c)  # fmt: skip


@pytest.fixture
def setup(tmp_path, monkeypatch, tiny_models_factory):
    """A saved tiny target; a conditional (2 tasks) and an unconditional checkpoint dataset; a conditional and an
    unconditional (untrained but valid) pipeline; tasks ``tiny-cond`` (load_data(condition=t)) and ``tiny``."""
    from pdiff_hf import PDiffPipeline
    from pdiff_hf.commands import evaluate
    from pdiff_hf.training.training_utils import sampling_scheduler_for

    model, layout, data, train, _, _ = make_task()
    model.save_pretrained(tmp_path / "target")
    half = NUM_TRAIN // 2
    meta = {"run_id": [0] * NUM_TRAIN, "val_accuracy": [50.0] * NUM_TRAIN, "condition": [0] * half + [1] * half}
    make_checkpoint_dataset(train, layout, meta, condition_names=NAMES).save_to_disk(str(tmp_path / "cond"))
    make_checkpoint_dataset(train, layout, {"run_id": [0] * NUM_TRAIN}).save_to_disk(str(tmp_path / "plain"))
    for name, kwargs in (("pipe-cond", {"num_conditions": 2}), ("pipe-plain", {})):
        ae, denoiser = tiny_models_factory(layout, **kwargs)
        ae.fit_normalization(train)
        ae.set_latent_scaling(train)
        denoiser.register_to_config(sample_abs_max=round(float(ae.params_to_latents(train).abs().max()), 4))
        pipe = PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser))
        pipe.save_pretrained(tmp_path / name)
    monkeypatch.setitem(evaluate.TASKS, "tiny-cond", lambda: evaluate.Task(_task_split, TinyMLP, "two tiny tasks"))
    monkeypatch.setitem(evaluate.TASKS, "tiny", lambda: evaluate.Task(lambda: make_task()[2], TinyMLP, "tiny task"))
    return tmp_path


def _cli(tmp_path, pipe="pipe-cond", ckpts="cond", task="tiny-cond", *extra):
    from pdiff_hf.cli import main

    return main(
        ["evaluate", "--pipeline", str(tmp_path / pipe), "--checkpoints", str(tmp_path / ckpts),
         "--target", str(tmp_path / "target"), "--task", task, "--num-models", "3", "--num-inference-steps", "2",
         "--average-k", "4", *extra]
    )  # fmt: skip


def test_scores_every_condition_on_its_task_and_writes_the_report(setup, capsys):
    out = setup / "out"
    assert _cli(setup, "pipe-cond", "cond", "tiny-cond", "--guidance-scale", "2", "--output-dir", str(out)) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["conditional"] is True and results["guidance_scale"] == 2.0
    assert results["tasks"] == {"names": NAMES, "checkpoints_per_task": [NUM_TRAIN // 2] * 2}
    for name in NAMES:
        assert results["original"][name]["count"] == NUM_TRAIN // 2 and results["generated"][name]["count"] == 3
        assert results["novelty"][name]["generated"]["count"] == 3 and "collapsed" in results["diversity"][name]
    # the same parameters score differently on the two tasks: the labels differ on every example
    original = results["cross_task"]["original"]
    assert len(original) == 2 and all(len(row) == 2 for row in original) and original[0][0] != original[0][1]
    assert results["original"]["plain"]["median"] == pytest.approx(original[0][0], abs=1e-3)
    assert list(results["timings_s"]) == ["generate", "analyze", "total"]
    report = (out / "report.md").read_text()
    assert report.startswith("# p-diff evaluation (conditional pipeline)\n")
    for heading in ("Originals vs generated per task", "Cross-task matrix", "Novelty within each task's checkpoints"):
        assert f"## {heading}" in report and f"## {heading}" in printed


def test_conditional_evaluation_is_deterministic_under_a_seed(setup):
    runs = []
    for name in ("a", "b"):
        assert _cli(setup, "pipe-cond", "cond", "tiny-cond", "--output-dir", str(setup / name)) == 0
        runs.append(json.loads((setup / name / "results.json").read_text()))
    assert runs[0]["generated"] == runs[1]["generated"] and runs[0]["cross_task"] == runs[1]["cross_task"]


@pytest.mark.parametrize(
    "pipe, ckpts, task, extra, message",
    [
        ("pipe-cond", "plain", "tiny", [], "expected a 'condition' column for a conditional pipeline"),
        ("pipe-plain", "cond", "tiny-cond", [], "expected an unconditional checkpoint dataset"),
        ("pipe-plain", "plain", "tiny", ["--guidance-scale", "2"], "expected 1 for an unconditional pipeline"),
    ],
)
def test_a_conditional_unconditional_mix_is_a_condition_error_before_loading(setup, capsys, monkeypatch, pipe, ckpts,
                                                                             task, extra, message):  # fmt: skip
    from pdiff_hf import PDiffPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the condition check")

    monkeypatch.setattr(PDiffPipeline, "from_pretrained", refuse)
    assert _cli(setup, pipe, ckpts, task, *extra, "--output-dir", str(setup / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (setup / "out" / "results.json").exists()


def test_condition_error_type_and_other_bad_input(setup, capsys):
    import datasets

    from pdiff_hf.commands.evaluate_conditional import check_conditional_match
    from pdiff_hf.errors import ConditionError
    from pdiff_hf.tasks import Task

    cond = datasets.load_from_disk(str(setup / "cond"))
    with pytest.raises(ConditionError, match="expected 3 conditions"):
        check_conditional_match(3, cond, 1.0)
    assert check_conditional_match(2, cond, 1.0) == NAMES
    # a task whose load_data has no condition argument cannot serve two conditions
    from pdiff_hf.checkpoints.conditional import task_data

    with pytest.raises(ConditionError, match="takes condition="):
        task_data(Task(lambda: make_task()[2], TinyMLP), 1, 2)
    assert _cli(setup, "pipe-cond", "cond", "tiny", "--output-dir", str(setup / "out")) == 2
    assert "takes condition=" in capsys.readouterr().err
    assert _cli(setup, "pipe-cond", "cond", "tiny-cond", "--guidance-scale", "0.5") == 2
    assert "--guidance-scale: expected >= 1" in capsys.readouterr().err
