"""Named, persistent browser profiles: the metadata and state layer.

>>> from profiles import ProfileStore
>>> store = ProfileStore()                     # $PROFILES_HOME or the user data dir
>>> store.create("production", archetype="desktop-firefox")

No Playwright import lives in this package; ``driver`` runs browsers on top of it.
"""

from profiles.archetypes import DEFAULT_ARCHETYPE, Archetype, all_archetypes, get_archetype
from profiles.archive import ArchiveLimits, Codec
from profiles.errors import (
    ArchiveInvalid,
    BrowserDowngrade,
    BrowserNotFound,
    ChecksumMismatch,
    Conflict,
    LeaseLost,
    NoStateData,
    NotFound,
    PendingConflict,
    ProfileBusy,
    ProfileError,
    StateCommitFailed,
    StateCorrupt,
    StorageUnavailable,
    TierLimit,
    ValidationFailed,
)
from profiles.models import AuditEvent, Page, Profile, Snapshot
from profiles.state_rules import ENGINES, Engine
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
    "BrowserDowngrade",
    "BrowserNotFound",
    "ChecksumMismatch",
    "Codec",
    "Conflict",
    "Engine",
    "LeaseLost",
    "NoStateData",
    "NotFound",
    "Page",
    "PendingConflict",
    "Profile",
    "ProfileBusy",
    "ProfileError",
    "ProfileStore",
    "Snapshot",
    "StateCommitFailed",
    "StateCorrupt",
    "StorageUnavailable",
    "TierLimit",
    "ValidationFailed",
    "__version__",
    "all_archetypes",
    "default_home",
    "get_archetype",
]
