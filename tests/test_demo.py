"""The ``pdiff-hf demo`` command on a tiny configuration: folder layout, results.json fields, CLI errors."""

import json

import datasets
import pytest
import torch

from pdiff_hf import PDiffPipeline, checkpoint_params, get_layout
from pdiff_hf.cli import main
from pdiff_hf.demo import DemoConfig, DemoConfigError, format_table

TINY = [
    "--num-checkpoints", "12", "--ae-steps", "5", "--denoiser-steps", "5", "--num-models", "6",
    "--target-epochs", "1", "--num-inference-steps", "4",
]
SUMMARY_FIELDS = {"count", "best", "mean", "median", "min", "std"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--output-dir", str(out)] + TINY) == 0
    return out


def test_demo_writes_every_output(demo_dir):
    for name in ("target", "checkpoints", "pipeline", "report.md", "results.json"):
        assert (demo_dir / name).exists(), name
    assert not [p for p in demo_dir.iterdir() if p.name.startswith(".")]  # no temporary folders left
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
    table = format_table(results)
    assert "original" in table and "p-diff" in table and "average_k" in table


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
    with pytest.raises(DemoConfigError):
        DemoConfig(selection="everything").validate()
