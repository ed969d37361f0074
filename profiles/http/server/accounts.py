"""Accounts, API keys and memberships of the profile server, and the registry its replicas
share: in one SQLite file, ``0600`` (:class:`SQLiteAccountsDB`, the default:
``<home>/accounts.sqlite3``), or in PostgreSQL (:class:`PostgresAccountsDB`, ``profiles serve
--accounts postgresql://...``), which replicas on several machines share. Both are one
interface, :class:`AccountsDB`, with the same SQL and the same behaviour;
:func:`open_accounts` picks one by its location.

- **accounts** ``acct_<uuid>``: a name, a tier (which gives the default profile cap,
  :data:`TIER_CAPS`), an optional cap of its own, and ``active`` (a deactivated account's keys get
  ``403 Account is deactivated``).
- **API keys** ``pk_<key id>_<secret>``: the secret is 32 random bytes (URL-safe base64),
  shown once when the key is created; only its SHA-256 is stored, looked up by the key id and
  compared in constant time. Scopes: ``read`` (GET) and ``admin`` (every write). Revoked
  keys stay listed, with the time they were revoked.
- **memberships**: an account may let another account's keys act on it with the header
  ``X-Account: <account id>``: role ``member`` reads, role ``admin`` reads and writes (the
  key's own scopes still apply).
- **used tokens**: the nonces of one-time tokens already used (every replica refuses them).
- **replicas** and **remote sessions**: each ``profiles serve`` replica's heartbeat and the
  record of every remote session it runs (:mod:`profiles.http.server.remote.registry`), so
  that any replica can list them and route a session's requests to the replica running it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Protocol

from profiles.errors import Conflict, NotFound, StorageUnavailable, ValidationFailed

__all__ = [
    "SCOPES",
    "TIER_CAPS",
    "TIER_RATE_LIMITS",
    "Account",
    "AccountsDB",
    "ApiKey",
    "Membership",
    "PostgresAccountsDB",
    "ReplicaRow",
    "Role",
    "SQLiteAccountsDB",
    "Scope",
    "SessionRow",
    "open_accounts",
]

Scope = Literal["read", "admin"]
Role = Literal["member", "admin"]
SCOPES: Final[tuple[Scope, ...]] = ("read", "admin")
ROLES: Final[tuple[Role, ...]] = ("member", "admin")

#: Profiles per account by tier, as the hosted API we follow caps them (docs/http-api.md);
#: ``None``: no cap (enterprise, negotiated).
TIER_CAPS: Final[dict[str, int | None]] = {
    "trial": 1,
    "solo": 5,
    "team": 50,
    "agency": 200,
    "api-starter": 10,
    "api-builder": 25,
    "api-scale": 100,
    "enterprise": None,
}

#: Requests per window (seconds) per account by tier, for traffic with a live API key
#: (``profiles serve --tier-rate-limit TIER=N/SECONDS`` overrides one). A session through
#: the HTTP store costs about four requests (lease renewals are not counted), so even a
#: trial account runs a session every few seconds for the whole window.
TIER_RATE_LIMITS: Final[dict[str, tuple[int, float]]] = {
    "trial": (600, 900.0),
    "solo": (1500, 900.0),
    "team": (6000, 900.0),
    "agency": (15000, 900.0),
    "api-starter": (3000, 900.0),
    "api-builder": (9000, 900.0),
    "api-scale": (30000, 900.0),
    "enterprise": (60000, 900.0),
}

KEY_PREFIX: Final = "pk_"
_KEY = re.compile(r"pk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", re.ASCII)
_ACCOUNT_ID = re.compile(r"acct_[0-9a-f-]{36}", re.ASCII)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    profile_cap INTEGER,
    active INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT,
    secret_sha256 TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS memberships (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    member_account_id TEXT NOT NULL REFERENCES accounts(id),
    role TEXT NOT NULL,
    PRIMARY KEY (account_id, member_account_id)
);
CREATE TABLE IF NOT EXISTS used_tokens (
    nonce TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS remote_sessions (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    replica_url TEXT NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS remote_sessions_account ON remote_sessions (account_id, created_at);
"""
#: The same tables in PostgreSQL (the same SQL but for the types of reals).
_PG_SCHEMA = _SCHEMA.replace(" REAL ", " DOUBLE PRECISION ")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    tier: str
    profile_cap: int | None  # the account's own cap; None: the tier's
    active: bool
    created_at: str

    @property
    def cap(self) -> int | None:
        """The profile cap in force: the account's own, else its tier's (None: no cap)."""
        return self.profile_cap if self.profile_cap is not None else TIER_CAPS.get(self.tier)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "tier": self.tier,
            "profile_cap": self.cap,
            "active": self.active,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str | None
    scopes: tuple[Scope, ...]
    created_at: str
    revoked_at: str | None

    @property
    def prefix(self) -> str:
        """What identifies the key without its secret (safe to show and log)."""
        return f"{KEY_PREFIX}{self.id}_..."

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "prefix": self.prefix,
            "account_id": self.account_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class Membership:
    account_id: str
    member_account_id: str
    role: Role


#: A session's statuses while its browser may run.
LIVE_STATUSES: Final[tuple[str, ...]] = ("starting", "running", "stopping")


@dataclass(frozen=True)
class ReplicaRow:
    """A replica of the service: how the others reach it and when it last said it lives."""

    id: str
    url: str
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class SessionRow:
    """A remote session as the registry holds it: the replica running it (and that
    replica's last heartbeat, ``None`` if it never had one), and its record as JSON."""

    id: str
    account_id: str
    replica_id: str
    replica_url: str
    status: str
    record: str
    created_at: float
    updated_at: float
    heartbeat_at: float | None


class _Tx(Protocol):
    """What a transaction of either database answers (``?`` placeholders)."""

    def execute(self, query: str, params: Sequence[Any] = ()) -> int: ...

    def fetch(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...


def _session_row(row: dict[str, Any]) -> SessionRow:
    beat = row.get("heartbeat_at")
    return SessionRow(
        id=row["id"],
        account_id=row["account_id"],
        replica_id=row["replica_id"],
        replica_url=row["replica_url"],
        status=row["status"],
        record=row["record"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        heartbeat_at=None if beat is None else float(beat),
    )


_SESSION_SELECT = (
    "SELECT s.*, r.heartbeat_at AS heartbeat_at FROM remote_sessions s "
    "LEFT JOIN replicas r ON r.id = s.replica_id"
)


class AccountsDB(ABC):
    """The accounts database: one interface, the same SQL, two databases
    (:class:`SQLiteAccountsDB`, :class:`PostgresAccountsDB`). Thread-safe."""

    #: Where it is, for messages (never a password).
    location: str

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[_Tx]:
        """One transaction: committed at the end of the block, rolled back on an error."""

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._transaction() as tx:
            return tx.fetch(query, params)

    def __enter__(self) -> AccountsDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # accounts
    def create_account(
        self, name: str, *, tier: str = "team", profile_cap: int | None = None
    ) -> Account:
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise ValidationFailed("Account name must be 1 to 100 characters.", field="name")
        if tier not in TIER_CAPS:
            raise ValidationFailed(
                f"Unknown tier {tier!r}; use one of {', '.join(TIER_CAPS)}.", field="tier"
            )
        if profile_cap is not None and (isinstance(profile_cap, bool) or profile_cap < 0):
            raise ValidationFailed("profile_cap must be at least 0.", field="profile_cap")
        account = Account(
            id=f"acct_{uuid.uuid4()}",
            name=name,
            tier=tier,
            profile_cap=profile_cap,
            active=True,
            created_at=_now(),
        )
        with self._transaction() as c:
            c.execute(
                "INSERT INTO accounts (id, name, tier, profile_cap, active, created_at) "
                "VALUES (?, ?, ?, ?, 1, ?)",
                (account.id, name, tier, profile_cap, account.created_at),
            )
        return account

    @staticmethod
    def _account(row: dict[str, Any]) -> Account:
        return Account(
            id=row["id"],
            name=row["name"],
            tier=row["tier"],
            profile_cap=row["profile_cap"],
            active=bool(row["active"]),
            created_at=row["created_at"],
        )

    def get_account(self, account_id: str) -> Account:
        rows = self._read("SELECT * FROM accounts WHERE id = ?", (account_id,))
        if not rows:
            raise NotFound(f"Account {account_id!r} not found.", resource="account")
        return self._account(rows[0])

    def accounts(self) -> list[Account]:
        rows = self._read("SELECT * FROM accounts ORDER BY created_at, id")
        return [self._account(r) for r in rows]

    def set_active(self, account_id: str, active: bool) -> Account:
        with self._transaction() as c:
            count = c.execute(
                "UPDATE accounts SET active = ? WHERE id = ?", (int(active), account_id)
            )
        if count == 0:
            raise NotFound(f"Account {account_id!r} not found.", resource="account")
        return self.get_account(account_id)

    def set_tier(
        self, account_id: str, *, tier: str | None = None, profile_cap: int | None = None
    ) -> Account:
        current = self.get_account(account_id)
        new_tier = tier if tier is not None else current.tier
        if new_tier not in TIER_CAPS:
            raise ValidationFailed(f"Unknown tier {new_tier!r}.", field="tier")
        with self._transaction() as c:
            c.execute(
                "UPDATE accounts SET tier = ?, profile_cap = ? WHERE id = ?",
                (new_tier, profile_cap, account_id),
            )
        return self.get_account(account_id)

    # keys
    def create_key(
        self,
        account_id: str,
        *,
        scopes: Iterable[str] = SCOPES,
        name: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the account and its token (shown once; only its hash is kept)."""
        wanted = tuple(dict.fromkeys(scopes))
        if not wanted or any(s not in SCOPES for s in wanted):
            raise ValidationFailed(
                f"Scopes must be among {', '.join(SCOPES)}; got {list(wanted)!r}.",
                field="scopes",
            )
        self.get_account(account_id)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(
            id=key_id,
            account_id=account_id,
            name=name,
            scopes=tuple(s for s in SCOPES if s in wanted),
            created_at=_now(),
            revoked_at=None,
        )
        with self._transaction() as c:
            c.execute(
                "INSERT INTO api_keys (id, account_id, name, secret_sha256, scopes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, account_id, name, _digest(secret), " ".join(key.scopes), key.created_at),
            )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    @staticmethod
    def _key(row: dict[str, Any]) -> ApiKey:
        scopes = tuple(s for s in SCOPES if s in str(row["scopes"]).split())
        return ApiKey(
            id=row["id"],
            account_id=row["account_id"],
            name=row["name"],
            scopes=scopes,
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )

    def keys(self, account_id: str | None = None) -> list[ApiKey]:
        if account_id is None:
            rows = self._read("SELECT * FROM api_keys ORDER BY created_at, id")
        else:
            rows = self._read(
                "SELECT * FROM api_keys WHERE account_id = ? ORDER BY created_at, id",
                (account_id,),
            )
        return [self._key(r) for r in rows]

    def get_key(self, key_id: str) -> ApiKey:
        """The key ``key_id`` names, revoked or not (``NotFound`` if there is none)."""
        rows = self._read("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFound(f"API key {key_id!r} not found.", resource="api_key")
        return self._key(rows[0])

    def revoke_key(self, key_id: str) -> ApiKey:
        key_id = key_id.removeprefix(KEY_PREFIX).split("_", 1)[0]
        with self._transaction() as c:
            count = c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            )
            rows = c.fetch("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            raise NotFound(f"API key {key_id!r} not found.", resource="api_key")
        if count == 0:
            raise Conflict(f"API key {key_id!r} is already revoked.", field="key")
        return self._key(rows[0])

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key ``token`` names, or ``None`` (unknown, wrong secret, revoked)."""
        match = _KEY.fullmatch(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        rows = self._read("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        if not rows:
            _digest(secret)  # the same work either way
            return None
        row = rows[0]
        if not hmac.compare_digest(str(row["secret_sha256"]), _digest(secret)):
            return None
        if row["revoked_at"] is not None:
            return None
        return self._key(row)

    def identify(self, token: str) -> tuple[ApiKey, Account] | None:
        """The live key ``token`` names and its (active) account, or ``None``: one
        primary-key read and one SHA-256, whatever the token (the rate limiter calls this
        for every request that carries something shaped like a key)."""
        match = _KEY.fullmatch(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        digest = _digest(secret)
        rows = self._read(
            "SELECT k.*, a.name AS a_name, a.tier AS a_tier, a.profile_cap AS a_cap, "
            "a.active AS a_active, a.created_at AS a_created FROM api_keys k "
            "JOIN accounts a ON a.id = k.account_id WHERE k.id = ?",
            (key_id,),
        )
        row = rows[0] if rows else None
        if row is None or not hmac.compare_digest(str(row["secret_sha256"]), digest):
            return None
        if row["revoked_at"] is not None or not row["a_active"]:
            return None
        account = Account(
            id=row["account_id"],
            name=row["a_name"],
            tier=row["a_tier"],
            profile_cap=row["a_cap"],
            active=True,
            created_at=row["a_created"],
        )
        return self._key(row), account

    # memberships
    def add_member(self, account_id: str, member_account_id: str, role: str) -> Membership:
        if role not in ROLES:
            raise ValidationFailed(f"Role must be member or admin; got {role!r}.", field="role")
        self.get_account(account_id)
        self.get_account(member_account_id)
        with self._transaction() as c:
            c.execute(
                "INSERT INTO memberships (account_id, member_account_id, role) VALUES (?, ?, ?) "
                "ON CONFLICT (account_id, member_account_id) DO UPDATE SET role = excluded.role",
                (account_id, member_account_id, role),
            )
        return Membership(account_id, member_account_id, "admin" if role == "admin" else "member")

    def remove_member(self, account_id: str, member_account_id: str) -> None:
        with self._transaction() as c:
            c.execute(
                "DELETE FROM memberships WHERE account_id = ? AND member_account_id = ?",
                (account_id, member_account_id),
            )

    def role(self, account_id: str, member_account_id: str) -> Role | None:
        """The role ``member_account_id`` has on ``account_id``, if it is a member."""
        if not _ACCOUNT_ID.fullmatch(account_id):
            return None
        rows = self._read(
            "SELECT role FROM memberships WHERE account_id = ? AND member_account_id = ?",
            (account_id, member_account_id),
        )
        if not rows:
            return None
        return "admin" if rows[0]["role"] == "admin" else "member"

    # one-time tokens
    def claim_token(self, nonce: str, expires_at: float) -> bool:
        """Mark a one-time token used: ``True`` the first time, ``False`` after that.
        Entries past their expiry are forgotten (the signature refuses those anyway)."""
        with self._transaction() as c:
            c.execute("DELETE FROM used_tokens WHERE expires_at < ?", (time.time() - 60,))
            count = c.execute(
                "INSERT INTO used_tokens (nonce, expires_at) VALUES (?, ?) "
                "ON CONFLICT (nonce) DO NOTHING",
                (nonce, expires_at),
            )
        return count == 1

    # replicas and their remote sessions
    def replica_heartbeat(self, replica_id: str, url: str, *, now: float | None = None) -> None:
        """The replica lives (and is reached at ``url``): its heartbeat is ``now``."""
        at = time.time() if now is None else now
        with self._transaction() as c:
            c.execute(
                "INSERT INTO replicas (id, url, started_at, heartbeat_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET url = excluded.url, "
                "heartbeat_at = excluded.heartbeat_at",
                (replica_id, url, at, at),
            )

    def replicas(self) -> list[ReplicaRow]:
        rows = self._read("SELECT * FROM replicas ORDER BY started_at, id")
        return [
            ReplicaRow(
                id=r["id"],
                url=r["url"],
                started_at=float(r["started_at"]),
                heartbeat_at=float(r["heartbeat_at"]),
            )
            for r in rows
        ]

    def remove_replica(self, replica_id: str) -> None:
        """The replica is gone for good (it stopped): its row goes (its sessions stay)."""
        with self._transaction() as c:
            c.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))

    def put_session(
        self,
        session_id: str,
        *,
        account_id: str,
        replica_id: str,
        replica_url: str,
        status: str,
        record: str,
        created_at: float,
    ) -> None:
        """Write a remote session's record (a new one, or its change)."""
        with self._transaction() as c:
            c.execute(
                "INSERT INTO remote_sessions (id, account_id, replica_id, replica_url, status, "
                "record, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
                "record = excluded.record, updated_at = excluded.updated_at",
                (
                    session_id,
                    account_id,
                    replica_id,
                    replica_url,
                    status,
                    record,
                    created_at,
                    time.time(),
                ),
            )

    def get_session(self, session_id: str) -> SessionRow | None:
        rows = self._read(f"{_SESSION_SELECT} WHERE s.id = ?", (session_id,))
        return _session_row(rows[0]) if rows else None

    def sessions(
        self, account_id: str | None = None, *, replica_id: str | None = None
    ) -> list[SessionRow]:
        """The account's sessions (or every account's) on every replica (or on one),
        oldest first."""
        clauses, params = [], []
        if account_id is not None:
            clauses.append("s.account_id = ?")
            params.append(account_id)
        if replica_id is not None:
            clauses.append("s.replica_id = ?")
            params.append(replica_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(f"{_SESSION_SELECT}{where} ORDER BY s.created_at, s.id", params)
        return [_session_row(r) for r in rows]

    def forget_sessions(self, *, ended_before: float, live: Sequence[str] = LIVE_STATUSES) -> int:
        """Delete the records of sessions that ended (or whose replica stopped beating)
        before ``ended_before``; how many went."""
        marks = ", ".join("?" for _ in live)
        with self._transaction() as c:
            return c.execute(
                f"DELETE FROM remote_sessions WHERE updated_at < ? AND (status NOT IN ({marks}) "
                "OR replica_id NOT IN (SELECT id FROM replicas WHERE heartbeat_at >= ?))",
                (ended_before, *live, ended_before),
            )


class _SQLiteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(query, tuple(params)).rowcount

    def fetch(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(query, tuple(params)).fetchall()]


class SQLiteAccountsDB(AccountsDB):
    """The accounts database in one SQLite file, ``0600`` (one connection under a lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 10000")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._transaction() as c:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:  # a read needs no write lock on the file
            return _SQLiteTx(self._conn).fetch(query, params)


class _PostgresTx:
    def __init__(self, cursor: Any) -> None:
        self._cur = cursor

    def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(query.replace("?", "%s"), tuple(params))
        return int(self._cur.rowcount)

    def fetch(self, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._cur.execute(query.replace("?", "%s"), tuple(params))
        return [dict(r) for r in self._cur.fetchall()]


#: The key of the advisory lock that serialises making the tables (any constant).
_LOCK_SCHEMA = 0x70726F66_00000A01


class PostgresAccountsDB(AccountsDB):
    """The accounts database in PostgreSQL (``postgresql://user:pw@host/db``), which the
    replicas of a service on several machines share. The tables are made on first use
    (under an advisory lock, so replicas starting at once do not race); they can live in
    the database of a catalog (their names are their own). Through a small connection
    pool; an unreachable database is ``StorageUnavailable`` naming the URL without its
    password."""

    def __init__(self, url: str, *, max_size: int = 8, connect_timeout: float = 10) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        from profiles.catalog.postgres import redact_location

        self.location = redact_location(url)
        self._url = url
        self._psycopg_error = psycopg.Error
        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout)),
            "application_name": "playwright-profiles-accounts",
            "row_factory": dict_row,
        }
        try:
            with psycopg.connect(url, **kwargs) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_SCHEMA,))
                for statement in _PG_SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        self._pool: Any = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=max_size,
            open=False,
            check=ConnectionPool.check_connection,
            timeout=connect_timeout,
            name="profiles-accounts",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        cause = cause.replace(self._url, self.location)
        error = StorageUnavailable(
            f"The accounts database at {self.location} failed: {cause}. Check that the "
            "server is running and reachable, then try again.",
            home=self.location,
            cause=cause,
        )
        error.transient = True
        return error

    def close(self) -> None:
        self._pool.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield _PostgresTx(cur)
        except self._psycopg_error as exc:
            raise self._unavailable(exc) from None


def open_accounts(where: str | Path) -> AccountsDB:
    """The accounts database at ``where``: a ``postgresql://`` URL, else a SQLite file."""
    text = str(where)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresAccountsDB(text)
    return SQLiteAccountsDB(Path(text).expanduser())
