"""The catalog in PostgreSQL, for a fleet of machines sharing one store.

``PostgresCatalog(url)`` keeps profiles, snapshots, audit events, leases and the blob
writer/collector registry in one database, through a thread-safe connection pool
(``psycopg_pool.ConnectionPool``). It keeps the contract of :mod:`profiles.catalog.base`
with the same semantics as the SQLite backend; how each rule is kept:

Transactions (rule 1)
    Write transactions run at READ COMMITTED (PostgreSQL's default) and are made correct by
    narrow SQL, below. Read transactions are ``REPEATABLE READ READ ONLY``: one snapshot for
    the whole transaction, and MVCC never makes them wait for a writer.

Narrow writes (rule 2)
    Each write is one statement that names its columns and computes the new value in the
    database, so it applies to the row as it is when the write lands:
    ``update_fields`` sets only the given columns; ``merge_labels`` computes
    ``(coalesce(replace, labels) - remove_keys::text[]) || add::jsonb``; ``bump_usage`` is
    ``usage_count = usage_count + 1``. ``set_state`` is one ``UPDATE ... WHERE id = $1 AND
    lease_epoch = $epoch`` (the fencing token) joined with a CTE that selects the old row
    ``FOR UPDATE``, so the statement returns the checksum it replaced: the row lock taken
    by the CTE means no other writer can change the checksum between reading and
    replacing it. No row updated means ``NotFound`` (no row) or ``LeaseLost`` (another
    epoch is current), and nothing changed.

Names and the profile cap (rule 3)
    Names are a UNIQUE column (``COLLATE "C"``, bytewise like SQLite); a unique violation
    becomes ``Conflict`` (under a savepoint, so the transaction stays usable, as in SQLite).
    ``insert_profile`` first takes a transaction-scoped advisory lock on a constant key
    (``pg_advisory_xact_lock``), then counts and inserts. Inserts thus run one at a time
    across all machines, and because each statement at READ COMMITTED sees everything
    committed before it, the count taken under the lock includes every profile a previous
    holder inserted (the lock is released only after that holder's commit is visible). A
    counter row updated with ``WHERE n < cap`` was the alternative; it would need every
    delete to keep the counter right and a migration to seed it, and it makes every
    create and delete contend on one row anyway. Creating profiles is rare, and the lock
    is held only for the rest of that short transaction. Deletes take no lock: a
    concurrent delete can only make the count smaller.

Stable references (rule 4)
    ``get_profile_for_share`` is ``SELECT ... FOR SHARE``: a concurrent ``set_state`` (an
    UPDATE) waits until the sharing transaction ends.

Leases (rule 5)
    ``lease_epoch``, ``lease_holder`` and ``lease_expires_at`` (timestamptz) on the profile
    row. Expiry is computed and judged with the database server's ``clock_timestamp()``,
    so clients with skewed clocks agree. ``acquire_lease`` is one conditional UPDATE; two
    acquirers of a free lease serialise on the row and the second re-checks the condition
    on the new row version (READ COMMITTED re-evaluation), so only one gets it.

Blob writers and the collector (rule 7)
    ``register_blob_writer`` and ``acquire_collector`` each take one transaction-scoped
    advisory lock (another constant key) before checking the other side, so they are
    serialised and mutually exclusive under concurrency; each deletes the other side's
    registrations that expired (judged by ``clock_timestamp()``), under that lock.
    ``renew_blob_writer`` and ``renew_collector`` are one ``UPDATE`` of the row: its row
    lock orders a renewal with a concurrent ``DELETE`` of expired rows (READ COMMITTED
    re-checks the expiry on the renewed row), so a renewal either keeps the registration
    or finds it gone. A dead process's registration counts until it expires: a server
    cannot tell a client that died from one that is slow to renew.

Engine caches (rule 10)
    Table ``engine_caches`` keyed by ``(engine, build_key)``; ``engine_cache_put`` is one
    ``INSERT ... ON CONFLICT DO UPDATE`` (an upsert that never fails on a concurrent put;
    the last writer wins).

Migrations (rule 8)
    One ordered history (:data:`MIGRATIONS`) with the version in table ``schema_version``.
    Opening a catalog reads the version; when migrations are missing it runs them in one
    transaction under ``pg_advisory_xact_lock`` (DDL is transactional in PostgreSQL) and
    reads the version again under the lock, so processes that open a fresh database at
    once are safe: one migrates, the others wait and find it done. An up-to-date database
    is only read (a role without DDL rights can open it). A version newer than the code
    is refused with ``ProfileError``.

Faults (rule 9)
    An unreachable server, wrong credentials or a missing database raise
    ``StorageUnavailable`` from the constructor. During use, every ``psycopg.Error``
    (``OperationalError``, ``InterfaceError``, a pool timeout, ...) that is not a rule of
    the data becomes ``StorageUnavailable``. Messages name :attr:`PostgresCatalog.location`,
    the URL without its password; the password or the full DSN never appear in a message
    or a log record. Pooled connections are checked before use, so after a server restart
    only the transactions in flight fail; the next ones reconnect.

Timestamps are ``timestamptz`` (microseconds, like SQLite's text); records come back with
the same UTC datetimes the SQLite backend returns. ``labels``, ``cookie_domains`` and
``payload`` are ``jsonb`` (object keys come back sorted, as SQLite's ``sort_keys`` gives).
Listings are keyset-paginated on the indexes ``(created_at DESC, id DESC)``; ids and names
use ``COLLATE "C"`` so ties and name lists sort bytewise, as in SQLite.

Processes: a pool holds sockets and threads, so it must not cross ``os.fork``. Open a
catalog in each process (the store does); using one after a fork raises ``ProfileError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
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

__all__ = ["MIGRATIONS", "PostgresCatalog", "redact_location"]

log = logging.getLogger(__name__)

MIGRATIONS: tuple[str, ...] = (
    # 1: profiles (with their writer lease), snapshots, audit events, blob writers/collector
    """
    CREATE TABLE profiles (
        id text COLLATE "C" PRIMARY KEY,
        name text COLLATE "C" NOT NULL CONSTRAINT profiles_name_key UNIQUE,
        description text,
        archetype text NOT NULL,
        browser_name text NOT NULL,
        browser_version text,
        labels jsonb NOT NULL DEFAULT '{}',
        status text NOT NULL CHECK (status IN ('empty', 'uploading', 'ready')),
        blob_size bigint,
        checksum text COLLATE "C",
        blob_uploaded_at timestamptz,
        usage_count bigint NOT NULL DEFAULT 0,
        last_used_at timestamptz,
        cookie_domains jsonb NOT NULL DEFAULT '[]',
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        lease_epoch bigint NOT NULL DEFAULT 0,
        lease_holder text,
        lease_expires_at timestamptz
    );
    CREATE INDEX profiles_order ON profiles (created_at DESC, id DESC);
    CREATE INDEX profiles_checksum ON profiles (checksum);
    CREATE TABLE snapshots (
        id text COLLATE "C" PRIMARY KEY,
        parent_profile_id text COLLATE "C" REFERENCES profiles (id) ON DELETE SET NULL,
        parent_name text NOT NULL,
        parent_archetype text NOT NULL,
        browser_name text NOT NULL,
        browser_version text,
        label text,
        description text,
        captured_at timestamptz NOT NULL,
        blob_size bigint,
        checksum text COLLATE "C",
        cookie_domains jsonb NOT NULL DEFAULT '[]'
    );
    CREATE INDEX snapshots_order ON snapshots (captured_at DESC, id DESC);
    CREATE INDEX snapshots_parent ON snapshots (parent_profile_id, captured_at DESC, id DESC);
    CREATE INDEX snapshots_checksum ON snapshots (checksum);
    CREATE TABLE audit_events (
        id text COLLATE "C" PRIMARY KEY,
        type text NOT NULL,
        profile_id text COLLATE "C",
        at timestamptz NOT NULL,
        payload jsonb NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_order ON audit_events (at DESC, id DESC);
    CREATE INDEX audit_profile ON audit_events (profile_id, at DESC, id DESC);
    CREATE TABLE blob_writers (
        id text COLLATE "C" PRIMARY KEY,
        expires_at timestamptz NOT NULL
    );
    CREATE TABLE blob_collector (
        only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one),
        id text COLLATE "C" NOT NULL,
        expires_at timestamptz NOT NULL
    )
    """,
    # 2: the published engine cache of each browser build (profiles.engine_cache.fleet)
    """
    CREATE TABLE engine_caches (
        engine text NOT NULL CHECK (engine IN ('chromium', 'firefox', 'webkit')),
        build_key text COLLATE "C" NOT NULL,
        checksum text COLLATE "C" NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (engine, build_key)
    )
    """,
)

# Keys of the transaction-scoped advisory locks (any constants, unique to this schema).
_LOCK_MIGRATE = 0x70726F66_00000001
_LOCK_INSERT_PROFILE = 0x70726F66_00000002
_LOCK_BLOB_WRITERS = 0x70726F66_00000003

_LEASE_COLUMNS = frozenset({"lease_epoch", "lease_holder", "lease_expires_at", "old_checksum"})
_JSON_FIELDS = frozenset({"labels", "cookie_domains", "payload"})
_LIVE = "(lease_expires_at IS NULL OR lease_expires_at >= clock_timestamp())"
_EXPIRES = "clock_timestamp() + make_interval(secs => %(ttl)s)"

M = TypeVar("M", bound=BaseModel)
Query = str | bytes | sql.SQL | sql.Composed


def redact_location(url: str) -> str:
    """``url`` (a URL or a ``key=value`` DSN) without its password, for messages."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            netloc = f"{userinfo.split(':', 1)[0]}@{host}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable connection string)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"


def _sorted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_json(v) for v in value]
    return value


def _param(key: str, value: Any) -> Any:
    if key in _JSON_FIELDS:
        return Jsonb(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC)  # a naive time is local time, as format_timestamp reads it
    return value


def _record(model: type[M], row: DictRow) -> M:
    data: dict[str, Any] = {}
    for key, value in row.items():
        if key in _LEASE_COLUMNS:
            continue
        if isinstance(value, datetime):
            data[key] = format_timestamp(value)  # the very values SQLite's text gives back
        elif key in _JSON_FIELDS:
            data[key] = _sorted_json(value)
        else:
            data[key] = value
    return model.model_validate(data)


def _insert(table: str, row: Mapping[str, Any]) -> sql.Composed:
    return sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(k) for k in row),
        sql.SQL(", ").join(sql.Placeholder(k) for k in row),
    )


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"A profile named {name!r} already exists; choose another name.", field="name")


class _PostgresTransaction(CatalogTransaction):
    def __init__(self, cursor: psycopg.Cursor[DictRow], *, write: bool) -> None:
        self._cur = cursor
        self._write_tx = write
        self._savepoints = 0

    # ---------------------------------------------------------------- helpers
    def _rows(self, query: Query, args: Params | None = None) -> list[DictRow]:
        self._cur.execute(query, args)
        return self._cur.fetchall()

    def _row(self, query: Query, args: Params | None = None) -> DictRow | None:
        self._cur.execute(query, args)
        return self._cur.fetchone()

    def _one(self, model: type[M], query: Query, args: Params) -> M | None:
        row = self._row(query, args)
        return None if row is None else _record(model, row)

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """A savepoint around a statement that may break a rule of the data, so that the
        transaction stays usable after the ``ProfileError`` (as in SQLite)."""
        self._savepoints += 1
        name = sql.Identifier(f"sp{self._savepoints}")
        self._cur.execute(sql.SQL("SAVEPOINT {}").format(name))
        try:
            yield
        except psycopg.errors.IntegrityError:
            self._cur.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(name))
            raise
        self._cur.execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))

    def _write(
        self, query: sql.Composed, row: Mapping[str, Any], what: str, name: str | None = None
    ) -> None:
        try:
            with self._savepoint():
                self._cur.execute(query, row)
        except pg_errors.UniqueViolation as exc:
            if name is not None and exc.diag.constraint_name == "profiles_name_key":
                raise _name_conflict(name) from None
            raise Conflict(
                f"A {what} with id {row.get('id')!r} already exists.", field="id"
            ) from None
        except pg_errors.ForeignKeyViolation:
            raise NotFound(
                f"The profile this {what} refers to does not exist.", resource="profile"
            ) from None
        except pg_errors.IntegrityError as exc:
            raise ValidationFailed(
                f"The {what} breaks a rule of the catalog: {exc.diag.message_primary}"
            ) from None

    def _page(
        self,
        model: type[M],
        table: str,
        order: str,
        *,
        where: tuple[str, object] | None,
        limit: int,
        after: str | None,
    ) -> list[M]:
        clauses: list[sql.Composable] = []
        args: dict[str, object] = {"limit": limit}
        if where is not None:
            clauses.append(sql.SQL(where[0]))
            args["where"] = where[1]
        if after is not None:
            anchor = self._row(
                sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                    sql.Identifier(order), sql.Identifier(table)
                ),
                (after,),
            )
            if anchor is None:
                raise ValidationFailed(
                    f"Cursor {after!r} does not name a record of this listing (it may have been "
                    "deleted); start again without a cursor.",
                    field="cursor",
                )
            clauses.append(
                sql.SQL("({}, id) < (%(anchor)s, %(after)s)").format(sql.Identifier(order))
            )
            args["anchor"] = anchor[order]
            args["after"] = after
        query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
        if clauses:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses)
        query += sql.SQL(" ORDER BY {} DESC, id DESC LIMIT %(limit)s").format(sql.Identifier(order))
        return [_record(model, row) for row in self._rows(query, args)]

    # ---------------------------------------------------------------- profiles: reads
    def get_profile(self, profile_id: str) -> Profile | None:
        return self._one(Profile, "SELECT * FROM profiles WHERE id = %s", (profile_id,))

    def get_profile_by_name(self, name: str) -> Profile | None:
        return self._one(Profile, "SELECT * FROM profiles WHERE name = %s", (name,))

    def get_profile_for_share(self, profile_id: str) -> Profile | None:
        if not self._write_tx:  # a read-only snapshot cannot lock, and needs no lock to copy
            return self.get_profile(profile_id)
        return self._one(Profile, "SELECT * FROM profiles WHERE id = %s FOR SHARE", (profile_id,))

    def count_profiles(self) -> int:
        row = self._row("SELECT count(*) AS n FROM profiles")
        assert row is not None
        return int(row["n"])

    def profile_names(self) -> list[str]:
        return [row["name"] for row in self._rows("SELECT name FROM profiles ORDER BY name")]

    def list_profiles(self, *, limit: int, after: str | None) -> list[Profile]:
        return self._page(Profile, "profiles", "created_at", where=None, limit=limit, after=after)

    # ---------------------------------------------------------------- profiles: writes
    def insert_profile(self, profile: Profile, *, max_profiles: int | None = None) -> None:
        # Every insert takes the lock, so a capped insert also counts uncapped ones.
        self._cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_INSERT_PROFILE,))
        if max_profiles is not None:
            current = self.count_profiles()  # sees every insert committed before the lock
            if current >= max_profiles:
                raise cap_reached(max_profiles, current)
        row = {k: _param(k, v) for k, v in dict(profile).items()}
        self._write(_insert("profiles", row), row, "profile", profile.name)

    def update_fields(self, profile_id: str, fields: Mapping[str, Any]) -> Profile | None:
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"update_fields cannot set {sorted(unknown)}")
        if not fields:
            return self.get_profile(profile_id)
        row = {k: _param(k, v) for k, v in fields.items()}
        query = sql.SQL("UPDATE profiles SET {} WHERE id = %(id)s").format(
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in row
            )
        )
        self._write(query, {**row, "id": profile_id}, "profile", row.get("name"))
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
        return self._one(
            Profile,
            "UPDATE profiles SET labels = "
            "(coalesce(%(replace)s::jsonb, labels) - %(remove)s::text[]) || %(add)s::jsonb, "
            "updated_at = %(at)s WHERE id = %(id)s RETURNING *",
            {
                "replace": None if replace is None else Jsonb(dict(replace)),
                "remove": sorted(remove),
                "add": Jsonb(dict(add)),
                "at": _param("updated_at", updated_at),
                "id": profile_id,
            },
        )

    def bump_usage(self, profile_id: str, at: datetime) -> Profile | None:
        return self._one(
            Profile,
            "UPDATE profiles SET usage_count = usage_count + 1, last_used_at = %s "
            "WHERE id = %s RETURNING *",
            (_param("last_used_at", at), profile_id),
        )

    def set_state(
        self, profile_id: str, state: StateUpdate, *, epoch: int | None
    ) -> tuple[Profile, str | None]:
        stamp = _param("blob_uploaded_at", state.uploaded_at)
        row = self._row(
            "WITH old AS (SELECT id, checksum FROM profiles WHERE id = %(id)s FOR UPDATE) "
            "UPDATE profiles AS p SET status = 'ready', checksum = %(checksum)s, "
            "blob_size = %(size)s, blob_uploaded_at = %(at)s, "
            "browser_version = coalesce(%(version)s, p.browser_version), "
            "cookie_domains = %(domains)s, updated_at = %(at)s "
            "FROM old WHERE p.id = old.id "
            "AND (%(epoch)s::bigint IS NULL OR p.lease_epoch = %(epoch)s::bigint) "
            "RETURNING p.*, old.checksum AS old_checksum",
            {
                "id": profile_id,
                "checksum": state.checksum,
                "size": state.blob_size,
                "at": stamp,
                "version": state.browser_version,
                "domains": Jsonb(list(state.cookie_domains)),
                "epoch": epoch,
            },
        )
        if row is None:
            current = self._row("SELECT lease_epoch FROM profiles WHERE id = %s", (profile_id,))
            if current is None:
                raise NotFound(
                    f"Profile {profile_id!r} not found.", resource="profile", ref=profile_id
                )
            assert epoch is not None
            raise lease_lost(profile_id, epoch, int(current["lease_epoch"]))
        return _record(Profile, row), row["old_checksum"]

    def set_status(self, profile_id: str, status: ProfileStatus) -> Profile | None:
        return self._one(
            Profile,
            "UPDATE profiles SET status = %s WHERE id = %s RETURNING *",
            (status, profile_id),
        )

    def settle_status(self, profile_id: str) -> Profile | None:
        return self._one(
            Profile,
            "UPDATE profiles SET status = CASE WHEN checksum IS NULL THEN 'empty' "
            "ELSE 'ready' END WHERE id = %s RETURNING *",
            (profile_id,),
        )

    def delete_profile(self, profile_id: str) -> Profile | None:
        return self._one(Profile, "DELETE FROM profiles WHERE id = %s RETURNING *", (profile_id,))

    # ---------------------------------------------------------------- snapshots
    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        return self._one(Snapshot, "SELECT * FROM snapshots WHERE id = %s", (snapshot_id,))

    def insert_snapshot(self, snapshot: Snapshot) -> None:
        row = {k: _param(k, v) for k, v in dict(snapshot).items()}
        self._write(_insert("snapshots", row), row, "snapshot")

    def delete_snapshot(self, snapshot_id: str) -> Snapshot | None:
        return self._one(
            Snapshot, "DELETE FROM snapshots WHERE id = %s RETURNING *", (snapshot_id,)
        )

    def list_snapshots(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[Snapshot]:
        where = None if profile_id is None else ("parent_profile_id = %(where)s", profile_id)
        return self._page(
            Snapshot, "snapshots", "captured_at", where=where, limit=limit, after=after
        )

    # ---------------------------------------------------------------- audit
    def insert_event(self, event: AuditEvent) -> None:
        row = {k: _param(k, v) for k, v in dict(event).items()}
        self._write(_insert("audit_events", row), row, "audit event")

    def list_events(
        self, *, profile_id: str | None, limit: int, after: str | None
    ) -> list[AuditEvent]:
        where = None if profile_id is None else ("profile_id = %(where)s", profile_id)
        return self._page(AuditEvent, "audit_events", "at", where=where, limit=limit, after=after)

    # ---------------------------------------------------------------- state bytes
    def checksum_in_use(self, checksum: str) -> bool:
        row = self._row(
            "SELECT EXISTS (SELECT 1 FROM profiles WHERE checksum = %(c)s) "
            "OR EXISTS (SELECT 1 FROM snapshots WHERE checksum = %(c)s) AS used",
            {"c": checksum},
        )
        return bool(row and row["used"])

    def checksums_in_use(self) -> set[str]:
        rows = self._rows(
            "SELECT checksum FROM profiles WHERE checksum IS NOT NULL "
            "UNION SELECT checksum FROM snapshots WHERE checksum IS NOT NULL"
        )
        return {row["checksum"] for row in rows}

    # ---------------------------------------------------------------- leases
    def acquire_lease(
        self, profile_id: str, holder: Holder, *, ttl: float | None, force: bool = False
    ) -> LeaseGrant | None:
        condition = "" if force else f" AND (lease_holder IS NULL OR NOT {_LIVE})"
        row = self._row(
            "UPDATE profiles SET lease_epoch = lease_epoch + 1, lease_holder = %(holder)s, "
            f"lease_expires_at = {_EXPIRES} WHERE id = %(id)s{condition} "
            "RETURNING lease_epoch, lease_expires_at",
            {"holder": holder.model_dump_json(), "ttl": ttl, "id": profile_id},
        )
        if row is None:
            if self._row("SELECT 1 FROM profiles WHERE id = %s", (profile_id,)) is None:
                raise NotFound(
                    f"Profile {profile_id!r} not found.", resource="profile", ref=profile_id
                )
            return None
        expires = row["lease_expires_at"]
        return LeaseGrant(
            profile_id=profile_id,
            epoch=int(row["lease_epoch"]),
            expires_at=None if expires is None else expires.astimezone(UTC),
        )

    def renew_lease(self, profile_id: str, epoch: int, *, ttl: float | None) -> bool:
        self._cur.execute(
            f"UPDATE profiles SET lease_expires_at = {_EXPIRES} WHERE id = %(id)s "
            "AND lease_epoch = %(epoch)s AND lease_holder IS NOT NULL",
            {"ttl": ttl, "id": profile_id, "epoch": epoch},
        )
        return self._cur.rowcount == 1

    def release_lease(self, profile_id: str, epoch: int) -> None:
        self._cur.execute(
            "UPDATE profiles SET lease_holder = NULL, lease_expires_at = NULL "
            "WHERE id = %s AND lease_epoch = %s",
            (profile_id, epoch),
        )

    def _live_leases(self, profile_id: str | None) -> list[tuple[str, Holder, int]]:
        rows = self._rows(
            "SELECT id, lease_holder, lease_epoch FROM profiles "
            f"WHERE lease_holder IS NOT NULL AND {_LIVE} "
            "AND (%(id)s::text IS NULL OR id = %(id)s::text) ORDER BY id",
            {"id": profile_id},
        )
        found = []
        for row in rows:
            with contextlib.suppress(ValueError):
                found.append(
                    (
                        row["id"],
                        Holder.model_validate_json(row["lease_holder"]),
                        int(row["lease_epoch"]),
                    )
                )
        return found

    def lease_holder(self, profile_id: str) -> tuple[Holder, int] | None:
        found = self._live_leases(profile_id)
        return (found[0][1], found[0][2]) if found else None

    def leases(self) -> list[tuple[str, Holder, int]]:
        return self._live_leases(None)

    # ---------------------------------------------------------------- byte writers / collector
    def register_blob_writer(self, writer_id: str, *, ttl: float) -> bool:
        self._cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_BLOB_WRITERS,))
        if self._row("SELECT 1 FROM blob_collector WHERE expires_at >= clock_timestamp()"):
            return False
        # A collector lock that lapsed goes: its holder learns it at its next renewal.
        self._cur.execute("DELETE FROM blob_collector")
        self._cur.execute(
            f"INSERT INTO blob_writers (id, expires_at) VALUES (%(id)s, {_EXPIRES}) "
            "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
            {"id": writer_id, "ttl": ttl},
        )
        return True

    def renew_blob_writer(self, writer_id: str, *, ttl: float) -> bool:
        # The row lock orders this with a collector's DELETE of lapsed writers: either the
        # collector finds the row renewed (live), or this finds it gone.
        self._cur.execute(
            f"UPDATE blob_writers SET expires_at = {_EXPIRES} WHERE id = %(id)s",
            {"id": writer_id, "ttl": ttl},
        )
        return self._cur.rowcount == 1

    def unregister_blob_writer(self, writer_id: str) -> None:
        self._cur.execute("DELETE FROM blob_writers WHERE id = %s", (writer_id,))

    def acquire_collector(self, collector_id: str, *, ttl: float) -> bool:
        self._cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_BLOB_WRITERS,))
        self._cur.execute("DELETE FROM blob_writers WHERE expires_at < clock_timestamp()")
        busy = self._row(
            "SELECT EXISTS (SELECT 1 FROM blob_writers) OR EXISTS (SELECT 1 FROM blob_collector "
            "WHERE expires_at >= clock_timestamp() AND id <> %s) AS busy",
            (collector_id,),
        )
        if busy is None or busy["busy"]:
            return False
        self._cur.execute(
            "INSERT INTO blob_collector (only_one, id, expires_at) "
            f"VALUES (true, %(id)s, {_EXPIRES}) "
            "ON CONFLICT (only_one) DO UPDATE SET id = excluded.id, "
            "expires_at = excluded.expires_at",
            {"id": collector_id, "ttl": ttl},
        )
        return True

    def renew_collector(self, collector_id: str, *, ttl: float) -> bool:
        self._cur.execute(
            f"UPDATE blob_collector SET expires_at = {_EXPIRES} WHERE id = %(id)s",
            {"id": collector_id, "ttl": ttl},
        )
        return self._cur.rowcount == 1

    def release_collector(self, collector_id: str) -> None:
        self._cur.execute("DELETE FROM blob_collector WHERE id = %s", (collector_id,))

    # ---------------------------------------------------------------- engine caches
    def engine_cache_get(self, engine: str, key: str) -> str | None:
        check_engine_cache_ref(engine, key)
        row = self._row(
            "SELECT checksum FROM engine_caches WHERE engine = %s AND build_key = %s",
            (engine, key),
        )
        return None if row is None else str(row["checksum"])

    def engine_cache_put(self, engine: str, key: str, checksum: str) -> None:
        check_engine_cache_ref(engine, key, checksum)
        # One statement: concurrent puts of one build serialise on the row, the last wins.
        self._cur.execute(
            "INSERT INTO engine_caches (engine, build_key, checksum, updated_at) "
            "VALUES (%s, %s, %s, clock_timestamp()) ON CONFLICT (engine, build_key) "
            "DO UPDATE SET checksum = excluded.checksum, updated_at = excluded.updated_at",
            (engine, key, checksum),
        )

    def engine_cache_checksums(self) -> set[str]:
        return {row["checksum"] for row in self._rows("SELECT checksum FROM engine_caches")}


IDLE_IN_TRANSACTION_TIMEOUT = "30s"


def _configure_connection(conn: psycopg.Connection[Any]) -> None:
    """A process paused (SIGSTOP, a frozen VM) in the middle of a transaction must not hold
    its row locks over other machines forever: the server ends such a session after
    :data:`IDLE_IN_TRANSACTION_TIMEOUT`, and the paused writer's lease then expires as usual."""
    conn.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'")


# What libpq says when it was answered "no" rather than not answered (its messages carry no
# SQLSTATE on a failed connection): credentials, pg_hba.conf, a database or role missing.
_REFUSALS = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
)


def _refusal(exc: BaseException) -> bool:
    """Whether a connection error is the server refusing (not an outage)."""
    state = getattr(exc, "sqlstate", None) or ""
    if state[:2] in ("28", "3D", "42"):  # authorization, missing catalog, privileges
        return True
    text = str(exc).lower()
    return any(words in text for words in _REFUSALS)


class PostgresCatalog(Catalog):
    """The catalog in a PostgreSQL database (see the module docstring).

    ``url`` is a libpq connection URL or DSN (``postgresql://user:pw@host:5432/db``). The
    pool keeps ``min_size`` to ``max_size`` connections; ``connect_timeout`` bounds each
    connection attempt and the wait for a free pooled connection (seconds).
    """

    def __init__(
        self, url: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10
    ) -> None:
        self.location = redact_location(url)
        self._url = url
        self._secret = self._password(url)
        self._pid = os.getpid()
        self._closed = False
        self._close_lock = threading.Lock()
        kwargs: dict[str, Any] = {
            "autocommit": True,  # transactions are begun explicitly, with their isolation
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "playwright-profiles",
        }
        try:
            with psycopg.connect(url, **kwargs) as conn:
                self._migrate(conn)
        except psycopg.Error as exc:
            raise self._unavailable(exc, "connecting to it") from None
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max(min_size, max_size),
            open=False,
            check=ConnectionPool.check_connection,
            configure=_configure_connection,
            timeout=connect_timeout,
            name="profiles-catalog",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise self._unavailable(exc, "connecting to it") from None

    # ---------------------------------------------------------------- errors
    @staticmethod
    def _password(url: str) -> str | None:
        try:
            value = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            return None
        return str(value) if value else None

    def _cause(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        return text.replace(self._url, self.location)

    def _unavailable(self, exc: BaseException, doing: str) -> StorageUnavailable:
        cause = self._cause(exc)
        if doing == "committing a change":
            outcome = "The change may or may not have been committed"
        elif doing == "connecting to it":
            outcome = (
                "Check that the server is running and reachable, that the database exists "
                "and that the user name and password are right"
            )
        else:
            outcome = "Nothing was changed"
        error = StorageUnavailable(
            f"The store's catalog at {self.location} failed while {doing}: {cause}. "
            f"{outcome}; then try again.",
            home=self.location,
            cause=cause,
        )
        # The server down, unreachable, restarting or out of connections (a pool timeout
        # is one too): it may pass. A rule of the data, a bad query, refused credentials or
        # a missing database do not.
        error.transient = isinstance(
            exc, psycopg.OperationalError | psycopg.InterfaceError
        ) and not _refusal(exc)
        return error

    # ---------------------------------------------------------------- migrations
    def _too_new(self, version: int) -> ProfileError:
        return ProfileError(
            f"The catalog {self.location} has schema version {version}, newer than "
            f"this release knows ({len(MIGRATIONS)}). Upgrade playwright-profiles."
        )

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Up to date: nothing to lock or create (a role without DDL rights may open it).
            version = self._schema_version(conn)
            if version is not None and version > len(MIGRATIONS):
                raise self._too_new(version)
            if version == len(MIGRATIONS):
                return
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_MIGRATE,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "only_one boolean PRIMARY KEY DEFAULT true CHECK (only_one), "
                "version integer NOT NULL)"
            )
            conn.execute(
                "INSERT INTO schema_version (only_one, version) VALUES (true, 0) "
                "ON CONFLICT DO NOTHING"
            )
            version = self._schema_version(conn) or 0  # another process may have migrated
            if version > len(MIGRATIONS):
                raise self._too_new(version)
            for number in range(version + 1, len(MIGRATIONS) + 1):
                log.info("migrating catalog %s to schema version %d", self.location, number)
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement.encode())
                conn.execute("UPDATE schema_version SET version = %s", (number,))

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> int | None:
        """The stored schema version; ``None`` before the first migration."""
        exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        return None if row is None else int(row[0])

    # ---------------------------------------------------------------- transactions
    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[CatalogTransaction]:
        if os.getpid() != self._pid:
            raise ProfileError(
                "This PostgresCatalog was opened in another process (before a fork); open a "
                "new catalog in this process."
            )
        try:
            conn = self._pool.getconn()
        except psycopg.Error as exc:
            raise self._unavailable(exc, "getting a connection") from exc
        try:
            try:
                cursor = conn.cursor(row_factory=dict_row)
                cursor.execute(
                    "BEGIN ISOLATION LEVEL READ COMMITTED"
                    if write
                    else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
                )
            except psycopg.Error as exc:
                raise self._unavailable(exc, "starting a transaction") from exc
            try:
                yield _PostgresTransaction(cursor, write=write)
            except psycopg.Error as exc:
                self._rollback(conn)
                raise self._unavailable(exc, "writing" if write else "reading") from exc
            except BaseException:
                self._rollback(conn)
                raise
            try:
                cursor.execute("COMMIT")
            except psycopg.Error as exc:
                self._rollback(conn)
                raise self._unavailable(exc, "committing a change") from exc
            if cursor.statusmessage != "COMMIT":  # the transaction had failed: rolled back
                raise StorageUnavailable(
                    f"The store's catalog at {self.location} rolled back a transaction that "
                    "had failed. Nothing was changed; try again.",
                    home=self.location,
                    cause=cursor.statusmessage or "rolled back",
                )
        finally:
            self._pool.putconn(conn)

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        """Roll back if the connection is still usable; never mask the error that led here."""
        with contextlib.suppress(psycopg.Error):
            if not conn.closed:
                conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if os.getpid() == self._pid:
            self._pool.close()
