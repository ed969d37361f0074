"""The catalog interface: where profile, snapshot, audit and lease records persist.

A catalog hands out transactions. The store groups each operation's reads and writes in one
transaction, so a crash between steps leaves no half-made record. SQLite is the embedded
default; PostgreSQL implements the same methods for a fleet of machines.

The contract
============

Every backend MUST keep these rules, and ``profiles.testing.catalog_contract`` checks them
(run it against any new backend, from many threads and processes at once):

1. **Atomic transactions.** A write transaction commits all of its writes or none. A read
   transaction (``write=False``) sees one consistent state and never waits for writers.
2. **Narrow writes.** No write replaces a whole record from a copy read earlier: writes name
   the columns they change and compute new values inside the database, so two concurrent
   transactions that change different things both survive, whatever the isolation level:

   - :meth:`CatalogTransaction.update_fields` sets only the columns given;
   - :meth:`CatalogTransaction.merge_labels` adds and removes label keys against the labels
     as they are when the write lands (two concurrent edits of different keys both stay);
   - :meth:`CatalogTransaction.bump_usage` increments ``usage_count`` in the database;
   - :meth:`CatalogTransaction.set_state` replaces the committed state only while the
     caller's lease epoch is still the profile's current one (the fencing token; see 5).
3. **Rules enforced by the database under concurrency.** Names are unique (``Conflict``);
   :meth:`CatalogTransaction.insert_profile` with ``max_profiles`` never lets the count pass
   the cap, even when many transactions insert at once (``TierLimit``): two creates at
   ``cap - 1`` cannot both succeed.
4. **References are stable while they are read for copying.**
   :meth:`CatalogTransaction.get_profile_for_share` keeps the row's state from changing
   until the transaction ends, so a snapshot or a clone that copies a checksum inserts its
   reference before any commit can replace (and free) the bytes it points at.
5. **Leases with fencing.** A writer lease per profile: :meth:`acquire_lease` grants it only
   when it is free or expired, and then increments the profile's ``lease_epoch``, which
   never decreases; :meth:`renew_lease` extends it only for the current epoch;
   :meth:`set_state` with an ``epoch`` applies only if that epoch is still current, else it
   raises :class:`~profiles.errors.LeaseLost` and changes nothing. Expiry is judged by the
   database's clock where it has one, so machines with skewed clocks agree.
6. **No blob I/O inside a transaction.** Transactions hold no state bytes; the store writes
   bytes before the transaction that references them and frees them after the one that
   stops referencing them (data first, metadata last).
7. **Bytes are removed only under an exclusive lock** (restic's rule). A process that
   uploads state bytes and then references them registers itself first
   (:meth:`CatalogTransaction.register_blob_writer`, refused while a collector holds the
   lock); a process that deletes unreferenced bytes holds the collector lock
   (:meth:`CatalogTransaction.acquire_collector`, granted only when no live writer is
   registered and no other collector holds it). Deduplicated bytes can thus never be
   deleted between their upload and the reference that keeps them.

   *Registrations end with their holder* (a crash must not lock upkeep out). A writer's
   registration and the collector lock are **live** while they are unexpired, and a
   registration whose process is known to be gone is not live, whatever its expiry:

   - each lives ``ttl`` seconds from its last grant or renewal. Holders renew while they
     work (:meth:`~CatalogTransaction.renew_blob_writer`,
     :meth:`~CatalogTransaction.renew_collector`: the service's heartbeat renews every
     third of the ttl, which is at most the lease expiry, 30 s by default), so a slow live
     writer stays live and a dead one stops counting within ``ttl``;
   - a backend that can see that the registering process is gone MUST stop counting its
     registration at once. The embedded backend does (every registration holds an
     ``flock`` for its life, which the kernel drops however the process dies);
     :attr:`Catalog.sees_dead_processes` says so;
   - granting the collector lock drops the writer registrations that are not live, and
     registering a writer drops a collector lock that is not live. A renewal then answers
     ``False``: the registration was dropped, and the holder MUST assume the other side
     has run meanwhile (a writer must not reference what it uploaded, so it renews in the
     transaction that references its bytes and gives up when refused; a collector must
     stop deleting). Renewal never re-creates a dropped registration.
8. **Migrations.** Each backend has one ordered migration history; opening a catalog runs
   the migrations it lacks and refuses a schema newer than the code (``ProfileError``).
9. **Faults.** Connection and storage faults raise
   :class:`~profiles.errors.StorageUnavailable` naming the catalog (never its password);
   nothing else escapes but :class:`~profiles.errors.ProfileError`.
10. **Engine caches.** :meth:`CatalogTransaction.engine_cache_put` records the checksum
    of a browser build's published engine cache (:mod:`profiles.engine_cache.cache`) under
    ``(engine, key)``, replacing any earlier one (an upsert: the last writer wins, and
    concurrent puts never fail); :meth:`~CatalogTransaction.engine_cache_get` reads it back.
    Those bytes are referenced like state: :meth:`~CatalogTransaction.engine_cache_checksums`
    lists them for the collector. A bad engine, key or checksum is ``ValidationFailed``
    (:func:`check_engine_cache_ref`).

Listings are keyset-paginated: ``created_at`` (``captured_at``, ``at``) descending, then
``id`` descending, starting after the record whose id is ``after``. They return up to
``limit`` records; the store asks for one more than a page to learn ``has_more``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from profiles.blobs.base import check_checksum
from profiles.errors import LeaseLost, TierLimit, ValidationFailed
from profiles.models import AuditEvent, Holder, Profile, ProfileStatus, Snapshot
from profiles.state.rules import ENGINES

__all__ = [
    "KEY_PATTERN",
    "UPDATABLE_FIELDS",
    "Catalog",
    "CatalogTransaction",
    "LeaseGrant",
    "StateUpdate",
    "cap_reached",
    "check_engine_cache_ref",
    "lease_lost",
]

#: What an engine cache key looks like (a browser build: engine, version, platform).
KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: Columns :meth:`CatalogTransaction.update_fields` may set.
UPDATABLE_FIELDS = frozenset({"name", "description", "updated_at"})


@dataclass(frozen=True)
class StateUpdate:
    """A new committed state for :meth:`CatalogTransaction.set_state`."""

    checksum: str
    blob_size: int
    uploaded_at: datetime
    browser_version: str | None  # None keeps the recorded one
    cookie_domains: list[str]


@dataclass(frozen=True)
class LeaseGrant:
    """A writer lease granted by :meth:`CatalogTransaction.acquire_lease`."""

    profile_id: str
    epoch: int
    expires_at: datetime | None  # None: held until released (the embedded file lock)
    # The profile's record as the holder starts from, when the service sends it along (over
    # HTTP: no second request to read it); None: read it after the grant.
    profile: Profile | None = None


def cap_reached(limit: int, current: int) -> TierLimit:
    """The ``TierLimit`` every backend raises when an insert would pass the cap."""
    return TierLimit(
        f"This store allows at most {limit} profiles and has {current}. "
        "Delete a profile or raise max_profiles.",
        limit=limit,
        current=current,
    )


def lease_lost(profile_id: str, epoch: int, current: int) -> LeaseLost:
    """The ``LeaseLost`` every backend raises when a fenced write comes too late."""
    # The message names no current epoch: it travels to remote callers (over HTTP), and
    # ``current_epoch`` is a private detail (LeaseLost.private), kept on this machine.
    return LeaseLost(
        f"The writer lease on profile {profile_id} was lost (this writer had epoch {epoch}): "
        "another writer took it after it expired. This session's state was not written; "
        "the newer state stands. Renew leases in time (a paused or partitioned worker "
        "loses them), or raise the lease expiry.",
        profile_id=profile_id,
        epoch=epoch,
        current_epoch=current,
    )


def check_engine_cache_ref(engine: str, key: str, checksum: str | None = None) -> None:
    """``ValidationFailed`` unless ``engine`` is a known engine, ``key`` an engine cache build
    key and ``checksum`` (when given) a SHA-256 hex digest (rule 10)."""
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValidationFailed(
            f"{engine!r} is not an engine; one of {', '.join(ENGINES)}.", field="engine"
        )
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        shown = repr(key)
        raise ValidationFailed(
            f"{shown[:80]} is not an engine cache build key (letters, digits, '.', '_' and "
            "'-', at most 128).",
            field="key",
        )
    if checksum is not None:
        check_checksum(checksum)


class CatalogTransaction(ABC):
    """The operations available inside one catalog transaction."""

    # ---------------------------------------------------------------- profiles: reads
    @abstractmethod
    def get_profile(self, profile_id: str) -> Profile | None: ...
    @abstractmethod
    def get_profile_by_name(self, name: str) -> Profile | None: ...
    @abstractmethod
    def get_profile_for_share(self, profile_id: str) -> Profile | None:
        """Read a profile and keep its state (checksum) from changing until this
        transaction ends (rule 4). Only in write transactions."""

    @abstractmethod
    def count_profiles(self) -> int: ...
    @abstractmethod
    def profile_names(self) -> list[str]:
        """Every profile name, sorted (for "did you mean" suggestions)."""

    @abstractmethod
    def list_profiles(self, *, limit: int, after: str | None) -> list[Profile]: ...

    # ---------------------------------------------------------------- profiles: writes
    @abstractmethod
    def insert_profile(self, profile: Profile, *, max_profiles: int | None = None) -> None:
        """Insert; ``Conflict`` if the name is taken; ``TierLimit`` if the store already
        holds ``max_profiles`` profiles (enforced against concurrent inserts, rule 3)."""

    @abstractmethod
    def update_fields(self, profile_id: str, fields: Mapping[str, Any]) -> Profile | None:
        """Set only these columns (a subset of :data:`UPDATABLE_FIELDS`); ``Conflict`` if a
        new name is taken. Returns the updated record, ``None`` if there is none."""

    @abstractmethod
    def merge_labels(
        self,
        profile_id: str,
        *,
        add: Mapping[str, str],
        remove: frozenset[str],
        replace: Mapping[str, str] | None,
        updated_at: datetime,
    ) -> Profile | None:
        """Labels become ``replace`` (if given, else the current ones) minus ``remove`` plus
        ``add``, computed against the row as it is when the write lands (rule 2)."""

    @abstractmethod
    def bump_usage(self, profile_id: str, at: datetime) -> Profile | None:
        """``usage_count + 1`` and ``last_used_at = at``, in the database."""

    @abstractmethod
    def set_state(
        self, profile_id: str, state: StateUpdate, *, epoch: int | None
    ) -> tuple[Profile, str | None]:
        """Make ``state`` the committed state (status ``ready``) and return the updated
        record with the checksum it replaced. With ``epoch``, only while it is the
        profile's current lease epoch, else ``LeaseLost`` (rule 5). ``NotFound`` if the
        profile is gone."""

    @abstractmethod
    def set_status(self, profile_id: str, status: ProfileStatus) -> Profile | None: ...

    @abstractmethod
    def settle_status(self, profile_id: str) -> Profile | None:
        """Set the status from the committed state as it is now: ``ready`` with a
        checksum, else ``empty`` (after an import ends, whatever happened to it)."""

    @abstractmethod
    def delete_profile(self, profile_id: str) -> Profile | None:
        """Delete and return the record; snapshots stay with ``parent_profile_id`` null."""

    # ---------------------------------------------------------------- snapshots
    @abstractmethod
    def get_snapshot(self, snapshot_id: str) -> Snapshot | None: ...
    @abstractmethod
    def insert_snapshot(self, snapshot: Snapshot) -> None: ...
    @abstractmethod
    def delete_snapshot(self, snapshot_id: str) -> Snapshot | None: ...
    @abstractmethod
    def list_snapshots(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[Snapshot]: ...

    # ---------------------------------------------------------------- audit
    @abstractmethod
    def insert_event(self, event: AuditEvent) -> None: ...
    @abstractmethod
    def list_events(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[AuditEvent]: ...

    # ---------------------------------------------------------------- state bytes
    @abstractmethod
    def checksum_in_use(self, checksum: str) -> bool:
        """Whether any profile or snapshot still references these state bytes."""

    @abstractmethod
    def checksums_in_use(self) -> set[str]: ...

    # ---------------------------------------------------------------- leases
    @abstractmethod
    def acquire_lease(
        self, profile_id: str, holder: Holder, *, ttl: float | None, force: bool = False
    ) -> LeaseGrant | None:
        """Grant the writer lease if it is free or expired (or ``force``: the caller holds
        a stronger lock, the embedded file lock), incrementing ``lease_epoch``. ``None``
        when a live holder has it; ``NotFound`` if there is no such profile. ``ttl`` None
        means no expiry."""

    @abstractmethod
    def renew_lease(self, profile_id: str, epoch: int, *, ttl: float | None) -> bool:
        """Extend the lease; ``False`` if ``epoch`` is no longer current (it was lost)."""

    @abstractmethod
    def release_lease(self, profile_id: str, epoch: int) -> None:
        """Free the lease if ``epoch`` still holds it (else nothing)."""

    @abstractmethod
    def lease_holder(self, profile_id: str) -> tuple[Holder, int] | None:
        """The live holder of the lease and its epoch, if any."""

    @abstractmethod
    def leases(self) -> list[tuple[str, Holder, int]]:
        """``(profile_id, holder, epoch)`` of every live lease."""

    # ---------------------------------------------------------------- byte writers / collector
    @abstractmethod
    def register_blob_writer(self, writer_id: str, *, ttl: float) -> bool:
        """Register (or extend) a writer of state bytes, live for ``ttl`` seconds unless
        renewed or its process is gone; ``False`` while a live collector holds its lock. A
        collector lock that is not live is dropped (rule 7)."""

    @abstractmethod
    def renew_blob_writer(self, writer_id: str, *, ttl: float) -> bool:
        """Extend a writer's registration to ``ttl`` seconds from now; ``False`` (and
        nothing registered) when it is gone: released, or dropped by a collector after it
        stopped being live. Then a collector may have run since (rule 7)."""

    @abstractmethod
    def unregister_blob_writer(self, writer_id: str) -> None: ...

    @abstractmethod
    def acquire_collector(self, collector_id: str, *, ttl: float) -> bool:
        """Take (or extend, for its holder) the exclusive collector lock, live for ``ttl``
        seconds unless renewed or its process is gone: only when no live writer is
        registered and no other live collector holds it. Writer registrations that are not
        live are dropped (rule 7)."""

    @abstractmethod
    def renew_collector(self, collector_id: str, *, ttl: float) -> bool:
        """Extend the collector lock to ``ttl`` seconds from now while ``collector_id``
        still holds it; ``False`` when it does not (a writer dropped it after it stopped
        being live, and may have uploaded since: stop deleting)."""

    @abstractmethod
    def release_collector(self, collector_id: str) -> None: ...

    # ---------------------------------------------------------------- engine caches (rule 10)
    @abstractmethod
    def engine_cache_get(self, engine: str, key: str) -> str | None:
        """The checksum of the published cache of build ``key`` of ``engine``, if any."""

    @abstractmethod
    def engine_cache_put(self, engine: str, key: str, checksum: str) -> None:
        """Record (or replace: the last writer wins) the published cache of a build."""

    @abstractmethod
    def engine_cache_checksums(self) -> set[str]:
        """Every checksum an engine cache entry names (the collector keeps those bytes)."""


class Catalog(ABC):
    """A metadata store. Safe to share between threads; other processes may use it too."""

    #: Where it lives, for messages: a path or a URL without its password.
    location: str
    #: Whether a blob writer's or collector's registration stops counting as soon as its
    #: process is gone, before it expires (rule 7).
    sees_dead_processes: bool = False

    @abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractContextManager[CatalogTransaction]:
        """A transaction: committed when the block exits normally, rolled back when it
        raises (see the module's contract)."""

    @abstractmethod
    def close(self) -> None: ...
