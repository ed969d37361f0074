"""The per-profile writer lock: one writer per profile at a time, across processes.

The lock is an OS file lock (``flock`` through ``filelock``) on ``<home>/locks/<id>.lock``, so
the kernel releases it when the holding process dies, however it dies. Beside it, a small
JSON sidecar names the holder (host, pid, since when) so a waiter that times out can say who
is in the way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import filelock

from profiles.errors import ProfileBusy
from profiles.fsutil import atomic_write_bytes

__all__ = ["ProfileLock"]

log = logging.getLogger(__name__)


class ProfileLock:
    """A re-usable writer lock for one profile. Use as a context manager or acquire/release."""

    def __init__(
        self, locks_dir: Path, profile_id: str, *, timeout: float = 600.0, name: str | None = None
    ) -> None:
        locks_dir.mkdir(parents=True, exist_ok=True)
        self.profile_id = profile_id
        self.display_name = name or profile_id
        self.timeout = timeout
        self.path = locks_dir / f"{profile_id}.lock"
        self.holder_path = locks_dir / f"{profile_id}.holder.json"
        self._lock = filelock.FileLock(
            self.path,
            thread_local=False,
            poll_interval=0.01,
            fallback_to_soft=False,
            preserve_lock_file=True,
        )
        self.acquired_at: float | None = None

    @property
    def is_locked(self) -> bool:
        return self._lock.is_locked

    def holder(self) -> dict[str, object] | None:
        """Who holds (or last held) the lock, as the holder wrote it."""
        try:
            data = json.loads(self.holder_path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def acquire(self, timeout: float | None = None) -> None:
        wait = self.timeout if timeout is None else timeout
        try:
            self._lock.acquire(timeout=wait)
        except filelock.Timeout as exc:
            holder = self.holder() or {}
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
                if holder
                else "another process"
            )
            raise ProfileBusy(
                f"Profile {self.display_name!r} is in use by {who}; waited {wait:g} s. "
                "Wait for that session to end, raise lock_timeout, or open it with "
                "readonly=True.",
                profile_id=self.profile_id,
                holder=holder,
            ) from exc
        self.acquired_at = time.monotonic()
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        with contextlib.suppress(OSError):
            atomic_write_bytes(self.holder_path, json.dumps(info).encode())
        log.debug("locked profile %s", self.profile_id)

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)
            self.acquired_at = None
            log.debug("released profile %s", self.profile_id)

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
