"""What a newcomer meets first with the training scripts: ``--report_to`` on a fresh install (tensorboard is not a
dependency: the default ``auto`` tracks with it only when it is installed) and a mistyped local path, which is a
one-line named error (exit code 2) before anything is looked up on the Hub."""

import logging
import subprocess
import sys

import pytest

import pdiff_hf.training.script_args as training_utils
from pdiff_hf.errors import CheckpointDatasetError, TrainingScriptError
from pdiff_hf.training.script_args import check_local_path, resolve_report_to

from .conftest import SCRIPTS, TINY_AE, run_in_process, subprocess_env

FRESH = [a for a in TINY_AE if a not in ("--report_to", "none")]  # the default --report_to


def test_report_to_auto_is_tensorboard_only_when_installed(monkeypatch):
    monkeypatch.setattr(training_utils, "tensorboard_installed", lambda: True)
    assert resolve_report_to("auto") == ("tensorboard", None)
    monkeypatch.setattr(training_utils, "tensorboard_installed", lambda: False)
    tracker, note = resolve_report_to("auto")
    assert tracker == "none" and "tensorboard is not installed" in note and "\n" not in note
    assert resolve_report_to("none") == ("none", None) and resolve_report_to("wandb") == ("wandb", None)


def test_fresh_install_without_tensorboard_trains_and_says_so_in_one_line(scripts, dataset_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(training_utils, "tensorboard_installed", lambda: False)
    out = tmp_path / "ae"
    with caplog.at_level(logging.INFO):
        assert run_in_process(scripts["train_autoencoder"], ["--dataset_name", dataset_dir, "--output_dir", out,
                                                             *FRESH, "--max_train_steps", "2"]) == 0  # fmt: skip
    assert (out / "config.json").is_file() and not (out / "logs").exists()
    notes = [r.getMessage() for r in caplog.records if "tensorboard is not installed" in r.getMessage()]
    assert len(notes) == 1
    # asked for explicitly, a missing tracker stays a named error before any work
    with pytest.raises(TrainingScriptError, match="--report_to tensorboard: expected the 'tensorboard' package"):
        scripts["train_autoencoder"].parse_args(["--dataset_name", str(dataset_dir), "--report_to", "tensorboard"])


def test_report_to_auto_tracks_with_tensorboard_when_installed(scripts, dataset_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "ae"
    assert scripts["train_autoencoder"].parse_args(["--dataset_name", str(dataset_dir)]).report_to == "auto"
    assert run_in_process(scripts["train_autoencoder"], ["--dataset_name", dataset_dir, "--output_dir", out, *FRESH,
                                                         "--max_train_steps", "2"]) == 0  # fmt: skip
    assert list((out / "logs" / "pdiff-autoencoder").rglob("events.out.tfevents*"))


@pytest.mark.parametrize(
    "value, hint",
    [
        ("ckpts/checkpoint", "did you mean 'ckpts/checkpoints'"),  # owner/name whose owner is a local folder
        ("./ckpts/checkpoints/", None),  # exists
        ("ckpts/checkpoints/x/y", "does not exist either"),
        ("ckpts/nothing_like_it", "'ckpts' holds checkpoints"),
        ("checkpoints", None),  # no owner: not a Hub id, and no such folder here
        ("/no/such/folder", "does not exist either"),
        ("~/no-such-pdiff-folder", None),
    ],
)
def test_a_local_path_that_does_not_exist_is_named_before_any_hub_lookup(tmp_path, monkeypatch, value, hint):
    (tmp_path / "ckpts" / "checkpoints").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    if value.startswith("./ckpts/checkpoints"):
        check_local_path(value, "--dataset_name")  # an existing folder passes
        return
    with pytest.raises(TrainingScriptError, match="--dataset_name: expected an existing folder or a Hub repo id") as info:
        check_local_path(value, "--dataset_name")
    assert repr(value) in str(info.value)
    if hint:
        assert hint in str(info.value)


def test_hub_ids_are_left_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("user/pdiff-checkpoints", "org-name/ds.v2"):
        check_local_path(value, "--dataset_name")  # no local folder "user": a Hub id, looked up later


def test_scripts_check_local_paths_in_parse_args(scripts, tmp_path, monkeypatch):
    (tmp_path / "ckpts" / "checkpoints").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointDatasetError, match="did you mean"):
        scripts["train_autoencoder"].parse_args(["--dataset_name", "ckpts/checkpoint"])
    with pytest.raises(CheckpointDatasetError, match="--dataset_name"):
        scripts["train_ldm"].parse_args(["--dataset_name", "ckpts/checkpoint", "--pretrained_autoencoder_name_or_path", "ckpts"])
    with pytest.raises(TrainingScriptError, match="--pretrained_autoencoder_name_or_path.*'ckpts/ae'"):
        scripts["train_ldm"].parse_args(["--dataset_name", "ckpts/checkpoints", "--pretrained_autoencoder_name_or_path", "ckpts/ae"])


def test_a_mistyped_dataset_path_exits_2_with_one_line_at_once(tmp_path):
    """As a user types it: a relative ``dir/name`` path with the Hub reachable (no HF_HUB_OFFLINE)."""
    (tmp_path / "ckpts" / "checkpoints").mkdir(parents=True)
    env = subprocess_env(tmp_path)
    del env["HF_HUB_OFFLINE"]
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train_autoencoder.py"), "--dataset_name", "ckpts/checkpoint"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_autoencoder.py: error: --dataset_name"), proc.stderr
    assert "did you mean 'ckpts/checkpoints'" in lines[0]  # named by parse_args: the Hub was never asked
