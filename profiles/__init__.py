"""Named, persistent browser profiles: the metadata and state layer.

>>> from profiles import ProfileStore
>>> store = ProfileStore()                     # $PROFILES_HOME or the user data dir
>>> store.create("production", archetype="desktop-firefox")

No Playwright import lives in this package; ``driver`` runs browsers on top of it.
"""

from profiles.archetypes import DEFAULT_ARCHETYPE, Archetype, all_archetypes, get_archetype
from profiles.errors import (
    ArchiveInvalid,
    AuthFailed,
    BrowserDowngrade,
    BrowserNotFound,
    ChecksumMismatch,
    Conflict,
    Forbidden,
    LeaseLost,
    LinkExpired,
    NavigationFailed,
    NoStateData,
    NotFound,
    PendingConflict,
    ProfileBusy,
    ProfileError,
    RateLimited,
    SignatureInvalid,
    StateCommitFailed,
    StateCorrupt,
    StorageUnavailable,
    TierLimit,
    Unauthorized,
    ValidationFailed,
)
from profiles.models import AuditEvent, Page, Profile, Snapshot
from profiles.state.archive import ArchiveLimits, Codec
from profiles.state.rules import ENGINES, Engine
from profiles.store import UNSET, ProfileStore, default_home

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ARCHETYPE",
    "ENGINES",
    "UNSET",
    "Archetype",
    "ArchiveInvalid",
    "ArchiveLimits",
    "AuditEvent",
    "AuthFailed",
    "BrowserDowngrade",
    "BrowserNotFound",
    "ChecksumMismatch",
    "Codec",
    "Conflict",
    "Engine",
    "Forbidden",
    "LeaseLost",
    "LinkExpired",
    "NavigationFailed",
    "NoStateData",
    "NotFound",
    "Page",
    "PendingConflict",
    "Profile",
    "ProfileBusy",
    "ProfileError",
    "ProfileStore",
    "RateLimited",
    "SignatureInvalid",
    "Snapshot",
    "StateCommitFailed",
    "StateCorrupt",
    "StorageUnavailable",
    "TierLimit",
    "Unauthorized",
    "ValidationFailed",
    "__version__",
    "all_archetypes",
    "default_home",
    "get_archetype",
]
