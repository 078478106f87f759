"""All-or-nothing ``save_pretrained`` over an existing folder: a kill at any moment (real SIGKILLs of a saving
process, and a kill injected between components) leaves the old pipeline or the new one, never a mix; the hidden
sibling a killed save leaves is cleaned at the next start; files in the folder that are not the pipeline's stay."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hub_client import tiny_pipeline  # noqa: E402

from pdiff_hf.utils.atomic_dir import atomic_folder, recover_folder  # noqa: E402

torch.set_num_threads(1)
ROOT = HERE.parents[1]

# A child process that saves pipeline A (seed 1) or B (seed 0) into FOLDER, alternately, forever (KILL_IN_DENOISER:
# once, and kills itself while the denoiser is written, after the autoencoder is complete).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {here!r})
    from hub_client import tiny_pipeline
    folder, mode = sys.argv[1], sys.argv[2]
    pipes = [tiny_pipeline(seed=1)[0], tiny_pipeline(seed=0)[0]]
    if mode == "kill_in_denoiser":
        from pdiff_hf.models import LatentUNet1DModel
        def die(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        LatentUNet1DModel.save_pretrained = die
        print("ready", flush=True)
        pipes[0].save_pretrained(folder)
    print("ready", flush=True)
    i = 0
    while True:
        pipes[i % 2].save_pretrained(folder)
        i += 1
    """
).format(here=str(HERE))


def _child(folder: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)  # fmt: skip


def _state(pipe):
    return {f"{n}.{k}": v for n in ("autoencoder", "denoiser") for k, v in getattr(pipe, n).state_dict().items()}


@pytest.fixture(scope="module")
def pipes():
    a, b = tiny_pipeline(seed=1)[0], tiny_pipeline(seed=0)[0]
    return {"A": _state(a), "B": _state(b)}, b


def _which(folder: Path, states) -> str:
    """"A" or "B" when the folder loads and every tensor is that pipeline's; fails the test otherwise."""
    from pdiff_hf import PDiffPipeline

    loaded = _state(PDiffPipeline.from_pretrained(folder))
    for name, state in states.items():
        if set(state) == set(loaded) and all(torch.equal(state[k], loaded[k]) for k in state):
            return name
    raise AssertionError("a mixed pipeline: neither A nor B")


def _siblings(folder: Path):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def test_injected_kill_between_components_leaves_the_old_pipeline(pipes, tmp_path):
    states, b = pipes
    folder = tmp_path / "pipe"
    b.save_pretrained(folder)
    (folder / "notes.txt").write_text("mine")
    child = _child(folder, "kill_in_denoiser")
    code = child.wait(timeout=300)
    assert code == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert _which(folder, states) == "B"
    assert len(_siblings(folder)) == 1  # the killed save's hidden folder, with A's autoencoder
    b.save_pretrained(folder)  # the next save cleans it
    assert _siblings(folder) == [] and (folder / "notes.txt").read_text() == "mine"


def test_real_kills_never_leave_a_mixed_folder(pipes, tmp_path):
    states, b = pipes
    folder = tmp_path / "pipe"
    b.save_pretrained(folder)
    seen = set()
    for delay in (0.1, 0.4):  # each child needs seconds to import torch and diffusers
        child = _child(folder, "loop")
        assert child.stdout.readline().strip() == b"ready", child.stderr.read().decode()[-2000:]
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        seen.add(_which(folder, states))
        recover_folder(folder)
        assert _siblings(folder) == []
    assert seen <= {"A", "B"}


def test_error_in_the_block_leaves_the_folder_and_no_sibling(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("stop")
    assert (folder / "a.txt").read_text() == "old" and _siblings(folder) == []


def test_carry_over_keeps_foreign_files_and_a_held_lock(tmp_path):
    folder = tmp_path / "out"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "old.arrow").write_text("old rows")
    (folder / "run" / "logs").mkdir(parents=True)
    (folder / "run" / "logs" / "x.log").write_text("log")
    lock = folder / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    inode = os.fstat(fd).st_ino
    with atomic_folder(folder, owns=lambda rel: rel.split("/")[0] in {"checkpoints", "args.json"}) as tmp:
        (tmp / "checkpoints").mkdir()
        (tmp / "checkpoints" / "new.arrow").write_text("new rows")
    assert sorted(os.listdir(folder / "checkpoints")) == ["new.arrow"]  # owned: the old file is gone
    assert (folder / "run" / "logs" / "x.log").read_text() == "log"  # not owned: kept
    assert os.stat(lock).st_ino == inode  # the same lock file, still locked
    other = os.open(lock, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(other)
    os.close(fd)


def test_recover_moves_back_a_folder_moved_aside_by_a_dead_writer(tmp_path):
    """The two-rename fallback: killed between its renames, the old folder is beside the destination."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "out"
    aside = tmp_path / f".out.old-{dead.pid}-0123abcd"
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    (tmp_path / f".out.new-{dead.pid}-4567abcd").mkdir()  # its half-written new folder
    live = tmp_path / f".out.new-{os.getpid()}-89abcdef"  # a running writer's: left alone
    live.mkdir()
    recover_folder(folder)
    assert (folder / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]


def test_variant_save_keeps_the_other_variant(pipes, tmp_path):
    _, b = pipes
    folder = tmp_path / "pipe"
    b.save_pretrained(folder)
    b.save_pretrained(folder, variant="fp16")
    names = sorted(os.listdir(folder / "denoiser"))
    assert "diffusion_pytorch_model.safetensors" in names and "diffusion_pytorch_model.fp16.safetensors" in names
    (folder / "results.json").write_text("{}")  # an earlier save's results: the pipeline's, dropped by a new save
    b.save_pretrained(folder)
    assert not (folder / "results.json").exists()


def test_fallback_inside_the_folder_where_it_cannot_be_swapped(tmp_path, monkeypatch, caplog):
    """The working folder of the process (likewise a mount point or a read-only parent) is replaced entry by entry."""
    folder = tmp_path / "out"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "old.arrow").write_text("old")
    (folder / "args.json").write_text("old")
    (folder / "notes.txt").write_text("mine")
    monkeypatch.chdir(folder)
    with atomic_folder(folder, owns=lambda rel: rel.split("/")[0] in {"checkpoints", "args.json"}) as tmp:
        assert tmp.parent == folder
        (tmp / "checkpoints").mkdir()
        (tmp / "checkpoints" / "new.arrow").write_text("new")
    assert sorted(os.listdir(folder)) == ["checkpoints", "notes.txt"]  # owned args.json not written again: dropped
    assert os.listdir(folder / "checkpoints") == ["new.arrow"] and "entries are replaced one by one" in caplog.text
