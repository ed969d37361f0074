"""Unpacked working copies of profiles, kept between sessions to make warm starts cheap.

``<home>/work/<profile_id>/`` is the browser's user-data-dir. A marker file beside it,
``<profile_id>.clean``, holds the checksum of the committed archive the directory is
identical to (and the directory's size in bytes, for the cache cap). The marker is removed
before a browser is let loose on the directory and written again only after the directory
has been committed, so a crash in between leaves no marker and the next session unpacks the
committed archive instead of trusting a half-flushed directory. Only the holder of the
profile's writer lock touches these.

The copies are a cache: :meth:`WorkingCopies.prune` evicts the least recently used ones
past a size cap, skipping those in use; an evicted copy is unpacked again when needed.
The marker's modification time is the copy's last use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from profiles.fsutil import atomic_write_bytes, fsync_dir, remove_tree, tighten_tree, tree_bytes
from profiles.state.chunked import StatCache

__all__ = ["EMPTY_STATE", "CachePrune", "CopyInfo", "WorkingCopies"]

EMPTY_STATE = "empty"  # marker content for a profile that has no committed state yet


@dataclass(frozen=True)
class CopyInfo:
    profile_id: str
    bytes: int
    last_used: float  # POSIX time
    clean: bool


@dataclass(frozen=True)
class CachePrune:
    """What :meth:`WorkingCopies.prune` did."""

    removed: list[str]
    freed_bytes: int
    kept_bytes: int
    max_bytes: int


class WorkingCopies:
    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root
        if create:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, profile_id: str) -> Path:
        return self.root / profile_id

    def _marker(self, profile_id: str) -> Path:
        return self.root / f"{profile_id}.clean"

    def _read_marker(self, profile_id: str) -> tuple[str, int | None] | None:
        try:
            text = self._marker(profile_id).read_text("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        state, _, size = text.partition(" ")
        if not state:
            return None
        return state, int(size) if size.isdigit() else None

    def clean_state(self, profile_id: str) -> str | None:
        """The checksum (or ``EMPTY_STATE``) the working copy is known to match, if any."""
        if not self.path(profile_id).is_dir():
            return None
        marker = self._read_marker(profile_id)
        return marker[0] if marker else None

    def mark_clean(self, profile_id: str, state: str, *, size: int | None = None) -> None:
        """Record that the copy matches ``state``; tightens its permissions to the owner."""
        path = self.path(profile_id)
        if size is None:
            size = tighten_tree(path)
        text = state if size is None else f"{state} {size}"
        atomic_write_bytes(self._marker(profile_id), text.encode("ascii"))

    def mark_dirty(self, profile_id: str) -> None:
        marker = self._marker(profile_id)
        if marker.exists():
            marker.unlink()
            fsync_dir(self.root)

    def _stat_path(self, profile_id: str) -> Path:
        return self.root / f"{profile_id}.stat"

    def stat_cache(self, profile_id: str) -> StatCache | None:
        """What the last commit or checkout knew of the copy's files (size, mtime, inode,
        ctime), so the next commit reads only files that changed; ``None`` if unknown. It
        vouches only for the manifest it names, and a changed file changes its ctime."""
        try:
            data = self._stat_path(profile_id).read_bytes()
        except OSError:
            return None
        return StatCache.from_bytes(data)

    def save_stat_cache(self, profile_id: str, cache: StatCache) -> None:
        atomic_write_bytes(self._stat_path(profile_id), cache.to_bytes())

    def touch(self, profile_id: str) -> None:
        """Note a use of the copy (a read-only session copied it)."""
        with contextlib.suppress(OSError):
            os.utime(self._marker(profile_id))

    def remove(self, profile_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._marker(profile_id).unlink()
        with contextlib.suppress(FileNotFoundError):
            self._stat_path(profile_id).unlink()
        remove_tree(self.path(profile_id))

    def copies(self) -> list[CopyInfo]:
        """Every working copy, with its size and last use."""
        found: list[CopyInfo] = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return found
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            marker = self._read_marker(entry.name)
            try:
                last_used = self._marker(entry.name).stat().st_mtime
            except OSError:
                last_used = entry.stat(follow_symlinks=False).st_mtime
            size = marker[1] if marker and marker[1] is not None else None
            if size is None:
                size = tree_bytes(Path(entry.path))
            found.append(CopyInfo(entry.name, size, last_used, clean=marker is not None))
        return found

    def prune(
        self,
        max_bytes: int,
        *,
        try_lock: Callable[[str], Callable[[], None] | None],
        keep: frozenset[str] = frozenset(),
    ) -> CachePrune:
        """Evict least recently used copies until the total is at most ``max_bytes``.

        ``try_lock(profile_id)`` takes the profile's writer lock without waiting and returns
        its release function, or ``None`` when the profile is in use (then its copy stays).
        ``keep`` names copies never to evict (the one a session is about to use).
        """
        copies = sorted(self.copies(), key=lambda c: c.last_used)
        total = sum(c.bytes for c in copies)
        removed: list[str] = []
        freed = 0
        for copy in copies:
            if total <= max_bytes:
                break
            if copy.profile_id in keep:
                continue
            release = try_lock(copy.profile_id)
            if release is None:
                continue
            try:
                self.remove(copy.profile_id)
            finally:
                release()
            removed.append(copy.profile_id)
            freed += copy.bytes
            total -= copy.bytes
        return CachePrune(removed=removed, freed_bytes=freed, kept_bytes=total, max_bytes=max_bytes)
