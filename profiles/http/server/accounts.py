"""Accounts, API keys and memberships of the profile server: one SQLite file, ``0600``.

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
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from profiles.errors import Conflict, NotFound, ValidationFailed

__all__ = [
    "SCOPES",
    "TIER_CAPS",
    "TIER_RATE_LIMITS",
    "Account",
    "AccountsDB",
    "ApiKey",
    "Membership",
    "Role",
    "Scope",
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
"""


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


class AccountsDB:
    """The accounts database (thread-safe: one connection under a lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
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
        with self._tx() as c:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AccountsDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

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
        with self._tx() as c:
            c.execute(
                "INSERT INTO accounts (id, name, tier, profile_cap, active, created_at) "
                "VALUES (?, ?, ?, ?, 1, ?)",
                (account.id, name, tier, profile_cap, account.created_at),
            )
        return account

    @staticmethod
    def _account(row: sqlite3.Row) -> Account:
        return Account(
            id=row["id"],
            name=row["name"],
            tier=row["tier"],
            profile_cap=row["profile_cap"],
            active=bool(row["active"]),
            created_at=row["created_at"],
        )

    def get_account(self, account_id: str) -> Account:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
        if row is None:
            raise NotFound(f"Account {account_id!r} not found.", resource="account")
        return self._account(row)

    def accounts(self) -> list[Account]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM accounts ORDER BY created_at").fetchall()
        return [self._account(r) for r in rows]

    def set_active(self, account_id: str, active: bool) -> Account:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE accounts SET active = ? WHERE id = ?", (int(active), account_id)
            )
        if cur.rowcount == 0:
            raise NotFound(f"Account {account_id!r} not found.", resource="account")
        return self.get_account(account_id)

    def set_tier(
        self, account_id: str, *, tier: str | None = None, profile_cap: int | None = None
    ) -> Account:
        current = self.get_account(account_id)
        new_tier = tier if tier is not None else current.tier
        if new_tier not in TIER_CAPS:
            raise ValidationFailed(f"Unknown tier {new_tier!r}.", field="tier")
        with self._tx() as c:
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
        with self._tx() as c:
            c.execute(
                "INSERT INTO api_keys (id, account_id, name, secret_sha256, scopes, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key_id, account_id, name, _digest(secret), " ".join(key.scopes), key.created_at),
            )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    @staticmethod
    def _key(row: sqlite3.Row) -> ApiKey:
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
        with self._lock:
            if account_id is None:
                rows = self._conn.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT * FROM api_keys WHERE account_id = ? ORDER BY created_at",
                    (account_id,),
                ).fetchall()
        return [self._key(r) for r in rows]

    def get_key(self, key_id: str) -> ApiKey:
        """The key ``key_id`` names, revoked or not (``NotFound`` if there is none)."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id!r} not found.", resource="api_key")
        return self._key(row)

    def revoke_key(self, key_id: str) -> ApiKey:
        key_id = key_id.removeprefix(KEY_PREFIX).split("_", 1)[0]
        with self._tx() as c:
            cur = c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (_now(), key_id),
            )
            row = c.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"API key {key_id!r} not found.", resource="api_key")
        if cur.rowcount == 0:
            raise Conflict(f"API key {key_id!r} is already revoked.", field="key")
        return self._key(row)

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key ``token`` names, or ``None`` (unknown, wrong secret, revoked)."""
        match = _KEY.fullmatch(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._lock:
            row = self._conn.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            _digest(secret)  # the same work either way
            return None
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
        with self._lock:
            row = self._conn.execute(
                "SELECT k.*, a.name AS a_name, a.tier AS a_tier, a.profile_cap AS a_cap, "
                "a.active AS a_active, a.created_at AS a_created FROM api_keys k "
                "JOIN accounts a ON a.id = k.account_id WHERE k.id = ?",
                (key_id,),
            ).fetchone()
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
        with self._tx() as c:
            c.execute(
                "INSERT INTO memberships (account_id, member_account_id, role) VALUES (?, ?, ?) "
                "ON CONFLICT (account_id, member_account_id) DO UPDATE SET role = excluded.role",
                (account_id, member_account_id, role),
            )
        return Membership(account_id, member_account_id, "admin" if role == "admin" else "member")

    def remove_member(self, account_id: str, member_account_id: str) -> None:
        with self._tx() as c:
            c.execute(
                "DELETE FROM memberships WHERE account_id = ? AND member_account_id = ?",
                (account_id, member_account_id),
            )

    def role(self, account_id: str, member_account_id: str) -> Role | None:
        """The role ``member_account_id`` has on ``account_id``, if it is a member."""
        if not _ACCOUNT_ID.fullmatch(account_id):
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT role FROM memberships WHERE account_id = ? AND member_account_id = ?",
                (account_id, member_account_id),
            ).fetchone()
        if row is None:
            return None
        return "admin" if row["role"] == "admin" else "member"

    # one-time tokens
    def claim_token(self, nonce: str, expires_at: float) -> bool:
        """Mark a one-time token used: ``True`` the first time, ``False`` after that.
        Entries past their expiry are forgotten (the signature refuses those anyway)."""
        import time

        with self._tx() as c:
            c.execute("DELETE FROM used_tokens WHERE expires_at < ?", (time.time() - 60,))
            cur = c.execute(
                "INSERT OR IGNORE INTO used_tokens (nonce, expires_at) VALUES (?, ?)",
                (nonce, expires_at),
            )
        return cur.rowcount == 1
