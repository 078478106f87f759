"""Bad input to the library's entry points is a named error before any work: ``fit_pdiff``, and the output folders
of ``pdiff-hf demo`` and ``pdiff-hf evaluate`` (writable, not in use by another run). The Hub loader's cases are in
``tests/hub/test_load.py``, the layout's in ``tests/test_layout.py``."""

import os
import subprocess
import sys
from pathlib import Path

import pdiff_hf.training.fit
import pytest
import torch

from pdiff_hf import (
    CheckpointDatasetError,
    DimensionMismatchError,
    NonFiniteParametersError,
    ParamLayout,
    PDiffConfig,
    fit_pdiff,
)
from pdiff_hf.cli import main
from pdiff_hf.errors import (
    LayoutMismatchError,
    OutputFolderError,
    OutputFolderInUseError,
    PDiffConfigError,
    PDiffError,
)
from pdiff_hf.utils.io_utils import HOLDER_NAME, LOCK_NAME, locked_dir

LAYOUT = ParamLayout.from_list([{"name": "w", "shape": [2, 3]}, {"name": "b", "shape": [2]}])  # D = 8


@pytest.fixture
def no_training(monkeypatch):
    """Building a model fails the test: the error must come before it."""

    def built(*args, **kwargs):
        raise AssertionError("fit_pdiff built a model before checking its inputs")

    monkeypatch.setattr(pdiff_hf.training.fit, "build_autoencoder", built)


@pytest.mark.parametrize(
    "params, layout, config, error, needle",
    [
        (torch.randn(1, 8), LAYOUT, None, CheckpointDatasetError, "at least 2 checkpoints (rows)"),
        (torch.randn(8), LAYOUT, None, DimensionMismatchError, "expected checkpoints of shape (N, 8) for the layout"),
        (torch.randn(4, 2, 4), LAYOUT, None, DimensionMismatchError, "found (4, 2, 4)"),
        (torch.randn(4, 9), LAYOUT, None, DimensionMismatchError, "found (4, 9)"),
        (torch.ones(4, 8, dtype=torch.long), LAYOUT, None, DimensionMismatchError, "found a torch.int64 tensor"),
        ([[0.0] * 8] * 4, LAYOUT, None, DimensionMismatchError, "found a list"),
        (torch.full((4, 8), float("nan")), LAYOUT, None, NonFiniteParametersError, "found NaN/Inf in 4 of 4 rows"),
        (torch.randn(4, 8), [{"name": "w"}], None, LayoutMismatchError, "expected a ParamLayout, found a list"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(ae_steps=0), PDiffConfigError, "config.ae_steps to be a positive"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(denoiser_train_batch_size=0), PDiffConfigError, "found 0"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(ae_learning_rate=float("inf")), PDiffConfigError, "found inf"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(denoiser_learning_rate=float("nan")), PDiffConfigError, "found nan"),
        (torch.randn(4, 8), LAYOUT, PDiffConfig(num_train_timesteps=1), PDiffConfigError, "integer >= 2, found 1"),
    ],
)
def test_fit_pdiff_refuses_bad_input_before_training(no_training, params, layout, config, error, needle):
    with pytest.raises(error) as info:
        fit_pdiff(params, layout, config, progress=False)
    assert needle in str(info.value)


# ================================================================================================= output folders
def _read_only_folder(tmp_path):
    """An existing folder this process cannot write in: a chmod 0o555 folder, or /sys when running as root (root
    ignores file modes)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:  # sysfs refuses new files even to root
        os.close(os.open("/sys/.pdiff-probe", os.O_CREAT | os.O_WRONLY))
    except OSError:
        return Path("/sys")
    os.unlink("/sys/.pdiff-probe")
    pytest.skip("no folder this process cannot write in")


def _evaluate_argv(tmp_path, out):
    inputs = tmp_path / "inputs"  # existing folders: the output folder is checked before they are read
    inputs.mkdir(exist_ok=True)
    return ["evaluate", "--pipeline", str(inputs), "--checkpoints", str(inputs), "--target", str(inputs),
            "--output-dir", str(out)]  # fmt: skip


@pytest.fixture
def no_work(monkeypatch):
    """Loading data (demo) or a dataset (evaluate) fails the test: output folders must be checked first."""
    import datasets

    from pdiff_hf.demos import demo

    def worked(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(demo, "load_mnist1d", worked)
    monkeypatch.setattr(datasets, "load_from_disk", worked)


@pytest.mark.parametrize("command", ["demo", "evaluate"])
@pytest.mark.parametrize("where", ["read_only", "under_a_file", "not_creatable"])
def test_unwritable_output_folder_is_refused_before_any_work(no_work, tmp_path, capsys, command, where):
    if where == "read_only":
        out, needle = _read_only_folder(tmp_path), "expected a writable folder, found that nothing can be written"
    elif where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out, needle = tmp_path / "file" / "out", "expected a folder that can be created"
    else:
        out, needle = Path("/proc/pdiff-out"), "expected a folder that can be created"
    argv = ["demo", "--output-dir", str(out)] if command == "demo" else _evaluate_argv(tmp_path, out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output-dir" in err[0] and needle in err[0] and str(out) in err[0], err
    assert issubclass(OutputFolderError, PDiffError)


HOLD_LOCK = """
import sys, time
from pdiff_hf.utils.io_utils import locked_dir
with locked_dir(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_second_run_on_a_locked_output_folder_fails_at_once(no_work, tmp_path, capsys, command):
    """Another process holds the folder's lock: the run fails at once naming it; once that process is killed
    (SIGKILL, no clean-up), the lock is free again."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["demo", "--output-dir", str(out)] if command == "demo" else _evaluate_argv(tmp_path, out)
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert f"found it locked by pid {holder.pid}" in err and len(err.splitlines()) == 1, err
        with pytest.raises(OutputFolderInUseError):
            with locked_dir(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).exists()  # left by the killed holder, unlocked by the kernel with the process
    with locked_dir(out) as folder:
        assert folder == out and (out / HOLDER_NAME).read_text() == f"pid {os.getpid()}\n"
    assert (out / LOCK_NAME).exists() and not (out / HOLDER_NAME).exists()  # the holder's pid goes at the block's end
    with locked_dir(out):
        pass
