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
from collections.abc import Iterator
from pathlib import Path

from profiles.fsutil import sweep, try_lock_path

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
