"""The per-profile writer lock: one writer per profile at a time, across processes.

The lock is an OS file lock (``flock``) on ``<home>/locks/<id>.lock``, so the kernel
releases it when the holding process dies, however it dies. The lock file is private to the
store's owner (0600 in a 0700 directory): another local user can neither take it nor read
who holds it.

The holder (host, pid, since, what for) is written into the lock file itself by the process
that holds it, and cleared before release. A reader believes it only while the file is
locked (it tries a shared lock without waiting first), so a holder that died never shows:
holder information is always the current holder's, and never outlives the lock.

A waiter says once, after :data:`WAIT_NOTICE_AFTER` seconds, that it is waiting and for whom
(a WARNING log record, which the CLI prints on stderr).

Why this is not ``filelock``: docs/design.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from pydantic import ValidationError

from profiles.errors import ProfileBusy, StorageUnavailable
from profiles.models import Holder, HolderKind, seconds_text

__all__ = [
    "WAIT_NOTICE_AFTER",
    "Activity",
    "Holder",
    "HolderKind",
    "ProfileLock",
    "ReaderMark",
    "read_holder",
]

log = logging.getLogger(__name__)

WAIT_NOTICE_AFTER = 1.0  # seconds of waiting before saying who is in the way
POLL_INTERVAL = 0.01
MAX_HOLDER_BYTES = 4096


class Activity(Holder):
    """A profile in use right now: who holds it, and what for."""

    profile_id: str
    profile_name: str


def _open_private(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)


def read_holder(path: Path) -> Holder | None:
    """The current holder of the lock file ``path``, or ``None`` when nobody holds it."""
    try:
        fd = _open_private(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: what is written is the holder's
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # free: whatever is written is left from a holder that died
        data = os.pread(fd, MAX_HOLDER_BYTES, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not data.strip():
        return None
    try:
        return Holder.model_validate_json(data)
    except ValidationError:
        return None


T = TypeVar("T")


def poll_until_free(
    attempt: Callable[[], T | None],
    holder: Callable[[], Holder | None],
    *,
    name: str,
    profile_id: str,
    wait: float,
    nobody: str,
) -> T:
    """Call ``attempt`` until it returns something: say once (at WARNING) after
    :data:`WAIT_NOTICE_AFTER` seconds who is in the way, and after ``wait`` seconds raise
    ``ProfileBusy`` naming the holder. The writer lock and the catalog lease wait alike."""
    started = time.monotonic()
    noticed = False
    while True:
        got = attempt()
        if got is not None:
            return got
        waited = time.monotonic() - started
        if waited >= wait or (not noticed and waited >= WAIT_NOTICE_AFTER):
            current = holder()
            who = current.describe() if current else nobody
            if waited >= wait:
                raise ProfileBusy(
                    f"Profile {name!r} is in use: {who}; waited {seconds_text(wait)}. "
                    "Wait for that session to end, raise lock_timeout, or open it with "
                    "readonly=True.",
                    profile_id=profile_id,
                    holder=current.model_dump(mode="json") if current else None,
                )
            noticed = True
            log.warning(
                "waiting for profile %r: it is held by %s (waiting up to %s)",
                name,
                who,
                seconds_text(wait),
            )
        time.sleep(POLL_INTERVAL)


class ProfileLock:
    """A re-usable writer lock for one profile. Use as a context manager or acquire/release."""

    def __init__(
        self,
        locks_dir: Path,
        profile_id: str,
        *,
        timeout: float = 600.0,
        name: str | None = None,
        kind: HolderKind = "session",
    ) -> None:
        self.profile_id = profile_id
        self.display_name = name or profile_id
        self.timeout = timeout
        self.kind: HolderKind = kind
        self.locks_dir = locks_dir
        self.path = locks_dir / f"{profile_id}.lock"
        self._fd: int | None = None
        self.acquired_at: float | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def holder(self) -> Holder | None:
        """Who holds the lock right now (``None`` if nobody does)."""
        return read_holder(self.path)

    def _try_once(self) -> bool:
        """Take the lock without waiting. The file may be unlinked by a delete between our
        open and our flock: then the lock we got is on a dead inode, so start again."""
        self.locks_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = _open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _try_once_or_fail(self) -> bool:
        try:
            return self._try_once()
        except OSError as exc:
            home = str(self.locks_dir.parent)
            cause = exc.strerror or type(exc).__name__
            raise StorageUnavailable(
                f"Cannot take the writer lock of profile {self.display_name!r} in the store at "
                f"{home}: {cause}. Writers need a writable home; open it read-only instead, "
                "or fix the home's permissions or free space.",
                home=home,
                cause=cause,
            ) from exc

    def acquire(self, timeout: float | None = None) -> None:
        if self._fd is not None:
            raise RuntimeError(f"the lock of {self.display_name!r} is already held by this object")
        poll_until_free(
            lambda: True if self._try_once_or_fail() else None,
            self.holder,
            name=self.display_name,
            profile_id=self.profile_id,
            wait=self.timeout if timeout is None else timeout,
            nobody="another process",
        )
        self.acquired_at = time.monotonic()
        holder = Holder(
            kind=self.kind, host=socket.gethostname(), pid=os.getpid(), since=datetime.now(UTC)
        )
        assert self._fd is not None
        with contextlib.suppress(OSError):  # the holder record is information, not the lock
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, holder.model_dump_json().encode(), 0)
        log.debug("locked profile %s", self.profile_id)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            self.acquired_at = None
        log.debug("released profile %s", self.profile_id)

    def remove_file(self) -> None:
        """Unlink the lock file; only while holding it (a deleted profile's lock)."""
        if self._fd is None:
            raise RuntimeError("remove_file needs the lock held")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> ProfileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


class ReaderMark:
    """A read-only session's mark in ``<readers>/<profile_id>.<random>``: a private file
    holding its :class:`Holder` and locked for as long as the session runs, so that
    :meth:`list` shows only live readers and can sweep the marks of dead ones."""

    def __init__(self, readers_dir: Path, profile_id: str) -> None:
        readers_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=readers_dir, prefix=f"{profile_id}.", suffix=".reader")
        self.path = Path(name)
        self._fd: int | None = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        holder = Holder(
            kind="readonly", host=socket.gethostname(), pid=os.getpid(), since=datetime.now(UTC)
        )
        os.write(fd, holder.model_dump_json().encode())

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(fd)

    @staticmethod
    def list(readers_dir: Path) -> list[tuple[str, Holder]]:
        """``(profile_id, holder)`` of every live reader; marks of dead ones are removed."""
        found: list[tuple[str, Holder]] = []
        for path in sorted(readers_dir.glob("*.reader")):
            try:
                fd = _open_private(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    data = os.pread(fd, MAX_HOLDER_BYTES, 0)
                else:  # nobody holds it: its session died
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
            finally:
                os.close(fd)
            with contextlib.suppress(ValidationError):
                found.append((path.name.split(".", 1)[0], Holder.model_validate_json(data)))
        return found
