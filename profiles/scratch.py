"""Scratch space inside the store's home, swept once its owner is gone.

Imports unpack uploads, read-only sessions run on private copies, commits copy cookie
databases to read them: all of it happens in ``<home>/tmp``, never in the system temp
directory, so that a crash leaves nothing (cookies included) outside the home, and so that
renames into place stay on one file system.

A scratch directory is owned by the process that made it: the owner holds an ``flock`` on
the directory itself for as long as it uses it. The kernel drops that lock when the owner
dies, however it dies, so a sweeper that can take the lock knows the directory is left over
and removes it. Nothing else (names, pids, ages) is trusted to tell.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OwnedDir", "owned_dir", "sweep", "try_lock_path"]

log = logging.getLogger(__name__)


class OwnedDir:
    """A private (0700) directory held by this process until :meth:`release`."""

    def __init__(self, parent: Path, prefix: str) -> None:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made under a name no sweep looks at, locked, and only then given its real name:
        # a sweeper can never find it unlocked.
        unborn = Path(tempfile.mkdtemp(dir=parent, prefix=".unborn-"))
        self._fd: int | None = os.open(unborn, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.path = parent / f"{prefix}{unborn.name.removeprefix('.unborn-')}"
        os.rename(unborn, self.path)

    def release(self, *, remove: bool = True) -> None:
        """Remove the directory (unless ``remove`` is false) and drop the ownership lock."""
        try:
            if remove:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)


@contextlib.contextmanager
def owned_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A scratch directory under ``parent``, removed when the block ends."""
    owned = OwnedDir(parent, prefix)
    try:
        yield owned.path
    finally:
        owned.release()


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
