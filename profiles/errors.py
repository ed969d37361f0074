"""The error tree of the profile store.

Every error the library raises on purpose is a :class:`ProfileError`. Each class
carries a machine-readable ``code`` and an HTTP-like ``status`` that match the
hosted profile APIs we follow (see ``shared/reference``), so a service built on
top can map them one to one::

    ProfileError                       (500, "ProfileError")
    ├── ValidationFailed               (400, "ValidationFailed")
    │   ├── ArchiveInvalid             (400, "ArchiveInvalid")
    │   │   └── ChecksumMismatch       (400, "ChecksumMismatch")
    │   └── NoStateData                (400, "NoStateData")
    ├── NotFound                       (404, "NotFound")
    ├── Conflict                       (409, "Conflict")
    │   ├── ProfileBusy                (409, "ProfileBusy")
    │   ├── LeaseLost                  (409, "LeaseLost")
    │   ├── PendingConflict            (409, "PendingConflict")
    │   └── BrowserDowngrade           (409, "BrowserDowngrade")
    ├── TierLimit                      (429, "TierLimit")
    ├── BrowserNotFound                (503, "BrowserNotFound")
    ├── StorageUnavailable             (503, "StorageUnavailable")
    ├── StateCorrupt                   (500, "StateCorrupt")
    └── StateCommitFailed              (500, "StateCommitFailed")

Messages say what went wrong and what to do about it.

``transient`` marks an error of the store's *service* that may pass by itself: a profile
service over HTTP, a PostgreSQL catalog or an S3 endpoint that cannot be reached, times out,
answers 5xx or 429, or is busy. It is what a session's commit keeps its work for (as a
pending commit, :mod:`profiles.pending`) instead of losing it; a refusal (``LeaseLost``,
``NotFound``, ``ValidationFailed``) and a fault of this machine's own home (a full disk)
are never transient.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArchiveInvalid",
    "BrowserDowngrade",
    "BrowserNotFound",
    "ChecksumMismatch",
    "Conflict",
    "LeaseLost",
    "NoStateData",
    "NotFound",
    "PendingConflict",
    "ProfileBusy",
    "ProfileError",
    "StateCommitFailed",
    "StateCorrupt",
    "StorageUnavailable",
    "TierLimit",
    "ValidationFailed",
]


class ProfileError(Exception):
    """Base of every error this library raises on purpose."""

    code: str = "ProfileError"
    status: int = 500
    #: The store's service could not be reached or failed in a way that may pass (see the
    #: module docstring); set on the instance by the backends that raise it.
    transient: bool = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """The error as a JSON-ready body: ``{"code", "status", "message", ...details}``."""
        return {"code": self.code, "status": self.status, "message": self.message, **self.details}


class ValidationFailed(ProfileError):
    """A value broke a rule (name shape, description length, archetype, ...)."""

    code = "ValidationFailed"
    status = 400

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class ArchiveInvalid(ValidationFailed):
    """A state archive is not a safe, complete tar.gz / tar.zst of a browser profile."""

    code = "ArchiveInvalid"


class ChecksumMismatch(ArchiveInvalid):
    """State bytes do not hash to the checksum they were announced with; nothing was kept."""

    code = "ChecksumMismatch"


class NoStateData(ValidationFailed):
    """The profile has no committed state (status is not ``ready``)."""

    code = "NoStateData"


class NotFound(ProfileError):
    """No profile or snapshot with that id or name."""

    code = "NotFound"
    status = 404


class Conflict(ProfileError):
    """The request clashes with the current state (a name already taken, ...)."""

    code = "Conflict"
    status = 409


class ProfileBusy(Conflict):
    """Another writer holds the profile's lock and did not release it in time."""

    code = "ProfileBusy"


class LeaseLost(Conflict):
    """The writer's lease on the profile expired and another writer took it (a newer
    epoch): this writer's state is refused, and the newer state stands."""

    code = "LeaseLost"


class PendingConflict(Conflict):
    """A session's pending commit on this machine (kept when the service could not be
    reached) cannot land by itself: the profile was committed since the session started.
    ``profiles sync REF --force`` or ``--discard`` decides (see :mod:`profiles.pending`)."""

    code = "PendingConflict"


class BrowserDowngrade(Conflict):
    """The profile's state was written by a newer browser major than the one at hand."""

    code = "BrowserDowngrade"


class TierLimit(ProfileError):
    """The store is at its profile cap (``max_profiles``)."""

    code = "TierLimit"
    status = 429

    def __init__(self, message: str, *, limit: int, current: int, tier: str = "local") -> None:
        super().__init__(message, limit=limit, current=current, resource="profile", tier=tier)
        self.limit = limit
        self.current = current
        self.resource = "profile"
        self.tier = tier


class BrowserNotFound(ProfileError):
    """No browser build for the profile's engine could be found on this machine."""

    code = "BrowserNotFound"
    status = 503


class StateCommitFailed(ProfileError):
    """The session could not write the profile's state back; the previous state is kept."""

    code = "StateCommitFailed"
    status = 500


class StorageUnavailable(ProfileError):
    """The store's storage failed: a full disk, a read-only or missing home, an I/O error.

    ``home`` names the store (its home directory, or later a backend URL); ``cause`` says
    what the operating system or the database reported. Nothing was changed: the last
    committed state is still there.
    """

    code = "StorageUnavailable"
    status = 503

    def __init__(self, message: str, *, home: str, cause: str, **details: Any) -> None:
        super().__init__(message, home=home, cause=cause, **details)
        self.home = home
        self.cause = cause


class StateCorrupt(ProfileError):
    """A committed state cannot be read back: a chunk is missing or its bytes are damaged.
    Nothing partial is ever served; ``profiles verify`` lists what is affected."""

    code = "StateCorrupt"
    status = 500
