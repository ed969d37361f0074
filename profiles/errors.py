"""The error tree of the profile store.

Every error the library raises on purpose is a :class:`ProfileError`. Each class
carries a machine-readable ``code`` and an HTTP-like ``status`` that match the
hosted profile APIs we follow (docs/http-api.md names them), so a service built on
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
    ├── StateCommitFailed              (500, "StateCommitFailed")
    ├── NavigationFailed               (502, "NavigationFailed")
    ├── AuthFailed                     (401, "AuthFailed")      the HTTP service's
    │   ├── Unauthorized               (401, "Unauthorized")
    │   └── Forbidden                  (403, "Forbidden")
    ├── SignatureInvalid               (403, "SignatureInvalid")
    ├── LinkExpired                    (410, "LinkExpired")
    └── RateLimited                    (429, "RateLimited")

Messages say what went wrong and what to do about it.

Every class is in one registry by its ``code`` (:func:`error_class`), filled as the classes
are defined: the HTTP service sends ``{"error": error.to_dict()}`` and its client rebuilds
the same class with :func:`error_from_dict`, so ``except StateCorrupt`` works the same
through ``profiles serve`` as on this machine. A class keeps the details it also exposes as
attributes in ``attributes``; a rebuilt error has them back.

``transient`` marks an error of the store's *service* that may pass by itself: a profile
service over HTTP, a PostgreSQL catalog or an S3 endpoint that cannot be reached, times out,
answers 5xx or 429, or is busy. It is what a session's commit keeps its work for (as a
pending commit, :mod:`profiles.workspace.pending`) instead of losing it; a refusal (``LeaseLost``,
``NotFound``, ``ValidationFailed``) and a fault of this machine's own home (a full disk)
are never transient.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ArchiveInvalid",
    "AuthFailed",
    "BrowserDowngrade",
    "BrowserNotFound",
    "ChecksumMismatch",
    "Conflict",
    "Forbidden",
    "LeaseLost",
    "LinkExpired",
    "NavigationFailed",
    "NoStateData",
    "NotFound",
    "PendingConflict",
    "ProfileBusy",
    "ProfileError",
    "RateLimited",
    "SignatureInvalid",
    "StateCommitFailed",
    "StateCorrupt",
    "StorageUnavailable",
    "TierLimit",
    "Unauthorized",
    "ValidationFailed",
    "error_class",
    "error_classes",
    "error_from_dict",
]

_REGISTRY: dict[str, type[ProfileError]] = {}


class ProfileError(Exception):
    """Base of every error this library raises on purpose."""

    code: str = "ProfileError"
    status: int = 500
    #: The details this class also keeps as attributes (set again when it is rebuilt).
    attributes: ClassVar[tuple[str, ...]] = ()
    #: The details kept for this machine's callers and never sent to a remote one
    #: (:meth:`public_dict`): what would tell another client more than it may know.
    private: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must name its own code")
        taken = _REGISTRY.get(cls.code)
        if taken is not None and taken.__qualname__ != cls.__qualname__:
            raise TypeError(f"error code {cls.code!r} is taken by {taken.__qualname__}")
        _REGISTRY[cls.code] = cls

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

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the :attr:`private` details: what a service sends."""
        body = self.to_dict()
        for name in self.private:
            body.pop(name, None)
        return body


class ValidationFailed(ProfileError):
    """A value broke a rule (name shape, description length, archetype, ...)."""

    code = "ValidationFailed"
    status = 400
    attributes = ("field",)

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
    epoch), or the caller does not hold it (over HTTP: not the key it was granted to, or
    without its token): this writer's state is refused, and the newer state stands. The
    current epoch (``current_epoch``) is kept for this machine's callers only."""

    code = "LeaseLost"
    private = ("current_epoch",)


class PendingConflict(Conflict):
    """A session's pending commit on this machine (kept when the service could not be
    reached) cannot land by itself: the profile was committed since the session started.
    ``profiles sync REF --force`` or ``--discard`` decides (see
    :mod:`profiles.workspace.pending`)."""

    code = "PendingConflict"


class BrowserDowngrade(Conflict):
    """The profile's state was written by a newer browser major than the one at hand."""

    code = "BrowserDowngrade"


class TierLimit(ProfileError):
    """The store is at its profile cap (``max_profiles``), or (``resource="session"``) a
    service runs as many sessions as the account's tier, or the service, allows."""

    code = "TierLimit"
    status = 429
    attributes = ("limit", "current", "resource", "tier")

    def __init__(
        self,
        message: str,
        *,
        limit: int,
        current: int,
        tier: str = "local",
        resource: str = "profile",
        **details: Any,
    ) -> None:
        super().__init__(
            message, limit=limit, current=current, resource=resource, tier=tier, **details
        )
        self.limit = limit
        self.current = current
        self.resource = resource
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
    attributes = ("home", "cause")

    def __init__(self, message: str, *, home: str, cause: str, **details: Any) -> None:
        super().__init__(message, home=home, cause=cause, **details)
        self.home = home
        self.cause = cause


class StateCorrupt(ProfileError):
    """A committed state cannot be read back: a chunk is missing or its bytes are damaged.
    Nothing partial is ever served; ``profiles verify`` lists what is affected."""

    code = "StateCorrupt"
    status = 500


class NavigationFailed(ProfileError):
    """A session's ``start_url`` (``profiles open --url``) did not open; nothing was
    committed."""

    code = "NavigationFailed"
    status = 502


class AuthFailed(ProfileError):
    """The HTTP service refused the API key (missing, invalid, revoked, lacking a
    permission) or the account is deactivated."""

    code = "AuthFailed"
    status = 401


class Unauthorized(AuthFailed):
    """401: no API key, or one the service does not know (any more)."""

    code = "Unauthorized"
    status = 401


class Forbidden(AuthFailed):
    """403: the key is known but may not do this (a missing permission, a deactivated
    account)."""

    code = "Forbidden"
    status = 403


class SignatureInvalid(ProfileError):
    """A signed link or upload target was altered, is malformed, or is for another use."""

    code = "SignatureInvalid"
    status = 403


class LinkExpired(ProfileError):
    """A signed link or upload target is past its expiry (or no longer matches the state
    it was made for): ask for a new one."""

    code = "LinkExpired"
    status = 410


class RateLimited(ProfileError):
    """429: too many requests; ``retry_after`` says when to try again (seconds, if known)."""

    code = "RateLimited"
    status = 429
    transient = True


_REGISTRY[ProfileError.code] = ProfileError


def error_class(code: str) -> type[ProfileError] | None:
    """The class whose ``code`` is ``code``, if there is one."""
    return _REGISTRY.get(code)


def error_classes() -> list[type[ProfileError]]:
    """Every registered error class, the base first."""
    return list(_REGISTRY.values())


def rebuild_error(cls: type[ProfileError], message: str, details: dict[str, Any]) -> ProfileError:
    """An instance of ``cls`` with exactly ``message`` and ``details``, whatever its
    constructor takes, with its ``attributes`` set from ``details``."""
    err = cls.__new__(cls)
    ProfileError.__init__(err, message, **details)
    for name in cls.attributes:
        setattr(err, name, details.get(name))
    return err


def error_from_dict(payload: dict[str, Any], *, status: int | None = None) -> ProfileError | None:
    """The error a ``to_dict()`` body stands for, by its ``code``: the same class, message,
    details and status. ``None`` when ``payload`` is not such a body or names a code no
    class has (the caller decides what an unknown error is)."""
    message, code = payload.get("message"), payload.get("code")
    if not isinstance(message, str) or not isinstance(code, str):
        return None
    cls = _REGISTRY.get(code)
    if cls is None:
        return None
    details = {k: v for k, v in payload.items() if k not in ("code", "status", "message")}
    err = rebuild_error(cls, message, details)
    sent = payload.get("status", status)
    if isinstance(sent, int) and not isinstance(sent, bool) and sent != cls.status:
        err.status = sent  # a variant of the class (an upload too large: 413)
    return err
