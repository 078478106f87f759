"""Atomic writes: an output either appears complete or not at all. Output folders: checked writable before any
work, and locked against a second concurrent run."""

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Union

from ..errors import OutputFolderError, OutputFolderInUseError

LOCK_NAME = ".lock"


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
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


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
    """Hold an exclusive lock on ``path/.lock`` (``fcntl.flock``) while the block runs; a second run on the same
    folder gets :class:`OutputFolderInUseError` at once instead of writing into it too. The lock goes with the
    process (exit, SIGKILL), so a crashed run never leaves the folder locked (only an unlocked ``.lock`` file, reused
    by the next run); a run that ends normally removes the file."""
    path = check_writable_dir(path, what)
    lock_path = path / LOCK_NAME
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputFolderInUseError(
                f"{what}: expected no other run writing into {path}, found it locked by {holder} ({lock_path}); "
                "wait for that run to end or choose another folder"
            ) from None
        try:  # the file may have been removed by the run that held it, after this process opened it: retry
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        yield path
    finally:
        try:
            os.unlink(lock_path)  # still holding the lock: a run waiting on this file retries on a new one
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock
