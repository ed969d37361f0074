"""What ``profiles serve`` runs with (:class:`ServerConfig`), its limits, and the store of
each account (:class:`AccountStores`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from profiles.blobs import LocalBlobStore
from profiles.catalog import SQLiteCatalog
from profiles.http.server.accounts import TIER_RATE_LIMITS, Account
from profiles.http.server.ratelimit import DEFAULT_ADDRESS_LIMIT, RateLimit
from profiles.service.catalog import CatalogService
from profiles.store import ProfileStore
from profiles.workspace.leases import DEFAULT_LEASE_TTL

MAX_UPLOAD_BYTES: Final = 500 * 1024 * 1024
MAX_JSON_BODY: Final = 1024 * 1024
MAX_LEASE_WAIT: Final = 60.0
SERVER_LEASE_TTL: Final = 600.0
UPLOAD_LOCK_WAIT: Final = 10.0
MAX_STATE_OPERATIONS: Final = 8
MAX_PAGE_NUMBER: Final = 10_000
REPLICA_TIMEOUT: Final = 30.0
SECRET_FILE_ENV: Final = "PROFILES_SERVER_SECRET_FILE"
SCRATCH_PREFIX: Final = "http-"
ARCHETYPE_OF: Final = {
    "chromium": "desktop-chromium",
    "firefox": "desktop-firefox",
    "webkit": "desktop-webkit",
}


# ------------------------------------------------------------------ configuration


@dataclass
class ServerConfig:
    """What ``profiles serve`` runs with.

    ``catalog``/``blobs`` are URL templates for a shared backend: ``{account}`` is replaced
    by the account id with ``-`` as ``_`` (``acct_1234_...``), so each account gets its own
    database (or schema, through ``options=-c search_path={account}``) and its own bucket
    prefix. Without them, each account's store is embedded under
    ``<home>/accounts/<account id>/``.
    """

    home: Path
    catalog: str | None = None
    blobs: str | None = None
    rate_limit: RateLimit | None = DEFAULT_ADDRESS_LIMIT  # per address, without a live key
    tier_rate_limits: dict[str, RateLimit | None] = field(
        default_factory=lambda: {t: RateLimit(n, w) for t, (n, w) in TIER_RATE_LIMITS.items()}
    )
    download_expires_in: float = 3600.0
    upload_expires_in: float = 3600.0
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    public_url: str | None = None
    max_lease_wait: float = MAX_LEASE_WAIT
    max_state_operations: int = MAX_STATE_OPERATIONS  # per account at once
    #: Remote sessions running at once on this service (None: from the machine's memory),
    #: and per account by tier over the defaults (profiles.http.server.remote.limits).
    max_sessions: int | None = None
    tier_session_caps: dict[str, int | None] = field(default_factory=dict)
    #: The accounts database: a ``postgresql://`` URL that replicas share, or a SQLite file
    #: (None: ``<home>/accounts.sqlite3``).
    accounts: str | None = None
    #: The signing secret's file (None: ``$PROFILES_SERVER_SECRET_FILE``, else
    #: ``<home>/server-secret``, made on first start). Replicas need the same secret.
    secret_file: Path | None = None
    #: This replica: its id in the registry (None: a new one at every start) and the URL
    #: other replicas reach it at (None: http://HOST:PORT, filled in by ``serve``).
    replica_id: str | None = None
    replica_url: str | None = None
    #: A replica whose heartbeat is older than this is gone: its sessions are failed.
    replica_timeout: float = REPLICA_TIMEOUT
    #: The writer lease's time to live of a remote session (renewed at a third of it): how
    #: long a profile stays busy after the replica running its session died.
    session_lease_ttl: float = DEFAULT_LEASE_TTL

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        if self.secret_file is None and os.environ.get(SECRET_FILE_ENV):
            self.secret_file = Path(os.environ[SECRET_FILE_ENV])
        if self.secret_file is not None:
            self.secret_file = Path(self.secret_file).expanduser()
        if self.replica_timeout <= 0 or self.session_lease_ttl <= 0:
            raise ValueError("the replica timeout and the session lease ttl must be above 0")
        if self.max_state_operations < 1:
            raise ValueError("an account needs at least one state operation at a time")
        if (self.catalog is None) != (self.blobs is None):
            raise ValueError("--catalog and --blobs go together (or neither)")
        for url in (self.catalog, self.blobs):
            if url is not None and "{account}" not in url:
                raise ValueError(
                    "a shared backend URL must hold {account}, so that every account gets its "
                    "own catalog and bucket prefix"
                )


class AccountStores:
    """One ProfileStore per account, opened on first use and kept."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.root = config.home / "accounts"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._stores: dict[str, ProfileStore] = {}
        self._lock = threading.Lock()

    def get(self, account: Account) -> ProfileStore:
        with self._lock:
            store = self._stores.get(account.id)
            if store is None:
                store = self._open(account.id)
                self._stores[account.id] = store
        if isinstance(store.service, CatalogService):
            store.service.max_profiles = account.cap
        return store

    def _open(self, account_id: str) -> ProfileStore:
        home = self.root / account_id
        if self.config.catalog is not None and self.config.blobs is not None:
            slot = account_id.replace("-", "_")
            store = ProfileStore(
                home,
                catalog=self.config.catalog.replace("{account}", slot),
                blobs=self.config.blobs.replace("{account}", slot),
                lease_ttl=self.config.session_lease_ttl,
            )
        else:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = ProfileStore(
                home,
                catalog=SQLiteCatalog(home / "catalog.sqlite3"),
                blobs=LocalBlobStore(home / "blobs"),
                lease_ttl=self.config.session_lease_ttl,
            )
        # Remote writers hold leases with expiry: the catalog decides who writes, as on a
        # shared backend, whatever this store's catalog is.
        store.shared = True
        (home / "pending").mkdir(mode=0o700, exist_ok=True)
        sweep_old(store.tmp_dir, SCRATCH_PREFIX, 24 * 3600)
        return store

    def close(self) -> None:
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()


def sweep_old(root: Path, prefix: str, age: float) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if now - entry.lstat().st_mtime > age:
                        shutil.rmtree(entry, ignore_errors=True)
