"""Atomic writes: an output either appears complete or not at all. Output folders: checked writable before any
work, and locked against a second concurrent run."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Union

from ..errors import OutputFolderError, OutputFolderInUseError

LOCK_NAME = ".lock"  # locked with filelock while a run writes into the folder
HOLDER_NAME = ".lock.holder"  # "pid N" of the run holding the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Union[str, Path], mode: str = "w") -> Iterator[IO]:
    """Yield a temporary file next to ``path``; on success it is moved onto ``path`` with ``os.replace`` (with the
    permissions a plain ``open`` would give), on error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


def write_json_atomic(path: Union[str, Path], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically, credentials redacted (token-shaped strings, values of
    keys and flags named like tokens: :func:`pdiff_hf.hub.secrets.redact_value`)."""
    from ..hub.secrets import redact_value

    write_text_atomic(path, json.dumps(redact_value(obj), indent=2) + "\n")


@contextmanager
def atomic_directory(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` in one rename, on error it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_writable_dir(path: Union[str, Path], what: str = "output folder") -> Path:
    """Create ``path`` (with its parents) if needed and write and remove a probe file in it, so that a read-only or
    non-creatable folder is an :class:`OutputFolderError` before any work, not a traceback after it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"{what}: expected a folder, found a file: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(
            f"{what}: expected a folder that can be created, found that {path} cannot be ({err.strerror or err})"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputFolderError(
            f"{what}: expected a writable folder, found that nothing can be written in {path} ({err.strerror or err})"
        ) from None
    return path


@contextmanager
def locked_dir(path: Union[str, Path], what: str = "output folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``path/.lock`` (:class:`filelock.FileLock`, ``flock`` on POSIX) while the block
    runs; a second run on the same folder gets :class:`OutputFolderInUseError` at once instead of writing into it too.
    The lock goes with the process (exit, SIGKILL), so a crashed run never leaves the folder locked. ``.lock`` stays
    in place (filelock keeps it, so every run locks the same file); the holder's ``pid N`` is in ``path/.lock.holder``
    (filelock truncates the lock file itself) for the message a second run prints, and is removed when the block
    ends."""
    from filelock import FileLock, Timeout

    path = check_writable_dir(path, what)
    lock = FileLock(str(path / LOCK_NAME), timeout=0)  # timeout 0: fail at once, never wait
    holder_path = path / HOLDER_NAME
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = holder_path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            holder = ""
        raise OutputFolderInUseError(
            f"{what}: expected no other run writing into {path}, found it locked by {holder or 'another process'} "
            f"({path / LOCK_NAME}); wait for that run to end or choose another folder"
        ) from None
    try:
        holder_path.write_text(f"pid {os.getpid()}\n", encoding="ascii")
        yield path
    finally:
        try:
            holder_path.unlink()
        except FileNotFoundError:
            pass
        lock.release()
