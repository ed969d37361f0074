"""The HTTP service's contract: the request bodies and response shapes of the ``/v1`` routes.

One module for both ends: ``profiles serve`` (:mod:`profiles.http.server`) reads its bodies
and declares its responses with these models, so ``/openapi.json`` is typed from them, and
:class:`~profiles.http.client.HttpService` builds its bodies from the same models
(``model_dump``) and reads the answers with them and the records of :mod:`profiles.models`
(:class:`~profiles.models.Profile`, :class:`~profiles.models.Snapshot`,
:class:`~profiles.models.AuditEvent`, :class:`~profiles.models.Page`).

Only pydantic and :mod:`profiles.models` here: the client imports this module without
FastAPI, Starlette or uvicorn.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from profiles.models import AuditEvent, Holder, Page, Profile, Snapshot

__all__ = [
    "MAX_LEASE_TTL",
    "AuditPage",
    "BlobStored",
    "CloneBody",
    "CommitBody",
    "CompleteUploadBody",
    "CreateBody",
    "DownloadLink",
    "ErrorBody",
    "ErrorDetail",
    "EventBody",
    "Health",
    "LeaseBody",
    "LeaseGrantBody",
    "LeaseHolderBody",
    "LeaseList",
    "LeaseRow",
    "PatchBody",
    "ProfileList",
    "RenewBody",
    "RenewResult",
    "RestoreBody",
    "SessionEndBody",
    "SessionStartBody",
    "SimilarNames",
    "SnapshotBody",
    "SnapshotPage",
    "UploadTarget",
]

MAX_LEASE_TTL: Final = 3600.0


# ------------------------------------------------------------------ request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateBody(_Body):
    """``POST /v1/profiles``."""

    name: str
    archetype: str | None = None
    description: str | None = None
    labels: dict[str, str] | None = None


class PatchBody(_Body):
    """``PATCH /v1/profiles/{ref}``: only the fields sent change (``description: null``
    clears the description)."""

    name: str | None = None
    description: str | None = None
    labels: dict[str, str] | None = None
    add_labels: dict[str, str] | None = None
    remove_labels: list[str] | None = None
    archetype: str | None = None


class CloneBody(_Body):
    """``POST /v1/profiles/{ref}/clone``."""

    name: str | None = None
    with_state: bool = False
    archetype: str | None = None


class SnapshotBody(_Body):
    """``POST /v1/profiles/{ref}/snapshots``."""

    label: str | None = None
    description: str | None = None


class RestoreBody(_Body):
    """``POST /v1/profile-snapshots/{snapshot_id}/restore``."""

    name: str | None = None


class EventBody(_Body):
    """``POST /v1/profiles/{ref}/events``."""

    type: Literal["session.created", "session.ended", "state.exported"]
    payload: dict[str, Any] = Field(default_factory=dict)


class LeaseBody(_Body):
    """``POST /v1/profiles/{ref}/lease``: ``wait`` seconds the server holds the request
    until the lease is free."""

    kind: Literal["session", "import", "maintenance"] = "session"
    host: str = Field(default="unknown", min_length=1, max_length=255)
    pid: int = Field(default=0, ge=0, le=2**31)
    ttl: float = Field(default=30.0, gt=0, le=MAX_LEASE_TTL)
    wait: float = Field(default=0.0, ge=0, le=3600.0)


class SessionStartBody(_Body):
    """``POST /v1/profiles/{ref}/sessions``."""

    readonly: bool = False
    payload: dict[str, Any] = Field(default_factory=dict)


class SessionEndBody(_Body):
    """``POST /v1/profiles/{ref}/sessions/end``: without ``epoch``, a read-only session."""

    epoch: int | None = Field(default=None, ge=0, le=2**62)
    payload: dict[str, Any] = Field(default_factory=dict)


class CommitBody(_Body):
    """``POST /v1/profiles/{ref}/state/commit``: make the manifest uploaded under
    ``checksum`` (after its packs, ``PUT /v1/state/blobs/{checksum}``) the profile's
    state, fenced by the writer lease's ``epoch`` (without one the server takes a lease for
    the commit). ``ended`` (the payload of the session's ``session.ended`` event) also ends
    the writer session once the state is stored."""

    checksum: str = Field(pattern=r"^[0-9a-f]{64}$")
    epoch: int | None = Field(default=None, ge=0, le=2**62)
    event: Literal["state.uploaded", "session.ended"] = "state.uploaded"
    payload: dict[str, Any] = Field(default_factory=dict)
    ended: dict[str, Any] | None = None


class BlobStored(BaseModel):
    """``PUT /v1/state/blobs/{checksum}``: whether this request stored the blob (``false``:
    the account's storage held it already)."""

    stored: bool


class RenewBody(_Body):
    """``POST /v1/profiles/{ref}/lease/renew``."""

    epoch: int = Field(ge=0, le=2**62)
    ttl: float = Field(default=30.0, gt=0, le=MAX_LEASE_TTL)


class CompleteUploadBody(_Body):
    """``POST /v1/profiles/{profile_id}/complete-upload``: the profile an initiated upload
    becomes (its name, browser name and version, description and labels); a body that does
    not validate is 422 on this route, as the upload API this route follows answers."""

    name: str
    browser_name: str
    browser_version: str
    description: str | None = None
    labels: dict[str, str] | None = None


# ------------------------------------------------------------------ responses


class ErrorDetail(BaseModel):
    """An error: its ``code`` (the class in :mod:`profiles.errors`), HTTP ``status``, a
    message, and details by name (``field``, ``resource``, ``retry_after``, ...)."""

    model_config = ConfigDict(extra="allow")

    code: str
    status: int
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "status", "message", ...details}}``."""

    error: ErrorDetail


class Health(BaseModel):
    """``GET /v1/health``: ``features`` names what this server speaks beyond the first
    version of the API (``"chunks"``: states as packs and manifests, ``/v1/state/blobs``)."""

    ok: bool
    features: list[str] = Field(default_factory=list)


class ProfileList(Page[Profile]):
    """A page of profiles; ``pageNumber`` and ``pageSize`` only when asked by number."""

    pageNumber: int | None = None
    pageSize: int | None = None


class SnapshotPage(Page[Snapshot]):
    """A page of snapshots."""


class AuditPage(Page[AuditEvent]):
    """A page of audit events, newest first."""


class SimilarNames(BaseModel):
    names: list[str]


class UploadTarget(BaseModel):
    """``POST /v1/profiles/initiate-upload``: where to send the archive (multipart
    ``upload_fields`` then ``file``) and for how long the target is valid."""

    profile_id: str
    upload_url: str
    upload_fields: dict[str, str]
    upload_expires_in: int


class DownloadLink(BaseModel):
    """``GET /v1/profiles/{ref}/download``: a signed link to the state as ``.tar.gz``."""

    downloadUrl: str
    expiresAt: str
    expiresIn: int


class LeaseGrantBody(BaseModel):
    """A writer lease granted: its fencing ``epoch``, when it expires, and the profile as
    the holder starts from."""

    profile_id: str
    epoch: int
    expires_at: str | None
    profile: Profile


class RenewResult(BaseModel):
    renewed: bool


class LeaseHolderBody(BaseModel):
    holder: Holder | None


class LeaseRow(BaseModel):
    profile_id: str
    holder: Holder


class LeaseList(BaseModel):
    data: list[LeaseRow]
