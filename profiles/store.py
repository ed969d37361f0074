"""ProfileStore: the front door. A profile service (records, state bytes, leases) plus this
machine's workspace (working copies, locks, scratch, commits of browser directories).

The service (:mod:`profiles.service.catalog`) is what any backend answers; everything about
directories happens here. Every record operation is one catalog transaction; state bytes
are written before the catalog is changed to point at them (data first, metadata last), so
a crash at any point leaves the last committed state readable; bytes no record points at
any more are freed.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import gzip
import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, cast

import platformdirs
import zstandard

from profiles.blobs import BlobStore, LocalBlobStore
from profiles.catalog import Catalog, SQLiteCatalog
from profiles.catalog.base import StateUpdate
from profiles.connect import (
    blobs_url_from_env,
    catalog_url_from_env,
    is_service_url,
    open_blobs,
    open_catalog,
    open_service,
)
from profiles.errors import (
    ArchiveInvalid,
    Conflict,
    NoStateData,
    NotFound,
    PendingConflict,
    ProfileBusy,
    ProfileError,
    StateCorrupt,
    StorageUnavailable,
    ValidationFailed,
)
from profiles.fsutil import fsync_dir, remove_tree, tighten_tree
from profiles.models import (
    AuditType,
    Holder,
    HolderKind,
    Page,
    Profile,
    ProfileStatus,
    format_timestamp,
    utcnow,
)
from profiles.redact import redact_text
from profiles.service.catalog import CatalogService
from profiles.service.delegation import Delegated
from profiles.service.protocol import UNSET, ProfileService, Unset
from profiles.state.archive import (
    ArchiveLimits,
    Codec,
    detect_codec,
    pack_dir,
    unpack_archive,
)
from profiles.state.chunked import apply_chunked, restore_chunked, write_tar
from profiles.state.inspection import detect_engine, read_browser_version, read_cookie_domains
from profiles.state.manifest import Manifest
from profiles.state.rules import ENGINES
from profiles.validation import (
    check_browser_version,
)
from profiles.workspace.leases import DEFAULT_LEASE_TTL, WriterLease
from profiles.workspace.locks import (
    Activity,
    ProfileLock,
    ReaderMark,
    read_holder,
)
from profiles.workspace.pending import (
    META,
    PendingCommit,
    PendingCommits,
    PendingEntry,
    PendingInfo,
    PendingStatus,
    conflict_error,
    status_of,
)
from profiles.workspace.scratch import owned_dir, sweep
from profiles.workspace.working_copies import EMPTY_STATE, CachePrune, WorkingCopies

__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "DEFAULT_CODEC",
    "UNSET",
    "ProfileStore",
    "Unset",
    "default_home",
]

log = logging.getLogger(__name__)

DEFAULT_CODEC: Final[Codec] = "zstd"
DEFAULT_CACHE_MAX_BYTES: Final = 2 * 1024**3  # working copies kept on disk, all profiles
SCRATCH_PREFIXES = ("import-", "inspect-", "commit-", "readonly-")
ORPHAN_MIN_AGE = 3600.0  # seconds an unreferenced blob may be a commit in flight

Progress = Callable[[int], None]


def default_home() -> Path:
    """``$PROFILES_HOME`` if set, else the platform's user data dir for this library."""
    env = os.environ.get("PROFILES_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("playwright-profiles", appauthor=False))


def _unpack_leftovers(root: Path) -> list[str]:
    """Names of half-unpacked or half-swapped working copies (``.<id>.unpack-*``,
    ``.<id>.old-*``) in ``root``."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return [n for n in names if n.startswith(".") and (".unpack-" in n or ".old-" in n)]


def _committed_status(profile: Profile) -> ProfileStatus:
    return "ready" if profile.checksum else "empty"


def _is_within(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _export_target(dest: Path | str | IO[bytes]) -> str:
    """What the audit log says an export went to: ``file`` or ``stream``, never a path of
    this machine (the log may be read by whoever reads the profile)."""
    return "file" if isinstance(dest, str | Path) else "stream"


class _CountingReader:
    """Wraps a binary source and reports how many bytes have been read."""

    def __init__(self, raw: IO[bytes], progress: Progress) -> None:
        self._raw = raw
        self._progress = progress
        self._count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._count += len(data)
        self._progress(self._count)
        return data

    def readable(self) -> bool:
        return True


def _check_options(
    max_profiles: int | None, cache_max_bytes: int | None, codec: str, lease_ttl: float
) -> None:
    """``ValidationFailed`` for a store option out of range, naming it."""
    if max_profiles is not None and (not isinstance(max_profiles, int) or max_profiles < 0):
        raise ValidationFailed(
            "max_profiles must be a whole number of at least 0.", field="max_profiles"
        )
    if cache_max_bytes is not None and (
        not isinstance(cache_max_bytes, int) or cache_max_bytes < 0
    ):
        raise ValidationFailed(
            "cache_max_bytes must be a number of bytes of at least 0, or None for no cap.",
            field="cache_max_bytes",
        )
    if codec not in ("gzip", "zstd"):
        raise ValidationFailed(f"Unknown codec {codec!r}; use gzip or zstd.", field="codec")
    if not isinstance(lease_ttl, int | float) or lease_ttl <= 0:
        raise ValidationFailed("lease_ttl must be a number of seconds above 0.", field="lease_ttl")


def _service_from(
    home: Path | str | None,
    service: ProfileService | str | None,
    catalog: Catalog | str | None,
    blobs: BlobStore | str | None,
    max_profiles: int | None,
    api_key: str | None,
    account: str | None,
) -> tuple[Path | str | None, ProfileService | None]:
    """The home and the profile service over HTTP, if one is named: the URL as ``home`` or
    ``service``, else ``$PROFILES_URL`` when no catalog or blob store is named (the home
    is then only this machine's workspace). ``None``: a catalog and blob store."""
    if is_service_url(home):
        if service is not None:
            raise ValidationFailed("Pass the service URL once.", field="service")
        home, service = None, home
    if (
        service is None
        and catalog is None
        and blobs is None
        and not catalog_url_from_env()
        and not blobs_url_from_env()
    ):
        service = os.environ.get("PROFILES_URL") or None
    if isinstance(service, str):
        if catalog is not None or blobs is not None or max_profiles is not None:
            raise ValidationFailed(
                "A store on a profile service over HTTP takes no catalog, blobs or "
                "max_profiles: the server keeps and caps its records.",
                field="service",
            )
        service = open_service(
            service,
            api_key=api_key if api_key is not None else os.environ.get("PROFILES_API_KEY"),
            account=account if account is not None else os.environ.get("PROFILES_ACCOUNT"),
        )
    return home, service


class ProfileStore:
    """Named, persistent browser profiles with snapshots and an audit log.

    ``home`` defaults to ``$PROFILES_HOME``, else the platform's user data dir. The embedded
    default keeps the catalog in ``<home>/catalog.sqlite3`` and state archives under
    ``<home>/blobs``. ``catalog`` and ``blobs`` choose other backends, as objects or URLs
    (``postgresql://...``, ``s3://bucket/prefix``; defaults ``$PROFILES_CATALOG_URL`` and
    ``$PROFILES_BLOBS_URL``): the home then keeps only this machine's workspace (working
    copies, locks, scratch). ``max_profiles`` caps the number of profiles (``TierLimit``).
    ``lease_ttl`` is how long a writer lease on a shared catalog lives without a heartbeat,
    and how long a process writing or collecting state bytes holds the other side off
    after it died (on the embedded catalog: not at all).
    ``service`` (or a ``http(s)://`` URL as ``home``; default ``$PROFILES_URL``) names a
    profile service over HTTP, with ``api_key`` and ``account`` (``$PROFILES_API_KEY``,
    ``$PROFILES_ACCOUNT``): the home then keeps only this machine's workspace.
    """

    def __init__(
        self,
        home: Path | str | None = None,
        *,
        max_profiles: int | None = None,
        codec: Codec = DEFAULT_CODEC,
        limits: ArchiveLimits | None = None,
        catalog: Catalog | str | None = None,
        blobs: BlobStore | str | None = None,
        create: bool = True,
        cache_max_bytes: int | None = DEFAULT_CACHE_MAX_BYTES,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        chunked: bool = True,
        service: ProfileService | str | None = None,
        api_key: str | None = None,
        account: str | None = None,
    ) -> None:
        _check_options(max_profiles, cache_max_bytes, codec, lease_ttl)
        home, service = _service_from(home, service, catalog, blobs, max_profiles, api_key, account)
        # Where the home was named, for the warning when an explicitly named one is new:
        # a typo there must not silently give an empty store (and a logged-out session).
        named_by = (
            "the home argument"
            if home is not None
            else "$PROFILES_HOME"
            if os.environ.get("PROFILES_HOME")
            else None
        )
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.cache_max_bytes = cache_max_bytes
        self.codec: Codec = codec
        self.limits = limits or ArchiveLimits()
        self.read_only = False
        self._location: str | None = None
        if catalog is None:
            catalog = catalog_url_from_env()
        if blobs is None:
            blobs = blobs_url_from_env()
        remote = service is not None or (
            isinstance(catalog, str) and catalog.startswith(("postgres://", "postgresql://"))
        )
        try:
            with self._storage_faults("opening the store"):
                # With a shared catalog the home is only this machine's workspace: make it.
                self._open_home(create=create or remote, named_by=None if remote else named_by)
        except BaseException:
            if service is not None:
                service.close()
            raise
        self.lease_ttl = float(lease_ttl)
        #: Commit states as deduplicated chunks (profiles.state.chunked); False keeps whole
        #: archives (the format before chunking, still read either way).
        self.chunked = bool(chunked)
        #: What the backend answers: records, state bytes, leases (see profiles.service.catalog).
        self.service: ProfileService = service or self._catalog_service(
            catalog, blobs, max_profiles, create=create
        )
        # A catalog other processes on other machines share decides who writes (leases
        # with expiry); the embedded one leaves it to this machine's file lock.
        self.shared = self.service.shared
        self._open_workspace()

    def _catalog_service(
        self,
        catalog: Catalog | str | None,
        blobs: BlobStore | str | None,
        max_profiles: int | None,
        *,
        create: bool,
    ) -> CatalogService:
        """The service over the catalog and blob store named (default: SQLite and files
        under the home)."""
        catalog_path = self.home / "catalog.sqlite3"
        if catalog is None and not create and not catalog_path.is_file():
            raise NotFound(
                f"No profile store at {self.home}: it has no catalog. Check --home or "
                "$PROFILES_HOME, or create a profile there first (profiles create NAME).",
                resource="store",
                home=str(self.home),
            )
        if isinstance(catalog, str):
            catalog = open_catalog(catalog, read_only=self.read_only)
        opened_catalog = catalog or SQLiteCatalog(catalog_path, read_only=self.read_only)
        try:
            if isinstance(blobs, str):
                blobs = open_blobs(blobs, create=not self.read_only)
        except BaseException:
            opened_catalog.close()
            raise
        opened_blobs = blobs or LocalBlobStore(self.home / "blobs", create=not self.read_only)
        if blobs is None and isinstance(opened_catalog, SQLiteCatalog):
            self._location = str(self.home)  # all of it under the home
        return CatalogService(
            opened_catalog,
            opened_blobs,
            max_profiles=max_profiles,
            limits=self.limits,
            upkeep_ttl=self.lease_ttl,  # a writer that dies frees gc within its lease's
        )

    def _open_workspace(self) -> None:
        """This machine's part: working copies, pending commits, locks, scratch."""
        writable = not self.read_only
        self.working_copies = WorkingCopies(self.home / "work", create=writable)
        #: Sessions' work this machine keeps while the service cannot take it (see
        #: profiles.workspace.pending): landed by the next session on the profile or by
        #: sync_pending.
        self.pending = PendingCommits(self.home / "pending")
        self._locks_dir = self.home / "locks"
        self._readers_dir = self.home / "readers"
        if writable:
            self._tmp = self.home / "tmp"
            with self._storage_faults("opening the store"):
                self._tmp.mkdir(mode=0o700, exist_ok=True)
                self.sweep_scratch()
        else:
            # Nothing can be written under a read-only home; read-only sessions and exports
            # still need scratch space: a private directory of the system's.
            self._tmp = Path(tempfile.mkdtemp(prefix="playwright-profiles-ro-"))
            log.info("the store at %s is read-only here: reads only", self.home)

    def _open_home(self, *, create: bool, named_by: str | None = None) -> None:
        """Open (or make) the home. ``named_by`` says where an explicitly named home came
        from: making one that did not exist is then said at WARNING (the platform's
        default home is made quietly on first use)."""
        if not self.home.exists():
            if not create:
                raise NotFound(
                    f"No profile store at {self.home}: the directory does not exist. Check "
                    "--home or $PROFILES_HOME, or create a profile there first "
                    "(profiles create NAME).",
                    resource="store",
                    home=str(self.home),
                )
            self.home.mkdir(mode=0o700, parents=True)
            if named_by is not None:
                log.warning(
                    "the store's home %s (from %s) did not exist: created a new, empty "
                    "profile store there. If you meant an existing store, check the path; "
                    "ProfileStore(home, create=False) refuses a missing home instead",
                    self.home,
                    named_by,
                )
            return
        if not self.home.is_dir():
            raise ValidationFailed(
                f"The store's home {self.home} is not a directory.", field="home"
            )
        mode = self.home.stat().st_mode
        if mode & 0o077:
            log.warning(
                "the store's home %s is readable by other users (mode %o): it holds cookies "
                "and logins; run 'chmod 700 %s'",
                self.home,
                mode & 0o777,
                self.home,
            )
        if not os.access(self.home, os.W_OK | os.X_OK):
            self.read_only = True

    @contextlib.contextmanager
    def _storage_faults(self, doing: str) -> Iterator[None]:
        """Turn an ``OSError`` of the store's own files into :class:`StorageUnavailable`."""
        try:
            yield
        except OSError as exc:
            cause = exc.strerror or type(exc).__name__
            if exc.errno is not None:
                cause = f"{errno.errorcode.get(exc.errno, exc.errno)}: {cause}"
            hint = (
                "Free some space"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "Check that the home exists and is writable by this user"
            )
            raise StorageUnavailable(
                f"The store at {self.home} failed while {doing}: {cause}. The last committed "
                f"state is kept. {hint}, then try again.",
                home=str(self.home),
                cause=cause,
            ) from exc

    def sweep_scratch(self) -> list[str]:
        """Remove scratch left by processes that died: half-done imports, read-only session
        copies, partial blobs, half-unpacked working copies. Owners still alive keep theirs."""
        if self.read_only:
            return []
        removed = sweep(self._tmp, SCRATCH_PREFIXES)
        # a directory a process was making when it died (see OwnedDir): old ones only
        removed += sweep(self._tmp, (".unborn-",), min_age=60.0)
        removed += self.service.sweep_scratch()
        for name in _unpack_leftovers(self.working_copies.root):
            profile_id = name[1:].split(".", 1)[0]
            release = self._try_lock(profile_id)
            if release is None:
                continue
            try:
                remove_tree(self.working_copies.root / name)
                removed.append(name)
            finally:
                release()
        return removed

    def __repr__(self) -> str:
        return f"ProfileStore(home={str(self.home)!r})"

    @property
    def location(self) -> str:
        """Where the store's records and bytes live, for messages (no secrets)."""
        return self._location or self.service.location

    @property
    def catalog(self) -> Catalog:
        """The catalog under the service (for maintenance and tests)."""
        return self._storage()[0]

    @property
    def blobs(self) -> BlobStore:
        """The blob store under the service (for maintenance and tests)."""
        return self._storage()[1]

    def _storage(self) -> tuple[Catalog, BlobStore]:
        storage = self.service.storage()
        if storage is None:
            raise AttributeError(f"{self.service.location} keeps no catalog or blobs here")
        return storage

    @property
    def max_profiles(self) -> int | None:
        return self.service.max_profiles

    def close(self) -> None:
        self.service.close()
        if self.read_only:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def lock(
        self, ref: str | Profile, *, timeout: float = 600.0, kind: HolderKind = "session"
    ) -> WriterLease:
        """The writer lease of a profile (not yet acquired): this machine's lock on its
        working copy plus the catalog lease whose ``epoch`` fences the commit. ``kind``
        says what the holder does (shown by :meth:`holder` and :meth:`activity`)."""
        profile = ref if isinstance(ref, Profile) else self.get(ref)
        return WriterLease(
            self.service,
            self._locks_dir,
            profile.id,
            name=profile.name,
            timeout=timeout,
            kind=kind,
            shared=self.shared,
            ttl=self.lease_ttl,
        )

    def _try_lock(self, profile_id: str) -> Callable[[], None] | None:
        """Take a profile's writer lock without waiting: its release, or ``None`` if held."""
        lock = ProfileLock(self._locks_dir, profile_id, kind="maintenance")
        try:
            lock.acquire(timeout=0)
        except (Conflict, OSError):
            return None
        return lock.release

    def holder(self, ref: str | Profile) -> Holder | None:
        """Who holds the profile's writer lease right now (a session or an import), if any:
        on a shared catalog from any machine, else from this machine's lock."""
        profile = ref if isinstance(ref, Profile) else self.get(ref)
        if self.shared:
            return self.service.lease_holder(profile.id)
        return read_holder(self._locks_dir / f"{profile.id}.lock")

    def activity(self) -> builtins.list[Activity]:
        """What runs on this store's profiles right now, on this machine: writer sessions
        and imports (from the writer locks) and read-only sessions, oldest first."""
        found: builtins.list[tuple[str, Holder]] = []
        if self.shared:
            found += self.service.leases()
        else:
            for path in sorted(self._locks_dir.glob("*.lock")):
                holder = read_holder(path)
                if holder is not None:
                    found.append((path.name.removesuffix(".lock"), holder))
        found += [(pid, h) for pid, h in ReaderMark.list(self._readers_dir)]
        names: dict[str, str] = {}
        for profile_id, _ in found:
            if profile_id not in names:
                try:
                    names[profile_id] = self.service.get(profile_id).name
                except NotFound:
                    names[profile_id] = "(deleted)"
        rows = [
            Activity(profile_id=pid, profile_name=names[pid], **h.model_dump()) for pid, h in found
        ]
        return sorted(rows, key=lambda a: a.since)

    def reader_mark(self, profile_id: str) -> ReaderMark | None:
        """Register a read-only session on ``profile_id`` for :meth:`activity` until the
        mark is released (``None`` on a read-only home, where nothing can be registered)."""
        if self.read_only:
            return None
        try:
            return ReaderMark(self._readers_dir, profile_id)
        except OSError as exc:
            log.debug("cannot register a read-only session: %s", exc)
            return None

    def prune_cache(self, max_bytes: int | None = None, *, keep: str | None = None) -> CachePrune:
        """Evict least recently used working copies until they take at most ``max_bytes``
        (default: the store's ``cache_max_bytes``). Copies in use stay; an evicted copy is
        unpacked again from the committed state when it is next needed."""
        cap = self.cache_max_bytes if max_bytes is None else max_bytes
        if cap is None:
            cap = 2**63
        if not isinstance(cap, int) or cap < 0:
            raise ValidationFailed(
                "max_bytes must be a number of bytes of at least 0.", field="max_bytes"
            )
        if self.read_only:
            raise StorageUnavailable(
                f"The store at {self.home} is read-only here; its cache cannot be pruned.",
                home=str(self.home),
                cause="read-only",
            )
        with self._storage_faults("pruning working copies"):
            result = self.working_copies.prune(
                cap, try_lock=self._try_lock, keep=frozenset({keep} if keep else set())
            )
        if result.removed:
            log.info(
                "evicted %d working copies (%s bytes) to keep the cache under %s bytes",
                len(result.removed),
                result.freed_bytes,
                cap,
            )
        return result

    # ------------------------------------------------------------------ pending commits

    def keep_pending(
        self,
        profile: Profile,
        directory: Path,
        *,
        base: str,
        epoch: int | None,
        browser_version: str | None,
        reason: str,
    ) -> Path:
        """Keep a session's working copy ``directory`` as the profile's pending commit (its
        commit could not reach the service); returns where it now is. ``base`` is the
        :func:`~profiles.workspace.pending.state_identity` the session started from."""
        meta = PendingCommit(
            profile_id=profile.id,
            profile_name=profile.name,
            engine=profile.browser_name,
            browser_version=browser_version,
            base=base,
            base_epoch=epoch,
            kept_at=utcnow(),
            reason=redact_text(reason, limit=2000),
            location=self.location,
        )
        with self._storage_faults("keeping a pending commit"):
            kept = self.pending.keep(directory, meta)
            self.working_copies.remove(profile.id)  # its markers: the copy moved away
        log.warning(
            "the state of %s is kept on this machine as a pending commit: %s", profile.name, kept
        )
        return kept

    def land_pending(self, profile_id: str, *, lock: WriterLease) -> Profile | None:
        """Before a writer session: commit the profile's pending commit on this machine,
        if any (``None`` when there is none). A conflict raises ``PendingConflict`` (the
        session must not run on the older committed state while a newer local one waits);
        an unreachable service raises and keeps it pending."""
        entry = self.pending.get(profile_id)
        if entry is None:
            return None
        landed = self._land_pending(entry, lease=lock)  # reads the record and checks it
        lock.granted = landed  # the checkout that follows starts from the landed state
        return landed

    def pending_commits(self) -> builtins.list[PendingInfo]:
        """The pending commits on this machine, oldest first, each with its status:
        ``waiting`` (lands as it is), ``conflict``, ``deleted`` (the profile is gone) or
        ``unknown`` (the service cannot be reached to tell)."""
        rows: builtins.list[PendingInfo] = []
        for entry in self.pending.entries():
            profile: Profile | None = None
            status: PendingStatus
            try:
                profile = self.get(entry.profile_id)
                status = status_of(entry, profile)
            except NotFound:
                status = "deleted"
            except ProfileError as exc:
                if not exc.transient:
                    raise
                status = "unknown"
            rows.append(PendingInfo.of(entry, status, profile))
        return rows

    def sync_pending(
        self,
        ref: str | None = None,
        *,
        force: bool = False,
        discard: bool = False,
        lock_timeout: float = 600.0,
    ) -> builtins.list[tuple[PendingInfo, str]]:
        """Land the pending commits on this machine (``ref``: only that profile's), each
        under its profile's writer lease. Returns ``(entry, outcome)`` pairs, outcome one of
        ``landed``, ``discarded``, ``conflict``, ``deleted``, ``unreachable``, ``busy``.
        ``force`` commits a conflicting one over the newer state; ``discard`` deletes it;
        both need ``ref``."""
        if force and discard:
            raise ValidationFailed("Pass --force or --discard, not both.", field="force")
        if (force or discard) and ref is None:
            raise ValidationFailed(
                "Name the profile whose pending commit to force or discard "
                "(profiles sync REF --force / --discard).",
                field="ref",
            )
        entries = self.pending.entries()
        if ref is not None:
            chosen = [
                e for e in entries if ref in (e.profile_id, e.meta.profile_name if e.meta else None)
            ]
            if not chosen:
                try:
                    profile = self.get(ref)
                except NotFound:
                    profile = None
                chosen = [e for e in entries if profile is not None and e.profile_id == profile.id]
            if not chosen:
                raise NotFound(
                    f"No pending commit for {ref!r} on this machine ('profiles ps' lists them).",
                    resource="pending commit",
                    ref=ref,
                )
            entries = chosen[:1]
        results: builtins.list[tuple[PendingInfo, str]] = []
        for entry in entries:
            results.append(self._sync_one(entry, force, discard, lock_timeout))
        return results

    def _sync_one(
        self, entry: PendingEntry, force: bool, discard: bool, lock_timeout: float
    ) -> tuple[PendingInfo, str]:
        info = PendingInfo.of(entry, "waiting", None)
        if discard:  # this machine's lock only: no service needed to delete local work
            lock = ProfileLock(
                self._locks_dir, entry.profile_id, kind="maintenance", timeout=lock_timeout
            )
            lock.acquire()
            try:
                if self.pending.get(entry.profile_id) is not None:
                    with self._storage_faults("discarding a pending commit"):
                        self.pending.remove(entry.profile_id)
            finally:
                lock.release()
            log.info("discarded the pending commit of %s", info.profile_name)
            return info, "discarded"
        try:
            profile = self.get(entry.profile_id)
        except NotFound:
            if force:
                raise
            return info.model_copy(update={"status": "deleted"}), "deleted"
        except ProfileError as exc:
            if not exc.transient:
                raise
            return info.model_copy(update={"status": "unknown"}), "unreachable"
        info = PendingInfo.of(entry, status_of(entry, profile), profile)
        try:
            # "import": it brings state from this machine (what a lease holder may be)
            with self.lock(profile, timeout=lock_timeout, kind="import") as lease:
                current = self.pending.get(entry.profile_id)
                if current is None:  # a session landed it meanwhile
                    return info, "landed"
                self._land_pending(current, lease=lease, force=force)
        except PendingConflict:
            return info.model_copy(update={"status": "conflict"}), "conflict"
        except ProfileBusy:
            return info, "busy"
        except ProfileError as exc:
            if not exc.transient:
                raise
            return info, "unreachable"
        return info, "landed"

    @property
    def tmp_dir(self) -> Path:
        """Scratch space on the store's file system (so renames into place are atomic)."""
        return self._tmp

    # ------------------------------------------------------------------ profiles

    def get(self, ref: str) -> Profile:
        """A profile by id or name; ``NotFound`` if there is none."""
        return self._visible(self.service.get(ref))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[Profile]:
        """Profiles, newest first (``created_at`` desc, then ``id`` desc)."""
        page = self.service.list(limit=limit, cursor=cursor)
        return page.model_copy(update={"data": [self._visible(p) for p in page.data]})

    def _visible(self, profile: Profile) -> Profile:
        """The record as readers should see it: ``uploading`` only while an import really
        runs; a status left behind by an import that died reads as the committed state."""
        if profile.status != "uploading":
            return profile
        holder = read_holder(self._locks_dir / f"{profile.id}.lock")
        if holder is not None and holder.kind == "import":
            return profile
        return profile.model_copy(update={"status": _committed_status(profile)})

    # Record operations are the service's, declared once in its protocol (with their
    # docstrings); the front door passes them through, typed from the protocol.
    create = Delegated(ProfileService.create)
    update = Delegated(ProfileService.update)
    clone = Delegated(ProfileService.clone)
    similar_names = Delegated(ProfileService.similar_names)
    snapshot = Delegated(ProfileService.snapshot)
    snapshots = Delegated(ProfileService.snapshots)
    get_snapshot = Delegated(ProfileService.get_snapshot)
    delete_snapshot = Delegated(ProfileService.delete_snapshot)
    restore = Delegated(ProfileService.restore)
    audit = Delegated(ProfileService.audit)
    record_event = Delegated(ProfileService.record_event)
    end_session = Delegated(ProfileService.end_session)
    record_use = Delegated(ProfileService.record_use)

    def iter_profiles(self, *, page_size: int = 100) -> Iterator[Profile]:
        """Every profile, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list(limit=page_size, cursor=cursor)
            yield from page.data
            if not page.has_more:
                return
            cursor = page.next_cursor

    def delete(self, ref: str) -> None:
        """Delete a profile and its state. Snapshots stay (restorable) with
        ``parent_profile_id`` set to null. A second delete raises ``NotFound``."""
        with self._storage_faults("deleting a profile"):
            profile = self.service.delete(ref)
            lock = ProfileLock(self._locks_dir, profile.id, name=profile.name, kind="maintenance")
            try:
                lock.acquire(timeout=0)
            except Conflict:
                log.info("profile %s is in a session; it removes its working copy", profile.id)
            else:
                try:
                    self.working_copies.remove(profile.id)
                    lock.remove_file()
                finally:
                    lock.release()
        log.info("deleted profile %s (%s)", profile.name, profile.id)

    # ------------------------------------------------------------------ snapshots

    # ------------------------------------------------------------------ audit

    # ------------------------------------------------------------------ state

    def commit_state(
        self,
        ref: str | Profile,
        directory: Path,
        /,
        *,
        browser_version: str | None = None,
        event: AuditType = "state.uploaded",
        epoch: int | None = None,
        end_session: Mapping[str, Any] | None = None,
        **payload: Any,
    ) -> Profile:
        """Pack ``directory`` (a user-data-dir of the profile's engine, with its browser
        closed) and make it the profile's committed state.

        A directory inside the store's home is first made private to the owner (what the
        browser wrote under the process umask included). The archive is written first and
        the catalog changed last, in one transaction; a profile deleted meanwhile raises
        ``NotFound`` and leaves no orphan bytes behind. A storage fault raises
        ``StorageUnavailable`` and leaves the previous state committed. With ``epoch`` (the
        fencing token of the caller's writer lease) the state lands only while that lease
        is still the current one, else ``LeaseLost`` and the newer state stands.

        ``ref`` may be the record the caller holds: a service that checks the profile on
        its side as it stores the state (over HTTP) is then not asked to read it first.
        With ``end_session`` (the payload of ``session.ended``) a successful commit also
        releases the lease ``epoch`` and records the session's end (with the commit, in
        one request over HTTP).
        """
        if browser_version is not None:
            browser_version = check_browser_version(browser_version)
        if isinstance(ref, Profile) and self.service.checks_commits_itself:
            profile = ref
        else:  # read first: a profile deleted meanwhile must leave no bytes behind
            profile = self.get(ref.id if isinstance(ref, Profile) else ref)
        engine = profile.browser_name
        started = time.perf_counter()
        directory = Path(directory)
        with self._storage_faults("committing a state"):
            size = tighten_tree(directory) if _is_within(directory, self.home) else None
            if self.chunked and self.service.supports_chunks:
                return self._commit_chunked(
                    profile,
                    directory,
                    browser_version,
                    size,
                    epoch,
                    event,
                    end_session=end_session,
                    **payload,
                )
            with owned_dir(self._tmp, "commit-") as scratch:
                spool = scratch / "state"
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                with open(os.open(spool, flags, 0o600), "wb") as out:
                    sink = _HashingWriter(out)
                    stats = pack_dir(directory, sink, engine=engine, codec=self.codec)
                    out.flush()
                    os.fsync(out.fileno())
                checksum = sink.hexdigest()
                version = browser_version or read_browser_version(directory, engine)
                domains = read_cookie_domains(directory, engine, scratch=scratch)
                state = StateUpdate(
                    checksum=checksum,
                    blob_size=sink.size,
                    uploaded_at=utcnow(),
                    browser_version=version,
                    cookie_domains=domains,
                )
                updated = self.service.commit_archive(
                    profile,
                    spool,
                    state,
                    epoch=epoch,
                    event=event,
                    end_session=end_session,
                    **{
                        "files": stats.files,
                        "seconds": round(time.perf_counter() - started, 3),
                        **payload,
                    },
                )
        if directory == self.working_copies.path(profile.id) and updated.checksum:
            # The service names the state (a server may store it chunked, under another
            # checksum than the archive sent): the copy matches what it now says.
            with self._storage_faults("recording the working copy"):
                self.working_copies.mark_clean(profile.id, updated.checksum, size=size)
            self._keep_cache_under_cap(keep=profile.id)
        return updated

    def _commit_chunked(
        self,
        profile: Profile,
        directory: Path,
        browser_version: str | None,
        size: int | None,
        epoch: int | None,
        event: AuditType,
        fresh: bool = False,
        end_session: Mapping[str, Any] | None = None,
        **payload: Any,
    ) -> Profile:
        """Commit as chunks: the previous manifest and this directory's stat cache let
        unchanged files go unread, and only changed chunks are stored (``fresh``: read
        every file and store every chunk in new packs, as :meth:`migrate` does)."""
        engine = profile.browser_name
        is_work = directory == self.working_copies.path(profile.id)
        previous: Manifest | None = None
        if not fresh:
            try:
                previous = self.service.manifest_of(profile)
            except (StateCorrupt, ArchiveInvalid) as exc:  # then chunk everything afresh
                log.warning("the previous state of %s cannot be read (%s)", profile.name, exc)
        stat_cache = self.working_copies.stat_cache(profile.id) if is_work and not fresh else None
        with owned_dir(self._tmp, "commit-") as scratch:
            if self.service.checks_commits_itself:  # it reads them from the state itself
                version, domains = browser_version, []
            else:
                version = browser_version or read_browser_version(directory, engine)
                domains = read_cookie_domains(directory, engine, scratch=scratch)
            updated, result = self.service.commit_directory(
                profile,
                directory,
                previous=previous,
                previous_stat=stat_cache,
                browser_version=version,
                cookie_domains=domains,
                epoch=epoch,
                event=event,
                end_session=end_session,
                **payload,
            )
        if is_work:
            with self._storage_faults("recording the working copy"):
                self.working_copies.save_stat_cache(profile.id, result.stat_cache)
                self.working_copies.mark_clean(profile.id, result.checksum, size=size)
            self._keep_cache_under_cap(keep=profile.id)
        return updated

    def migrate(self, ref: str, /, *, lock_timeout: float = 600.0) -> Profile | None:
        """Convert the profile's committed state to the current format, if it is older.

        States committed before chunking (a whole archive each) and by the first chunked
        format (a blob per chunk) are read as they are, and convert a bounded part at a time
        at the profile's next commits. This converts now: under the profile's writer lease
        (waiting up to ``lock_timeout`` seconds), the state is made the working copy and
        committed again, every chunk into new packs. The files do not change; the state gets
        a new checksum, and the old bytes go as a commit's do (what a snapshot names stays).
        Returns the updated profile, or ``None`` when there was nothing to convert: no state
        yet, or the current format already. Snapshots keep the format they were taken in.
        """
        if not self.chunked:
            raise ValidationFailed(
                "Cannot migrate states: this store keeps whole archives (chunked=False). "
                "Open it with chunked=True to convert them.",
                field="chunked",
            )
        if not self.service.supports_chunks:
            raise ValidationFailed(
                f"Cannot migrate states: {self.service.location} does not keep chunked states."
            )
        profile = self.get(ref)
        if self._outdated_format(profile) is None:
            return None
        with self.lock(profile.id, timeout=lock_timeout, kind="maintenance") as lease:
            profile = self.get(profile.id)  # what the lease holds: a commit may have converted it
            old = self._outdated_format(profile)
            if old is None:
                return None
            profile, work = self.checkout(profile.id, lock=lease)
            with self._storage_faults("migrating a state"):
                size = tighten_tree(work)
                updated = self._commit_chunked(
                    profile,
                    work,
                    profile.browser_version,
                    size,
                    lease.epoch,
                    "state.uploaded",
                    fresh=True,
                    migrated_from=old,
                )
        log.info("migrated the state of %s from %s to packed chunks", profile.name, old)
        return updated

    def _outdated_format(self, profile: Profile) -> str | None:
        """``"archive"`` or ``"chunks"`` (format 1) for a state :meth:`migrate` converts."""
        if profile.checksum is None:
            return None
        with self._storage_faults("reading a state's format"):
            manifest = self.service.manifest_of(profile)
        if manifest is None:
            return "archive"
        return "chunks" if manifest.version == 1 else None

    def _keep_cache_under_cap(self, *, keep: str) -> None:
        if self.cache_max_bytes is None:
            return
        try:
            self.prune_cache(keep=keep)
        except ProfileError as exc:  # the cache is a cache: never fail a commit over it
            log.warning("could not prune working copies: %s", exc)

    def checkout(self, ref: str, *, lock: WriterLease | ProfileLock) -> tuple[Profile, Path]:
        """The profile's working copy, identical to its committed state, ready to launch.

        Reuses the kept copy when it is known to match the committed checksum, else unpacks
        the committed archive. The caller must hold the profile's writer ``lock``; the copy
        is marked dirty until the next :meth:`commit_state` of it.
        """
        if not lock.is_locked:
            raise ValidationFailed("checkout needs the profile's writer lock held.")
        granted = getattr(lock, "granted", None)  # the record sent with the lease, if any
        if isinstance(granted, Profile) and ref in (granted.id, granted.name):
            profile = self._visible(granted)
        else:
            profile = self.get(ref)
        with self._storage_faults("preparing the working copy"):
            if profile.status == "uploading":
                # We hold the writer lock, so no import is running: one died half-way.
                profile = self._repair_status(profile)
            path = self.working_copies.path(profile.id)
            wanted = profile.checksum or EMPTY_STATE
            clean = self.working_copies.clean_state(profile.id)
            if clean != wanted:
                self.working_copies.mark_dirty(profile.id)
                if profile.checksum is None:
                    remove_tree(path)
                    path.mkdir(mode=0o700, parents=True)
                else:
                    self._materialise(profile, path, clean)
            else:
                self.working_copies.mark_dirty(profile.id)  # a browser is about to change it
        return profile, path

    def _materialise(self, profile: Profile, path: Path, clean: str | None) -> None:
        """Make ``path`` the profile's committed state: apply only what changed when the
        copy is known to be at an older chunked state, else restore or unpack it whole."""
        manifest = self.service.manifest_of(profile)
        if manifest is None:  # a whole archive (the format before chunking)
            with self._stored_archive(profile) as src:
                unpack_archive(src, path, limits=self.limits, replace=True)
            return
        blobs = self.service.chunk_source()
        old: Manifest | None = None
        if clean not in (None, EMPTY_STATE) and path.is_dir():
            with contextlib.suppress(ProfileError):
                old = self.service.manifest(str(clean))
        with self.service.reading_state_of(profile):
            if old is not None and old.engine == manifest.engine:
                applied = apply_chunked(
                    old,
                    manifest,
                    blobs,
                    path,
                    stat_cache=self.working_copies.stat_cache(profile.id),
                    limits=self.limits,
                )
                self.working_copies.save_stat_cache(profile.id, applied.stat_cache)
                return
            restored = restore_chunked(manifest, blobs, path, replace=True, limits=self.limits)
        self.working_copies.save_stat_cache(profile.id, restored.stat_cache)

    @contextlib.contextmanager
    def _stored_archive(self, profile: Profile) -> Iterator[BinaryIO]:
        """The profile's committed state as the service sends it (a whole archive, the
        format before chunking, or over HTTP), hashed as it is read: a stored archive must
        hash to the profile's checksum once read to its end. Those bytes come from the
        store, so anything wrong with them (they do not unpack or decompress, or do not
        hash to the checksum) is ``StateCorrupt`` naming the profile, not ``ArchiveInvalid``
        as for an upload."""
        # Over HTTP the client checks the body against X-Checksum when it is the stored
        # archive (a chunked state is rendered into a tar on the fly: no stored hash).
        service = self.service
        expected, where = (
            (profile.checksum, service.blobs.location)
            if isinstance(service, CatalogService)
            else (None, service.location)
        )
        with self.service.reading_state_of(profile), self.service.open_state(profile) as raw:
            checked = _CheckedArchive(raw, expected, where)
            yield cast(BinaryIO, checked)
            checked.finish()

    def private_copy(self, ref: str | Profile, target: Path) -> Profile:
        """A private copy of the committed state in ``target`` (which must not exist), for a
        read-only session.

        When no writer holds the profile and the kept working copy is known to match the
        committed state, it is copied with its caches (under the writer lock, for the
        moment the copy takes), so the browser starts warm; otherwise the committed archive
        is unpacked, which needs no lock because archives are immutable.

        ``ref`` may be a record the caller just read: the copy is then of the state that
        record names (read again otherwise), which spares a read or two.
        """
        given = isinstance(ref, Profile)
        profile = ref if isinstance(ref, Profile) else self.get(ref)
        with self._storage_faults("copying a profile for a read-only session"):
            release = None if self.read_only else self._try_lock(profile.id)
            if release is None:
                log.debug("profile %s has a writer; unpacking its archive", profile.name)
            else:
                try:
                    current = profile if given else self.get(profile.id)
                    work = self.working_copies.path(profile.id)
                    clean = self.working_copies.clean_state(profile.id)
                    if clean == (current.checksum or EMPTY_STATE):
                        staging = target.with_name(f".{target.name}.copy")
                        shutil.copytree(work, staging, symlinks=True)
                        staging.rename(target)
                        self.working_copies.touch(profile.id)
                        return current
                finally:
                    release()
            if profile.checksum is None:
                target.mkdir(mode=0o700, parents=True)
                return profile
            manifest = self.service.manifest_of(profile)
            if manifest is not None:
                with self.service.reading_state_of(profile):
                    restore_chunked(
                        manifest, self.service.chunk_source(), target, limits=self.limits
                    )
                return profile
            with self._stored_archive(profile) as src:
                unpack_archive(src, target, limits=self.limits)
        return profile

    def import_state(
        self,
        ref: str,
        source: Path | str | IO[bytes] | None,
        *,
        browser_name: str | None = None,
        browser_version: str | None = None,
        lock_timeout: float = 600.0,
        progress: Progress | None = None,
    ) -> Profile:
        """Replace the profile's state with an uploaded ``.tar.gz`` / ``.tar.zst`` archive.

        The archive is unpacked safely (hostile input is expected), its engine detected and
        checked against the profile's archetype, then packed again as the committed state.
        Status is ``uploading`` while the import runs; whatever happens, it then reflects
        the committed state, read under the profile's writer lock. A state replaces the
        committed one only when it was read completely and validated.
        """
        if source is None or (isinstance(source, str | Path) and not Path(source).is_file()):
            where = "" if source is None else f": {str(source)!r} is not a file"
            raise ValidationFailed(f"No file provided{where}.", field="file")
        if browser_name is not None and browser_name not in ENGINES:
            raise ValidationFailed(
                f"Unsupported browser_name {browser_name!r}; use one of {', '.join(ENGINES)}.",
                field="browser_name",
            )
        if browser_version is not None:
            browser_version = check_browser_version(browser_version)
        profile = self.get(ref)
        if browser_name is not None and browser_name != profile.browser_name:
            raise ValidationFailed(
                f"browser_name {browser_name!r} does not match profile {profile.name!r}, "
                f"whose archetype {profile.archetype!r} runs {profile.browser_name}.",
                field="browser_name",
            )
        with contextlib.ExitStack() as stack:
            if isinstance(source, str | Path):
                try:
                    raw: IO[bytes] = stack.enter_context(Path(source).open("rb"))
                except OSError as exc:
                    raise ValidationFailed(
                        f"Cannot read {str(source)!r}: {exc.strerror or exc}.", field="file"
                    ) from exc
            else:
                raw = source
            reader: Any = _CountingReader(raw, progress) if progress else raw
            # A service that imports archives itself (over HTTP) checks and commits it there.
            imported = self.service.import_archive(
                profile.id, reader, browser_version=browser_version
            )
            if imported is not None:
                return imported
            lease = stack.enter_context(self.lock(profile.id, timeout=lock_timeout, kind="import"))
            self.service.set_status(profile.id, "uploading")
            try:
                return self._import_locked(profile, reader, browser_version, lease.epoch)
            except BaseException:
                with contextlib.suppress(ProfileError):
                    self.service.settle_status(profile.id)
                raise
        raise AssertionError("unreachable")  # pragma: no cover - the with block returns

    def _import_locked(
        self,
        profile: Profile,
        reader: IO[bytes],
        browser_version: str | None,
        epoch: int | None,
    ) -> Profile:
        with (
            self._storage_faults("importing a state"),
            owned_dir(self._tmp, "import-") as staging,
        ):
            state = self._unpack_checked(profile, reader, staging)
            self.working_copies.mark_dirty(profile.id)
            updated = self.commit_state(
                profile.id, state, browser_version=browser_version, epoch=epoch
            )
            work = self.working_copies.path(profile.id)
            remove_tree(work)
            state.rename(work)
            if updated.checksum:
                self.working_copies.mark_clean(profile.id, updated.checksum)
            return updated

    def _unpack_checked(self, profile: Profile, reader: IO[bytes], staging: Path) -> Path:
        """Unpack a hostile archive into ``staging/state`` and check it holds a profile of
        ``profile``'s engine."""
        state = staging / "state"
        unpack_archive(reader, state, limits=self.limits)
        engine = detect_engine(state)
        if engine is None:
            raise ArchiveInvalid(
                "The archive holds no Chromium, Firefox or WebKit profile at its "
                "top level; pack the browser's user-data-dir itself.",
                field="file",
            )
        if engine != profile.browser_name:
            raise ValidationFailed(
                f"The archive holds a {engine} profile but {profile.name!r} is "
                f"pinned to {profile.archetype!r} ({profile.browser_name}). Create "
                f"a profile with a {engine} archetype for it.",
                field="file",
            )
        return state

    def commit_archive(
        self,
        ref: str,
        source: IO[bytes],
        /,
        *,
        epoch: int | None,
        browser_version: str | None = None,
        event: AuditType = "state.uploaded",
        **payload: Any,
    ) -> Profile:
        """Commit an archive a remote writer sent (a session's state through a service over
        HTTP): unpacked and checked as hostile input, then committed under the writer's
        lease ``epoch`` (``LeaseLost`` if it is no longer current). The caller holds the
        lease; nothing here takes it. This machine's working copy is not touched."""
        profile = self.get(ref)
        with (
            self._storage_faults("committing an uploaded state"),
            owned_dir(self._tmp, "import-") as staging,
        ):
            state = self._unpack_checked(profile, source, staging)
            return self.commit_state(
                profile.id,
                state,
                browser_version=browser_version,
                event=event,
                epoch=epoch,
                **payload,
            )

    def _repair_status(self, profile: Profile) -> Profile:
        status = _committed_status(profile)
        log.warning(
            "profile %s was left %r by an import that died; now %r",
            profile.name,
            profile.status,
            status,
        )
        return self.service.set_status(profile.id, status)

    def export_state(
        self,
        ref: str,
        dest: Path | str | IO[bytes],
        *,
        codec: Codec = "gzip",
        progress: Progress | None = None,
        audit: bool = True,
    ) -> int:
        """Write the committed state as ``.tar.gz`` (or ``.tar.zst``) to ``dest``; return
        the number of bytes written. ``NoStateData`` if the profile has none. An import in
        flight does not hide the state committed before it. A completed export is recorded
        in the audit log (``state.exported``); ``audit=False`` is for a caller that records
        what the bytes were for itself (the HTTP service's signed downloads)."""
        profile, written = self._export_state(ref, dest, codec=codec, progress=progress)
        if audit:
            event = {"codec": codec, "bytes": written, "to": _export_target(dest)}
            if self.read_only:  # a read-only home serves exports and can record nothing
                log.info("export of %s not recorded: the store is read-only here", profile.id)
            else:
                self.record_event(
                    "state.exported", profile.id, state_checksum=profile.checksum, **event
                )
        return written

    def _export_state(
        self,
        ref: str,
        dest: Path | str | IO[bytes],
        *,
        codec: Codec,
        progress: Progress | None,
    ) -> tuple[Profile, int]:
        profile = self.get(ref)
        if profile.checksum is None:
            raise NoStateData(
                f"Profile has no data to download: {profile.name!r} is {profile.status}. "
                "Run a session on it or import a state archive first.",
                field="profile",
            )
        if codec not in ("gzip", "zstd"):
            raise ValidationFailed(f"Unknown codec {codec!r}; use gzip or zstd.", field="codec")
        target = Path(dest) if isinstance(dest, str | Path) else None
        if target is not None:
            if not target.parent.is_dir():
                raise ValidationFailed(
                    f"Cannot export to {str(target)!r}: the directory {str(target.parent)!r} "
                    "does not exist.",
                    field="file",
                )
            if target.is_dir():
                raise ValidationFailed(
                    f"Cannot export to {str(target)!r}: it is a directory; name a file.",
                    field="file",
                )
        with self._storage_faults("reading a state"):
            manifest = self.service.manifest_of(profile)
        if target is None:
            assert not isinstance(dest, str | Path)
            return profile, self._write_export(profile, manifest, dest, codec, progress)
        try:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    written = self._write_export(profile, manifest, out, codec, progress)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise ProfileError(
                f"Could not write the export to {str(target)!r}: "
                f"{exc.strerror or type(exc).__name__}. Nothing was written there; free "
                "space or choose another file.",
                file=str(target),
            ) from exc
        return profile, written

    def _write_export(
        self,
        profile: Profile,
        manifest: Manifest | None,
        out: IO[bytes] | BinaryIO,
        codec: Codec,
        progress: Progress | None,
    ) -> int:
        """The committed state as a compressed tar, into ``out``: a chunked state's tar
        stream is built from its chunks (each verified), a whole archive is copied."""
        if manifest is None:
            with self._stored_archive(profile) as src:
                return _copy_as(src, out, codec, progress)
        counted = _CountingWriter(out, progress)
        with self.service.reading_state_of(profile):
            if codec == "gzip":
                with gzip.GzipFile(fileobj=counted, mode="wb", compresslevel=6, mtime=0) as z:
                    write_tar(manifest, self.service.chunk_source(), z)
            else:
                cctx = zstandard.ZstdCompressor(level=3)
                with cctx.stream_writer(counted, closefd=False) as zw:  # type: ignore[arg-type]
                    write_tar(manifest, self.service.chunk_source(), zw)
        return counted.count

    def verify(self, *, full: bool = False) -> builtins.list[tuple[str, str]]:
        """Check every committed state a profile or snapshot references: its bytes exist
        and, for chunked states, every chunk does (``full``: every byte is read and hashed).
        Returns ``(checksum, problem)`` pairs; empty when all is well."""
        with self._storage_faults("verifying states"):
            return self.service.verify(full=full)

    def collect_garbage(
        self, *, min_age: float = ORPHAN_MIN_AGE, wait: float = 60.0
    ) -> builtins.list[str]:
        """Delete state blobs no record references that are older than ``min_age``
        seconds (left by a crash between storing bytes and committing them), and sweep
        scratch whose owner is gone. Runs under the exclusive collector lock, waiting up to
        ``wait`` seconds for writers in flight to finish. Returns the checksums freed."""
        with self._storage_faults("collecting garbage"):
            self.sweep_scratch()
            return self.service.collect_garbage(min_age=min_age, wait=wait)

    def _land_pending(
        self, entry: PendingEntry, *, lease: WriterLease, force: bool = False
    ) -> Profile:
        """Commit the pending ``entry`` under ``lease`` (the profile's writer lease, held), when
        the profile is still at the state it started from (or ``force``); else
        ``PendingConflict``. On success the state becomes the profile's working copy, known
        clean, and the entry is gone. A failure to reach the service leaves it pending."""
        if not lease.is_locked:
            raise ValueError("landing a pending commit needs the profile's writer lease held")
        try:
            profile = self.get(entry.profile_id)
        except NotFound:
            raise NotFound(
                f"The profile {entry.profile_id} of a pending commit on this machine was deleted; "
                f"run 'profiles sync {entry.profile_id} --discard' to delete the pending state "
                f"(it is in {entry.state_dir}).",
                resource="profile",
                ref=entry.profile_id,
            ) from None
        if not force and status_of(entry, profile) != "waiting":
            raise conflict_error(entry, profile, ref=profile.name)
        meta = entry.meta
        try:
            updated = self.commit_state(
                profile.id,
                entry.state_dir,
                browser_version=meta.browser_version if meta else None,
                event="state.uploaded",
                epoch=lease.epoch,
                source="pending",
                forced=force,
                kept_at=format_timestamp(entry.kept_at) if entry.kept_at else None,
            )
        except ProfileError as exc:
            if exc.transient:
                raise StorageUnavailable(
                    f"{exc.message} The pending commit of profile {profile.name!r} stays on this "
                    f"machine; run 'profiles sync {profile.name}' once {self.location} is back.",
                    home=self.location,
                    cause=getattr(exc, "cause", exc.code),
                    pending=True,
                ) from exc
            raise
        self._adopt_pending(entry, updated)
        log.info("landed the pending commit of %s (%s)", profile.name, profile.id)
        return updated

    def _adopt_pending(self, entry: PendingEntry, updated: Profile) -> None:
        """After the commit: the entry stops being pending (its metadata goes first) and its
        state becomes the working copy, known to match the new committed state."""
        copies = self.working_copies
        pending = self.pending
        entry_dir = entry.state_dir.parent
        with contextlib.suppress(FileNotFoundError):
            (entry_dir / META).unlink()
            fsync_dir(entry_dir)
        try:
            copies.remove(entry.profile_id)
            copies.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.rename(entry.state_dir, copies.path(entry.profile_id))
            if updated.checksum:
                copies.mark_clean(entry.profile_id, updated.checksum)
        except OSError as exc:  # the commit stands; the next checkout unpacks it
            log.warning("could not reuse the landed state as the working copy: %s", exc)
        pending.remove(entry.profile_id)


class _HashingWriter:
    """Writes through to a file, counting and hashing the bytes."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._hash.update(data)
        self._raw.write(data)
        self.size += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _CountingWriter:
    def __init__(self, raw: IO[bytes] | BinaryIO, progress: Progress | None) -> None:
        self._raw = raw
        self._progress = progress
        self.count = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self.count += len(data)
        if self._progress:
            self._progress(self.count)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()


class _CheckedArchive(io.RawIOBase):
    """A stored archive as it is read, hashed: :meth:`finish` reads what is left and
    raises ``StateCorrupt`` unless the bytes hash to ``checksum`` (the archive's name)."""

    def __init__(self, raw: BinaryIO, checksum: str | None, location: str) -> None:
        self._raw = raw
        self._checksum = checksum
        self._location = location
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        self._hash.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        while block := self._raw.read(1024 * 1024):
            self._hash.update(block)
        if self._checksum is not None and self._hash.hexdigest() != self._checksum:
            raise StateCorrupt(
                f"The archive {self._checksum} in {self._location} is damaged: it does not "
                "hash to its name.",
                checksum=self._checksum,
            )


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``rest``, as one readable stream."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _copy_as(
    src: BinaryIO, dest: IO[bytes] | BinaryIO, codec: Codec, progress: Progress | None
) -> int:
    """Copy an archive, converting its compression to ``codec`` if it differs."""
    out = _CountingWriter(dest, progress)
    head = src.read(4)
    src = cast(BinaryIO, _Prefixed(head, src))  # blob streams do not seek: put the head back
    if detect_codec(head) == codec:
        shutil.copyfileobj(src, out, 1024 * 1024)
        return out.count
    decompressed: IO[bytes] = (
        gzip.GzipFile(fileobj=src, mode="rb")
        if detect_codec(head) == "gzip"
        else zstandard.ZstdDecompressor().stream_reader(src)  # type: ignore[assignment]
    )
    with decompressed:
        reading = cast(IO[bytes], _Decoding(decompressed))
        if codec == "gzip":
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as z:
                shutil.copyfileobj(reading, z, 1024 * 1024)
        else:
            with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as zw:  # type: ignore[arg-type]
                shutil.copyfileobj(reading, zw, 1024 * 1024)
    return out.count


class _Decoding:
    """Reads of a decompressing stream: damaged compressed data is ``ArchiveInvalid``, not
    the decoder's own error (``BadGzipFile`` is an ``OSError``, which would read as a fault
    of the disk written to)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        try:
            return self._raw.read(size)
        except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as exc:
            raise ArchiveInvalid(
                f"The archive's compressed data is damaged ({type(exc).__name__}: {exc}).",
                field="file",
            ) from exc
