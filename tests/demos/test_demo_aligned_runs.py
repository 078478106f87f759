"""``pdiff-hf demo --selection whole --recipe aligned-runs`` on tiny sizes: independent runs aligned to one another
by weight matching (MergeMany), the last checkpoints of each run, the linear autoencoder; option checks before any
work."""

import json

import datasets
import pytest
import torch

from pdiff_hf import PDiffPipeline
from pdiff_hf.checkpoints.collect_runs import get_alignment
from pdiff_hf.cli import main
from pdiff_hf.demos.demo import DemoConfig, run_demo
from pdiff_hf.errors import DemoConfigError
from pdiff_hf.models.linear_autoencoder import LinearParameterAutoencoder


def test_demo_aligned_runs_collects_aligned_runs_and_fits_the_linear_code(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg = DemoConfig(
        output_dir=str(out), selection="whole", recipe="aligned-runs", runs=2, channels=8, num_processes=2,
        num_checkpoints=10,
        heldout_checkpoints=4, target_epochs=1, denoiser_steps=3, num_models=3, num_inference_steps=3,
        recalibration_batches=2, novelty=False,
    )  # fmt: skip
    results = run_demo(cfg, log=lambda _: None)

    ds = datasets.load_from_disk(str(out / "checkpoints"))
    # 2 runs of 5 training + 2 held-out checkpoints each (the last 7 collection steps of each run)
    assert ds["run_id"] == [0] * 5 + [1] * 5 and results["reconstruction"]["heldout"]["count"] == 4
    assert all(len(set(ds["step"][r * 5 : r * 5 + 5]) & set(range(1, 8))) == 5 for r in (0, 1))
    alignment = get_alignment(ds)
    assert alignment["method"] == "weight_matching" and alignment["alignment"] == "merge_many"
    assert alignment["reference_run_id"] == 0
    assert alignment["reference_seed"] == cfg.seed and set(alignment["groups"]) == {
        "features.0", "features.3", "features.6"
    }  # fmt: skip
    pipe = PDiffPipeline.from_pretrained(str(out / "pipeline"))
    assert isinstance(pipe.autoencoder, LinearParameterAutoencoder)
    assert pipe.autoencoder.config.latent_length == 2  # 4 x 2 = 8 <= 10 - 1 components
    assert results["config"]["recipe"] == "aligned-runs" and results["selection"]["D"] == 4_010  # 8 channels
    rec = results["recalibration"]
    assert rec["generated"]["count"] == rec["generated_recalibrated"]["count"] == 3
    report = (out / "report.md").read_text()
    assert "2 independent 1-epoch runs of a 8-channel network aligned to one another by weight matching" in report
    assert json.loads((out / "target" / "config.json").read_text())["channels"] == 8
    assert json.loads((out / "results.json").read_text())["config"]["runs"] == 2


def test_demo_aligned_runs_config():
    cfg = DemoConfig(selection="whole", recipe="aligned-runs")
    cfg.validate()
    config = cfg.pdiff_config(23_690)
    assert config.autoencoder_type == "linear" and config.ae_linear_latent_length == 16  # 64 <= 199
    few = DemoConfig(selection="whole", recipe="aligned-runs", num_checkpoints=20).pdiff_config(23_690)
    assert few.ae_linear_latent_length == 4  # 4 x 4 = 16 <= 19
    assert DemoConfig().pdiff_config(128).autoencoder_type != "linear"  # the default recipe is unchanged


@pytest.mark.parametrize("kw, message", [
    ({"recipe": "aligned"}, "--recipe in"),
    ({"recipe": "aligned-runs"}, "found selection 'norm'"),
    ({"recipe": "aligned-runs", "selection": "whole", "branches": 2}, "branches 2"),
    ({"recipe": "aligned-runs", "selection": "whole", "runs": 1}, "runs 1"),
    ({"recipe": "aligned-runs", "selection": "whole", "channels": 0}, "--channels"),
    ({"recipe": "aligned-runs", "selection": "whole", "num_processes": 0}, "--num-processes"),
    ({"recipe": "aligned-runs", "selection": "whole", "num_checkpoints": 8, "novelty": False}, "--num-checkpoints >= 9"),
])  # fmt: skip
def test_demo_aligned_runs_bad_options(kw, message):
    with pytest.raises(DemoConfigError, match=message):
        DemoConfig(**kw).validate()


def test_demo_aligned_runs_cli_errors_before_any_work(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["demo", "--output-dir", str(out), "--recipe", "aligned-runs", "--runs", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--selection whole" in err[0] and "Traceback" not in err[0]
    assert not out.exists()
    assert main(["demo", "--output-dir", str(out), "--conditional", "--recipe", "aligned-runs"]) == 2
    assert "--recipe" in capsys.readouterr().err
    assert main(["demo", "--output-dir", str(out), "--conditional", "--channels", "64"]) == 2
    assert "--channels" in capsys.readouterr().err
