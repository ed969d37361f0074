"""The profile service: what any backend answers, separate from what happens on a machine.

A :class:`ProfileService` holds profiles, snapshots, the audit log, state bytes (as streams,
named by their SHA-256) and writer leases. It knows nothing of directories, browsers or
working copies: those belong to the machine's workspace, which :class:`~profiles.store.
ProfileStore` (the front door) keeps next to a service. Implementations:
:class:`~profiles.service.catalog.CatalogService` (a catalog and a blob store, embedded or
shared) and :class:`~profiles.http.client.HttpService` (``profiles serve`` over HTTP).
"""

from __future__ import annotations

import builtins
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

from profiles.blobs.base import BlobStore
from profiles.catalog.base import Catalog, LeaseGrant, StateUpdate
from profiles.errors import ArchiveInvalid, ProfileError, StateCorrupt, ValidationFailed
from profiles.models import AuditEvent, AuditType, Holder, Page, Profile, ProfileStatus, Snapshot
from profiles.state.chunked import PackResult, StatCache
from profiles.state.manifest import Manifest

__all__ = ["UNSET", "ProfileService", "Unset"]


class Unset:
    """The type of :data:`UNSET`: "not passed", as opposed to ``None``."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()


class ProfileService(ABC):
    """What any backend answers. Records come back as they are stored (the workspace may
    present an ``uploading`` status differently); errors are :class:`ProfileError`\\ s."""

    #: Where the records and bytes live, for messages (no secrets).
    location: str
    #: Whether other machines share it (leases then decide who writes, with expiry).
    shared: bool
    #: The most profiles it holds (``TierLimit`` past it), when it says.
    max_profiles: int | None = None

    # profiles
    @abstractmethod
    def create(
        self,
        name: str,
        *,
        archetype: str | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Profile:
        """Create an empty profile pinned to ``archetype`` (default ``desktop-chromium``).
        ``Conflict`` if the name is taken, ``TierLimit`` past the profile cap."""

    @abstractmethod
    def get(self, ref: str) -> Profile:
        """A profile by id or name; ``NotFound`` if there is none."""

    @abstractmethod
    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[Profile]:
        """Profiles, newest first (``created_at`` desc, then ``id`` desc)."""

    @abstractmethod
    def update(
        self,
        ref: str,
        *,
        name: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
        labels: dict[str, str] | Unset = UNSET,
        archetype: str | Unset = UNSET,
        add_labels: Mapping[str, str] | None = None,
        remove_labels: Iterable[str] | None = None,
    ) -> Profile:
        """Change only what is passed. ``description=None`` clears it. The archetype is
        sticky: passing a different one raises ``ValidationFailed`` (clone instead).

        ``labels`` replaces every label; ``add_labels`` (add or replace these) and
        ``remove_labels`` (drop these keys) merge into the labels as they are when the
        change is written, so concurrent edits of different labels all survive."""

    @abstractmethod
    def delete(self, ref: str) -> Profile:
        """Delete the record (its state bytes are freed unless referenced); the deleted
        record is returned."""

    @abstractmethod
    def clone(
        self,
        ref: str,
        *,
        name: str | None = None,
        with_state: bool = False,
        archetype: str | None = None,
    ) -> Profile:
        """A new profile with the source's archetype, description and labels.

        State is not copied unless ``with_state``. Without a name one is derived:
        ``<source>-copy``, ``<source>-copy-2``, ... ``-copy-99``, then ``Conflict``. Pass
        ``archetype`` to repin (state can only come along within the same engine)."""

    @abstractmethod
    def similar_names(self, name: str, *, limit: int = 3) -> builtins.list[str]:
        """Names of existing profiles that look like ``name`` (a typo of it), closest
        first."""

    # snapshots
    @abstractmethod
    def snapshot(
        self, ref: str, *, label: str | None = None, description: str | None = None
    ) -> Snapshot:
        """Capture the profile's committed state, name and archetype, frozen."""

    @abstractmethod
    def snapshots(
        self, ref: str | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Snapshot]:
        """One profile's snapshots (or every snapshot), newest first."""

    @abstractmethod
    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        """A snapshot by id; ``NotFound`` if there is none."""

    @abstractmethod
    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot (its state bytes are freed unless referenced)."""

    @abstractmethod
    def restore(self, snapshot_id: str, *, name: str | None = None) -> Profile:
        """A new profile from a snapshot: its archetype, description and state. The parent
        is never touched. Without a name: ``<parent_name>-restored``, ``-restored-2``, ..."""

    # audit
    @abstractmethod
    def audit(
        self, *, profile: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        """Audit events, newest first; ``profile`` (id or name) narrows to one profile.
        A deleted profile's events stay readable by its id."""

    @abstractmethod
    def record_event(self, /, type_: AuditType, profile_id: str | None, **payload: Any) -> None:
        """Append one audit event. Portable payloads are flat: identifier keys and scalar
        values (a server refuses others from its clients, and needs ``profile_id``)."""

    @abstractmethod
    def record_use(self, /, ref: str, **payload: Any) -> Profile:
        """Count one session on the profile: ``usage_count`` + 1, ``last_used_at`` = now,
        and a ``session.created`` event."""

    # state bytes, as streams
    @abstractmethod
    def open_state(self, profile: Profile) -> BinaryIO:
        """The bytes of ``profile``'s committed state as this record names them
        (``profile.checksum``), read from start to end (never seeked). ``NoStateData`` when
        it has none."""

    @abstractmethod
    def commit_archive(
        self,
        profile: Profile,
        spool: Path,
        state: StateUpdate,
        *,
        epoch: int | None,
        event: AuditType,
        end_session: Mapping[str, Any] | None = None,
        **payload: Any,
    ) -> Profile:
        """Store the bytes in ``spool`` (named ``state.checksum``) and make them the
        profile's committed state, only while ``epoch`` is current (``LeaseLost``).
        With ``end_session`` (the payload of ``session.ended``), once the state is stored
        the lease ``epoch`` is released and the event recorded (:meth:`end_session`); a
        commit that fails ends nothing."""

    def end_session(self, /, profile_id: str, epoch: int | None, **payload: Any) -> None:
        """A session ended: release its writer lease ``epoch`` (if any) and record
        ``session.ended`` with ``payload`` (one request over HTTP)."""
        try:
            if epoch is not None:
                self.release_lease(profile_id, epoch)
        finally:
            self.record_event("session.ended", profile_id, **payload)

    def import_archive(
        self, ref: str, source: IO[bytes], *, browser_version: str | None = None
    ) -> Profile | None:
        """Import an uploaded archive on the service's side (checked there as hostile input)
        and return the updated record; ``None`` (the default): the service does not, and
        the store imports it here (unpack, check, :meth:`commit_archive`)."""
        return None

    @abstractmethod
    def set_status(self, profile_id: str, status: ProfileStatus) -> Profile: ...
    @abstractmethod
    def settle_status(self, profile_id: str) -> None: ...
    @abstractmethod
    def collect_garbage(self, *, min_age: float, wait: float) -> builtins.list[str]: ...

    # writer leases
    @abstractmethod
    def acquire_lease(
        self,
        profile_id: str,
        holder: Holder,
        *,
        ttl: float | None,
        force: bool = False,
        wait: float = 0.0,
    ) -> LeaseGrant | None:
        """The lease, or ``None`` when another holder has it. ``wait``: a service that can
        wait on its side for a busy lease to free (over HTTP) may, for at most that long;
        others answer at once and the caller polls."""

    @abstractmethod
    def renew_lease(self, profile_id: str, epoch: int, *, ttl: float | None) -> bool: ...
    @abstractmethod
    def release_lease(self, profile_id: str, epoch: int) -> None: ...
    @abstractmethod
    def lease_holder(self, profile_id: str) -> Holder | None: ...
    @abstractmethod
    def leases(self) -> builtins.list[tuple[str, Holder]]: ...

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""

    #: Whether :meth:`commit_archive` reads and checks the profile on the service's side (a
    #: server does): the store then need not read the record before a commit.
    checks_commits_itself: bool = False

    # ------------------------------------------------------------------ state as chunks
    #
    # Chunked, deduplicated state (profiles.state.chunked): a service that holds packs and
    # manifests says so (``supports_chunks``); the workspace then commits, checks out and
    # exports chunk by chunk through these, whatever the service is (a catalog and a blob
    # store here, or a server over HTTP). A service without them stores whole archives
    # (:meth:`commit_archive`, :meth:`open_state`).

    @property
    def supports_chunks(self) -> bool:
        return False

    def manifest_of(self, profile: Profile) -> Manifest | None:
        """The manifest of ``profile``'s committed state, or ``None`` when the state is a
        whole archive (the format before chunking) or there is none. A state that is
        missing or damaged is ``StateCorrupt`` naming the profile."""
        return None

    def manifest(self, checksum: str) -> Manifest | None:
        """The manifest stored under ``checksum``; ``None`` for a whole archive or for
        nothing stored under it (a working copy's old state, collected since)."""
        return None

    def chunk_source(self) -> BlobStore:
        """Where the packs and chunks of states are read from (only reads are made of it:
        ``open``, ``read_range``, ``exists``)."""
        raise ValidationFailed(f"{self.location} does not keep chunked states.")

    @contextlib.contextmanager
    def reading_state_of(self, profile: Profile) -> Iterator[None]:
        """Read ``profile``'s committed state in the block: what goes wrong with the bytes
        read is ``StateCorrupt`` naming the profile, with what to do about it.

        The bytes come from the store, not from someone uploading them: a manifest, pack,
        chunk or archive that is missing, does not hash to its name or cannot be parsed or
        unpacked (``ArchiveInvalid``, which for an upload means a bad file) means the stored
        state is damaged."""
        try:
            yield
        except (StateCorrupt, ArchiveInvalid) as exc:
            if isinstance(exc, StateCorrupt) and "profile_id" in exc.details:
                raise
            details = {k: v for k, v in exc.details.items() if k != "field"}
            # An archive that does not unpack came from the store: its bytes are damaged.
            why = exc.message.rstrip()
            if isinstance(exc, ArchiveInvalid):
                why = f"its stored bytes are damaged: {why}"
            raise StateCorrupt(
                f"The committed state of profile {profile.name!r} ({profile.id}) cannot be "
                f"read: {why} Restore it from a snapshot or an export; "
                "'profiles verify' lists every state affected.",
                profile_id=profile.id,
                **details,
            ) from exc

    def commit_directory(
        self,
        profile: Profile,
        directory: Path,
        *,
        previous: Manifest | None,
        previous_stat: StatCache | None,
        browser_version: str | None,
        cookie_domains: builtins.list[str],
        epoch: int | None,
        event: AuditType,
        end_session: Mapping[str, Any] | None = None,
        **payload: Any,
    ) -> tuple[Profile, PackResult]:
        """Commit ``directory`` (a user-data-dir, its browser closed) as the profile's state,
        storing only the chunks that changed since ``previous`` (its stat cache
        ``previous_stat`` spares reading unchanged files), only while ``epoch`` is current
        (``LeaseLost``). Data first, metadata last. ``end_session`` as in
        :meth:`commit_archive`.
        ``browser_version`` and ``cookie_domains`` are what the caller read from the
        directory; a service that does not trust its caller reads them itself."""
        raise ValidationFailed(f"{self.location} does not keep chunked states.")

    def verify(self, *, full: bool = False) -> builtins.list[tuple[str, str]]:
        """Check every state a profile or snapshot references (``full``: read every byte):
        ``(checksum, problem)`` pairs, empty when all is well."""
        raise ProfileError(f"{self.location} verifies its own states.")

    def storage(self) -> tuple[Catalog, BlobStore] | None:
        """The catalog and blob store under the service, when it has them here (``None``
        over HTTP): for maintenance, and, when :attr:`shared`, for what a fleet of machines
        shares beside profiles (the engine cache)."""
        return None

    def sweep_scratch(self) -> builtins.list[str]:
        """Remove scratch the service's own storage keeps (partial blobs of processes that
        died); the names removed."""
        return []
