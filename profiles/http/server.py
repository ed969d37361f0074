"""The profile service over HTTP: ``profiles serve`` (FastAPI, run by uvicorn).

Every account owns a :class:`~profiles.store.ProfileStore` of its own (isolation by
construction: a profile of another account is simply not in the caller's store, so it is
``404``, never ``403``). API keys, accounts and memberships live in ``<home>/accounts.sqlite3``
(:mod:`profiles.http.accounts`); download links and upload targets are HMAC-signed with the
secret in ``<home>/server-secret`` (:mod:`profiles.http.signing`); request bodies are streamed
to disk under a cap (:mod:`profiles.http.server_streams`); sliding-window rate limits per
account (by tier, for live keys) and per client address (everything else) sit in front of
everything (:mod:`profiles.http.ratelimit`).

Errors are ``{"error": {"code", "status", "message", ...details}}``, the
:meth:`~profiles.errors.ProfileError.to_dict` of the error, with the messages of the hosted
APIs in ``shared/reference`` where they name one (``API key required``, ``Invalid or
revoked API key``, ``Account is deactivated``, ``API key missing required permission:
admin``, ``No file provided``, ``Only .tar.gz files are allowed``, ``Profile has no data to
download``). Invalid request bodies and parameters are ``400 ValidationFailed``, except on
``complete-upload`` where doc 003 says ``422``.

Nothing here logs an API key, a token or a URL path (download and upload tokens are in
paths): uvicorn's access log is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal, TypeVar, cast

import anyio.to_thread
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from profiles.blobs import LocalBlobStore
from profiles.catalog import SQLiteCatalog
from profiles.errors import (
    ArchiveInvalid,
    ChecksumMismatch,
    Conflict,
    Forbidden,
    NotFound,
    ProfileBusy,
    ProfileError,
    TierLimit,
    Unauthorized,
    ValidationFailed,
)
from profiles.http.access_log import AccessLogMiddleware
from profiles.http.accounts import TIER_RATE_LIMITS, Account, AccountsDB, ApiKey
from profiles.http.outcome import OUTCOME_HEADER, OUTCOME_VERSION, trailer
from profiles.http.ratelimit import DEFAULT_ADDRESS_LIMIT, RateLimit, RateLimitMiddleware
from profiles.http.schemas import (
    AuditPage,
    CloneBody,
    CompleteUploadBody,
    CreateBody,
    DownloadLink,
    ErrorBody,
    EventBody,
    Health,
    LeaseBody,
    LeaseGrantBody,
    LeaseHolderBody,
    LeaseList,
    LeaseRow,
    PatchBody,
    ProfileList,
    RenewBody,
    RenewResult,
    RestoreBody,
    SessionEndBody,
    SessionStartBody,
    SimilarNames,
    SnapshotBody,
    SnapshotPage,
    UploadTarget,
)
from profiles.http.server_streams import (
    NOT_GZIP,
    archive_codec,
    drain,
    spool_body,
    spool_multipart,
)
from profiles.http.signing import Signer, load_secret
from profiles.models import AuditType, Holder, Page, Profile, Snapshot, new_id, utcnow
from profiles.redact import redact_text
from profiles.service.catalog import CatalogService
from profiles.service.protocol import UNSET, Unset
from profiles.state.archive import Codec, not_an_archive
from profiles.state.rules import ENGINES
from profiles.store import ProfileStore
from profiles.validation import (
    check_browser_version,
    check_description,
    check_labels,
    check_name,
)

__all__ = ["Forbidden", "ServerConfig", "Unauthorized", "create_app"]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES: Final = 500 * 1024 * 1024
MAX_JSON_BODY: Final = 1024 * 1024
MAX_LEASE_WAIT: Final = 60.0
SERVER_LEASE_TTL: Final = 600.0
UPLOAD_LOCK_WAIT: Final = 10.0
MAX_PAGE_NUMBER: Final = 10_000
SCRATCH_PREFIX: Final = "http-"
ARCHETYPE_OF: Final = {
    "chromium": "desktop-chromium",
    "firefox": "desktop-firefox",
    "webkit": "desktop-webkit",
}
_CHECKSUM = re.compile(r"[0-9a-f]{64}", re.ASCII)
_PROFILE_ID = re.compile(r"prof_[0-9a-f-]{36}", re.ASCII)

T = TypeVar("T")


# ------------------------------------------------------------------ errors


def _error_response(err: ProfileError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": err.to_dict()}, status_code=err.status, headers=headers)


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

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
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
            )
        else:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = ProfileStore(
                home,
                catalog=SQLiteCatalog(home / "catalog.sqlite3"),
                blobs=LocalBlobStore(home / "blobs"),
            )
        # Remote writers hold leases with expiry: the catalog decides who writes, as on a
        # shared backend, whatever this store's catalog is.
        store.shared = True
        (home / "pending").mkdir(mode=0o700, exist_ok=True)
        _sweep_old(store.tmp_dir, SCRATCH_PREFIX, 24 * 3600)
        return store

    def close(self) -> None:
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            with contextlib.suppress(Exception):
                store.close()


def _sweep_old(root: Path, prefix: str, age: float) -> None:
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if now - entry.lstat().st_mtime > age:
                        shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _scratch(store: ProfileStore) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=store.tmp_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _run(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


P = TypeVar("P", bound=Page[Any])


def _page(cls: type[P], page: Page[Any]) -> P:
    return cls(data=page.data, has_more=page.has_more, next_cursor=page.next_cursor)


# ------------------------------------------------------------------ the OpenAPI document

_ERROR_DESCRIPTIONS: Final = {
    400: "Invalid request: ValidationFailed, ArchiveInvalid, ChecksumMismatch, NoStateData",
    401: "Unauthorized: API key required, or invalid or revoked",
    403: "Forbidden: a missing permission, a deactivated account, a bad signature",
    404: "NotFound: no such profile, snapshot or account in this account's store",
    409: "Conflict: a name in use, ProfileBusy (another writer), LeaseLost, BrowserDowngrade",
    410: "LinkExpired: the signed link or upload target expired or no longer applies",
    413: "The body is larger than the cap (ArchiveInvalid or ValidationFailed, status 413)",
    422: "Invalid request (doc 003 answers 422 on this route)",
    429: "RateLimited (Retry-After), or TierLimit: the account's profile cap",
}
AUTH: Final = (400, 401, 403, 429)  # every route with an API key
READ: Final = AUTH
WRITE: Final = (*AUTH, 413)  # and a JSON body


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, each the one ``ErrorBody`` shape."""
    return {s: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[s]} for s in statuses}


def _binary(description: str, *media_types: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    return {"description": description, "content": {m: {"schema": schema} for m in media_types}}


def _multipart(
    title: str,
    fields: dict[str, dict[str, Any]],
    description: str,
    *,
    required: tuple[str, ...] = ("file",),
) -> dict[str, Any]:
    """The ``multipart/form-data`` request body of a streamed upload route (its handler
    reads the request itself, through :func:`profiles.http.server_streams.spool_multipart`).
    Its schema goes to the document's components as ``title`` (see :func:`_typed_openapi`)."""
    _FORMS[title] = {
        "title": title,
        "type": "object",
        "properties": {**fields, "file": {"type": "string", "format": "binary"}},
        "required": list(required),
    }
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{title}"}}
            },
        }
    }


_FORMS: dict[str, dict[str, Any]] = {}  # the multipart forms of the streamed uploads


def _typed_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` without FastAPI's own ``422 HTTPValidationError`` answers: this
    service answers invalid requests with ``400`` and an ``ErrorBody`` (``422`` only where
    a route declares it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for item in document.get("paths", {}).values():
            for operation in item.values():
                answer = operation.get("responses", {}).get("422")
                if answer is not None and "HTTPValidationError" in json.dumps(answer):
                    del operation["responses"]["422"]
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas.update(_FORMS)
        document["components"]["schemas"] = dict(sorted(schemas.items()))
        app.openapi_schema = document
        return document

    return openapi


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------ the caller


@dataclass
class Caller:
    key: ApiKey
    account: Account
    store: ProfileStore
    can_write: bool

    def require_admin(self, doing: str) -> None:
        """``Forbidden`` (before anything is done) unless the key may write."""
        if not self.can_write:
            raise Forbidden(
                f"API key missing required permission: admin ({doing} writes; a read key "
                "runs read-only sessions).",
                permission="admin",
            )


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("API key required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Invalid or revoked API key")
    return token.strip()


_bearer_doc = HTTPBearer(auto_error=False, description="An API key: pk_<key id>_<secret>")


async def caller(request: Request, _doc: Annotated[Any, Depends(_bearer_doc)] = None) -> Caller:
    """The authenticated caller: its key, the account it acts on, that account's store.
    Writes (any method but GET, HEAD and OPTIONS) need the ``admin`` scope."""
    return await _authorize(request, write=request.method not in ("GET", "HEAD", "OPTIONS"))


async def reader(request: Request, _doc: Annotated[Any, Depends(_bearer_doc)] = None) -> Caller:
    """The caller of a route that reads, whatever its method (a read-only session's start
    and end): the ``read`` scope suffices; the route asks :meth:`Caller.require_admin` for
    what needs more."""
    return await _authorize(request, write=False)


async def _authorize(request: Request, *, write: bool) -> Caller:
    accounts: AccountsDB = request.app.state.accounts
    stores: AccountStores = request.app.state.stores
    token = _bearer(request)
    found = getattr(request.state, "identified_key", None)  # the rate limiter's look-up
    if found is not None:
        key, own = found
    else:
        key = accounts.authenticate(token)
        if key is None:
            raise Unauthorized("Invalid or revoked API key")
        own = accounts.get_account(key.account_id)
    if not own.active:
        raise Forbidden("Account is deactivated")
    role: str | None = None
    target = own
    acting = request.headers.get("x-account")
    if acting and acting != own.id:
        role = accounts.role(acting, own.id)
        if role is None:
            raise NotFound("Account not found", resource="account")
        target = accounts.get_account(acting)
        if not target.active:
            raise Forbidden("Account is deactivated")
    if write and "admin" not in key.scopes:
        raise Forbidden("API key missing required permission: admin", permission="admin")
    if not write and not {"read", "admin"} & set(key.scopes):
        raise Forbidden("API key missing required permission: read", permission="read")
    if write and role == "member":
        raise Forbidden(
            "Account role member is read-only: API key missing required permission: admin",
            permission="admin",
            role="member",
        )
    request.state.account = target
    store = await _run(lambda: stores.get(target))
    can_write = "admin" in key.scopes and role != "member"
    return Caller(key=key, account=target, store=store, can_write=can_write)


Auth = Annotated[Caller, Depends(caller)]
ReadAuth = Annotated[Caller, Depends(reader)]


# ------------------------------------------------------------------ downloads


class _QueueWriter:
    """A file-like sink that hands bytes to a consumer thread through a bounded queue."""

    CHUNK = 256 * 1024

    def __init__(self, q: queue.Queue[bytes | BaseException | None], stop: threading.Event):
        self._q = q
        self._stop = stop
        self._buf = bytearray()

    def _put(self, item: bytes) -> None:
        while True:
            if self._stop.is_set():
                raise BrokenPipeError("the download was abandoned")
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buf += data
        if len(self._buf) >= self.CHUNK:
            self._put(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def close_out(self) -> None:
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()


# What the server records itself, and the names of the parameters the payload is passed
# beside (``record_event(type_, profile_id, **payload)``, ``record_use(ref, **payload)``).
_RESERVED_PAYLOAD = frozenset(
    {"checksum", "blob_size", "epoch", "event", "type_", "profile_id", "ref", "self"}
)


def _audit_payload(raw: str | None, *, field: str = "payload") -> dict[str, Any]:
    """The audit details a remote session sends along with its state (a small JSON
    object of scalars); anything else is refused, and nothing may override what the server
    records itself."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationFailed(f"{field} must be a JSON object.", field=field) from None
    return _clean_payload(value, field=field)


def _clean_payload(value: Any, *, field: str = "payload") -> dict[str, Any]:
    """An audit payload from a client: at most 32 identifier keys, none the server's own,
    scalar values (text redacted)."""
    if not isinstance(value, dict) or len(value) > 32:
        raise ValidationFailed(f"{field} must be a JSON object of at most 32 keys.", field=field)
    clean: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier() or key in _RESERVED_PAYLOAD:
            raise ValidationFailed(f"{field} key {key!r} is not allowed.", field=field)
        if not isinstance(item, str | int | float | bool) and item is not None:
            raise ValidationFailed(f"{field} values must be scalars.", field=field)
        clean[key] = redact_text(item) if isinstance(item, str) else item
    return clean


def _export_stream(
    store: ProfileStore, profile_id: str, codec: Codec = "gzip", *, outcome: bool = False
) -> Iterator[bytes]:
    """The profile's committed state as ``.tar.gz`` (or ``.tar.zst``), produced by a thread
    as it is read. ``outcome``: end with the trailer that says how it ended
    (:mod:`profiles.http.outcome`), so that an error found after the headers went (a pack
    found damaged half-way) still reaches the client as itself."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    stop = threading.Event()
    sink = _QueueWriter(q, stop)

    def produce() -> None:
        try:
            # A remote store's read of the state (a checkout, or the client's own export,
            # which that client records): not an export of the server's.
            store.export_state(profile_id, sink, codec=codec, audit=False)  # type: ignore[arg-type]
            sink.close_out()
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                if not stop.is_set():
                    q.put(exc, timeout=5)
            return
        with contextlib.suppress(queue.Full):
            q.put(None, timeout=5)

    thread = threading.Thread(target=produce, name="download", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                if outcome:
                    yield trailer()
                return
            if isinstance(item, BaseException):
                log.warning("a download of profile %s failed: %s", profile_id, type(item).__name__)
                if outcome and isinstance(item, ProfileError):
                    yield trailer(item)
                    return
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()


class _HashingWriter:
    """A file-like sink that writes through to ``raw`` and hashes what it writes."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha.update(data)
        return int(self._raw.write(data))

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _file_stream(path: Path, scratch: Path) -> Iterator[bytes]:
    """The file's bytes; the scratch directory holding it goes when the stream ends."""
    try:
        with path.open("rb") as src:
            while chunk := src.read(1024 * 1024):
                yield chunk
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _blob_stream(source: Any, head: bytes) -> Iterator[bytes]:
    try:
        if head:
            yield head
        while True:
            chunk = source.read(1024 * 1024)
            if not chunk:
                return
            yield chunk
    finally:
        source.close()


# ------------------------------------------------------------------ the app


def create_app(config: ServerConfig) -> FastAPI:
    """The FastAPI application of ``profiles serve`` over ``config.home``."""
    config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    accounts = AccountsDB(config.home / "accounts.sqlite3")
    signer = Signer(load_secret(config.home / "server-secret"))
    stores = AccountStores(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        try:
            yield
        finally:
            stores.close()
            accounts.close()

    app = FastAPI(
        title="playwright-profiles",
        version="1",
        description="Named, persistent browser profiles, per account.",
        lifespan=lifespan,
        # operationId: the handler's name (create_profile, upload, download, ...), which
        # becomes the function's name in a generated client.
        generate_unique_id_function=lambda route: route.name,
    )
    app.openapi = _typed_openapi(app)  # type: ignore[method-assign]
    app.state.accounts = accounts
    app.state.stores = stores
    app.state.config = config

    # -------------------------------------------------------------- error handlers

    async def on_profile_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProfileError)
        account: Account | None = getattr(request.state, "account", None)
        if isinstance(exc, TierLimit) and account is not None:
            exc = TierLimit(
                f"Tier limit: the {account.tier} tier allows {exc.limit} profiles and this "
                f"account has {exc.current}. Delete a profile or move to a larger tier.",
                limit=exc.limit,
                current=exc.current,
                tier=account.tier,
            )
        return _error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            # Its loc is ("body", <character offset>): a position, not a field.
            loc_of = first.get("loc", ())
            offset = loc_of[-1] if loc_of and isinstance(loc_of[-1], int) else None
            ctx = first.get("ctx")
            why = ctx.get("error") if isinstance(ctx, dict) else None
            at = f" at character {offset}" if offset is not None else ""
            err = ValidationFailed(
                f"Invalid request: the body is not valid JSON{at}"
                f"{f' ({why})' if isinstance(why, str) else ''}. Send a JSON object.",
                field="body",
                position=offset,
            )
        else:
            loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
            where = ".".join(loc) or None
            message = str(first.get("msg", "invalid request"))
            err = ValidationFailed(
                f"Invalid request: {where + ': ' if where else ''}{message}.",
                field=where,
            )
        if request.url.path.endswith("/complete-upload"):
            err.status = 422  # doc 003
        return _error_response(err)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            err: ProfileError = NotFound("Not found: no such route.", resource="route")
        elif exc.status_code == 405:
            err = ValidationFailed("Method not allowed on this route.")
            err.status = 405
        else:
            err = ProfileError(str(exc.detail))
            err.status = exc.status_code
        return _error_response(err, headers=dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.method, type(exc).__name__, exc_info=exc)
        return _error_response(ProfileError("Internal server error"))

    app.add_exception_handler(ProfileError, on_profile_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

    @app.middleware("http")
    async def json_body_cap(request: Request, call_next: Any) -> Response:
        streamed = request.url.path.endswith(("/upload", "/state")) or request.url.path.startswith(
            "/v1/uploads/"
        )
        declared = request.headers.get("content-length")
        if not streamed and declared is not None:
            if not declared.isdigit():
                return _error_response(ValidationFailed("Invalid Content-Length."))
            if int(declared) > MAX_JSON_BODY:
                err = ValidationFailed(
                    f"The request body is larger than {MAX_JSON_BODY} bytes.",
                    limit=MAX_JSON_BODY,
                )
                err.status = 413
                return _error_response(err)
        response: Response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    def identify(token: str) -> tuple[str, str, Any] | None:
        found = accounts.identify(token)
        if found is None:
            return None
        return found[1].id, found[1].tier, found

    app.add_middleware(
        RateLimitMiddleware,
        rate=config.rate_limit,
        tiers=config.tier_rate_limits,
        identify=identify,
    )
    app.add_middleware(AccessLogMiddleware)  # outermost: it logs the 429s too

    # -------------------------------------------------------------- auth

    def base_url(request: Request) -> str:
        return (config.public_url or str(request.base_url)).rstrip("/")

    # -------------------------------------------------------------- health

    @app.get("/v1/health", tags=["service"], responses=_errors(429))
    def health() -> Health:
        return Health(ok=True)

    # -------------------------------------------------------------- profiles

    @app.get(
        "/v1/profiles",
        tags=["profiles"],
        response_model=ProfileList,
        responses=_errors(*READ),
    )
    def list_profiles(
        c: Auth,
        limit: int | None = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        pageSize: int | None = None,
        pageNumber: int | None = None,
    ) -> Response:
        if pageSize is None and pageNumber is None:
            listed = c.store.list(limit=50 if limit is None else limit, cursor=cursor)
            plain = ProfileList(
                data=listed.data, has_more=listed.has_more, next_cursor=listed.next_cursor
            )
            return JSONResponse(plain.model_dump(mode="json", exclude={"pageNumber", "pageSize"}))
        size = 50 if pageSize is None else pageSize
        number = 1 if pageNumber is None else pageNumber
        if not 1 <= number <= MAX_PAGE_NUMBER:
            raise ValidationFailed(
                f"pageNumber must be from 1 to {MAX_PAGE_NUMBER}; got {number}.",
                field="pageNumber",
            )
        if not 1 <= size <= 100:
            raise ValidationFailed(f"pageSize must be from 1 to 100; got {size}.", field="pageSize")
        page = c.store.list(limit=size)
        for _ in range(number - 1):
            if not page.has_more:
                page = Page[Profile](data=[], has_more=False, next_cursor=None)
                break
            page = c.store.list(limit=size, cursor=page.next_cursor)
        numbered = ProfileList(
            data=page.data,
            has_more=page.has_more,
            next_cursor=page.next_cursor,
            pageNumber=number,
            pageSize=size,
        )
        return JSONResponse(numbered.model_dump(mode="json"))

    @app.post("/v1/profiles", tags=["profiles"], responses=_errors(*WRITE, 409))
    def create_profile(c: Auth, body: CreateBody) -> Profile:
        return c.store.create(
            body.name,
            archetype=body.archetype,
            description=body.description,
            labels=body.labels,
        )

    @app.post("/v1/profiles/initiate-upload", tags=["uploads"], responses=_errors(*AUTH))
    def initiate_upload(c: Auth, request: Request) -> UploadTarget:
        cap = c.account.cap
        if cap is not None:
            current = c.store.list(limit=min(100, cap + 1)).data
            if len(current) >= cap:
                raise TierLimit("at the cap", limit=cap, current=len(current))
        profile_id = new_id("prof")
        _sweep_old(c.store.home / "pending", "", 2 * config.upload_expires_in + 3600)
        token, _ = signer.sign(
            "upload",
            account_id=c.account.id,
            profile_id=profile_id,
            checksum=None,
            expires_in=config.upload_expires_in,
        )
        return UploadTarget(
            profile_id=profile_id,
            upload_url=f"{base_url(request)}/v1/uploads/{token}",
            upload_fields={
                "key": f"pending/{c.account.id}/{profile_id}",
                "x-signature": token,
            },
            upload_expires_in=int(config.upload_expires_in),
        )

    @app.get("/v1/profiles/{ref}", tags=["profiles"], responses=_errors(*READ, 404))
    def get_profile(c: Auth, ref: str) -> Profile:
        return c.store.get(ref)

    @app.patch("/v1/profiles/{ref}", tags=["profiles"], responses=_errors(*WRITE, 404, 409))
    def patch_profile(c: Auth, ref: str, body: PatchBody) -> Profile:
        given = body.model_fields_set

        def opt(name: str) -> Any:
            value = getattr(body, name)
            return UNSET if name not in given or value is None else value

        description: str | Unset | None = body.description if "description" in given else UNSET
        return c.store.update(
            ref,
            name=opt("name"),
            description=description,
            labels=opt("labels"),
            archetype=opt("archetype"),
            add_labels=body.add_labels,
            remove_labels=body.remove_labels,
        )

    @app.delete(
        "/v1/profiles/{ref}", status_code=204, tags=["profiles"], responses=_errors(*AUTH, 404)
    )
    def delete_profile(c: Auth, ref: str) -> Response:
        c.store.delete(ref)
        return Response(status_code=204)

    @app.post("/v1/profiles/{ref}/clone", tags=["profiles"], responses=_errors(*WRITE, 404, 409))
    def clone_profile(c: Auth, ref: str, body: CloneBody | None = None) -> Profile:
        body = body or CloneBody()
        return c.store.clone(
            ref, name=body.name, with_state=body.with_state, archetype=body.archetype
        )

    @app.get("/v1/profiles/{ref}/similar", tags=["profiles"], responses=_errors(*READ))
    def similar(c: Auth, ref: str, limit: int = 3) -> SimilarNames:
        if not 1 <= limit <= 100:
            raise ValidationFailed("limit must be from 1 to 100.", field="limit")
        return SimilarNames(names=c.store.similar_names(ref, limit=limit))

    @app.post("/v1/profiles/{ref}/sessions", tags=["sessions"], responses=_errors(*WRITE, 404))
    def session_started(c: ReadAuth, ref: str, body: SessionStartBody) -> Profile:
        """A session started on the profile: ``usage_count`` + 1, ``last_used_at``, and a
        ``session.created`` event. A read key may record a read-only session's use."""
        if not body.readonly:
            c.require_admin("a writer session")
        payload = {**_clean_payload(body.payload), "readonly": body.readonly}
        return c.store.record_use(ref, **payload)

    @app.post(
        "/v1/profiles/{ref}/sessions/end",
        status_code=204,
        tags=["sessions"],
        responses=_errors(*WRITE, 404, 409),
    )
    def session_ended(c: ReadAuth, ref: str, body: SessionEndBody) -> Response:
        """A session ended: its writer lease (``epoch``) is released and ``session.ended``
        recorded, in one request. Without ``epoch`` (a read-only session) a read key may."""
        if body.epoch is not None:
            c.require_admin("releasing a writer lease")
        payload = _clean_payload(body.payload)
        profile = c.store.get(ref)
        try:
            if body.epoch is not None:
                c.store.service.release_lease(profile.id, body.epoch)
        finally:
            c.store.record_event("session.ended", profile.id, **payload)
        return Response(status_code=204)

    @app.post(
        "/v1/profiles/{ref}/events",
        tags=["profiles"],
        response_model=Profile,
        responses={
            200: {"description": "session.created: the profile, its use counted"},
            204: {"description": "The event was recorded"},
            **_errors(*WRITE, 404),
        },
    )
    def post_event(c: Auth, ref: str, body: EventBody) -> Response:
        payload = _clean_payload(body.payload)
        if body.type == "session.created":
            profile = c.store.record_use(ref, **payload)
            return JSONResponse(profile.model_dump(mode="json"))
        profile = c.store.get(ref)
        c.store.record_event(body.type, profile.id, **payload)
        return Response(status_code=204)

    # -------------------------------------------------------------- snapshots

    @app.post(
        "/v1/profiles/{ref}/snapshots", tags=["snapshots"], responses=_errors(*WRITE, 404, 409)
    )
    def snapshot(c: Auth, ref: str, body: SnapshotBody | None = None) -> Snapshot:
        body = body or SnapshotBody()
        return c.store.snapshot(ref, label=body.label, description=body.description)

    @app.get("/v1/profiles/{ref}/snapshots", tags=["snapshots"], responses=_errors(*READ, 404))
    def profile_snapshots(
        c: Auth, ref: str, limit: int = 50, cursor: str | None = None
    ) -> SnapshotPage:
        return _page(SnapshotPage, c.store.snapshots(ref, limit=limit, cursor=cursor))

    @app.get("/v1/profile-snapshots", tags=["snapshots"], responses=_errors(*READ))
    def all_snapshots(c: Auth, limit: int = 50, cursor: str | None = None) -> SnapshotPage:
        return _page(SnapshotPage, c.store.snapshots(None, limit=limit, cursor=cursor))

    @app.get(
        "/v1/profile-snapshots/{snapshot_id}", tags=["snapshots"], responses=_errors(*READ, 404)
    )
    def get_snapshot(c: Auth, snapshot_id: str) -> Snapshot:
        return c.store.get_snapshot(snapshot_id)

    @app.delete(
        "/v1/profile-snapshots/{snapshot_id}",
        status_code=204,
        tags=["snapshots"],
        responses=_errors(*AUTH, 404),
    )
    def delete_snapshot(c: Auth, snapshot_id: str) -> Response:
        c.store.delete_snapshot(snapshot_id)
        return Response(status_code=204)

    @app.post(
        "/v1/profile-snapshots/{snapshot_id}/restore",
        tags=["snapshots"],
        responses=_errors(*WRITE, 404, 409),
    )
    def restore(c: Auth, snapshot_id: str, body: RestoreBody | None = None) -> Profile:
        body = body or RestoreBody()
        return c.store.restore(snapshot_id, name=body.name)

    # -------------------------------------------------------------- audit

    @app.get("/v1/audit", tags=["audit"], responses=_errors(*READ, 404))
    def audit(
        c: Auth, profile: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> AuditPage:
        return _page(AuditPage, c.store.audit(profile=profile, limit=limit, cursor=cursor))

    # -------------------------------------------------------------- state

    @app.post(
        "/v1/profiles/{ref}/upload",
        tags=["state"],
        responses=_errors(*WRITE, 404, 409),
        openapi_extra=_multipart(
            "UploadForm",
            {"browser_version": {"type": "string", "maxLength": 64}},
            "The archive (.tar.gz or .tar.zst) as the part `file`; streamed to disk.",
        ),
    )
    async def upload(c: Auth, ref: str, request: Request) -> Profile:
        try:
            profile = await _run(lambda: c.store.get(ref))
        except ProfileError:
            await drain(request.stream())
            raise
        with _scratch(c.store) as scratch:
            up = await spool_multipart(request, scratch / "file", limit=config.max_upload_bytes)
            if archive_codec(up.head) is None:
                raise ArchiveInvalid(f"{NOT_GZIP}: {not_an_archive(up.head)}", field="file")
            assert up.file_path is not None
            path = up.file_path
            version = up.fields.get("browser_version") or None
            if version is not None:
                version = check_browser_version(version)

            def run() -> Profile:
                with path.open("rb") as src:
                    return c.store.import_state(
                        profile.id, src, browser_version=version, lock_timeout=UPLOAD_LOCK_WAIT
                    )

            updated = await _run(run)
        return updated

    @app.get("/v1/profiles/{ref}/download", tags=["state"], responses=_errors(*READ, 404))
    def download_link(c: Auth, ref: str, request: Request) -> DownloadLink:
        profile = c.store.get(ref)
        if profile.checksum is None or profile.status != "ready":
            from profiles.errors import NoStateData

            raise NoStateData(
                f"Profile has no data to download: {profile.name!r} is {profile.status}.",
                field="profile",
            )
        token, claim = signer.sign(
            "download",
            account_id=c.account.id,
            profile_id=profile.id,
            checksum=profile.checksum,
            expires_in=config.download_expires_in,
        )
        c.store.record_event(
            "state.download_link_created",
            profile.id,
            checksum=profile.checksum,
            expires_at=_iso(claim.expires_at),
            key_id=c.key.id,
        )
        return DownloadLink(
            downloadUrl=f"{base_url(request)}/v1/downloads/{token}",
            expiresAt=_iso(claim.expires_at),
            expiresIn=int(config.download_expires_in),
        )

    @app.get(
        "/v1/downloads/{token}",
        tags=["state"],
        response_class=StreamingResponse,
        responses={
            200: _binary("The state as .tar.gz", "application/gzip"),
            **_errors(400, 403, 404, 410, 429),
        },
    )
    def download(token: str, request: Request) -> Response:
        from profiles.http.signing import LinkExpired

        claim = signer.verify(token, "download")
        try:
            account = accounts.get_account(claim.account_id)
        except NotFound:
            raise NotFound("Profile not found", resource="profile") from None
        request.state.account = account  # for the access log
        if not account.active:
            raise Forbidden("Account is deactivated")
        store = stores.get(account)
        profile = store.get(claim.profile_id)
        if profile.checksum != claim.checksum:
            raise LinkExpired(
                "The profile's state changed since this link was made; ask for a new one.",
                field="token",
            )
        # The archive is written to scratch first, hashed on the way: X-Checksum is then the
        # SHA-256 of exactly the bytes sent (what `sha256sum` of the saved file prints), and
        # Content-Length is known. X-State-Checksum is the state's identity (the profile's
        # `checksum`), which is not a hash of these bytes.
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=store.tmp_dir))
        try:
            spool = scratch / "state.tar.gz"
            with spool.open("wb") as raw:
                sink = _HashingWriter(raw)
                size = store.export_state(
                    profile.id, cast(IO[bytes], sink), codec="gzip", audit=False
                )
            if store.get(profile.id).checksum != claim.checksum:
                raise LinkExpired(
                    "The profile's state changed since this link was made; ask for a new one.",
                    field="token",
                )
            store.record_event(
                "state.downloaded",
                profile.id,
                checksum=claim.checksum,
                sha256=sink.hexdigest(),
                bytes=size,
                codec="gzip",
            )
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return StreamingResponse(
            _file_stream(spool, scratch),
            media_type="application/gzip",
            headers={
                "Content-Disposition": f'attachment; filename="{profile.id}.tar.gz"',
                "Content-Length": str(size),
                "X-Checksum": sink.hexdigest(),
                "X-State-Checksum": claim.checksum or "",
            },
            # Also when the client goes away before the stream started.
            background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True),
        )

    @app.get(
        "/v1/profiles/{ref}/state",
        tags=["state"],
        response_class=StreamingResponse,
        responses={
            200: _binary("The committed state", "application/zstd", "application/gzip"),
            **_errors(*READ, 404),
        },
    )
    def get_state(c: Auth, ref: str, request: Request) -> Response:
        profile = c.store.get(ref)
        if profile.checksum is not None and c.store.service.manifest_of(profile) is not None:
            # A chunked state: its tar stream is built from the (verified) chunks. The body
            # is not the stored bytes, so only the state's identity is sent along; a client
            # that asks learns at the end how the stream ended.
            outcome = request.headers.get(OUTCOME_HEADER) == OUTCOME_VERSION
            headers = {"X-State-Checksum": profile.checksum}
            if outcome:
                headers[OUTCOME_HEADER] = OUTCOME_VERSION
            return StreamingResponse(
                _export_stream(c.store, profile.id, "zstd", outcome=outcome),
                media_type="application/zstd",
                headers=headers,
            )
        source = c.store.service.open_state(profile)
        try:
            head = source.read(4)
        except BaseException:
            source.close()
            raise
        codec = archive_codec(head)
        headers = {"X-Checksum": profile.checksum or "", "X-State-Checksum": profile.checksum or ""}
        return StreamingResponse(
            _blob_stream(source, head),
            media_type="application/zstd" if codec == "zstd" else "application/gzip",
            headers=headers,
        )

    @app.put(
        "/v1/profiles/{ref}/state",
        tags=["state"],
        responses=_errors(*WRITE, 404, 409),
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "The state archive (.tar.zst or .tar.gz); streamed to disk.",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def put_state(
        c: Auth,
        ref: str,
        request: Request,
        x_checksum: Annotated[
            str | None,
            Header(description="The SHA-256 of the body, 64 hex digits (required)."),
        ] = None,
        epoch: Annotated[int | None, Query(ge=0, le=2**62)] = None,
        browser_version: Annotated[str | None, Query(max_length=64)] = None,
        event: Literal["state.uploaded", "session.ended"] = "state.uploaded",
        payload: Annotated[str | None, Query(max_length=4096)] = None,
        ended: Annotated[str | None, Query(max_length=4096)] = None,
    ) -> Profile:
        """Commit a state. With ``epoch`` and ``ended`` (a JSON object, the payload of the
        session's ``session.ended`` event) the commit also ends the writer session: once
        the state is stored, the lease is released and the event recorded, so a session's
        end costs one request. A commit that fails ends nothing."""
        announced = (x_checksum or "").strip().lower()
        try:
            extras = _audit_payload(payload)
            end_payload = None if ended is None else _audit_payload(ended, field="ended")
            if end_payload is not None and epoch is None:
                raise ValidationFailed(
                    "ended ends a writer session: pass its lease's epoch too.", field="ended"
                )
            if not _CHECKSUM.fullmatch(announced):
                raise ValidationFailed(
                    "The X-Checksum header must be the SHA-256 of the body, 64 hex digits.",
                    field="X-Checksum",
                )
            if browser_version is not None:
                check_browser_version(browser_version)
            profile = await _run(lambda: c.store.get(ref))
        except ProfileError:
            await drain(request.stream())
            raise
        with _scratch(c.store) as scratch:
            body = await spool_body(request, scratch / "state", limit=config.max_upload_bytes)
            if body.sha256 != announced:
                raise ChecksumMismatch(
                    "The body does not hash to its X-Checksum; nothing was kept. Send it again.",
                    field="X-Checksum",
                    expected=announced,
                    actual=body.sha256,
                )
            if archive_codec(body.head) is None:
                raise ArchiveInvalid(
                    f"The state must be a .tar.zst or .tar.gz archive: {not_an_archive(body.head)}",
                    field="body",
                )
            kind: AuditType = event

            def run() -> Profile:
                grant_epoch = epoch
                own = None
                if grant_epoch is None:
                    own = c.store.service.acquire_lease(
                        profile.id, _server_holder("import"), ttl=SERVER_LEASE_TTL
                    )
                    if own is None:
                        raise _busy(c.store, profile)
                    grant_epoch = own.epoch
                try:
                    with body.path.open("rb") as src:
                        updated = c.store.commit_archive(
                            profile.id,
                            src,
                            epoch=grant_epoch,
                            browser_version=browser_version,
                            event=kind,
                            **extras,
                        )
                    if end_payload is not None:
                        try:
                            c.store.service.release_lease(profile.id, grant_epoch)
                        finally:
                            c.store.record_event("session.ended", profile.id, **end_payload)
                    return updated
                finally:
                    if own is not None:
                        with contextlib.suppress(ProfileError):
                            c.store.service.release_lease(profile.id, own.epoch)

            updated = await _run(run)
        return updated

    # -------------------------------------------------------------- leases

    @app.post("/v1/profiles/{ref}/lease", tags=["leases"], responses=_errors(*WRITE, 404, 409))
    async def acquire_lease(c: Auth, ref: str, body: LeaseBody) -> LeaseGrantBody:
        profile = await _run(lambda: c.store.get(ref))
        holder = Holder(kind=body.kind, host=body.host, pid=body.pid, since=datetime.now(UTC))
        deadline = time.monotonic() + min(body.wait, config.max_lease_wait)
        while True:
            grant = await _run(
                lambda: c.store.service.acquire_lease(profile.id, holder, ttl=body.ttl)
            )
            if grant is not None:
                # The record as the holder starts from (no one else commits while it holds
                # the lease): the client needs no second request to read it.
                current = await _run(lambda: c.store.get(profile.id))
                return LeaseGrantBody(
                    profile_id=grant.profile_id,
                    epoch=grant.epoch,
                    expires_at=None
                    if grant.expires_at is None
                    else grant.expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    profile=current,
                )
            if time.monotonic() >= deadline:
                raise await _run(lambda: _busy(c.store, profile))
            await anyio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    @app.post("/v1/profiles/{ref}/lease/renew", tags=["leases"], responses=_errors(*WRITE, 404))
    def renew_lease(c: Auth, ref: str, body: RenewBody) -> RenewResult:
        # renewed: false when the lease is no longer held, also when its profile is gone
        # (deleted meanwhile): the holder has lost it, as with a local service.
        try:
            profile = c.store.get(ref)
        except NotFound:
            return RenewResult(renewed=False)
        return RenewResult(
            renewed=c.store.service.renew_lease(profile.id, body.epoch, ttl=body.ttl)
        )

    @app.delete(
        "/v1/profiles/{ref}/lease",
        status_code=204,
        tags=["leases"],
        responses=_errors(*AUTH, 404, 409),
    )
    def release_lease(c: Auth, ref: str, epoch: Annotated[int, Query(ge=0, le=2**62)]) -> Response:
        # Releasing a lease that is not held (another epoch, a profile gone) changes
        # nothing and is not an error, as with a local service.
        with contextlib.suppress(NotFound):
            profile = c.store.get(ref)
            c.store.service.release_lease(profile.id, epoch)
        return Response(status_code=204)

    @app.get("/v1/profiles/{ref}/lease", tags=["leases"], responses=_errors(*READ, 404))
    def lease_holder(c: Auth, ref: str) -> LeaseHolderBody:
        profile = c.store.get(ref)
        return LeaseHolderBody(holder=c.store.service.lease_holder(profile.id))

    @app.get("/v1/leases", tags=["leases"], responses=_errors(*READ))
    def leases(c: Auth) -> LeaseList:
        return LeaseList(
            data=[LeaseRow(profile_id=pid, holder=h) for pid, h in c.store.service.leases()]
        )

    # -------------------------------------------------------------- presigned uploads

    @app.post(
        "/v1/uploads/{token}",
        status_code=204,
        tags=["uploads"],
        responses=_errors(400, 403, 409, 410, 413, 429),
        openapi_extra=_multipart(
            "PresignedUploadForm",
            {"key": {"type": "string"}, "x-signature": {"type": "string"}},
            "upload_fields exactly as initiate-upload returned them, then the archive as "
            "`file` (.tar.gz); streamed to disk.",
            required=("key", "x-signature", "file"),
        ),
    )
    async def presigned_upload(token: str, request: Request) -> Response:
        try:
            claim = signer.verify(token, "upload")
            account = accounts.get_account(claim.account_id)
            if not account.active:
                raise Forbidden("Account is deactivated")
            if not accounts.claim_token(claim.nonce, claim.expires_at):
                raise Conflict(
                    "This upload target was already used; call initiate-upload again.",
                    field="token",
                )
            store = await _run(lambda: stores.get(account))
        except ProfileError:
            await drain(request.stream())
            raise
        pending = store.home / "pending"
        with _scratch(store) as scratch:
            up = await spool_multipart(request, scratch / "file", limit=config.max_upload_bytes)
            from profiles.http.signing import SignatureInvalid

            expected_key = f"pending/{account.id}/{claim.profile_id}"
            if up.fields.get("x-signature") != token or up.fields.get("key") != expected_key:
                raise SignatureInvalid(
                    "The upload fields do not match the upload target: send upload_fields "
                    "exactly as initiate-upload returned them.",
                    field="upload_fields",
                )
            codec = archive_codec(up.head)
            if codec is None:
                raise ArchiveInvalid(f"{NOT_GZIP}: {not_an_archive(up.head)}", field="file")
            assert up.file_path is not None
            target = pending / f"{claim.profile_id}.archive"
            meta = pending / f"{claim.profile_id}.json"
            import json

            meta.write_text(
                json.dumps(
                    {
                        "size": up.size,
                        "sha256": up.sha256,
                        "codec": codec,
                        "uploaded_at": time.time(),
                    }
                )
            )
            os.chmod(meta, 0o600)
            os.replace(up.file_path, target)
        return Response(status_code=204)

    @app.post(
        "/v1/profiles/{profile_id}/complete-upload",
        status_code=201,
        tags=["uploads"],
        responses=_errors(*AUTH, 404, 409, 413, 422),
    )
    def complete_upload(c: Auth, profile_id: str, body: CompleteUploadBody) -> Profile:
        try:
            name = check_name(body.name)
            if body.browser_name not in ENGINES:
                raise ValidationFailed(
                    f"Unsupported browser_name {body.browser_name!r}; use one of "
                    f"{', '.join(ENGINES)}.",
                    field="browser_name",
                )
            version = check_browser_version(body.browser_version)
            description = check_description(body.description)
            labels = check_labels(body.labels)
        except ValidationFailed as exc:
            exc.status = 422
            raise
        pending = c.store.home / "pending"
        archive = pending / f"{profile_id}.archive"
        meta_path = pending / f"{profile_id}.json"
        if not _PROFILE_ID.fullmatch(profile_id) or not archive.is_file():
            raise NotFound(
                "No pending upload found for this profile_id.",
                resource="upload",
                ref=profile_id,
            )
        import json

        meta = json.loads(meta_path.read_text())
        size, digest = _hash_file(archive)
        if size != meta.get("size") or digest != meta.get("sha256"):
            err = ChecksumMismatch(
                "The uploaded archive changed since it was received; upload it again.",
                field="file",
            )
            err.status = 422
            raise err
        engine = body.browser_name
        now = utcnow()
        profile = Profile(
            id=profile_id,
            name=name,
            description=description,
            archetype=ARCHETYPE_OF[engine],
            browser_name=engine,
            labels=labels,
            created_at=now,
            updated_at=now,
        )
        catalog = c.store.catalog
        with catalog.transaction() as tx:
            if tx.get_profile(profile_id) is not None:
                raise Conflict(f"Profile {profile_id} already exists.", field="profile_id")
            tx.insert_profile(profile, max_profiles=c.account.cap)
        c.store.record_event(
            "profile.created",
            profile_id,
            name=name,
            archetype=profile.archetype,
            uploaded=True,
        )
        try:
            with archive.open("rb") as src:
                created = c.store.import_state(
                    profile_id,
                    src,
                    browser_name=engine,
                    browser_version=version,
                    lock_timeout=UPLOAD_LOCK_WAIT,
                )
        except ValidationFailed as exc:
            with contextlib.suppress(ProfileError):
                c.store.delete(profile_id)
            exc.status = 422
            raise
        except BaseException:
            with contextlib.suppress(ProfileError):
                c.store.delete(profile_id)
            raise
        for path in (archive, meta_path):
            with contextlib.suppress(OSError):
                path.unlink()
        return created

    return app


def _hash_file(path: Path) -> tuple[int, str]:
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        while chunk := src.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _server_holder(kind: Literal["session", "import"]) -> Holder:
    return Holder(kind=kind, host=socket.gethostname(), pid=os.getpid(), since=datetime.now(UTC))


def _busy(store: ProfileStore, profile: Profile) -> ProfileBusy:
    holder = store.service.lease_holder(profile.id)
    who = holder.describe() if holder else "another writer"
    return ProfileBusy(
        f"Profile {profile.name!r} is in use: {who}. Wait for it to end and try again.",
        profile_id=profile.id,
        holder=holder.model_dump(mode="json") if holder else None,
    )
