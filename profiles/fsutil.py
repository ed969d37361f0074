"""Small file-system helpers: durable, atomic writes, and sweeping what a dead owner left."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "fsync_dir",
    "remove_tree",
    "sweep",
    "tighten_tree",
    "tree_bytes",
    "try_lock_path",
]

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file, fsync and rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def remove_tree(path: Path) -> None:
    """Remove a directory tree if it exists (files made read-only included)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=False)


def tighten_tree(root: Path) -> int:
    """Make every directory under ``root`` 0700 and every file 0600 (what a browser wrote
    under the caller's umask included); return the total size of the files in bytes.

    Symbolic links are neither followed nor changed."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                    if st.st_mode & 0o077:
                        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return total


def tree_bytes(root: Path) -> int:
    """The total size of the regular files under ``root``."""
    total = 0
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def try_lock_path(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path`` (a file or directory), or ``None`` when
    someone holds it or it cannot be opened."""
    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep(parent: Path, prefixes: tuple[str, ...], *, min_age: float = 0.0) -> list[str]:
    """Remove the entries of ``parent`` whose name starts with one of ``prefixes`` and
    whose owner is gone (their lock can be taken), if older than ``min_age`` seconds.
    Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        if min_age > 0:
            try:
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < min_age:
                    continue
            except OSError:
                continue
        fd = try_lock_path(Path(entry.path))
        if fd is None:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed.append(entry.name)
        finally:
            os.close(fd)
    if removed:
        log.info("swept %d left-over scratch entries from %s", len(removed), parent)
    return removed
