"""All-or-nothing folder writes: a folder is filled as a hidden sibling and then swapped with the destination in one
``rename``, so a reader (or a kill at any moment) sees the old complete folder or the new complete one, never a mix.

:func:`atomic_folder` is used by ``save_pretrained`` (:func:`pdiff_hf.hub.push.save_pipeline`) and by
``training/collect_checkpoints.py``. The destination may hold entries the write does not own (checkpoints of a
training run, the ``.lock`` of :func:`~pdiff_hf.utils.io_utils.locked_dir`, a user's notes): before the swap they are
hard-linked into the new folder (files keep their inode, so a held ``flock`` stays held; copied where the file
system cannot link), so they are never absent from the destination, not even for a moment.

On Linux the swap is ``renameat2(RENAME_EXCHANGE)`` (one system call: the destination always exists). Elsewhere it
is two renames (the old folder moved aside, the new one moved in); a kill between them leaves the old folder beside
the destination, and the next write (or :func:`recover_folder`) moves it back. Hidden siblings of writers that are no
longer running are removed at the start of every write.

Where the destination cannot be swapped (a mount point such as a container's output volume, a read-only parent
folder, the process's own working folder) the new entries are written into a hidden folder inside it and moved over
the old ones one top-level entry at a time, with a warning: each entry is whole, the set is not.
"""

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NEW, _OLD = "new", "old"


def _sibling_pattern(name: str) -> "re.Pattern":
    return re.compile(rf"^\.{re.escape(name)}\.(new|old)-(\d+)-[0-9a-f]{{8}}$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one ``renameat2(RENAME_EXCHANGE)``; False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_folder(path: Union[str, Path]) -> None:
    """Clean the hidden siblings that writes into ``path`` left behind when they were killed: a folder moved aside
    by a two-rename swap goes back to ``path`` if ``path`` is missing; every other sibling of a writer that is no
    longer running is removed. Siblings of running writers are left alone."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return
    pattern = _sibling_pattern(path.name)
    inside = [path / e for e in os.listdir(path)] if path.is_dir() else []  # the fallback's folders, inside `path`
    for sibling in sorted([parent / e for e in os.listdir(parent)] + inside):
        match = pattern.match(sibling.name)
        if match is None or _alive(int(match.group(2))):
            continue
        if match.group(1) == _OLD and not path.exists() and sibling.parent == parent:
            os.rename(sibling, path)  # the kill came between the two renames: the old folder is the complete one
            continue
        shutil.rmtree(sibling, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` at ``dst``: folders made, files hard-linked (copied where linking fails), links copied."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        os.mkdir(dst)
        shutil.copystat(src, dst)
        for name in os.listdir(src):
            _link_tree(src / name, dst / name)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, owned: Callable[[str], bool], rel: str = "") -> None:
    """Entries of ``old`` that the write neither produced nor owns (``owned(relative posix path)``), linked into
    ``new``; folders present in both are merged entry by entry."""
    if not old.is_dir() or old.is_symlink():
        return
    for name in sorted(os.listdir(old)):
        sub = f"{rel}{name}"
        if os.path.lexists(new / name):
            if (old / name).is_dir() and not (old / name).is_symlink() and (new / name).is_dir():
                _carry_over(old / name, new / name, owned, sub + "/")
            continue
        if not owned(sub):
            _link_tree(old / name, new / name)


@contextmanager
def atomic_folder(path: Union[str, Path], owns: Optional[Callable[[str], bool]] = None) -> Iterator[Path]:
    """Yield an empty hidden sibling folder of ``path`` to write into; when the block ends without an error it
    replaces ``path`` in one rename, with the entries of the old ``path`` that the write does not own linked in;
    on an error (or a kill) ``path`` is left as it was.

    ``owns(rel)`` says whether an old entry (a relative posix path such as ``"results.json"`` or
    ``"autoencoder/diffusion_pytorch_model.safetensors"``) belongs to the write: owned entries the new write does
    not produce again are dropped, the others are kept. Entries the new write produces always replace the old ones
    (folders present in both are merged entry by entry). ``owns=None``: the write owns everything (no carry-over).
    """
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"expected a folder to write into, found a file: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not _can_swap(path):  # a mount point, a read-only parent, this process's working folder: entry by entry
        with _entry_by_entry(path, owns, tag) as new:
            yield new
        return
    new = path.parent / f".{path.name}.{_NEW}-{tag}"
    os.mkdir(new)
    try:
        yield new
        if owns is not None:
            _carry_over(path, new, owns)
        os.chmod(new, path.stat().st_mode & 0o7777 if path.exists() else 0o777 & ~_umask())
        if not path.exists():
            os.rename(new, path)
            return
        if _exchange(new, path):  # `new` now holds the old folder
            shutil.rmtree(new, ignore_errors=True)
            return
        old = path.parent / f".{path.name}.{_OLD}-{tag}"
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)


def _can_swap(path: Path) -> bool:
    """Whether ``path`` can be replaced by renaming a sibling over it: its parent is writable, it is not a mount
    point nor on another device than its parent, and this process does not work inside it."""
    parent = path.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return False
    if path.exists() and (os.path.ismount(path) or os.stat(path).st_dev != os.stat(parent).st_dev):
        return False
    cwd = Path(os.getcwd())
    return not (cwd == path or path in cwd.parents)


@contextmanager
def _entry_by_entry(path: Path, owns: Optional[Callable[[str], bool]], tag: str) -> Iterator[Path]:
    """The fallback of :func:`atomic_folder` where ``path`` cannot be swapped: the new entries are written into a
    hidden folder inside ``path`` and then moved over the old ones one top-level entry at a time (each entry whole,
    the set not: a kill between two moves mixes them, which the log warns about)."""
    import logging

    logging.getLogger(__name__).warning(
        "%s cannot be replaced in one rename (a mount point, a read-only parent folder or the working folder): its "
        "entries are replaced one by one", path,
    )  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    new = path / f".{path.name}.{_NEW}-{tag}"
    os.mkdir(new)
    try:
        yield new
        produced = sorted(os.listdir(new))
        for name in produced:
            dst = path / name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif os.path.lexists(dst):
                os.unlink(dst)
            os.replace(new / name, dst)
        for name in sorted(os.listdir(path)):
            if name != new.name and name not in produced and (owns is None or owns(name)):
                target = path / name
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else os.unlink(target)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def owns_entries(*names: str) -> Callable[[str], bool]:
    """``owns`` for :func:`atomic_folder`: the top-level entries ``names`` and what interrupted writes of them left
    (``.<name>.tmp-*`` folders of :func:`~pdiff_hf.utils.io_utils.atomic_directory`, ``.<name>.*.tmp`` files of
    :func:`~pdiff_hf.utils.io_utils.atomic_file`); everything else is kept."""
    stale = re.compile(r"^\.(%s)\.(tmp-.*|.*\.tmp)$" % "|".join(re.escape(n) for n in names))

    def owns(rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return top in names or bool(stale.match(top))

    return owns
