"""The catalog interface: where profile, snapshot and audit records persist.

A catalog hands out transactions. Everything the store does for one operation happens in one
transaction, so a crash between steps leaves no half-made record. The interface is small on
purpose: SQLite is the embedded default, PostgreSQL will implement the same methods.

Listings are keyset-paginated: ``created_at`` (``captured_at``, ``at``) descending, then
``id`` descending, starting after the record whose id is ``after``. They return up to
``limit`` records; the store asks for one more than a page to learn ``has_more``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

from profiles.models import AuditEvent, Profile, Snapshot

__all__ = ["Catalog", "CatalogTransaction"]


class CatalogTransaction(ABC):
    """The operations available inside one catalog transaction."""

    # profiles
    @abstractmethod
    def get_profile(self, profile_id: str) -> Profile | None: ...
    @abstractmethod
    def get_profile_by_name(self, name: str) -> Profile | None: ...
    @abstractmethod
    def count_profiles(self) -> int: ...
    @abstractmethod
    def profile_names(self) -> list[str]:
        """Every profile name, sorted (for "did you mean" suggestions)."""

    @abstractmethod
    def insert_profile(self, profile: Profile) -> None:
        """Insert; raises :class:`~profiles.errors.Conflict` if the name is taken."""

    @abstractmethod
    def update_profile(self, profile: Profile) -> None:
        """Replace the record with the same id; ``Conflict`` if the new name is taken."""

    @abstractmethod
    def delete_profile(self, profile_id: str) -> None:
        """Delete; snapshots keep living with ``parent_profile_id`` set to null."""

    @abstractmethod
    def list_profiles(self, *, limit: int, after: str | None) -> list[Profile]: ...

    # snapshots
    @abstractmethod
    def get_snapshot(self, snapshot_id: str) -> Snapshot | None: ...
    @abstractmethod
    def insert_snapshot(self, snapshot: Snapshot) -> None: ...
    @abstractmethod
    def delete_snapshot(self, snapshot_id: str) -> None: ...
    @abstractmethod
    def list_snapshots(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[Snapshot]: ...

    # audit
    @abstractmethod
    def insert_event(self, event: AuditEvent) -> None: ...
    @abstractmethod
    def list_events(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[AuditEvent]: ...

    # state bytes
    @abstractmethod
    def checksum_in_use(self, checksum: str) -> bool:
        """Whether any profile or snapshot still references these state bytes."""

    @abstractmethod
    def checksums_in_use(self) -> set[str]: ...


class Catalog(ABC):
    """A metadata store. Safe to share between threads; other processes may use it too."""

    @abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractContextManager[CatalogTransaction]:
        """A transaction: with ``write`` serialised against every other writer, else a
        consistent read that does not wait for writers.

        Committed when the block exits normally, rolled back when it raises.
        """

    @abstractmethod
    def close(self) -> None: ...
