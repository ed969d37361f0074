"""Pending commits: a session's work kept on this machine when its service cannot take it.

A session ends by committing its working copy to the store's service. When that service
cannot be reached (a profile service over HTTP that is down, a PostgreSQL catalog or an S3
endpoint that is unreachable, a 5xx or a 429: :attr:`profiles.errors.ProfileError.transient`),
the working copy is not lost: it is moved aside, atomically (a rename inside the home), to

    <home>/pending/<profile id>/state/        the browser's directory, as the session left it
    <home>/pending/<profile id>/pending.json  what it is: written last (data first)

``pending.json`` names the profile, the committed state the session started from (its
checksum and when it was committed) and its lease epoch, when and why the commit failed, and
the store's location (never a secret). Everything is private to the owner (0700 / 0600).

A pending commit *lands* (``ProfileStore.land_pending`` and ``sync_pending``) under the
profile's writer lease: when the profile's committed state is still the one the session
started from, it is committed as the session would have; otherwise it is a **conflict**
(another writer committed meanwhile) and stays aside until ``profiles sync REF --force``
(commit it over the newer state: a new commit, the newer state stays in the history as a
normal commit leaves it) or ``--discard`` (delete it). It is never dropped silently and
never overwrites a newer state by itself. The next writer session on the profile on this
machine lands it first, or refuses (naming the command to run) when it is a conflict, so
nobody runs on an older state while a newer local one waits.

Crashes: the state is moved before ``pending.json`` is written, so a crash in between
leaves an entry without (or with unreadable) metadata. Its origin is unknown, so it is never
landed by itself: it is listed as a conflict, for ``--force`` or ``--discard``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from profiles.errors import PendingConflict
from profiles.fsutil import atomic_write_bytes, fsync_dir, remove_tree
from profiles.models import Profile, Timestamp, format_timestamp, utcnow

if TYPE_CHECKING:
    pass

__all__ = [
    "META",
    "PendingCommit",
    "PendingCommits",
    "PendingEntry",
    "PendingInfo",
    "PendingStatus",
    "conflict_error",
    "state_identity",
    "status_of",
]

log = logging.getLogger(__name__)

META = "pending.json"
STATE = "state"
MAX_META_BYTES = 64 * 1024
# What a profile id may look like to become a path component here (prof_<uuid> and the
# like): anything else, from a hostile server or a planted directory, is ignored.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

PendingStatus = Literal["waiting", "conflict", "deleted", "unknown"]


def state_identity(profile: Profile) -> str:
    """Which committed state ``profile`` is at: its checksum and when it was committed
    (every commit has a new time, so a state committed again is a new identity)."""
    if profile.checksum is None:
        return "empty"
    when = format_timestamp(profile.blob_uploaded_at) if profile.blob_uploaded_at else "?"
    return f"{profile.checksum}@{when}"


class PendingCommit(BaseModel):
    """The metadata of one pending commit (``pending.json``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: Literal[1] = 1
    profile_id: str = Field(pattern=_SAFE_ID.pattern, max_length=128)
    profile_name: str = Field(max_length=256)
    engine: str = Field(max_length=32)
    browser_version: str | None = Field(default=None, max_length=64)
    #: The committed state the session started from (:func:`state_identity`).
    base: str = Field(max_length=256)
    base_epoch: int | None = None
    kept_at: Timestamp
    #: Why the commit did not land (redacted: no secrets, no query strings).
    reason: str = Field(max_length=2048)
    #: The store's location, as the store shows it (no secrets).
    location: str = Field(max_length=1024)


@dataclass(frozen=True)
class PendingEntry:
    """A pending commit on disk: its metadata (``None`` when a crash left it unwritten or
    it cannot be read) and its state directory."""

    profile_id: str
    meta: PendingCommit | None
    state_dir: Path
    kept_at: datetime | None


class PendingInfo(BaseModel):
    """A pending commit as ``profiles ps`` and ``profiles sync`` show it."""

    model_config = ConfigDict(frozen=True)

    profile_id: str
    profile_name: str
    status: PendingStatus
    kept_at: Timestamp | None
    reason: str | None
    location: str | None
    state_dir: str

    @classmethod
    def of(cls, entry: PendingEntry, status: PendingStatus, profile: Profile | None) -> PendingInfo:
        meta = entry.meta
        name = profile.name if profile is not None else (meta.profile_name if meta else None)
        return cls(
            profile_id=entry.profile_id,
            profile_name=name or "(unknown)",
            status=status,
            kept_at=entry.kept_at,
            reason=meta.reason if meta else "kept by a session that stopped while keeping it",
            location=meta.location if meta else None,
            state_dir=str(entry.state_dir),
        )


class PendingCommits:
    """The pending commits of one home (``<home>/pending``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _entry_dir(self, profile_id: str) -> Path:
        if not _SAFE_ID.fullmatch(profile_id):
            raise ValueError(f"not a profile id: {profile_id!r}")
        return self.root / profile_id

    def keep(self, directory: Path, meta: PendingCommit) -> Path:
        """Move ``directory`` (the session's working copy, on the home's file system) aside
        as the pending commit ``meta`` describes: the data first, then ``pending.json``.
        Returns the entry's state directory. Raises ``FileExistsError`` when the profile
        already has one (never replaced) and ``OSError`` on a storage fault (then the
        directory is where it was, or inside the entry, never gone)."""
        entry = self._entry_dir(meta.profile_id)
        self.root.mkdir(mode=0o700, exist_ok=True)
        entry.mkdir(mode=0o700)  # FileExistsError: one is waiting already
        fsync_dir(self.root)
        target = entry / STATE
        os.rename(directory, target)
        fsync_dir(entry)
        fsync_dir(directory.parent)
        data = meta.model_dump_json(indent=2).encode("utf-8")
        atomic_write_bytes(entry / META, data)
        os.chmod(entry / META, 0o600)
        return target

    def get(self, profile_id: str) -> PendingEntry | None:
        """The profile's pending commit, if there is one on this machine."""
        if not _SAFE_ID.fullmatch(profile_id):
            return None
        entry = self.root / profile_id
        state = entry / STATE
        try:
            if not state.is_dir() or state.is_symlink():
                return None
        except OSError:
            return None
        meta = self._read_meta(entry / META, profile_id)
        kept_at = meta.kept_at if meta is not None else _mtime(state)
        return PendingEntry(profile_id, meta, state, kept_at)

    @staticmethod
    def _read_meta(path: Path, profile_id: str) -> PendingCommit | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                raw = f.read(MAX_META_BYTES + 1)
        except OSError:
            return None
        if len(raw) > MAX_META_BYTES:
            return None
        try:
            meta = PendingCommit.model_validate(json.loads(raw))
        except (ValueError, pydantic.ValidationError):
            return None
        return meta if meta.profile_id == profile_id else None

    def entries(self) -> list[PendingEntry]:
        """Every pending commit on this machine, oldest first."""
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return []
        found = [e for name in names if (e := self.get(name)) is not None]
        return sorted(found, key=lambda e: (e.kept_at is None, e.kept_at or utcnow()))

    def remove(self, profile_id: str) -> None:
        """Forget the entry: its metadata first (it stops being pending), then its data."""
        entry = self._entry_dir(profile_id)
        with contextlib.suppress(FileNotFoundError):
            (entry / META).unlink()
            fsync_dir(entry)
        remove_tree(entry)
        with contextlib.suppress(OSError):
            fsync_dir(self.root)


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    except OSError:
        return None


def status_of(entry: PendingEntry, profile: Profile | None) -> PendingStatus:
    """``waiting`` (lands as it is), ``conflict`` (the committed state moved on, or the
    entry's origin is unknown), ``deleted`` (the profile is gone)."""
    if profile is None:
        return "deleted"
    if entry.meta is None or entry.meta.base != state_identity(profile):
        return "conflict"
    return "waiting"


def conflict_error(entry: PendingEntry, profile: Profile, *, ref: str) -> PendingConflict:
    """The refusal to land (or to run a session over) a pending commit that conflicts."""
    kept = f" (kept {format_timestamp(entry.kept_at)})" if entry.kept_at else ""
    if entry.meta is None:
        why = (
            "its record was not written (a crash while it was kept), so where it started is unknown"
        )
    else:
        why = "another writer committed the profile since the session that left it started"
    return PendingConflict(
        f"Profile {profile.name!r} has a pending commit on this machine{kept} that was not "
        f"committed: {why}. Nothing was overwritten. Run 'profiles sync {ref} --force' to "
        f"commit it over the newer state, or 'profiles sync {ref} --discard' to delete it "
        f"(it is in {entry.state_dir}).",
        profile_id=profile.id,
        state_dir=str(entry.state_dir),
    )
