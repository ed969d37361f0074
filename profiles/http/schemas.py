"""The HTTP service's contract: the request bodies and response shapes of the ``/v1`` routes.

One module for both ends: ``profiles serve`` (:mod:`profiles.http.server`) reads its bodies
and declares its responses with these models, so ``/openapi.json`` is typed from them, and
:class:`~profiles.http.client.HttpService` builds its bodies from the same models
(``model_dump``) and reads the answers with them and the records of :mod:`profiles.models`
(:class:`~profiles.models.Profile`, :class:`~profiles.models.Snapshot`,
:class:`~profiles.models.AuditEvent`, :class:`~profiles.models.Page`).

Only pydantic, :mod:`profiles.models` and :mod:`profiles.redact` here: the client imports
this module without FastAPI, Starlette or uvicorn.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from profiles.models import AuditEvent, Holder, Page, Profile, Snapshot
from profiles.redact import redact_text

__all__ = [
    "COMMIT_RESERVED_KEYS",
    "MAX_LEASE_TTL",
    "MAX_PUSH_BLOBS",
    "MAX_PUSH_BYTES",
    "PAYLOAD_MAX_KEYS",
    "PAYLOAD_MAX_TEXT",
    "RESERVED_KEYS",
    "AuditPage",
    "AuditPayload",
    "BlobStored",
    "CloneBody",
    "CommitBody",
    "CommitPayload",
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
    "PushHeader",
    "PushedBlob",
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
#: What one push may carry: the bytes of its blobs, and how many.
MAX_PUSH_BYTES: Final = 64 * 1024 * 1024
MAX_PUSH_BLOBS: Final = 64


# ------------------------------------------------------------------ audit payloads

PAYLOAD_MAX_KEYS: Final = 32
PAYLOAD_MAX_TEXT: Final = 1000  # characters of a text value, before redaction
PAYLOAD_KEY: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_PAYLOAD_KEY = re.compile(PAYLOAD_KEY, re.ASCII)

#: Keys no client payload may use: what the server records itself beside a client's
#: payload, and the names of the parameters a payload is passed beside as ``**payload``
#: (``record_event(type_, profile_id, **payload)``, ``record_use(ref, **payload)``, the
#: catalog's ``_event(tx, ...)``, ``end_session(profile_id, epoch, ...)``): such a key was
#: a ``TypeError`` (a 500) or changed what the call did.
RESERVED_KEYS: Final = frozenset(
    {
        # recorded by the server (who acted, which state, under which lease)
        "account_id",
        "blob_size",
        "checksum",
        "epoch",
        "event",
        "key_id",
        # parameters beside the payload
        "profile_id",
        "ref",
        "self",
        "tx",
        "type_",
    }
)
#: And on a commit (``PUT /v1/profiles/{ref}/state``'s ``payload``), the parameters of the
#: commit's path (``commit_archive``, ``commit_state``, ``commit_archive``, ...).
COMMIT_RESERVED_KEYS: Final = RESERVED_KEYS | frozenset(
    {
        "browser_version",
        "cookie_domains",
        "directory",
        "end_session",
        "fresh",
        "previous",
        "previous_stat",
        "profile",
        "progress",
        "scratch",
        "size",
        "spool",
        "state",
        "writer",
    }
)
_MAX_INT: Final = 2**53 - 1  # the integers JSON carries exactly everywhere

PayloadText = Annotated[
    str, StringConstraints(max_length=PAYLOAD_MAX_TEXT), AfterValidator(redact_text)
]
PayloadValue = PayloadText | bool | int | float | None


def _shown(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:39] + "…"


def _payload_error(message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError("audit_payload", message, context)


def _payload_schema(schema: dict[str, Any], cls: type[Any]) -> None:
    """What :meth:`AuditPayload._check` enforces, said in JSON Schema (pydantic would say
    ``patternProperties``, which lets any other key through)."""
    schema.pop("patternProperties", None)
    schema.update(
        type="object",
        maxProperties=PAYLOAD_MAX_KEYS,
        propertyNames={
            "pattern": PAYLOAD_KEY,
            "not": {"enum": sorted(cls.reserved)},
        },
        additionalProperties={
            "anyOf": [
                {"type": "string", "maxLength": PAYLOAD_MAX_TEXT},
                {"type": "boolean"},
                {"type": "integer", "minimum": -_MAX_INT, "maximum": _MAX_INT},
                {"type": "number"},
                {"type": "null"},
            ]
        },
    )


class AuditPayload(RootModel[dict[str, PayloadValue]]):
    """The audit details a client sends along (an event, a session's start and end, a
    commit): a JSON object of at most 32 keys, each an identifier of at most 64
    characters (letters, digits, ``_``) and none the server's own (``checksum``,
    ``epoch``, ...), whose values are text (at most 1000 characters), numbers, booleans or
    null; no objects or lists. Text is redacted as everything the audit log keeps (no
    userinfo, query string or fragment of a URL, no ``token=``-like value)."""

    reserved: ClassVar[frozenset[str]] = RESERVED_KEYS

    model_config = ConfigDict(json_schema_extra=_payload_schema)

    @model_validator(mode="before")
    @classmethod
    def _check(cls, value: Any) -> Any:
        """Refused with a message that names the key, never quoting a value back."""
        if isinstance(value, AuditPayload):
            value = value.root
        if not isinstance(value, dict):
            raise _payload_error("must be a JSON object")
        if len(value) > PAYLOAD_MAX_KEYS:
            raise _payload_error(
                "at most {limit} keys, not {count}", limit=PAYLOAD_MAX_KEYS, count=len(value)
            )
        for key, item in value.items():
            if not isinstance(key, str) or not _PAYLOAD_KEY.fullmatch(key):
                raise _payload_error(
                    "key {key} is not an identifier of at most 64 letters, digits and _",
                    key=_shown(key),
                )
            if key in cls.reserved:
                raise _payload_error(
                    "key {key} is not allowed: the server records it or passes it itself",
                    key=_shown(key),
                )
            if isinstance(item, str):
                if len(item) > PAYLOAD_MAX_TEXT:
                    raise _payload_error(
                        "the value of {key} is longer than {limit} characters",
                        key=_shown(key),
                        limit=PAYLOAD_MAX_TEXT,
                    )
            elif isinstance(item, bool) or item is None:
                pass
            elif isinstance(item, int):
                if not -_MAX_INT <= item <= _MAX_INT:
                    raise _payload_error(
                        "the value of {key} is beyond {limit} in size",
                        key=_shown(key),
                        limit=_MAX_INT,
                    )
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise _payload_error("the value of {key} is not finite", key=_shown(key))
            else:
                raise _payload_error(
                    "the value of {key} must be text, a number, true, false or null, not an "
                    "object or a list",
                    key=_shown(key),
                )
        return value


class CommitPayload(AuditPayload):
    """A commit's audit details (``PUT /v1/profiles/{ref}/state``, the JSON query parameter
    ``payload``): an :class:`AuditPayload` that also leaves the commit's own parameters
    (``browser_version``, ``directory``, ...) alone."""

    reserved: ClassVar[frozenset[str]] = COMMIT_RESERVED_KEYS


def _no_payload() -> AuditPayload:
    return AuditPayload({})


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
    payload: AuditPayload = Field(default_factory=_no_payload)


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
    payload: AuditPayload = Field(default_factory=_no_payload)


class SessionEndBody(_Body):
    """``POST /v1/profiles/{ref}/sessions/end``: without ``epoch``, a read-only session."""

    epoch: int | None = Field(default=None, ge=0, le=2**62)
    payload: AuditPayload = Field(default_factory=_no_payload)


class CommitBody(_Body):
    """``POST /v1/profiles/{ref}/state/commit``: make the manifest uploaded under
    ``checksum`` (after its packs, ``PUT /v1/state/blobs/{checksum}``) the profile's
    state, fenced by the writer lease's ``epoch`` and its token (``X-Lease-Token``;
    without an epoch the server takes a lease for the commit). ``ended`` (the payload of
    the session's ``session.ended`` event) also ends the writer session once the state is
    stored."""

    checksum: str = Field(pattern=r"^[0-9a-f]{64}$")
    epoch: int | None = Field(default=None, ge=0, le=2**62)
    event: Literal["state.uploaded", "session.ended"] = "state.uploaded"
    payload: CommitPayload = Field(default_factory=lambda: CommitPayload({}))
    ended: AuditPayload | None = None


class PushedBlob(_Body):
    """One blob in a push: its name (SHA-256) and its size in bytes."""

    checksum: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=MAX_PUSH_BYTES)


class PushHeader(_Body):
    """``POST /v1/profiles/{ref}/state/push``: the body's first line (JSON, then a newline):
    the commit, and the blobs whose bytes follow it, back to back in this order (the packs
    a commit adds and its manifest): a small commit is one request."""

    commit: CommitBody
    blobs: list[PushedBlob] = Field(default_factory=list, max_length=MAX_PUSH_BLOBS)


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
    """A writer lease granted: its fencing ``epoch``, its ``token``, when it expires, and
    the profile as the holder starts from. The epoch orders writers; the token (only the
    API key the lease was granted to gets it) proves holding the lease: renewing,
    releasing, committing under it and ending its session send it as ``X-Lease-Token``
    with the epoch. Keep it as secret as the key."""

    profile_id: str
    epoch: int
    token: str = Field(min_length=1, max_length=256)
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
