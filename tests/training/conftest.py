"""Fixtures for the training scripts: a tiny checkpoint dataset, the scripts loaded as modules, and helpers that run
a script in this process (fast) or as a real subprocess (for interrupts, exit codes and ``accelerate launch``)."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pdiff_hf import ParamLayout, make_checkpoint_dataset

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "training"
BIN = Path(sys.executable).parent
D, N = 64, 32

# Tiny models; batches of 8 from 32 checkpoints give 4 batches per epoch, so resuming mid-epoch is exercised.
TINY_AE = ["--block_out_channels", "8", "8", "--train_batch_size", "8", "--lr_warmup_steps", "2", "--report_to", "none"]
TINY_LDM = ["--block_out_channels", "8", "16", "--num_train_timesteps", "100", "--train_batch_size", "8",
            "--lr_warmup_steps", "2", "--report_to", "none", "--num_validation_models", "2",
            "--num_inference_steps", "5"]  # fmt: skip

# Runs a script (or the pdiff-hf CLI) with mnist1d.load_mnist1d swapped for 600 MNIST-1D-shaped examples: ten noisy
# templates, which a linear head on pooled CNN features tells apart.
RUNNER = """
import runpy, sys, torch
from pdiff_hf import ClassificationSplits
from pdiff_hf.tasks import mnist1d

def stand_in(seed=42, num_val=100):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 40, generator=g)
    y = torch.arange(600) % 10
    x = templates[y] + 0.3 * torch.randn(600, 1, 40, generator=g)
    return ClassificationSplits(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:])

mnist1d.load_mnist1d = stand_in
target, sys.argv = sys.argv[1], sys.argv[1:]
if target == "pdiff-hf":
    from pdiff_hf.cli import main
    sys.exit(main(sys.argv[1:]))
runpy.run_path(target, run_name="__main__")
"""


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_pdiff_training_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def scripts():
    return {name: load_script(name) for name in ("train_autoencoder", "train_ldm")}


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """32 checkpoints of a Linear(7, 8) (D=64) around one base point."""
    generator = torch.Generator().manual_seed(0)
    layout = ParamLayout.from_module(nn.Linear(7, 8))
    params = torch.randn(D, generator=generator) + 0.05 * torch.randn(N, D, generator=generator)
    path = tmp_path_factory.mktemp("data") / "checkpoints"
    make_checkpoint_dataset(params, layout, {"run_id": [0] * N, "step": list(range(N))}).save_to_disk(str(path))
    return path


def run_in_process(script, argv):
    """``main(parse_args(argv))`` in this process, leaving no Accelerate singletons or signal handlers behind."""
    from accelerate.state import AcceleratorState, GradientState

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        return script.main(script.parse_args([str(a) for a in argv]))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def subprocess_env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"))
    env.update(ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Background:
    """A command running in its own session, its output in a log file."""

    def __init__(self, cmd, env, log_path):
        self.log_path = Path(log_path)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(c) for c in cmd], env=env, stdout=self._log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    def log(self):
        return self.log_path.read_text()

    def result(self, timeout=600):
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return rc, self.log()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if not self._log.closed:
            self._log.close()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
