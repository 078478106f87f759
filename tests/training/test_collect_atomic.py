"""training/collect_checkpoints.py writes target/, checkpoints/ and collect_args.json as one set and holds the output
folder's lock: a rerun killed while it saves its dataset leaves the earlier set whole (no new target beside old
checkpoints), a second concurrent run into the same folder stops at once, stale temporary folders are removed."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "training" / "collect_checkpoints.py"
TINY = ["--channels", "4", "--num_train_epochs", "1", "--train_batch_size", "50", "--num_checkpoints", "4", "--save_every", "2"]

# The script with a small random stand-in for MNIST-1D; KILL_IN_SAVE=1 kills the process while the dataset is saved
# (after the target is written), LOCK_ONLY=1 holds the folder's lock until killed.
RUNNER = textwrap.dedent(
    """
    import os, runpy, signal, sys, torch
    torch.set_num_threads(1)
    if os.environ.get("LOCK_ONLY"):
        from pdiff_hf.utils.io_utils import locked_dir
        with locked_dir(sys.argv[1]):
            print("ready", flush=True)
            signal.pause()
    from pdiff_hf import ClassificationSplits
    from pdiff_hf.tasks import mnist1d

    def stand_in(seed=42, num_val=100):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(300, 1, 40, generator=g), torch.arange(300) % 10
        return ClassificationSplits(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])

    mnist1d.load_mnist1d = stand_in
    if os.environ.get("KILL_IN_SAVE"):
        import datasets
        def die(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        datasets.Dataset.save_to_disk = die
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def run(out: Path, *extra: str, **env) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", RUNNER, str(SCRIPT), "--output_dir", str(out), *TINY, *extra]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(argv, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=600)


def collected(out: Path):
    """(selection recorded in collect_args.json, D of the checkpoints, D of the target's selection)."""
    import datasets

    from pdiff_hf import get_layout
    from pdiff_hf.tasks.mnist1d import MNIST1DCNN

    args = json.loads((out / "collect_args.json").read_text())
    layout = get_layout(datasets.load_from_disk(str(out / "checkpoints")))
    layout.check_module(MNIST1DCNN.from_pretrained(str(out / "target")))
    return args["selection"], layout.dim


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_rerun_killed_while_saving_leaves_the_earlier_set(tmp_path):
    out = tmp_path / "collected"
    first = run(out, "--selection", "classifier.bias")
    assert first.returncode == 0, first.stderr[-2000:]
    (out / "notes.txt").write_text("mine")
    (out / ".checkpoints.tmp-abc123").mkdir()  # left by an earlier version's interrupted save
    before = collected(out)
    assert before == ("classifier.bias", 10)

    killed = run(out, "--selection", "last_norm_layers", KILL_IN_SAVE="1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert collected(out) == before  # the earlier set, whole: not the new target beside the old checkpoints
    assert (out / "notes.txt").read_text() == "mine"

    again = run(out, "--selection", "last_norm_layers")
    assert again.returncode == 0, again.stderr[-2000:]
    assert collected(out) == ("last_norm_layers", 16)
    assert (out / "notes.txt").read_text() == "mine"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # .lock stays
    leftovers += [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # the killed run's sibling and the stale .checkpoints.tmp-* are gone


def test_second_concurrent_run_stops_at_once(tmp_path):
    out = tmp_path / "collected"
    holder = subprocess.Popen([sys.executable, "-c", RUNNER, str(out)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "LOCK_ONLY": "1"}, cwd=ROOT)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        second = run(out, "--selection", "classifier.bias")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert second.returncode == 2
    assert f"locked by pid {holder.pid}" in second.stderr and "Traceback" not in second.stderr
    assert not (out / "checkpoints").exists()
