"""The ``pdiff-hf demo`` command on a tiny configuration: folder layout, results.json fields, the shared report
writer (same files and sections as ``pdiff-hf evaluate``), CLI errors."""

import json

import datasets
import pytest
import torch

from pdiff_hf import PDiffPipeline, checkpoint_params, get_layout
from pdiff_hf.cli import main
from pdiff_hf.demos.demo import DemoConfig
from pdiff_hf.errors import DemoConfigError
from pdiff_hf.novelty import format_accuracy_table

TINY = [
    "--num-checkpoints", "12", "--ae-steps", "5", "--denoiser-steps", "5", "--num-models", "6",
    "--target-epochs", "1", "--num-inference-steps", "4",
]
SUMMARY_FIELDS = {"count", "best", "mean", "median", "min", "std"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The tiny demo, run once through the CLI: its folder, the calls it made to the report writer and allocator
    tuning, and the MNIST-1D splits it generated (``{seed: splits}``)."""
    from pdiff_hf import novelty
    from pdiff_hf.demos import demo

    out = tmp_path_factory.mktemp("demo") / "run"
    calls = {"write_report": [], "tune_cpu_allocator": 0}
    real_write, real_load = demo.write_report, demo.load_mnist1d
    splits = {}

    def remember_splits(seed, **kwargs):
        splits[seed] = real_load(seed=seed, **kwargs)
        return splits[seed]

    def spy_write(output_dir, results, **kwargs):
        calls["write_report"].append((output_dir, kwargs["title"]))
        return real_write(output_dir, results, **kwargs)

    def spy_tune():
        calls["tune_cpu_allocator"] += 1
        return False

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "write_report", spy_write)
        mp.setattr(demo, "load_mnist1d", remember_splits)
        mp.setattr(novelty, "tune_cpu_allocator", spy_tune)
        assert main(["demo", "--output-dir", str(out)] + TINY) == 0
    return out, calls, splits


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    return demo_run[0]


def _headings(markdown: str):
    return [line[3:] for line in markdown.splitlines() if line.startswith("## ")]


def _report_files(folder):
    """Files of the report (not the demo's target/, checkpoints/, pipeline/ folders, nor the folder's lock file, which
    filelock leaves in place)."""
    skip = ("target/", "checkpoints/", "heldout/", "pipeline/", ".lock")
    found = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(f for f in found if not f.startswith(skip))


def test_demo_writes_every_output(demo_dir):
    for name in ("target", "checkpoints", "pipeline", "report.md", "results.json"):
        assert (demo_dir / name).exists(), name
    assert not [p for p in demo_dir.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temporary folders left (the lock file stays)
    results = json.loads((demo_dir / "results.json").read_text())
    for group in ("original", "generated"):
        assert SUMMARY_FIELDS <= set(results[group])
    assert results["original"]["count"] == 12 and results["generated"]["count"] == 6
    assert {"data", "target", "collect", "train", "generate", "evaluate", "total"} <= set(results["timings_s"])
    assert results["baselines"] and all(SUMMARY_FIELDS <= set(b) for b in results["baselines"].values())
    assert "novelty" in results and results["verdict"]
    assert results["selection"]["D"] == 128
    report = (demo_dir / "report.md").read_text()
    assert ".png)" in report and "| p-diff" in report
    for png in (demo_dir / "plots").glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_demo_results_json_is_written_last(demo_dir):
    newest = max(p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file() and p.name != "results.json")
    assert (demo_dir / "results.json").stat().st_mtime_ns >= newest


def test_demo_checkpoints_and_pipeline_reload(demo_dir):
    ds = datasets.load_from_disk(str(demo_dir / "checkpoints"))
    assert {"params", "step", "val_accuracy", "test_accuracy"} <= set(ds.column_names)
    assert get_layout(ds).dim == 128 and checkpoint_params(ds).shape == (12, 128)
    results = json.loads((demo_dir / "results.json").read_text())
    assert results["original"]["mean"] == pytest.approx(float(torch.tensor(ds["test_accuracy"]).double().mean()), abs=1e-3)
    pipe = PDiffPipeline.from_pretrained(str(demo_dir / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe(num_models=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).params.shape == (2, 128)


def test_format_table_lists_every_group(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    table = format_accuracy_table(results)
    assert "original" in table and "p-diff" in table and "average_k" in table
    assert table in (demo_dir / "report.md").read_text()


def test_demo_command_tunes_the_allocator_and_uses_the_shared_writer(demo_run):
    out, calls, _ = demo_run
    assert calls == {"write_report": [(out, "p-diff on MNIST-1D")], "tune_cpu_allocator": 1}


def test_demo_and_evaluate_write_the_same_files_and_sections(demo_run, tmp_path, capsys, monkeypatch):
    """``pdiff-hf evaluate`` on the demo's own outputs writes a report folder like the demo's."""
    from pdiff_hf.tasks import mnist1d

    demo_dir, _, splits = demo_run
    monkeypatch.setattr(mnist1d, "load_mnist1d", lambda seed=42, **kwargs: splits[seed])  # generated once, by the demo
    out = tmp_path / "eval"
    argv = ["evaluate", "--pipeline", str(demo_dir / "pipeline"), "--checkpoints", str(demo_dir / "checkpoints"),
            "--target", str(demo_dir / "target"), "--num-models", "6", "--num-inference-steps", "4",
            "--output-dir", str(out), "--heldout", str(demo_dir / "heldout")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert _report_files(out) == _report_files(demo_dir) == [
        "plots/accuracy_distribution.png", "plots/accuracy_vs_novelty.png", "plots/generalization_accuracy.png",
        "plots/generalization_energy.png", "plots/generalization_pca.png", "plots/nn_distance_hist.png",
        "report.md", "results.json",
    ]
    demo_md, eval_md = (demo_dir / "report.md").read_text(), (out / "report.md").read_text()
    assert _headings(demo_md) == [
        "Original vs generated", "Spread of the original checkpoints", "Reconstruction of held-out checkpoints",
        "Held-out generalization test", "Novelty against simple baselines", "Timings (s)",
    ]
    demo_only = ("Spread of the original checkpoints", "Reconstruction of held-out checkpoints")
    assert _headings(eval_md) == [h for h in _headings(demo_md) if h not in demo_only]
    demo_res, eval_res = (json.loads((d / "results.json").read_text()) for d in (demo_dir, out))
    assert demo_res["plots"] == eval_res["plots"]
    for res in (demo_res, eval_res):
        assert {"original", "generated", "baselines", "novelty", "verdict"} <= set(res)
        assert list(res["timings_s"])[-2:] == ["report", "total"]
    # same checkpoints, same seed, same number of models: the same novelty summary
    assert demo_res["original"] == eval_res["original"] and demo_res["verdict"] == eval_res["verdict"]
    # and the same held-out generalization test, whose summary opens the terminal output and the report
    assert demo_res["generalization"] == eval_res["generalization"]
    assert printed.startswith("\n".join(eval_res["generalization"]["summary"]))
    assert eval_md.splitlines()[2] == f"**{eval_res['generalization']['summary'][0]}**"


def test_evaluate_heldout_needs_five_checkpoints(demo_dir, tmp_path, capsys):
    """``pdiff-hf evaluate --heldout`` with 3 held-out checkpoints: a one-line error before any weights are loaded."""
    few = tmp_path / "few"
    datasets.load_from_disk(str(demo_dir / "heldout")).select(range(3)).save_to_disk(str(few))
    capsys.readouterr()  # the progress bar of save_to_disk
    argv = ["evaluate", "--pipeline", str(demo_dir / "pipeline"), "--checkpoints", str(demo_dir / "checkpoints"),
            "--target", str(demo_dir / "target"), "--heldout", str(few)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5 held-out checkpoints" in err[0] and "found 12 and 3" in err[0]


def test_evaluate_heldout_of_whole_runs_needs_more_training_runs(demo_dir, tmp_path, capsys):
    """Held-out checkpoints of a run the training checkpoints do not have are whole runs held out: the test's null
    then holds out whole runs, which needs more training runs than held-out ones (the demo has one)."""
    other_run = tmp_path / "other_run"
    held = datasets.load_from_disk(str(demo_dir / "heldout"))
    held.map(lambda row: {"run_id": 7}).save_to_disk(str(other_run))
    capsys.readouterr()
    argv = ["evaluate", "--pipeline", str(demo_dir / "pipeline"), "--checkpoints", str(demo_dir / "checkpoints"),
            "--target", str(demo_dir / "target"), "--heldout", str(other_run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more training runs than held-out runs" in err[0] and "found 1 training and 1" in err[0]


def test_whole_heldout_runs_are_recognized_by_their_run_ids():
    from pdiff_hf.commands.evaluate import whole_heldout_runs

    train = datasets.Dataset.from_dict({"run_id": [0, 0, 1, 1, 2, 2]})
    assert whole_heldout_runs(train, datasets.Dataset.from_dict({"run_id": [1, 2]})) == {}  # checkpoints of its runs
    assert whole_heldout_runs(train, datasets.Dataset.from_dict({"step": [1, 2]})) == {}  # no run ids
    runs = whole_heldout_runs(train, datasets.Dataset.from_dict({"run_id": [5, 5]}))
    assert runs["train_runs"].tolist() == [0, 0, 1, 1, 2, 2] and runs["heldout_runs"].tolist() == [5, 5]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-models", "0"], "--num-models"),
        (["--num-checkpoints", "1"], "--num-checkpoints"),
        (["--save-every", "0"], "--save-every"),
    ],
)
def test_demo_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main(["demo", "--output-dir", str(tmp_path / "x")] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()


def test_demo_output_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["demo", "--output-dir", str(f)]) == 2
    assert "found a file" in capsys.readouterr().err


def test_demo_config_selection_sizes():
    cfg = DemoConfig()
    assert cfg.pdiff_config(128).ae_patch_size == 1
    big = cfg.pdiff_config(12_810)
    assert big.ae_patch_size == 32
    with pytest.raises(DemoConfigError, match="--selection"):
        DemoConfig(selection="everything").validate()


def test_whole_selection_covers_every_parameter_and_the_batchnorm_statistics():
    from pdiff_hf.demos.demo import select_layout
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN

    model = MNIST1DCNN()
    layout = select_layout(model, "whole")
    params = dict(model.named_parameters())
    stats = {n for n, _ in model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    assert stats and set(layout.names) == set(params) | stats
    assert not [n for n in layout.names if n.endswith("num_batches_tracked")]
    assert layout.dim == sum(p.numel() for p in params.values()) + sum(dict(model.named_buffers())[n].numel() for n in stats)
    DemoConfig(selection="whole").validate()


def test_demo_reconstruction_gate_on_held_out_checkpoints(demo_dir):
    """The 20 held-out checkpoints are spread through the run of the 12 training ones and never saved as training
    data; they are saved on their own (heldout/) and drive the held-out generalization test."""
    results = json.loads((demo_dir / "results.json").read_text())
    rec = results["reconstruction"]
    assert rec["heldout"]["count"] == rec["autoencoder"]["count"] == rec["pca"]["count"] == 20
    assert rec["pca_components"] == 11 and rec["latent_numel"] > 0  # PCA capped at 12 - 1 components
    assert isinstance(rec["gate"]["passed"], bool) and "held-out" in rec["gate"]["rule"]
    assert rec["gate"]["autoencoder_val_median"] == rec["autoencoder"]["val_accuracy"]["median"]
    assert "**PASSED**" in (demo_dir / "report.md").read_text() or "FAILED" in (demo_dir / "report.md").read_text()
    # 12 training + 20 held-out checkpoints of one run, the held-out ones spread through it (5 of every 8 steps)
    train_steps = list(datasets.load_from_disk(str(demo_dir / "checkpoints"))["step"])
    assert train_steps == [1, 3, 6, 9, 11, 14, 17, 19, 22, 25, 27, 30]
    held_steps = list(datasets.load_from_disk(str(demo_dir / "heldout"))["step"])
    assert sorted(held_steps + train_steps) == list(range(1, 33))
    gen = results["generalization"]
    assert gen["verdict"] in ("GENERALIZING", "MEMORIZING", "AVERAGING", "OFF-DISTRIBUTION", "INCONCLUSIVE")
    assert gen["settings"]["num_training"] == 12 and gen["settings"]["num_heldout"] == 20
    assert {"pca_gaussian", "resampled"} <= set(gen["groups"]) and {"pca_gaussian", "resampled"} <= set(results["baselines"])
    report_lines = (demo_dir / "report.md").read_text().splitlines()
    assert report_lines[2] == f"**{gen['summary'][0]}**" and report_lines[4:7:2] == gen["summary"][1:]


def test_split_heldout_spreads_the_held_out_steps_through_each_run():
    from pdiff_hf.checkpoints.dataset import make_checkpoint_dataset
    from pdiff_hf.demos.demo import split_heldout
    from pdiff_hf.layout import ParamLayout

    layout = ParamLayout.from_module(torch.nn.Linear(2, 1))
    rows = [(r, s) for r in range(3) for s in range(1, 6)]  # 3 runs of 5 steps
    ds = make_checkpoint_dataset(
        torch.arange(15.0)[:, None].expand(15, 3).contiguous(), layout,
        {"run_id": [r for r, _ in rows], "step": [s for _, s in rows]},
    )
    train, held = split_heldout(ds, per_run=3, total=9)  # 2 of every 5 steps held out: steps 3 and 5
    assert list(zip(train["run_id"], train["step"])) == [(r, s) for r in range(3) for s in (1, 2, 4)]
    assert sorted(zip(held["run_id"], held["step"])) == [(r, s) for r in range(3) for s in (3, 5)]
    assert get_layout(train) == layout == get_layout(held)
    train, held = split_heldout(ds, per_run=5, total=15)
    assert len(train) == 15 and held is None


def test_demo_with_branches_and_recalibration(tmp_path):
    """The whole network in 2 branches, BatchNorm recalibration measured beside the generated models."""
    from pdiff_hf.demos.demo import run_demo

    cfg = DemoConfig(
        output_dir=str(tmp_path / "run"), selection="whole", num_checkpoints=6, heldout_checkpoints=2, branches=2,
        trunk_epochs=1, branch_epochs=1, ae_steps=3, denoiser_steps=3, num_models=3, num_inference_steps=3,
        recalibration_batches=2, novelty=False,
    )
    results = run_demo(cfg, log=lambda _: None)
    ds = datasets.load_from_disk(str(tmp_path / "run" / "checkpoints"))
    assert ds["run_id"] == [0, 0, 0, 1, 1, 1] and ds["step"] == [1, 2, 3] * 2
    assert results["reconstruction"]["heldout"]["count"] == 2
    rec = results["recalibration"]
    assert rec["batches"] == 2 and rec["generated"]["count"] == rec["generated_recalibrated"]["count"] == 3
    assert rec["original"]["count"] == 6
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## BatchNorm recalibration" in report and "2 branches of a 1-epoch target" in report


@pytest.mark.parametrize("kw, message", [
    ({"recalibration_batches": 4}, "--selection whole"),
    ({"branches": 150}, "2 checkpoints per branch"),
    ({"heldout_checkpoints": -1}, "non-negative"),
])
def test_demo_config_branch_and_recalibration_checks(kw, message):
    with pytest.raises(DemoConfigError, match=message):
        DemoConfig(**kw).validate()


def test_demo_config_needs_enough_checkpoints_for_the_generalization_test():
    from pdiff_hf.errors import GeneralizationTestError

    with pytest.raises(GeneralizationTestError, match="--heldout-checkpoints >= 5.*found 200 and 3"):
        DemoConfig(heldout_checkpoints=3).validate()
    with pytest.raises(GeneralizationTestError, match="--num-checkpoints >= 10.*found 8 and 20"):
        DemoConfig(num_checkpoints=8).validate()
    DemoConfig(num_checkpoints=8, heldout_checkpoints=0).validate()  # no held-out checkpoints: no test
    DemoConfig(num_checkpoints=8, novelty=False).validate()
