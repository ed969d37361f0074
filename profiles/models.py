"""The records the store hands out: Profile, Snapshot, AuditEvent and Page.

They are pydantic models, frozen, and serialise timestamps as ISO 8601 UTC with a ``Z``
(``2026-05-09T22:00:00.000000Z``), as the hosted profile APIs we follow do.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from profiles.state.rules import Engine

__all__ = [
    "AuditEvent",
    "AuditType",
    "Holder",
    "HolderKind",
    "Page",
    "Profile",
    "ProfileStatus",
    "Snapshot",
    "format_timestamp",
    "new_id",
    "seconds_text",
    "utcnow",
]

ProfileStatus = Literal["empty", "uploading", "ready"]
AuditType = Literal[
    "profile.created",
    "profile.updated",
    "profile.deleted",
    "snapshot.created",
    "snapshot.deleted",
    "state.uploaded",
    "session.created",
    "session.ended",
    "state.exported",
    "state.download_link_created",
    "state.downloaded",
]


def utcnow() -> datetime:
    """Now, timezone-aware UTC, at the microsecond."""
    return datetime.now(UTC)


def format_timestamp(value: datetime) -> str:
    """Fixed-width ISO 8601 UTC with ``Z``: sorts as text in time order."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id(prefix: str) -> str:
    """``prof_<uuid>``, ``psnap_<uuid>``, ``evt_<uuid>``."""
    return f"{prefix}_{uuid.uuid4()}"


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


#: What holds a profile: a session (``remote-session``: one that ``profiles serve`` runs for
#: a client), an import, a read-only session, upkeep.
HolderKind = Literal["session", "remote-session", "import", "readonly", "maintenance"]


class Holder(BaseModel):
    """Who holds a profile right now."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: HolderKind = "session"
    host: str
    pid: int
    since: Timestamp

    def describe(self) -> str:
        age = max(0.0, (datetime.now(UTC) - self.since).total_seconds())
        what = {"import": "an import", "remote-session": "a remote session"}.get(
            self.kind, f"a {self.kind}"
        )
        return (
            f"{what} by pid {self.pid} on {self.host}, since "
            f"{self.since:%Y-%m-%d %H:%M:%S} UTC ({seconds_text(age)})"
        )


def seconds_text(seconds: float) -> str:
    """A wait or an age for people: ``0.5 s``, ``2.5 s``, ``42 s``, ``5 min``, ``1.5 h``.
    What is left of a deadline (``299.997``) reads as the deadline the caller set (``5
    min``), never to the millisecond."""
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        text = f"{seconds:.1f}".removesuffix(".0")
        return f"{text} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h".replace(".0 h", " h")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Profile(_Record):
    """A named, persistent browser identity."""

    id: str
    name: str
    description: str | None = None
    archetype: str
    browser_name: Engine
    browser_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    status: ProfileStatus = "empty"
    blob_size: int | None = None
    checksum: str | None = None
    blob_uploaded_at: Timestamp | None = None
    usage_count: int = 0
    last_used_at: Timestamp | None = None
    cookie_domains: list[str] = Field(default_factory=list)
    created_at: Timestamp
    updated_at: Timestamp


class Snapshot(_Record):
    """An immutable point-in-time copy of a profile's committed state and identity."""

    id: str
    parent_profile_id: str | None
    parent_name: str
    parent_archetype: str
    browser_name: Engine
    browser_version: str | None = None
    label: str | None = None
    description: str | None = None
    captured_at: Timestamp
    blob_size: int | None = None
    checksum: str | None = None
    cookie_domains: list[str] = Field(default_factory=list)


class AuditEvent(_Record):
    """One entry of the audit log: what happened to which profile, and when."""

    id: str
    type: AuditType
    profile_id: str | None
    at: Timestamp
    payload: dict[str, Any] = Field(default_factory=dict)


T = TypeVar("T", Profile, Snapshot, AuditEvent)


class Page(BaseModel, Generic[T]):
    """One page of a listing. Pass ``next_cursor`` as ``cursor`` to get the next one."""

    model_config = ConfigDict(frozen=True)

    data: list[T]
    has_more: bool
    next_cursor: str | None
