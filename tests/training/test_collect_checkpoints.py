"""training/collect_checkpoints.py: tiny end-to-end runs in this process, the library's defaults, bad input.

MNIST-1D is replaced by a small random stand-in (generating the real one takes ~7 s); one run goes through a real
subprocess to check the ``__main__`` path (one-line error, exit code 2, no traceback).
"""

import importlib.util
import inspect
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "collect_checkpoints.py"
TINY = ["--channels", "4", "--num_train_epochs", "1", "--train_batch_size", "50", "--num_checkpoints", "6", "--save_every", "2"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("_pdiff_training_collect_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_mnist1d(monkeypatch):
    from pdiff_hf import ClassificationSplits
    from pdiff_hf.tasks import mnist1d

    g = torch.Generator().manual_seed(0)

    def load(seed=42, num_val=500):
        x = torch.randn(300, 1, 40, generator=g)
        y = torch.randint(0, 10, (300,), generator=g)
        return ClassificationSplits(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])

    monkeypatch.setattr(mnist1d, "load_mnist1d", load)


def _run(script, argv):
    """``cli(argv)`` in this process, leaving no Accelerate singletons behind for the other training tests."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        return script.cli([str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_collect_checkpoints_script(script, small_mnist1d, tmp_path):
    import datasets

    from pdiff_hf import checkpoint_params, get_layout
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN

    out = tmp_path / "collected"
    argv = ["--output_dir", out] + TINY + ["--selection", "last_norm_layers"]
    assert _run(script, argv) == 0
    ds = datasets.load_from_disk(str(out / "checkpoints"))
    layout = get_layout(ds)
    assert checkpoint_params(ds).shape == (6, layout.dim) and layout.dim == 4 * 4  # 2 BatchNorm layers x (w, b)
    assert ds["step"] == [2, 4, 6, 8, 10, 12]
    model = MNIST1DCNN.from_pretrained(str(out / "target"))
    layout.check_module(model)
    assert json.loads((out / "collect_args.json").read_text())["num_checkpoints"] == 6
    assert [p.name for p in out.glob(".*")] == [".lock"], "temporary folders left behind"  # the lock file stays

    # rerunning replaces the earlier collection; --selection takes globs; a selection matching nothing is bad input
    assert _run(script, argv[:-1] + ["classifier.bias"]) == 0
    assert get_layout(datasets.load_from_disk(str(out / "checkpoints"))).dim == 10
    assert _run(script, argv[:-1] + ["nothing.matches"]) == 2
    assert _run(script, argv + ["--num_checkpoints", "0"]) == 2


def test_script_defaults_are_the_library_defaults(script):
    from pdiff_hf.checkpoints.collect import collect_checkpoints, train_classifier
    from pdiff_hf.tasks import get_task

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    args = script.parse_args([])
    pairs = {
        "learning_rate": [(collect_checkpoints, "learning_rate")],
        "momentum": [(collect_checkpoints, "momentum")],
        "num_checkpoints": [(collect_checkpoints, "num_checkpoints")],
        "save_every": [(collect_checkpoints, "save_every")],
        "seed": [(collect_checkpoints, "seed"), (train_classifier, "seed")],
        "train_batch_size": [(collect_checkpoints, "batch_size"), (train_classifier, "batch_size")],
        "num_train_epochs": [(train_classifier, "epochs")],
        "train_learning_rate": [(train_classifier, "learning_rate"), (collect_checkpoints, "train_learning_rate")],
        "data_seed": [(get_task("mnist1d").load_data, "seed")],
    }
    for flag, targets in pairs.items():
        for fn, name in targets:
            assert getattr(args, flag) == default(fn, name), f"--{flag} != {fn.__name__}({name}=...)"
    assert args.task == "mnist1d" and args.selection == "last_norm_layers" and args.num_norm_layers == 2


def test_push_to_hub_pushes_the_dataset_and_never_writes_the_token(script, small_mnist1d, tmp_path, monkeypatch, caplog):
    import pdiff_hf.hub

    calls = []
    monkeypatch.setattr(pdiff_hf.hub, "push_checkpoint_dataset", lambda ds, repo_id, **kw: calls.append((ds, repo_id, kw)))
    secret = "hf_secretTOKEN123"
    out = tmp_path / "pushed"
    argv = ["--output_dir", out] + TINY + ["--push_to_hub", "--hub_model_id", "user/ckpts", "--hub_token", secret]
    caplog.set_level(logging.INFO)
    assert _run(script, argv + ["--hub_private_repo"]) == 0
    (ds, repo_id, kw), = calls
    assert repo_id == "user/ckpts" and kw["token"] == secret and kw["private"] is True
    assert len(ds) == 6 and kw["architecture"].startswith("MNIST1DCNN(")
    saved = (out / "collect_args.json").read_text()
    assert "hub_model_id" in saved and secret not in saved and secret not in caplog.text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "mnist2d"], "expected one of mnist1d, mnist1d-shift, found 'mnist2d'"),
        (["--num_checkpoints", "0"], "--num_checkpoints: expected >= 1, found 0"),
        (["--learning_rate", "0"], "--learning_rate: expected > 0"),
        (["--learning_rat", "1"], "unrecognized arguments"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--pretrained_target_model", "{tmp}/nope"], "--pretrained_target_model: expected a folder"),
        (["--pretrained_target_model", "{tmp}"], "expected a saved MNIST1DCNN"),
        (["--output_dir", "{tmp}/file"], "--output_dir: expected a folder, found a file"),
        (["--selection", ","], "--selection: expected"),
        (["--num_tasks", "-1"], "--num_tasks: expected >= 0, found -1"),
        (["--num_tasks", "2", "--num_runs", "2"], "--num_runs: expected 1 with --num_tasks"),
        (["--num_tasks", "2", "--condition_names", "a"], "--condition_names: expected 2 non-empty names"),
        (["--condition_names", "a"], "--condition_names: expected 0 non-empty names"),
        (["--num_tasks", "2"], "--num_tasks: expected a task whose load_data takes condition= for 2 conditions"),
    ],
)
def test_bad_input_exits_2_with_one_line(script, small_mnist1d, tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("")
    argv = ["--output_dir", tmp_path / "out"] + TINY + [e.format(tmp=tmp_path) for e in extra]
    capsys.readouterr()
    assert _run(script, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("collect_checkpoints.py: error: ") and message in err, err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "out"), "--task", "nope"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["collect_checkpoints.py: error: task: expected one of mnist1d, mnist1d-shift, found 'nope'"]
