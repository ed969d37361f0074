"""The embedded catalog: one SQLite file in WAL mode, with versioned schema migrations.

Several processes may open the same file: writers are serialised by ``BEGIN IMMEDIATE``
and wait up to ``busy_timeout`` for each other. The schema version lives in
``PRAGMA user_version``; opening a file runs the migrations it lacks, each in its own
transaction, and refuses a file written by a newer release.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from profiles.catalog.base import (
    UPDATABLE_FIELDS,
    Catalog,
    CatalogTransaction,
    LeaseGrant,
    StateUpdate,
    cap_reached,
    check_engine_cache_ref,
    lease_lost,
)
from profiles.errors import (
    Conflict,
    NotFound,
    ProfileError,
    StorageUnavailable,
    ValidationFailed,
)
from profiles.models import AuditEvent, Holder, Profile, ProfileStatus, Snapshot, format_timestamp

__all__ = ["MIGRATIONS", "SQLiteCatalog"]

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    # 1: profiles, snapshots, audit events
    """
    CREATE TABLE profiles (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT,
        archetype TEXT NOT NULL,
        browser_name TEXT NOT NULL,
        browser_version TEXT,
        labels TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL CHECK (status IN ('empty', 'uploading', 'ready')),
        blob_size INTEGER,
        checksum TEXT,
        blob_uploaded_at TEXT,
        usage_count INTEGER NOT NULL DEFAULT 0,
        last_used_at TEXT,
        cookie_domains TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX profiles_order ON profiles (created_at DESC, id DESC);
    CREATE INDEX profiles_checksum ON profiles (checksum);
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        parent_profile_id TEXT REFERENCES profiles (id) ON DELETE SET NULL,
        parent_name TEXT NOT NULL,
        parent_archetype TEXT NOT NULL,
        browser_name TEXT NOT NULL,
        browser_version TEXT,
        label TEXT,
        description TEXT,
        captured_at TEXT NOT NULL,
        blob_size INTEGER,
        checksum TEXT,
        cookie_domains TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX snapshots_order ON snapshots (captured_at DESC, id DESC);
    CREATE INDEX snapshots_parent ON snapshots (parent_profile_id, captured_at DESC, id DESC);
    CREATE INDEX snapshots_checksum ON snapshots (checksum);
    CREATE TABLE audit_events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        profile_id TEXT,
        at TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_order ON audit_events (at DESC, id DESC);
    CREATE INDEX audit_profile ON audit_events (profile_id, at DESC, id DESC);
    """,
    # 2: writer leases with a fencing epoch
    """
    ALTER TABLE profiles ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE profiles ADD COLUMN lease_holder TEXT;
    ALTER TABLE profiles ADD COLUMN lease_expires_at REAL;
    """,
    # 3: who writes or collects state bytes right now
    """
    CREATE TABLE blob_writers (id TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    CREATE TABLE blob_collector (
        only_one INTEGER PRIMARY KEY CHECK (only_one = 1),
        id TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    # 4: the published engine cache of each browser build (profiles.engine_cache.fleet)
    """
    CREATE TABLE engine_caches (
        engine TEXT NOT NULL CHECK (engine IN ('chromium', 'firefox', 'webkit')),
        build_key TEXT NOT NULL,
        checksum TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (engine, build_key)
    );
    """,
    # 5: a blob writer's or collector's registration may hold an flock for its life, which
    # tells at once that its process is gone (_OwnerLocks)
    """
    ALTER TABLE blob_writers ADD COLUMN owner_lock INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE blob_collector ADD COLUMN owner_lock INTEGER NOT NULL DEFAULT 0;
    """,
)
# Columns of the profiles table that are not fields of a Profile record.
_LEASE_COLUMNS = ("lease_epoch", "lease_holder", "lease_expires_at")

_JSON_FIELDS = {"labels", "cookie_domains", "payload"}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
M = TypeVar("M", bound=BaseModel)


def _to_row(record: BaseModel) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in dict(record).items():
        if key in _JSON_FIELDS:
            row[key] = json.dumps(value, sort_keys=True)
        elif isinstance(value, datetime):
            row[key] = format_timestamp(value)
        else:
            row[key] = value
    return row


def _from_row(model: type[M], row: sqlite3.Row) -> M:
    data = {key: row[key] for key in row.keys() if key not in _LEASE_COLUMNS}  # noqa: SIM118
    for key in _JSON_FIELDS & data.keys():
        data[key] = json.loads(data[key])
    return model.model_validate(data)


def _insert_sql(table: str, row: dict[str, Any]) -> str:
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"


_REGISTRATION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class _OwnerLocks:
    """Lock files that tell whether the process behind a blob writer's or collector's
    registration is alive (rule 7 of the catalog contract).

    The registering process creates ``<dir>/<id>.lock`` and holds an exclusive ``flock`` on
    it for the registration's life; the kernel drops the lock however the process ends
    (SIGKILL included). Another process that can take that lock knows the owner is gone,
    and its registration no longer counts, however long it had to live. The registration's
    row says whether it holds such a lock (``owner_lock``): rows without one (written
    where lock files cannot be made, or by an older release) are judged by their expiry
    alone. Lock files are made, probed and removed only inside write transactions, which
    SQLite runs one at a time across processes, so no probe sees a lock file between its
    creation and its locking.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._held: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _mine(self) -> dict[str, int]:
        if self._pid != os.getpid():  # a forked child holds none of its parent's locks
            self._held, self._pid = {}, os.getpid()
        return self._held

    def _path(self, reg_id: str) -> Path | None:
        return self.dir / f"{reg_id}.lock" if _REGISTRATION_ID.fullmatch(reg_id) else None

    def hold(self, reg_id: str) -> bool | None:
        """Hold the lock of a registration of this process: ``True`` taken now, ``False``
        held already, ``None`` when lock files cannot be used here (the registration is
        then judged by its expiry alone)."""
        path = self._path(reg_id)
        if path is None:
            return None
        with self._lock:
            held = self._mine()
            if reg_id in held:
                return False
            try:
                self.dir.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW, 0o600)
            except OSError as exc:
                log.debug("no owner lock for %s (%s): its expiry alone counts", reg_id, exc)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                log.debug("no owner lock for %s (%s): its expiry alone counts", reg_id, exc)
                return None
            held[reg_id] = fd
            return True

    def release(self, reg_id: str) -> None:
        """Let go of this process's lock of a registration (removing its file first, so
        that the file is never there unlocked)."""
        with self._lock:
            fd = self._mine().pop(reg_id, None)
        if fd is None:
            return
        path = self._path(reg_id)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
        os.close(fd)

    def gone(self, reg_id: str) -> bool:
        """Whether the process that holds this registration's lock is gone: its lock can be
        taken (and the file is then removed). ``False`` while it is held, for this
        process's own registrations, and when it cannot be told (no file: expiry decides)."""
        path = self._path(reg_id)
        if path is None:
            return False
        with self._lock:
            if reg_id in self._mine():
                return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | _NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        return True

    def sweep(self, registered: set[str]) -> None:
        """Remove the lock files of registrations that are gone and have no row (their
        process died between making the file and committing the row, or after the row was
        dropped)."""
        try:
            names = [e.name for e in os.scandir(self.dir) if e.name.endswith(".lock")]
        except OSError:
            return
        for name in names:
            reg_id = name[: -len(".lock")]
            if reg_id not in registered:
                self.gone(reg_id)

    def close(self) -> None:
        """Let go of every lock of this process, leaving the files: its registrations then
        read as gone, as after its exit."""
        with self._lock:
            fds = list(self._mine().values())
            self._held.clear()
        for fd in fds:
            os.close(fd)


class _SQLiteTransaction(CatalogTransaction):
    def __init__(self, conn: sqlite3.Connection, owners: _OwnerLocks) -> None:
        self._conn = conn
        self._owners = owners
        #: What to undo if the transaction rolls back (owner locks taken in it).
        self.undo: list[Callable[[], None]] = []

    def _one(self, model: type[M], sql: str, *args: object) -> M | None:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else _from_row(model, row)

    def _page(
        self,
        model: type[M],
        table: str,
        order: str,
        *,
        where: tuple[str, tuple[object, ...]] | None,
        limit: int,
        after: str | None,
    ) -> list[M]:
        clauses: list[str] = []
        args: list[object] = []
        if where is not None:
            clauses.append(where[0])
            args.extend(where[1])
        if after is not None:
            anchor = self._conn.execute(
                f"SELECT {order} FROM {table} WHERE id = ?", (after,)
            ).fetchone()
            if anchor is None:
                raise ValidationFailed(
                    f"Cursor {after!r} does not name a record of this listing (it may have been "
                    "deleted); start again without a cursor.",
                    field="cursor",
                )
            clauses.append(f"({order}, id) < (?, ?)")
            args.extend((anchor[0], after))
        sql = f"SELECT * FROM {table}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY {order} DESC, id DESC LIMIT ?"
        args.append(limit)
        return [_from_row(model, row) for row in self._conn.execute(sql, args)]

    def _write(self, sql: str, row: dict[str, Any], name: str | None = None) -> None:
        try:
            self._conn.execute(sql, row)
        except sqlite3.IntegrityError as exc:
            if name is not None and "profiles.name" in str(exc):
                raise Conflict(
                    f"A profile named {name!r} already exists; choose another name.",
                    field="name",
                ) from exc
            if ".id" in str(exc):
                raise Conflict(
                    f"A record with id {row.get('id')!r} already exists.", field="id"
                ) from exc
            raise

    # profiles
    def get_profile(self, profile_id: str) -> Profile | None:
        return self._one(Profile, "SELECT * FROM profiles WHERE id = ?", profile_id)

    def get_profile_by_name(self, name: str) -> Profile | None:
        return self._one(Profile, "SELECT * FROM profiles WHERE name = ?", name)

    def get_profile_for_share(self, profile_id: str) -> Profile | None:
        # A write transaction (BEGIN IMMEDIATE) already excludes every other writer.
        return self.get_profile(profile_id)

    def count_profiles(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM profiles").fetchone()[0])

    def profile_names(self) -> list[str]:
        return [row[0] for row in self._conn.execute("SELECT name FROM profiles ORDER BY name")]

    def insert_profile(self, profile: Profile, *, max_profiles: int | None = None) -> None:
        if max_profiles is not None:
            current = self.count_profiles()  # safe: BEGIN IMMEDIATE serialises writers
            if current >= max_profiles:
                raise cap_reached(max_profiles, current)
        row = _to_row(profile)
        self._write(_insert_sql("profiles", row), row, profile.name)

    def update_fields(self, profile_id: str, fields: Mapping[str, Any]) -> Profile | None:
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"update_fields cannot set {sorted(unknown)}")
        if fields:
            row = {
                k: format_timestamp(v) if isinstance(v, datetime) else v for k, v in fields.items()
            }
            sets = ", ".join(f"{k} = :{k}" for k in row)
            self._write(
                f"UPDATE profiles SET {sets} WHERE id = :id",
                {**row, "id": profile_id},
                row.get("name"),
            )
        return self.get_profile(profile_id)

    def merge_labels(
        self,
        profile_id: str,
        *,
        add: Mapping[str, str],
        remove: frozenset[str],
        replace: Mapping[str, str] | None,
        updated_at: datetime,
    ) -> Profile | None:
        current = self.get_profile(profile_id)  # BEGIN IMMEDIATE: no writer in between
        if current is None:
            return None
        labels = dict(current.labels if replace is None else replace)
        for key in remove:
            labels.pop(key, None)
        labels.update(add)
        self._conn.execute(
            "UPDATE profiles SET labels = ?, updated_at = ? WHERE id = ?",
            (json.dumps(labels, sort_keys=True), format_timestamp(updated_at), profile_id),
        )
        return self.get_profile(profile_id)

    def bump_usage(self, profile_id: str, at: datetime) -> Profile | None:
        self._conn.execute(
            "UPDATE profiles SET usage_count = usage_count + 1, last_used_at = ? WHERE id = ?",
            (format_timestamp(at), profile_id),
        )
        return self.get_profile(profile_id)

    def set_state(
        self, profile_id: str, state: StateUpdate, *, epoch: int | None
    ) -> tuple[Profile, str | None]:
        row = self._conn.execute(
            "SELECT checksum, lease_epoch FROM profiles WHERE id = ?", (profile_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"Profile {profile_id!r} not found.", resource="profile", ref=profile_id)
        if epoch is not None and row["lease_epoch"] != epoch:
            raise lease_lost(profile_id, epoch, int(row["lease_epoch"]))
        stamp = format_timestamp(state.uploaded_at)
        self._conn.execute(
            "UPDATE profiles SET status = 'ready', checksum = ?, blob_size = ?, "
            "blob_uploaded_at = ?, browser_version = coalesce(?, browser_version), "
            "cookie_domains = ?, updated_at = ? WHERE id = ?",
            (
                state.checksum,
                state.blob_size,
                stamp,
                state.browser_version,
                json.dumps(state.cookie_domains),
                stamp,
                profile_id,
            ),
        )
        updated = self.get_profile(profile_id)
        assert updated is not None
        return updated, row["checksum"]

    def set_status(self, profile_id: str, status: ProfileStatus) -> Profile | None:
        self._conn.execute("UPDATE profiles SET status = ? WHERE id = ?", (status, profile_id))
        return self.get_profile(profile_id)

    def settle_status(self, profile_id: str) -> Profile | None:
        self._conn.execute(
            "UPDATE profiles SET status = CASE WHEN checksum IS NULL THEN 'empty' "
            "ELSE 'ready' END WHERE id = ?",
            (profile_id,),
        )
        return self.get_profile(profile_id)

    def delete_profile(self, profile_id: str) -> Profile | None:
        current = self.get_profile(profile_id)
        self._conn.execute("DELETE FROM profiles WHERE id = ?", (profile_id,))
        return current

    def list_profiles(self, *, limit: int, after: str | None) -> list[Profile]:
        return self._page(Profile, "profiles", "created_at", where=None, limit=limit, after=after)

    # snapshots
    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        return self._one(Snapshot, "SELECT * FROM snapshots WHERE id = ?", snapshot_id)

    def insert_snapshot(self, snapshot: Snapshot) -> None:
        row = _to_row(snapshot)
        self._write(_insert_sql("snapshots", row), row)

    def delete_snapshot(self, snapshot_id: str) -> Snapshot | None:
        current = self.get_snapshot(snapshot_id)
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
        return current

    def list_snapshots(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[Snapshot]:
        where = None if profile_id is None else ("parent_profile_id = ?", (profile_id,))
        return self._page(
            Snapshot, "snapshots", "captured_at", where=where, limit=limit, after=after
        )

    # audit
    def insert_event(self, event: AuditEvent) -> None:
        row = _to_row(event)
        self._write(_insert_sql("audit_events", row), row)

    def list_events(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[AuditEvent]:
        where = None if profile_id is None else ("profile_id = ?", (profile_id,))
        return self._page(AuditEvent, "audit_events", "at", where=where, limit=limit, after=after)

    # state bytes
    def checksum_in_use(self, checksum: str) -> bool:
        row = self._conn.execute(
            "SELECT EXISTS (SELECT 1 FROM profiles WHERE checksum = ?) "
            "OR EXISTS (SELECT 1 FROM snapshots WHERE checksum = ?)",
            (checksum, checksum),
        ).fetchone()
        return bool(row[0])

    def checksums_in_use(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT checksum FROM profiles WHERE checksum IS NOT NULL "
            "UNION SELECT checksum FROM snapshots WHERE checksum IS NOT NULL"
        )
        return {row[0] for row in rows}

    # leases
    def acquire_lease(
        self, profile_id: str, holder: Holder, *, ttl: float | None, force: bool = False
    ) -> LeaseGrant | None:
        now = time.time()
        expires = None if ttl is None else now + ttl
        condition = (
            ""
            if force
            else (
                " AND (lease_holder IS NULL OR (lease_expires_at IS NOT NULL "
                "AND lease_expires_at < :now))"
            )
        )
        cursor = self._conn.execute(
            "UPDATE profiles SET lease_epoch = lease_epoch + 1, lease_holder = :holder, "
            f"lease_expires_at = :expires WHERE id = :id{condition}",
            {"holder": holder.model_dump_json(), "expires": expires, "now": now, "id": profile_id},
        )
        if cursor.rowcount == 0:
            if self.get_profile(profile_id) is None:
                raise NotFound(
                    f"Profile {profile_id!r} not found.", resource="profile", ref=profile_id
                )
            return None
        epoch = self._conn.execute(
            "SELECT lease_epoch FROM profiles WHERE id = ?", (profile_id,)
        ).fetchone()[0]
        return LeaseGrant(
            profile_id=profile_id,
            epoch=int(epoch),
            expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
        )

    def renew_lease(self, profile_id: str, epoch: int, *, ttl: float | None) -> bool:
        expires = None if ttl is None else time.time() + ttl
        cursor = self._conn.execute(
            "UPDATE profiles SET lease_expires_at = ? WHERE id = ? AND lease_epoch = ? "
            "AND lease_holder IS NOT NULL",
            (expires, profile_id, epoch),
        )
        return cursor.rowcount == 1

    def release_lease(self, profile_id: str, epoch: int) -> None:
        self._conn.execute(
            "UPDATE profiles SET lease_holder = NULL, lease_expires_at = NULL "
            "WHERE id = ? AND lease_epoch = ?",
            (profile_id, epoch),
        )

    def _live_leases(self, where: str, args: tuple[object, ...]) -> list[tuple[str, Holder, int]]:
        rows = self._conn.execute(
            "SELECT id, lease_holder, lease_epoch FROM profiles WHERE lease_holder IS NOT NULL "
            f"AND (lease_expires_at IS NULL OR lease_expires_at >= ?){where}",
            (time.time(), *args),
        ).fetchall()
        found = []
        for row in rows:
            with contextlib.suppress(ValueError):
                found.append((row[0], Holder.model_validate_json(row[1]), int(row[2])))
        return found

    def _live(self, row: sqlite3.Row, now: float) -> bool:
        """Whether a writer's registration or the collector lock counts: unexpired, and
        its process not known to be gone (rule 7)."""
        if row["expires_at"] < now:
            return False
        return not (row["owner_lock"] and self._owners.gone(row["id"]))

    def _hold_owner_lock(self, reg_id: str) -> bool:
        """This registration's owner lock (``True`` when it has one)."""
        held = self._owners.hold(reg_id)
        if held:
            self.undo.append(lambda: self._owners.release(reg_id))
        return held is not None

    def register_blob_writer(self, writer_id: str, *, ttl: float) -> bool:
        now = time.time()
        collector = self._conn.execute(
            "SELECT id, expires_at, owner_lock FROM blob_collector"
        ).fetchone()
        if collector is not None:
            if self._live(collector, now):
                return False
            # Its holder learns at its next renewal that it lost the lock.
            self._conn.execute("DELETE FROM blob_collector WHERE id = ?", (collector["id"],))
        owner_lock = self._hold_owner_lock(writer_id)
        self._conn.execute(
            "INSERT INTO blob_writers (id, expires_at, owner_lock) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            (writer_id, now + ttl, int(owner_lock)),
        )
        return True

    def renew_blob_writer(self, writer_id: str, *, ttl: float) -> bool:
        cursor = self._conn.execute(
            "UPDATE blob_writers SET expires_at = ? WHERE id = ?", (time.time() + ttl, writer_id)
        )
        return cursor.rowcount == 1

    def unregister_blob_writer(self, writer_id: str) -> None:
        self._conn.execute("DELETE FROM blob_writers WHERE id = ?", (writer_id,))
        self._owners.release(writer_id)

    def acquire_collector(self, collector_id: str, *, ttl: float) -> bool:
        now = time.time()
        writers = self._conn.execute("SELECT id, expires_at, owner_lock FROM blob_writers")
        for row in writers.fetchall():
            if not self._live(row, now):
                self._conn.execute("DELETE FROM blob_writers WHERE id = ?", (row["id"],))
        if self._conn.execute("SELECT count(*) FROM blob_writers").fetchone()[0]:
            return False
        other = self._conn.execute(
            "SELECT id, expires_at, owner_lock FROM blob_collector WHERE id != ?", (collector_id,)
        ).fetchone()
        if other is not None and self._live(other, now):
            return False
        self._owners.sweep({collector_id})
        owner_lock = self._hold_owner_lock(collector_id)
        self._conn.execute(
            "INSERT INTO blob_collector (only_one, id, expires_at, owner_lock) "
            "VALUES (1, ?, ?, ?) ON CONFLICT (only_one) DO UPDATE SET id = excluded.id, "
            "expires_at = excluded.expires_at, owner_lock = excluded.owner_lock",
            (collector_id, now + ttl, int(owner_lock)),
        )
        return True

    def renew_collector(self, collector_id: str, *, ttl: float) -> bool:
        cursor = self._conn.execute(
            "UPDATE blob_collector SET expires_at = ? WHERE id = ?",
            (time.time() + ttl, collector_id),
        )
        return cursor.rowcount == 1

    def release_collector(self, collector_id: str) -> None:
        self._conn.execute("DELETE FROM blob_collector WHERE id = ?", (collector_id,))
        self._owners.release(collector_id)

    # engine caches
    def engine_cache_get(self, engine: str, key: str) -> str | None:
        check_engine_cache_ref(engine, key)
        row = self._conn.execute(
            "SELECT checksum FROM engine_caches WHERE engine = ? AND build_key = ?",
            (engine, key),
        ).fetchone()
        return None if row is None else str(row[0])

    def engine_cache_put(self, engine: str, key: str, checksum: str) -> None:
        check_engine_cache_ref(engine, key, checksum)
        self._conn.execute(
            "INSERT INTO engine_caches (engine, build_key, checksum, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (engine, build_key) DO UPDATE SET "
            "checksum = excluded.checksum, updated_at = excluded.updated_at",
            (engine, key, checksum, format_timestamp(datetime.now(UTC))),
        )

    def engine_cache_checksums(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT checksum FROM engine_caches")}

    def lease_holder(self, profile_id: str) -> tuple[Holder, int] | None:
        found = self._live_leases(" AND id = ?", (profile_id,))
        return (found[0][1], found[0][2]) if found else None

    def leases(self) -> list[tuple[str, Holder, int]]:
        return self._live_leases("", ())


def _retry_locked(action: Callable[[], object], timeout: float) -> None:
    """Run ``action``, again while SQLite says the database is locked (up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            action()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _storage_error(path: Path, exc: BaseException, doing: str) -> StorageUnavailable:
    cause = str(exc) or type(exc).__name__
    hint = "Free some space" if "full" in cause else "Check that it exists and is writable"
    return StorageUnavailable(
        f"The store's catalog at {path} failed while {doing}: {cause}. Nothing was changed. "
        f"{hint}, then try again.",
        home=str(path.parent),
        cause=cause,
    )


class _ThreadConnection:
    """One thread's connection, closed when the thread ends (its thread-local data goes):
    a store that serves many short-lived threads (a session prepares in one) does not
    collect open connections."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        registry: set[sqlite3.Connection],
        lock: AbstractContextManager[object],
    ) -> None:
        self.conn = conn
        self.pid = os.getpid()
        self._registry = registry
        self._lock = lock

    def __del__(self) -> None:
        if self.pid != os.getpid():
            return  # a forked child's copy: the parent's connection is not ours to close
        with self._lock:
            mine = self.conn in self._registry
            self._registry.discard(self.conn)
        if mine:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()


class SQLiteCatalog(Catalog):
    """The catalog in one SQLite file (``catalog.sqlite3`` in the store's home).

    Every ``sqlite3`` error that is not a rule of the data (a full disk, a read-only or
    missing file, an I/O error, a corrupt file) becomes :class:`StorageUnavailable`
    naming the file. ``read_only`` opens an existing catalog without writing anything
    (for a home on a read-only file system or owned by someone else); write
    transactions then fail with ``StorageUnavailable``.
    """

    sees_dead_processes = True  # owner locks (rule 7)

    def __init__(
        self, path: Path | str, *, busy_timeout: float = 30.0, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.read_only = read_only
        # Beside the file: the owner locks of blob writers and collectors (rule 7).
        self._owners = _OwnerLocks(Path(f"{self.path.resolve()}-locks"))
        self._busy_timeout = busy_timeout
        # One connection per thread: a read in one thread never waits behind another
        # thread's write transaction (WAL), and writers are serialised by the database.
        self._local = threading.local()
        self._open: set[sqlite3.Connection] = set()
        # Re-entrant: a finished thread's connection may be closed (its __del__) at any
        # allocation, also in a thread that holds this lock.
        self._open_lock = threading.RLock()
        self._closed = False
        try:
            if not read_only:
                _retry_locked(self._migrate, busy_timeout)
            elif self.schema_version > len(MIGRATIONS):
                raise self._too_new(self.schema_version)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise _storage_error(self.path, exc, "opening it") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork or in a new thread)."""
        held: _ThreadConnection | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            if self._closed:
                raise ProfileError(f"The catalog {self.path} is closed.")
            conn = self._connect(self._busy_timeout)
            with self._open_lock:
                self._open.add(conn)
            self._local.held = _ThreadConnection(conn, self._open, self._open_lock)
            return conn
        return held.conn

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        if self.read_only:
            conn = self._connect_read_only(busy_timeout)
        else:
            if not self.path.exists():
                # SQLite gives its -wal and -shm files the mode of the database file.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                # Switching to WAL needs the file to itself, and SQLite answers "locked" at
                # once (no busy wait) when another connection opens it at the same moment.
                _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), busy_timeout)
            conn.execute("PRAGMA synchronous = FULL")
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _connect_read_only(self, busy_timeout: float) -> sqlite3.Connection:
        if not self.path.is_file():
            raise sqlite3.OperationalError("unable to open database file")
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(
                f"{uri}?mode=ro",
                uri=True,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            return conn
        except sqlite3.OperationalError:
            # WAL needs a writable -shm beside the file; on a read-only file system nobody
            # can be writing it, so read it as an immutable file.
            conn = sqlite3.connect(
                f"{uri}?mode=ro&immutable=1",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            return conn

    def _too_new(self, version: int) -> ProfileError:
        return ProfileError(
            f"The catalog {self.path} has schema version {version}, newer than "
            f"this release knows ({len(MIGRATIONS)}). Upgrade playwright-profiles."
        )

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            version = self.schema_version
            if version > len(MIGRATIONS):
                raise self._too_new(version)
            for number in range(version + 1, len(MIGRATIONS) + 1):
                log.info("migrating catalog %s to schema version %d", self.path, number)
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {number}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self, tx: _SQLiteTransaction | None = None) -> None:
        """Roll back if a transaction is open, and undo what ``tx`` did outside the
        database; never mask the error that led here."""
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        for undo in reversed(tx.undo if tx is not None else []):
            with contextlib.suppress(OSError):
                undo()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[CatalogTransaction]:
        if write and self.read_only:
            raise StorageUnavailable(
                f"The store at {self.path.parent} is read-only here (its catalog cannot be "
                "written by this user or on this file system): reads work, changes do not.",
                home=str(self.path.parent),
                cause="read-only",
            )
        try:
            conn = self._conn
            if conn.in_transaction:
                raise ProfileError(
                    "A catalog transaction is already open in this thread; transactions "
                    "do not nest."
                )
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN DEFERRED")
        except (sqlite3.Error, OSError) as exc:
            raise _storage_error(self.path, exc, "starting a transaction") from exc
        tx = _SQLiteTransaction(self._conn, self._owners)
        try:
            yield tx
        except sqlite3.IntegrityError:
            self._rollback(tx)
            raise
        except sqlite3.Error as exc:
            self._rollback(tx)
            raise _storage_error(self.path, exc, "writing" if write else "reading") from exc
        except BaseException:
            self._rollback(tx)
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(tx)
            raise _storage_error(self.path, exc, "committing a change") from exc

    def close(self) -> None:
        """Close every thread's connection (a closed catalog refuses new transactions)."""
        with self._open_lock:
            self._closed = True
            conns = list(self._open)
            self._open.clear()
        self._owners.close()  # its registrations stop counting (as at exit)
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
