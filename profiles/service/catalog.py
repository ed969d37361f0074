"""The profile service over a catalog and a blob store: :class:`CatalogService`.

It implements :class:`~profiles.service.protocol.ProfileService` over a
:class:`~profiles.catalog.base.Catalog` and a :class:`~profiles.blobs.base.BlobStore`
(SQLite + local files, or PostgreSQL + S3).

Every record operation is one catalog transaction; state bytes are stored before the
transaction that points at them and freed after the one that stops (data first, metadata
last), under the catalog's writer and collector locks (rule 7 of catalog/base.py).
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from profiles.archetypes import DEFAULT_ARCHETYPE, get_archetype
from profiles.blobs.base import BlobStore
from profiles.catalog.base import Catalog, CatalogTransaction, LeaseGrant, StateUpdate
from profiles.catalog.registration import UPKEEP_TTL, Registration, blob_writer, collector
from profiles.errors import (
    ArchiveInvalid,
    Conflict,
    NoStateData,
    NotFound,
    ProfileError,
    StateCorrupt,
    StorageUnavailable,
    ValidationFailed,
)
from profiles.models import (
    AuditEvent,
    AuditType,
    Holder,
    Page,
    Profile,
    ProfileStatus,
    Snapshot,
    new_id,
    seconds_text,
    utcnow,
)
from profiles.service.protocol import UNSET, ProfileService, Unset
from profiles.state.archive import ArchiveLimits
from profiles.state.chunked import (
    PackResult,
    StatCache,
    check_chunks_in,
    missing_blobs,
    pack_chunked,
    restore_chunked,
    write_tar,
)
from profiles.state.inspection import inspected_paths, read_browser_version, read_cookie_domains
from profiles.state.manifest import Manifest, sub_manifest
from profiles.state.manifest_reader import ManifestReader
from profiles.validation import (
    MAX_LABELS,
    MAX_NAME_LENGTH,
    check_description,
    check_labels,
    check_limit,
    check_name,
)

__all__ = ["CatalogService", "derive_name"]

log = logging.getLogger(__name__)

MAX_DERIVED_NAMES = 99
MAX_LABEL_LENGTH = 128
BLOB_WRITER_WAIT = 120.0

R = TypeVar("R", Profile, Snapshot, AuditEvent)


def derive_name(base: str, suffix: str, taken: Callable[[str], bool]) -> str:
    """``<base>-<suffix>``, then ``-<suffix>-2`` ... ``-<suffix>-99``; ``Conflict`` after that.

    The base is shortened so the result fits the name length limit.
    """
    for n in range(1, MAX_DERIVED_NAMES + 1):
        tail = f"-{suffix}" if n == 1 else f"-{suffix}-{n}"
        candidate = base[: MAX_NAME_LENGTH - len(tail)] + tail
        if not taken(candidate):
            return candidate
    raise Conflict(
        f"Could not derive a free name from {base!r}: '-{suffix}' up to '-{suffix}-"
        f"{MAX_DERIVED_NAMES}' are all taken. Pass a name explicitly.",
        field="name",
    )


def _close_names(name: str, names: Iterable[str], *, limit: int = 3) -> list[str]:
    candidates = [n for n in names if n != name]
    close = difflib.get_close_matches(name, candidates, n=limit, cutoff=0.75)
    same = [n for n in candidates if n.casefold() == name.casefold() and n not in close]
    return (same + close)[:limit]


def _check_ttl(ttl: float | None) -> None:
    """A lease's time to live: ``None`` (no expiry) or seconds above 0, as over HTTP."""
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0
    ):
        raise ValidationFailed("A lease's ttl must be a number of seconds above 0.", field="ttl")


def _page(records: list[R], limit: int) -> Page[R]:
    has_more = len(records) > limit
    data = records[:limit]
    return Page[R](data=data, has_more=has_more, next_cursor=data[-1].id if has_more else None)


class _NullSink:
    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        return len(data)


def _checked_changes(
    name: str | Unset, description: str | Unset | None, labels: dict[str, str] | Unset
) -> dict[str, Any]:
    """The fields an update passes (``UNSET``: not passed), each checked."""
    changes: dict[str, Any] = {}
    if not isinstance(name, Unset):
        changes["name"] = check_name(name)
    if not isinstance(description, Unset):
        changes["description"] = check_description(description)
    if not isinstance(labels, Unset):
        changes["labels"] = check_labels(labels)
    return changes


def _checked_label_edits(
    add_labels: Mapping[str, str] | None, remove_labels: Iterable[str] | None
) -> tuple[dict[str, str], set[str]]:
    """The labels an update adds and the keys it removes, checked."""
    adding = dict(check_labels(dict(add_labels))) if add_labels else {}
    if isinstance(remove_labels, str):
        raise ValidationFailed(
            "remove_labels must be a list of label keys, not one string.",
            field="remove_labels",
        )
    removing = set(remove_labels or ())
    if not all(isinstance(k, str) for k in removing):
        raise ValidationFailed("remove_labels must hold label keys.", field="remove_labels")
    return adding, removing


def _keep_archetype(current: Profile, archetype: str | Unset) -> None:
    """``ValidationFailed`` when an update would change the (sticky) archetype."""
    if not isinstance(archetype, Unset) and archetype != current.archetype:
        raise ValidationFailed(
            f"The archetype of profile {current.name!r} is {current.archetype!r} and "
            "cannot be changed. To repin, clone it with the new archetype "
            f"(profiles clone {current.name} --archetype {archetype}) and delete "
            "the old profile after migrating.",
            field="archetype",
        )


class CatalogService(ProfileService):
    """The service over a catalog and a blob store (embedded or shared)."""

    def __init__(
        self,
        catalog: Catalog,
        blobs: BlobStore,
        *,
        max_profiles: int | None = None,
        limits: ArchiveLimits | None = None,
        upkeep_ttl: float = UPKEEP_TTL,
    ) -> None:
        from profiles.catalog.sqlite import SQLiteCatalog

        if (
            isinstance(upkeep_ttl, bool)
            or not isinstance(upkeep_ttl, int | float)
            or not upkeep_ttl > 0
        ):
            raise ValidationFailed(
                "upkeep_ttl must be a number of seconds above 0.", field="upkeep_ttl"
            )
        self.catalog = catalog
        #: How long a writer's registration or the collector lock of this service lives
        #: without its heartbeat: a process that dies stops holding the other side off
        #: after this (at once on the embedded catalog, which sees dead processes).
        self.upkeep_ttl = float(upkeep_ttl)
        self.blobs = blobs
        self.max_profiles = max_profiles
        self.limits = limits or ArchiveLimits()
        self.shared = not isinstance(catalog, SQLiteCatalog)
        self.location = f"{catalog.location} + {blobs.location}"
        # Manifests are immutable (named by their hash): the last few read or written are
        # kept, so a commit after a checkout does not fetch the previous one again.
        self.manifests = ManifestReader(blobs, self.limits)

    def close(self) -> None:
        try:
            self.catalog.close()
        finally:
            self.blobs.close()

    def get(self, ref: str) -> Profile:
        """A profile by id or name; ``NotFound`` if there is none."""
        with self.catalog.transaction(write=False) as tx:
            return self._find(tx, ref)

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[Profile]:
        """Profiles, newest first (``created_at`` desc, then ``id`` desc)."""
        limit = check_limit(limit)
        with self.catalog.transaction(write=False) as tx:
            rows = tx.list_profiles(limit=limit + 1, after=cursor)
        return _page(rows, limit)

    def delete(self, ref: str) -> Profile:
        """Delete a profile record and free its state bytes unless something references
        them. Snapshots stay (restorable) with ``parent_profile_id`` set to null."""
        with self.catalog.transaction() as tx:
            profile = self._find(tx, ref)
            profile = tx.delete_profile(profile.id) or profile
            self._event(tx, "profile.deleted", profile.id, name=profile.name)
        self._free_blobs(profile.checksum)
        return profile

    @property
    def supports_chunks(self) -> bool:
        return True

    def manifest_of(self, profile: Profile) -> Manifest | None:
        if profile.checksum is None:
            return None
        with self.reading_state_of(profile):
            return self.manifests.read(profile.checksum, missing_ok=False)

    def manifest(self, checksum: str) -> Manifest | None:
        """The manifest stored under ``checksum`` (``None``: a whole archive, or nothing)."""
        return self.manifests.read(checksum)

    def chunk_source(self) -> BlobStore:
        return self.blobs

    def storage(self) -> tuple[Catalog, BlobStore] | None:
        return self.catalog, self.blobs

    def sweep_scratch(self) -> builtins.list[str]:
        return self.blobs.sweep_scratch()

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
        """Commit ``directory`` as chunks: only the chunks that changed are stored, then the
        manifest, then the catalog (data first, metadata last). Runs as a registered
        writer, so no collector removes a chunk this commit reuses before it is referenced."""
        started = time.perf_counter()
        with self._blob_writer() as writer:
            result = pack_chunked(
                directory,
                profile.browser_name,
                self.blobs,
                previous=previous,
                previous_stat=previous_stat,
            )
            state = StateUpdate(
                checksum=result.checksum,
                blob_size=result.stats.uncompressed_bytes,
                uploaded_at=utcnow(),
                browser_version=browser_version,
                cookie_domains=cookie_domains,
            )
            details = {
                **payload,  # what the caller adds; the figures of this commit win
                "files": result.stats.files,
                "files_read": result.stats.files_read,
                "chunks_written": result.stats.chunks_written,
                "bytes_written": result.stats.bytes_written,
                "seconds": round(time.perf_counter() - started, 3),
            }
            updated, replaced = self._set_state(
                profile, state, epoch, event, writer=writer, **details
            )
        self.manifests.remember(result.manifest)
        if replaced != result.checksum:
            self._free_blobs(replaced)  # the manifest (or old archive); chunks go to gc
        if end_session is not None:
            self.end_session(profile.id, epoch, **end_session)
        return updated, result

    def store_blob(self, checksum: str, path: Path) -> bool:
        """Store the file at ``path``, which the caller hashed to ``checksum``, as that blob
        (moved into place where the blob store can); whether it was not there before.

        No writer registration: it would end with the request, while what keeps a blob no
        state names yet (a pack a client uploads before its commit) is the collector's
        ``min_age``. The commit that names it registers, and confirms the registration in
        the transaction that references it."""
        if self.blobs.exists(checksum):
            return False
        with path.open("rb") as spooled:
            os.fsync(spooled.fileno())  # data first: durable before anything names it
        self.blobs.put_file(checksum, path)
        return True

    def commit_manifest(
        self,
        profile: Profile,
        checksum: str,
        *,
        epoch: int | None,
        event: AuditType,
        scratch: Path,
        **payload: Any,
    ) -> Profile:
        """Make the manifest stored under ``checksum`` the profile's state: a client that
        chunked the state itself uploaded its new packs and then the manifest. All of it is
        hostile input: the manifest is read under this service's limits (a delta with its
        base), must be of the profile's engine, and may name only blobs this store holds;
        every chunk in a blob the profile's current state does not use is read and checked
        against the manifest (content digests too, since the next commit reuses chunks by
        them); the cookie domains and browser version are read from the state's own files,
        restored alone into ``scratch``. ``ArchiveInvalid`` for a manifest refused,
        ``LeaseLost`` when ``epoch`` is not current."""
        started = time.perf_counter()
        with self._blob_writer() as writer:
            if not self.blobs.exists(checksum):
                raise ValidationFailed(
                    f"No manifest {checksum} was uploaded: upload the state's packs and its "
                    "manifest, then commit.",
                    field="checksum",
                )
            try:
                manifest = self.manifests.read(checksum, missing_ok=False)
            except StateCorrupt as exc:  # what the client uploaded: a bad file, not damage
                raise ArchiveInvalid(
                    f"The uploaded manifest is refused: {exc.message}", field="manifest"
                ) from None
            if manifest is None:
                raise ArchiveInvalid(
                    f"The blob {checksum} is not a state manifest.", field="manifest"
                )
            if manifest.engine != profile.browser_name:
                raise ArchiveInvalid(
                    f"The manifest is a {manifest.engine} state; profile {profile.name!r} is "
                    f"{profile.browser_name}.",
                    field="manifest",
                )
            try:
                current = self.manifest_of(profile)
            except (StateCorrupt, ArchiveInvalid):
                current = None
            # What the current state names is there; only the rest is looked up.
            known = current.blob_checksums() if current is not None else set()
            unknown = manifest.blob_checksums() - known
            missing = sorted(c for c in unknown if not self.blobs.exists(c))
            if missing:
                raise ValidationFailed(
                    f"The manifest names {len(missing)} blobs this store does not hold "
                    f"(first {missing[0]}): upload them, then commit again.",
                    field="manifest",
                    missing=missing[:20],
                )
            try:
                checked = check_chunks_in(manifest, self.blobs, unknown)
                inspect = scratch / "inspect"
                restore_chunked(
                    sub_manifest(manifest, inspected_paths(manifest.engine)),
                    self.blobs,
                    inspect,
                    limits=self.limits,
                )
            except StateCorrupt as exc:
                raise ArchiveInvalid(
                    f"The uploaded state does not match its manifest: {exc.message}",
                    field="manifest",
                ) from None
            state = StateUpdate(
                checksum=checksum,
                blob_size=manifest.total_bytes,
                uploaded_at=utcnow(),
                browser_version=read_browser_version(inspect, manifest.engine),
                cookie_domains=read_cookie_domains(inspect, manifest.engine, scratch=scratch),
            )
            details = {
                **payload,
                "files": sum(1 for _ in manifest.files()),
                "bytes_checked": checked,
                "seconds": round(time.perf_counter() - started, 3),
            }
            updated, replaced = self._set_state(
                profile, state, epoch, event, writer=writer, **details
            )
        if replaced != checksum:
            self._free_blobs(replaced)
        return updated

    def verify(self, *, full: bool = False) -> builtins.list[tuple[str, str]]:
        """Check every state a profile or snapshot references: ``(checksum, problem)`` for
        each one that is missing, corrupt or has missing chunks (``full``: every chunk is
        read and hashed too)."""
        problems: builtins.list[tuple[str, str]] = []
        with self.catalog.transaction(write=False) as tx:
            in_use = sorted(tx.checksums_in_use())
        for checksum in in_use:
            try:
                if not self.blobs.exists(checksum):
                    problems.append((checksum, "missing"))
                    continue
                manifest = self.manifests.read(checksum)
                if manifest is None:
                    if full:
                        digest = hashlib.sha256()
                        with self.blobs.open(checksum) as stream:
                            while block := stream.read(1024 * 1024):
                                digest.update(block)
                        if digest.hexdigest() != checksum:
                            problems.append((checksum, "archive bytes do not match"))
                    continue
                missing = missing_blobs(manifest, self.blobs)
                if missing:
                    problems.append((checksum, f"{len(missing)} packs or chunks missing"))
                elif full:
                    write_tar(manifest, self.blobs, _NullSink(), verify_content=True)
            except (StateCorrupt, ArchiveInvalid) as exc:
                problems.append((checksum, exc.message))
        return problems

    def open_state(self, profile: Profile) -> BinaryIO:
        if profile.checksum is None:
            raise NoStateData(
                f"Profile has no data to download: {profile.name!r} is {profile.status}.",
                field="profile",
            )
        return self.blobs.open(profile.checksum)

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
        with self._blob_writer() as writer:
            # Data first: the bytes are stored before the catalog points at them.
            self.blobs.put_file(state.checksum, spool)
            updated, replaced = self._set_state(
                profile, state, epoch, event, writer=writer, **payload
            )
        if replaced != state.checksum:
            self._free_blobs(replaced)
        if end_session is not None:
            self.end_session(profile.id, epoch, **end_session)
        return updated

    def collect_garbage(self, *, min_age: float, wait: float) -> builtins.list[str]:
        now = time.time()
        freed: builtins.list[str] = []
        with self._collector(wait=wait) as granted:
            if granted is None:
                raise StorageUnavailable(
                    f"Writers kept the store at {self.location} busy for {seconds_text(wait)}; "
                    "collect garbage again later.",
                    home=self.location,
                    cause="writers busy",
                )
            with self.catalog.transaction(write=False) as tx:
                # States, and the engine caches a fleet shares (catalog rule 10).
                in_use = tx.checksums_in_use() | tx.engine_cache_checksums()
            live = set(in_use)
            unreadable: builtins.list[str] = []
            for checksum in in_use:  # a manifest keeps its packs and chunks alive
                try:
                    manifest = self.manifests.read(checksum)
                except StateCorrupt:
                    unreadable.append(checksum)
                    continue
                if manifest is not None:
                    live |= manifest.blob_checksums()
            if unreadable:
                # Which packs a damaged manifest needs is unknown: deleting any could make
                # a repair (the manifest put back from a backup) impossible.
                raise StateCorrupt(
                    f"Nothing was collected: {len(unreadable)} stored states in "
                    f"{self.location} are damaged ({', '.join(sorted(unreadable)[:3])}"
                    f"{', ...' if len(unreadable) > 3 else ''}), so the packs they use "
                    "are unknown. Run 'profiles verify' to see which profiles and snapshots "
                    "they are; restore or delete those, then collect garbage again.",
                    checksums=sorted(unreadable),
                )
            for blob in self.blobs.list():
                if blob.checksum not in live and now - blob.modified >= min_age:
                    granted.check()  # still the collector: no writer came in meanwhile
                    self.blobs.delete(blob.checksum)
                    freed.append(blob.checksum)
        return freed

    # writer leases
    def acquire_lease(
        self,
        profile_id: str,
        holder: Holder,
        *,
        ttl: float | None,
        force: bool = False,
        wait: float = 0.0,
    ) -> LeaseGrant | None:
        _check_ttl(ttl)
        with self.catalog.transaction() as tx:
            return tx.acquire_lease(profile_id, holder, ttl=ttl, force=force)

    def renew_lease(self, profile_id: str, epoch: int, *, ttl: float | None) -> bool:
        _check_ttl(ttl)
        with self.catalog.transaction() as tx:
            return tx.renew_lease(profile_id, epoch, ttl=ttl)

    def release_lease(self, profile_id: str, epoch: int) -> None:
        with self.catalog.transaction() as tx:
            tx.release_lease(profile_id, epoch)

    def lease_holder(self, profile_id: str) -> Holder | None:
        with self.catalog.transaction(write=False) as tx:
            found = tx.lease_holder(profile_id)
        return found[0] if found else None

    def leases(self) -> builtins.list[tuple[str, Holder]]:
        with self.catalog.transaction(write=False) as tx:
            return [(pid, holder) for pid, holder, _ in tx.leases()]

    @staticmethod
    def _find(tx: CatalogTransaction, ref: str) -> Profile:
        if not isinstance(ref, str) or not ref:
            raise ValidationFailed("A profile id or name is required.", field="profile")
        found = tx.get_profile(ref) or tx.get_profile_by_name(ref)
        if found is None:
            close = _close_names(ref, tx.profile_names())
            hint = (
                f"Did you mean {' or '.join(repr(n) for n in close)}?"
                if close
                else "Run 'profiles list' to see this store's profiles."
            )
            raise NotFound(
                f"Profile {ref!r} not found. {hint}",
                resource="profile",
                ref=ref,
                suggestions=close,
            )
        return found

    def similar_names(self, name: str, *, limit: int = 3) -> builtins.list[str]:
        """Names of existing profiles that look like ``name`` (a typo of it), closest first;
        ``name`` itself is not among them."""
        if not isinstance(name, str) or not name:
            raise ValidationFailed("A profile id or name is required.", field="profile")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise ValidationFailed("limit must be from 1 to 100.", field="limit")
        with self.catalog.transaction(write=False) as tx:
            return _close_names(name, tx.profile_names(), limit=limit)

    @staticmethod
    def _shared_row(tx: CatalogTransaction, found: Profile) -> Profile:
        """The row again, now locked against state changes (rule 4). Gone meanwhile (a
        concurrent delete won): ``NotFound``, never the stale copy read before the lock,
        whose bytes the delete may be freeing right now."""
        current = tx.get_profile_for_share(found.id)
        if current is None:
            raise NotFound(
                f"Profile {found.name!r} was deleted meanwhile.", resource="profile", ref=found.id
            )
        return current

    @staticmethod
    def _event(
        tx: CatalogTransaction,
        type_: AuditType,
        profile_id: str | None,
        **payload: Any,
    ) -> None:
        tx.insert_event(
            AuditEvent(
                id=new_id("evt"), type=type_, profile_id=profile_id, at=utcnow(), payload=payload
            )
        )

    def _add_profile(self, tx: CatalogTransaction, profile: Profile, **provenance: Any) -> None:
        """Insert a new profile and its ``profile.created`` event (with where it came from)."""
        tx.insert_profile(profile, max_profiles=self.max_profiles)
        self._event(
            tx,
            "profile.created",
            profile.id,
            name=profile.name,
            archetype=profile.archetype,
            **provenance,
        )

    def _free_blobs(self, *checksums: str | None) -> None:
        """Delete state bytes that no profile or snapshot references any more, under the
        collector lock (catalog contract, rule 7). When writers are busy, the bytes stay
        for :meth:`collect_garbage`; freeing never fails the operation that asked for it."""
        wanted = {c for c in checksums if c}
        if not wanted:
            return
        try:
            with self._collector(wait=0) as granted:
                if granted is None:
                    log.debug("writers are active; %d blobs left for collect_garbage", len(wanted))
                    return
                with self.catalog.transaction(write=False) as tx:
                    unused = [c for c in wanted if not tx.checksum_in_use(c)]
                for checksum in unused:
                    if self._may_be_a_base(checksum):
                        continue  # deltas of kept states may name it: the collector decides
                    granted.check()
                    self.blobs.delete(checksum)
        except (ProfileError, OSError) as exc:
            log.warning("could not free state bytes (collect_garbage will): %s", exc)

    def _may_be_a_base(self, checksum: str) -> bool:
        """Whether the state blob ``checksum`` is a full manifest (or cannot be read as a
        whole archive or a delta), which a delta state elsewhere may name as its base."""
        try:
            manifest = self.manifests.read(checksum)
        except (ProfileError, OSError):
            return True
        return manifest is not None and manifest.base is None

    def _collector(self, *, wait: float) -> contextlib.AbstractContextManager[Registration | None]:
        """The exclusive collector lock for the block, renewed while it runs (``None``: not
        granted within ``wait``). Check it before each deletion (:meth:`Registration.check`)."""
        return collector(self.catalog, ttl=self.upkeep_ttl, wait=wait)

    def create(
        self,
        name: str,
        *,
        archetype: str | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Profile:
        """Create an empty profile pinned to ``archetype`` (default ``desktop-chromium``)."""
        name = check_name(name)
        arch = get_archetype(archetype if archetype is not None else DEFAULT_ARCHETYPE)
        description = check_description(description)
        clean_labels = check_labels(labels)
        now = utcnow()
        profile = Profile(
            id=new_id("prof"),
            name=name,
            description=description,
            archetype=arch.name,
            browser_name=arch.engine,
            labels=clean_labels,
            created_at=now,
            updated_at=now,
        )
        with self.catalog.transaction() as tx:
            self._add_profile(tx, profile)
        log.info("created profile %s (%s)", name, profile.id)
        return profile

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
        change is written, inside one transaction, so concurrent edits of different labels
        all survive."""
        changes = _checked_changes(name, description, labels)
        adding, removing = _checked_label_edits(add_labels, remove_labels)
        with self.catalog.transaction() as tx:
            current = self._find(tx, ref)
            _keep_archetype(current, archetype)
            changed = sorted(k for k, v in changes.items() if getattr(current, k) != v)
            if adding or removing:
                changed = sorted({*changed, "labels"})
            if not changed:
                return current
            updated = self._write_changes(tx, current, changes, changed, adding, removing)
            self._event(tx, "profile.updated", current.id, changed=changed)
        return updated

    @staticmethod
    def _write_changes(
        tx: CatalogTransaction,
        current: Profile,
        changes: Mapping[str, Any],
        changed: builtins.list[str],
        adding: dict[str, str],
        removing: set[str],
    ) -> Profile:
        """Write the fields that change, then merge the labels (as they are now, in this
        transaction) and check their count."""
        now = utcnow()
        fields = {k: v for k, v in changes.items() if k != "labels" and k in changed}
        updated = tx.update_fields(current.id, {**fields, "updated_at": now})
        if "labels" in changed:
            updated = tx.merge_labels(
                current.id,
                add=adding,
                remove=frozenset(removing),
                replace=changes.get("labels"),
                updated_at=now,
            )
            assert updated is not None
            if len(updated.labels) > MAX_LABELS:
                raise ValidationFailed(
                    f"A profile can have at most {MAX_LABELS} labels; this change would "
                    f"give {current.name!r} {len(updated.labels)}. Remove some first.",
                    field="labels",
                )
        assert updated is not None
        return updated

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
        ``archetype`` to repin (state can only come along within the same engine).
        """
        if name is not None:
            name = check_name(name)
        with self.catalog.transaction() as tx:
            source = self._shared_row(tx, self._find(tx, ref))
            arch = get_archetype(archetype if archetype is not None else source.archetype)
            if with_state and arch.engine != source.browser_name:
                raise ValidationFailed(
                    f"Cannot clone {source.browser_name} state into a {arch.engine} archetype "
                    f"({arch.name!r}); clone without with_state.",
                    field="archetype",
                )
            if name is None:
                name = derive_name(
                    source.name, "copy", lambda n: tx.get_profile_by_name(n) is not None
                )
            now = utcnow()
            state: dict[str, Any] = {}
            if with_state and source.checksum is not None:
                state = {"status": "ready"} | {
                    k: getattr(source, k)
                    for k in (
                        "checksum",
                        "blob_size",
                        "blob_uploaded_at",
                        "browser_version",
                        "cookie_domains",
                    )
                }
            profile = Profile(
                id=new_id("prof"),
                name=name,
                description=source.description,
                archetype=arch.name,
                browser_name=arch.engine,
                labels=dict(source.labels),
                created_at=now,
                updated_at=now,
                **state,
            )
            self._add_profile(tx, profile, cloned_from=source.id, with_state=bool(state))
        return profile

    def snapshot(
        self, ref: str, *, label: str | None = None, description: str | None = None
    ) -> Snapshot:
        """Capture the profile's committed state, name and archetype, frozen."""
        if label is not None and (
            not isinstance(label, str) or len(label) > MAX_LABEL_LENGTH or not label.isprintable()
        ):
            raise ValidationFailed(
                f"Snapshot label must be printable text of at most {MAX_LABEL_LENGTH} characters.",
                field="label",
            )
        description = check_description(description)
        with self.catalog.transaction() as tx:
            profile = self._shared_row(tx, self._find(tx, ref))
            snap = Snapshot(
                id=new_id("psnap"),
                parent_profile_id=profile.id,
                parent_name=profile.name,
                parent_archetype=profile.archetype,
                browser_name=profile.browser_name,
                browser_version=profile.browser_version,
                label=label,
                description=description,
                captured_at=utcnow(),
                blob_size=profile.blob_size,
                checksum=profile.checksum,
                cookie_domains=list(profile.cookie_domains),
            )
            tx.insert_snapshot(snap)
            self._event(tx, "snapshot.created", profile.id, snapshot_id=snap.id, label=label)
        return snap

    def snapshots(
        self, ref: str | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Snapshot]:
        """One profile's snapshots (or every snapshot), newest first."""
        limit = check_limit(limit)
        with self.catalog.transaction(write=False) as tx:
            profile_id = None if ref is None else self._find(tx, ref).id
            rows = tx.list_snapshots(profile_id=profile_id, limit=limit + 1, after=cursor)
            return _page(rows, limit)

    @staticmethod
    def _check_snapshot_id(snapshot_id: str) -> None:
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise ValidationFailed("A snapshot id is required.", field="snapshot")

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        self._check_snapshot_id(snapshot_id)
        with self.catalog.transaction(write=False) as tx:
            snap = tx.get_snapshot(snapshot_id)
        if snap is None:
            raise NotFound(
                f"Snapshot {snapshot_id!r} not found. Run 'profiles snapshot list' to see them.",
                resource="snapshot",
                ref=snapshot_id,
            )
        return snap

    def delete_snapshot(self, snapshot_id: str) -> None:
        snap = self.get_snapshot(snapshot_id)
        with self.catalog.transaction() as tx:
            if tx.get_snapshot(snapshot_id) is None:
                raise NotFound(f"Snapshot {snapshot_id!r} not found.", resource="snapshot")
            tx.delete_snapshot(snapshot_id)
            self._event(tx, "snapshot.deleted", snap.parent_profile_id, snapshot_id=snapshot_id)
        self._free_blobs(snap.checksum)

    def restore(self, snapshot_id: str, *, name: str | None = None) -> Profile:
        """A new profile from a snapshot: its archetype, description and state. The parent
        is never touched. Without a name: ``<parent_name>-restored``, ``-restored-2``, ..."""
        self._check_snapshot_id(snapshot_id)
        if name is not None:
            name = check_name(name)
        with self.catalog.transaction() as tx:
            snap = tx.get_snapshot(snapshot_id)
            if snap is None:
                raise NotFound(f"Snapshot {snapshot_id!r} not found.", resource="snapshot")
            if name is None:
                name = derive_name(
                    snap.parent_name, "restored", lambda n: tx.get_profile_by_name(n) is not None
                )
            now = utcnow()
            profile = Profile(
                id=new_id("prof"),
                name=name,
                description=snap.description,
                archetype=snap.parent_archetype,
                browser_name=snap.browser_name,
                browser_version=snap.browser_version,
                status="ready" if snap.checksum else "empty",
                checksum=snap.checksum,
                blob_size=snap.blob_size,
                blob_uploaded_at=snap.captured_at if snap.checksum else None,
                cookie_domains=list(snap.cookie_domains),
                created_at=now,
                updated_at=now,
            )
            self._add_profile(tx, profile, restored_from_snapshot=snap.id)
        return profile

    def audit(
        self, *, profile: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        """Audit events, newest first; ``profile`` (id or name) narrows to one profile.
        A deleted profile's events stay readable by its id."""
        limit = check_limit(limit)
        with self.catalog.transaction(write=False) as tx:
            profile_id: str | None = None
            if profile is not None:
                found = tx.get_profile(profile) or tx.get_profile_by_name(profile)
                if found is not None:
                    profile_id = found.id
                elif profile.startswith("prof_"):
                    profile_id = profile
                else:
                    self._find(tx, profile)
            rows = tx.list_events(profile_id=profile_id, limit=limit + 1, after=cursor)
            return _page(rows, limit)

    def record_event(self, type_: AuditType, profile_id: str | None, **payload: Any) -> None:
        """Append one audit event (used by sessions). An event names a profile that exists
        (``NotFound`` otherwise, as over HTTP): the audit keeps a deleted profile's events
        from while it existed, never events of a profile that never did."""
        with self.catalog.transaction() as tx:
            if profile_id is not None and tx.get_profile(profile_id) is None:
                raise NotFound(
                    f"Profile {profile_id!r} not found: no event recorded.",
                    resource="profile",
                    ref=profile_id,
                )
            self._event(tx, type_, profile_id, **payload)

    def record_use(self, ref: str, **payload: Any) -> Profile:
        """Count one session on the profile: ``usage_count`` + 1, ``last_used_at`` = now,
        and a ``session.created`` event."""
        with self.catalog.transaction() as tx:
            current = self._find(tx, ref)
            updated = tx.bump_usage(current.id, utcnow())
            if updated is None:
                raise NotFound(f"Profile {current.name!r} was deleted.", resource="profile")
            self._event(tx, "session.created", current.id, **payload)
        return updated

    def _set_state(
        self,
        profile: Profile,
        state: StateUpdate,
        epoch: int | None,
        event: AuditType,
        *,
        writer: Registration,
        **payload: Any,
    ) -> tuple[Profile, str | None]:
        """Point the profile at stored bytes (metadata last), with its audit event, while
        ``writer`` (the registration under which they were stored) still holds."""
        try:
            with self.catalog.transaction() as tx:
                writer.confirm(tx)
                updated, replaced = tx.set_state(profile.id, state, epoch=epoch)
                self._event(
                    tx,
                    event,
                    profile.id,
                    **{**payload, "checksum": state.checksum, "blob_size": state.blob_size},
                )
        except NotFound:
            self._free_blobs(state.checksum)
            raise NotFound(
                f"Profile {profile.name!r} ({profile.id}) was deleted while its state was "
                "being written; the state was discarded.",
                resource="profile",
                ref=profile.id,
            ) from None
        except BaseException:
            self._free_blobs(state.checksum)
            raise
        return updated, replaced

    @contextlib.contextmanager
    def _blob_writer(self) -> Iterator[Registration]:
        """Register this process as a writer of state bytes for the block, so no collector
        deletes bytes it uploads before its reference lands (catalog contract, rule 7). A
        heartbeat renews the registration while the block runs (a long commit stays
        registered); the transaction that references the bytes confirms it
        (:meth:`Registration.confirm`)."""
        with blob_writer(self.catalog, ttl=self.upkeep_ttl, wait=BLOB_WRITER_WAIT) as writer:
            if writer is None:
                busy = StorageUnavailable(
                    f"The store at {self.location} is collecting garbage and did not let "
                    f"writers in for {seconds_text(BLOB_WRITER_WAIT)}; try again.",
                    home=self.location,
                    cause="collector busy",
                )
                busy.transient = True
                raise busy
            yield writer

    def set_status(self, profile_id: str, status: ProfileStatus) -> Profile:
        with self.catalog.transaction() as tx:
            updated = tx.set_status(profile_id, status)
        if updated is None:
            raise NotFound(f"Profile {profile_id!r} not found.", resource="profile")
        return updated

    def settle_status(self, profile_id: str) -> None:
        """Set the status from the committed state as it is now (under the writer lock)."""
        with self.catalog.transaction() as tx:
            tx.settle_status(profile_id)
