"""The conditional CLI chain in real subprocesses, at tiny sizes: ``collect_checkpoints.py --task mnist1d-shift
--num_tasks 2`` -> ``train_autoencoder.py`` -> ``train_ldm.py --condition_column condition`` -> ``pdiff-hf evaluate``
(scored per task). MNIST-1D is replaced by a small stand-in inside each subprocess (the real one takes ~7 s)."""

import json
import subprocess
import sys

import datasets
import pytest
import torch

from pdiff_hf.checkpoints.dataset import checkpoint_conditions, get_condition_names

from .conftest import ROOT, RUNNER, SCRIPTS, TINY_AE, TINY_LDM, subprocess_env


def _run(tmp_path, target, *argv):
    cmd = [sys.executable, "-c", RUNNER, str(target), *[str(a) for a in argv]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conditional-chain")
    collected, ae, ldm, report = tmp / "collected", tmp / "ae", tmp / "ldm", tmp / "eval"
    _run(tmp, SCRIPTS / "collect_checkpoints.py", "--task", "mnist1d-shift", "--num_tasks", "2", "--output_dir",
         collected, "--selection", "*", "--num_train_epochs", "10", "--train_learning_rate", "0.01", "--learning_rate", "0.01",
         "--train_batch_size", "50", "--num_checkpoints",
         "8", "--save_every", "1")  # fmt: skip
    _run(tmp, SCRIPTS / "train_autoencoder.py", "--dataset_name", collected / "checkpoints", "--output_dir", ae,
         *TINY_AE, "--max_train_steps", "4")  # fmt: skip
    _run(tmp, SCRIPTS / "train_ldm.py", "--dataset_name", collected / "checkpoints",
         "--pretrained_autoencoder_name_or_path", ae, "--output_dir", ldm, *TINY_LDM, "--condition_column",
         "condition", "--max_train_steps", "4")  # fmt: skip
    proc = _run(tmp, "pdiff-hf", "evaluate", "--pipeline", ldm, "--checkpoints", collected / "checkpoints",
                "--target", collected / "target", "--task", "mnist1d-shift", "--num-models", "3",
                "--num-inference-steps", "2", "--guidance-scale", "2", "--average-k", "2", "--output-dir", report)  # fmt: skip
    return {"collected": collected, "ldm": ldm, "report": report, "stdout": proc.stdout}


def test_collect_writes_a_conditional_dataset(chain):
    ds = datasets.load_from_disk(str(chain["collected"] / "checkpoints"))
    assert get_condition_names(ds) == ["mnist1d-shift-0", "mnist1d-shift-1"]
    assert torch.equal(checkpoint_conditions(ds), torch.arange(2).repeat_interleave(8))
    args = json.loads((chain["collected"] / "collect_args.json").read_text())
    assert args["num_tasks"] == 2 and args["task"] == "mnist1d-shift"
    # each task's selection was re-initialized and trained on its own labels: far above chance (10%) on its task
    own = torch.tensor(ds["test_accuracy"])
    assert float(own[:8].median()) > 30.0 and float(own[8:].median()) > 30.0


def test_evaluate_scores_each_task_and_writes_the_report(chain):
    results = json.loads((chain["report"] / "results.json").read_text())
    assert results["conditional"] is True and results["guidance_scale"] == 2.0
    assert results["tasks"]["names"] == ["mnist1d-shift-0", "mnist1d-shift-1"]
    assert results["tasks"]["checkpoints_per_task"] == [8, 8]
    for name in results["tasks"]["names"]:
        assert results["original"][name]["count"] == 8 and results["generated"][name]["count"] == 3
        assert results["novelty"][name]["generated"]["count"] == 3
    matrix = results["cross_task"]["original"]
    assert len(matrix) == 2 and matrix[0][0] > matrix[0][1] and matrix[1][1] > matrix[1][0]
    report = (chain["report"] / "report.md").read_text()
    for heading in ("Originals vs generated per task", "Cross-task matrix", "Novelty within each task's checkpoints"):
        assert f"## {heading}" in report and f"## {heading}" in chain["stdout"]
