"""``pdiff-hf demo --conditional`` on a tiny configuration (small stand-in data, a few training steps): folder layout,
results.json fields and their consistency, the shuffled control's training, CLI errors."""

import json

import datasets
import pytest
import torch

from pdiff_hf import (
    ClassificationSplits,
    PDiffConfig,
    PDiffPipeline,
    checkpoint_params,
    fit_pdiff,
    get_layout,
)
from pdiff_hf.checkpoints.dataset import checkpoint_conditions, get_condition_names
from pdiff_hf.cli import main
from pdiff_hf.demos.conditional_demo import ConditionalDemoConfig
from pdiff_hf.demos.conditional_report import check_targets
from pdiff_hf.errors import ConditionError, DemoConfigError
from pdiff_hf.training.shuffled_control import fit_shuffled_control

TINY = [
    "--conditional", "--num-tasks", "3", "--num-checkpoints", "8", "--ae-steps", "4", "--denoiser-steps", "4",
    "--num-models", "4", "--target-epochs", "1", "--num-inference-steps", "3", "--guidance-scales", "1", "2",
]  # fmt: skip


def _stand_in(seed=42, num_val=200):
    """MNIST-1D-shaped data, (2000, 1, 40) in all: ten noisy templates, which a linear head on the pooled features of
    a CNN trained for one epoch tells apart (about 85% test accuracy)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 40, generator=g)
    y = torch.arange(2000) % 10
    x = templates[y] + 0.3 * torch.randn(2000, 1, 40, generator=g)
    n = 1800 - num_val
    return ClassificationSplits(x[:n], y[:n], x[n:1800], y[n:1800], x[1800:], y[1800:])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from pdiff_hf import novelty
    from pdiff_hf.tasks import mnist1d

    out = tmp_path_factory.mktemp("conditional-demo") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist1d, "load_mnist1d", _stand_in)
        mp.setattr(novelty, "tune_cpu_allocator", lambda: False)
        assert main(["demo", "--output-dir", str(out)] + TINY) == 0
    return out


def test_writes_every_output(demo_dir):
    for name in ("backbone", "checkpoints", "pipeline", "report.md", "results.json"):
        assert (demo_dir / name).exists(), name
    report = (demo_dir / "report.md").read_text()
    for heading in ("Originals vs generated per task", "Cross-task matrix", "Guidance-scale sweep",
                    "Shuffled-condition control", "Targets", "Novelty within each task's checkpoints"):  # fmt: skip
        assert f"## {heading}" in report


def test_checkpoints_are_a_conditional_dataset_and_the_pipeline_reloads(demo_dir):
    ds = datasets.load_from_disk(str(demo_dir / "checkpoints"))
    assert get_condition_names(ds) == ["shift-0", "shift-1", "shift-2"]
    assert torch.equal(checkpoint_conditions(ds), torch.arange(3).repeat_interleave(8))
    assert get_layout(ds).dim == 330 and checkpoint_params(ds).shape == (24, 330)
    pipe = PDiffPipeline.from_pretrained(str(demo_dir / "pipeline"))
    assert pipe.denoiser.config.num_conditions == 3
    assert pipe.denoiser.config.condition_names == ["shift-0", "shift-1", "shift-2"]
    out = pipe(num_models=2, condition="shift-1", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.params.shape == (2, 330) and out.conditions.tolist() == [1, 1]
    with pytest.raises(ConditionError):
        pipe(num_models=1, condition=3, num_inference_steps=2)


def test_results_are_consistent(demo_dir):
    res = json.loads((demo_dir / "results.json").read_text())
    names = ["shift-0", "shift-1", "shift-2"]
    assert res["tasks"]["names"] == names and res["tasks"]["label_maps"][2][0] == 2
    assert res["selection"]["D"] == 330
    assert set(res["guidance_sweep"]) == {"1.0", "2.0"} and res["guidance_scale"] in (1.0, 2.0)
    assert res["generated"] == res["guidance_sweep"][str(res["guidance_scale"])]["per_task"]
    for name in names:
        assert res["original"][name]["count"] == 8 and res["generated"][name]["count"] == 4
        assert "best_by_val" in res["generated"][name] and "best_by_val" in res["original"][name]
        assert res["shuffled_control"]["per_task"][name]["count"] == 4
        assert res["novelty"][name]["original"]["count"] == 8  # novelty within the task's own checkpoints
    matrix = torch.tensor(res["cross_task"]["original"])
    assert matrix.shape == (3, 3)
    # the originals solve their own task and fail the others (shifts disagree on every class)
    assert float(matrix.diagonal().min()) > 50 and float(matrix[~torch.eye(3, dtype=torch.bool)].max()) < 20
    for name in names:
        assert matrix[names.index(name), names.index(name)] == res["original"][name]["median"]
    assert res["targets"] == check_targets(res)
    assert res["solved"]["original"]["requested"] == 1.0  # every checkpoint solves its own task
    for entry in (res["solved"]["generated"], res["shuffled_control"]["solved"]):
        assert 0.0 <= entry["requested"] <= entry["any"] <= 1.0
    assert set(res["diversity"]) == set(names)
    for name, d in res["diversity"].items():
        ratio = (1 - d["generated_pairwise_iou"]) / (1 - d["original_pairwise_iou"])
        assert d["diversity_ratio"] == pytest.approx(ratio, abs=1e-4) and d["collapsed"] == (ratio < 0.5)
    assert list(res["timings_s"])[-1] == "total"


def test_model_card_shows_the_tasks(demo_dir):
    from pdiff_hf.hub.cards import build_model_card

    res = json.loads((demo_dir / "results.json").read_text())
    pipe = PDiffPipeline.from_pretrained(str(demo_dir / "pipeline"))
    text = str(build_model_card(pipe, "me/conditional", results=res))
    median = f"{res['generated']['shift-2']['median']:.2f}"
    assert "| Original checkpoints, task `shift-2` | 8 |" in text
    assert f"| p-diff generated for `shift-2` (guidance {res['guidance_scale']:g}) | 4 |" in text and median in text
    assert "| denoiser.num_conditions | 3 |" in text and "shift-0, shift-1, shift-2" in text
    assert "Task `shift-1`: " in text and "Shuffled-condition control" in text
    for name, d in res["diversity"].items():
        segment = text.split(f"Task `{name}`: ")[1].split("Task `")[0]  # this task's verdict
        assert ("COLLAPSED within the task" in segment) == d["collapsed"]


def test_check_targets_applies_both_margins():
    def summary(median):
        return {"median": median}

    res = {
        "original": {"a": summary(96.0), "b": summary(96.0)},
        "generated": {"a": summary(95.0), "b": summary(94.9)},
        "shuffled_control": {"per_task": {"a": summary(65.0), "b": summary(10.0)}},
    }
    t = check_targets(res)
    assert t["per_task"]["a"]["generated_ok"] and t["per_task"]["a"]["control_ok"]  # exactly at both margins
    assert not t["per_task"]["b"]["generated_ok"] and t["per_task"]["b"]["control_ok"]
    assert not t["generated_ok"] and t["control_ok"]


def test_within_task_diversity_calls_near_copies_collapsed():
    from pdiff_hf.demos.conditional_report import diversity_lines, within_task_diversity

    def novelty(orig_iou, gen_iou):
        return {"novelty": {"groups": {"original": {"pairwise_mean_iou": orig_iou}, "generated": {"pairwise_mean_iou": gen_iou}}}}

    res = {"novelty": {"a": novelty(0.8, 0.95), "b": novelty(0.8, 0.85)},
           "original": {"a": {"std": 0.3}, "b": {"std": 0.3}}, "generated": {"a": {"std": 0.1}, "b": {"std": 0.2}}}  # fmt: skip
    d = within_task_diversity(res)
    assert d["a"]["diversity_ratio"] == pytest.approx(0.25) and d["a"]["collapsed"]
    assert d["b"]["diversity_ratio"] == pytest.approx(0.75) and not d["b"]["collapsed"]
    lines = diversity_lines(res)
    assert "COLLAPSED" in lines[2] and lines[3].endswith("| diverse |")


def test_shuffled_control_trains_what_fit_pdiff_trains_on_the_shuffled_ids():
    """The control reuses the autoencoder (fit_pdiff trains it without the conditions) and trains the denoiser as
    fit_pdiff would: the same weights as a full fit_pdiff on the shuffled ids."""
    torch.manual_seed(0)
    params = torch.randn(12, 20)
    conditions = torch.arange(3).repeat_interleave(4)
    from pdiff_hf import ParamLayout

    layout = ParamLayout.from_list([{"name": "w", "shape": [20], "dtype": "float32", "kind": "parameter"}])
    config = PDiffConfig(ae_steps=3, denoiser_steps=3, seed=1)
    pipe = fit_pdiff(params, layout, config, progress=False, conditions=conditions, condition_names=["a", "b", "c"])
    control, shuffled = fit_shuffled_control(pipe, params, conditions, config, seed=5, progress=False)
    assert torch.equal(shuffled.bincount(), conditions.bincount()) and not torch.equal(shuffled, conditions)
    full = fit_pdiff(params, layout, config, progress=False, conditions=shuffled, condition_names=["a", "b", "c"])
    for a, b in zip(full.autoencoder.state_dict().values(), control.autoencoder.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.denoiser.state_dict().values(), control.denoiser.state_dict().values()):
        assert torch.equal(a, b)
    assert control.denoiser.config.condition_names == ["a", "b", "c"]
    unconditional = fit_pdiff(params, layout, config, progress=False)
    with pytest.raises(ConditionError, match="expected a conditional pipeline"):
        fit_shuffled_control(unconditional, params, conditions, config)
    with pytest.raises(ConditionError, match=r"ids in \[0, 3\), found \[3\]"):
        fit_shuffled_control(pipe, params, conditions + 1, config)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-tasks", "1"], "--num-tasks in [2, 10]"),
        (["--num-tasks", "11"], "--num-tasks in [2, 10]"),
        (["--guidance-scales", "0.5"], "guidance scales >= 1"),
        (["--num-models", "0"], "--num-models"),
        (["--selection", "norm"], "expected no --selection with --conditional"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["demo", "--conditional", "--output-dir", str(tmp_path / "x")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()


def test_config_defaults_and_checks():
    cfg = ConditionalDemoConfig()
    cfg.validate()
    assert cfg.guidance_scales == (1.0, 2.0, 4.0) and cfg.pdiff_config().condition_dropout == cfg.condition_dropout
    with pytest.raises(DemoConfigError, match="condition dropout in"):
        ConditionalDemoConfig(condition_dropout=0.0).validate()
    with pytest.raises(DemoConfigError, match="expected learning rates > 0"):
        ConditionalDemoConfig(denoiser_learning_rate=0.0).validate()
    assert cfg.pdiff_config().denoiser_learning_rate == cfg.denoiser_learning_rate
