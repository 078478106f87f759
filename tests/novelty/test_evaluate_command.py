"""``pdiff-hf evaluate``: generate with a saved pipeline, analyze novelty, write the report with write_report."""

import json

import pytest
import torch

from pdiff_hf import ParamLayout, make_checkpoint_dataset

from .helpers import NUM_TRAIN, PLOTS, TinyMLP, files, headings, make_task


@pytest.fixture
def cli_setup(tmp_path, monkeypatch, tiny_models_factory):
    """A saved tiny target, checkpoint dataset and (untrained but valid) pipeline, with a registered ``tiny`` task."""
    from pdiff_hf import PDiffPipeline
    from pdiff_hf.commands import evaluate
    from pdiff_hf.training.training_utils import sampling_scheduler_for

    model, layout, data, train, _, _ = make_task()
    model.save_pretrained(tmp_path / "target")
    meta = {"run_id": [0] * NUM_TRAIN, "val_accuracy": [50.0] * NUM_TRAIN}
    make_checkpoint_dataset(train, layout, meta).save_to_disk(str(tmp_path / "ckpts"))
    ae, denoiser = tiny_models_factory(layout)
    ae.fit_normalization(train)
    ae.set_latent_scaling(train)
    denoiser.register_to_config(sample_abs_max=round(float(ae.params_to_latents(train).abs().max()), 4))
    PDiffPipeline(autoencoder=ae, denoiser=denoiser, scheduler=sampling_scheduler_for(denoiser)).save_pretrained(
        tmp_path / "pipe"
    )
    monkeypatch.setitem(
        evaluate.TASKS, "tiny", lambda: evaluate.Task(lambda: make_task()[2], TinyMLP, "synthetic 4-class task")
    )
    return tmp_path, layout


def _cli(tmp_path, *extra):
    from pdiff_hf.cli import main

    return main(
        ["evaluate", "--pipeline", str(tmp_path / "pipe"), "--checkpoints", str(tmp_path / "ckpts"),
         "--target", str(tmp_path / "target"), "--task", "tiny", "--num-models", "6", "--num-inference-steps", "2",
         *extra]
    )


def test_cli_evaluate_writes_results_plots_and_report(cli_setup, capsys, monkeypatch):
    from pdiff_hf import novelty

    calls = {"write_report": [], "tune_cpu_allocator": 0}
    real_write = novelty.write_report

    def spy_write(output_dir, results, **kwargs):
        calls["write_report"].append((output_dir, kwargs["title"]))
        return real_write(output_dir, results, **kwargs)

    def spy_tune():
        calls["tune_cpu_allocator"] += 1
        return False

    monkeypatch.setattr(novelty, "write_report", spy_write)
    monkeypatch.setattr(novelty, "tune_cpu_allocator", spy_tune)
    tmp_path, _ = cli_setup
    out = tmp_path / "out"
    assert _cli(tmp_path, "--output-dir", str(out)) == 0
    assert calls == {"write_report": [(out, "p-diff evaluation")], "tune_cpu_allocator": 1}
    printed = capsys.readouterr().out
    assert "| generated | 6 |" in printed and "Verdict:" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["generated"]["count"] == 6 and results["original"]["count"] == NUM_TRAIN
    assert results["baselines"]["noise_0.01"]["count"] == 6
    assert results["novelty"]["normalization"] == "pipeline autoencoder"
    assert results["verdict"][-1].startswith("Verdict:")
    assert "best_by_val" in results["original"] and results["timings_s"]["analyze"] > 0
    assert list(results["timings_s"]) == ["generate", "analyze", "report", "total"]
    assert set(results["plots"]) == PLOTS
    for name in results["plots"].values():
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # no temp files left; the folder's lock file stays (filelock keeps it), its holder's pid does not
    assert files(out) == sorted([".lock", *results["plots"].values(), "report.md", "results.json"])
    report = (out / "report.md").read_text()
    assert report.startswith("# p-diff evaluation\n") and "Verdict:" in report
    assert headings(report) == ["Original vs generated", "Novelty against simple baselines", "Timings (s)"]


def test_cli_evaluate_without_output_dir_writes_nothing(cli_setup, capsys):
    tmp_path, _ = cli_setup
    before = files(tmp_path)
    assert _cli(tmp_path) == 0
    assert "pass --output-dir" in capsys.readouterr().out
    assert files(tmp_path) == before


def test_cli_layout_mismatch_is_a_clear_error(cli_setup, capsys):
    tmp_path, layout = cli_setup
    other = ParamLayout.from_module(TinyMLP(), include="net.0.*")
    make_checkpoint_dataset(torch.randn(5, other.dim), other).save_to_disk(str(tmp_path / "ckpts2"))
    code = _cli(tmp_path, "--checkpoints", str(tmp_path / "ckpts2"))
    err = capsys.readouterr().err
    assert code == 2
    assert "does not match the pipeline" in err and "Traceback" not in err


@pytest.mark.parametrize("rows", [0, 1])
def test_cli_too_few_checkpoints_is_a_clear_error(cli_setup, capsys, rows):
    tmp_path, layout = cli_setup
    make_checkpoint_dataset(torch.randn(rows, layout.dim), layout).save_to_disk(str(tmp_path / "few"))
    code = _cli(tmp_path, "--checkpoints", str(tmp_path / "few"))
    err = capsys.readouterr().err
    assert code == 2 and "at least 2 checkpoints" in err and "nan" not in err.lower()


def test_cli_missing_folder_is_a_clear_error(cli_setup, capsys):
    tmp_path, _ = cli_setup
    assert _cli(tmp_path, "--pipeline", str(tmp_path / "nope")) == 2
    assert "--pipeline: expected an existing folder" in capsys.readouterr().err


def test_evaluate_errors_live_in_errors_module():
    from pdiff_hf import errors
    from pdiff_hf.commands import evaluate

    assert evaluate.EvaluateError is errors.EvaluateError
