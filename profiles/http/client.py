"""The profile service over HTTP: :class:`HttpService`, a client of the ``/v1`` routes.

``ProfileStore("https://profiles.example/v1", api_key=...)`` keeps this machine's workspace
(working copies, locks, scratch) in its home and asks the server for everything else:
records, state bytes (streamed both ways, never held whole in memory) and writer leases
(which expire; :class:`~profiles.workspace.leases.WriterLease` renews them with its heartbeat).

Errors come back as the same :class:`~profiles.errors.ProfileError` subclasses the local
store raises, with the same message and details (the server sends ``{"error": {code, status,
message, ...details}}``). What only HTTP has: :class:`AuthFailed` (401/403) and
:class:`RateLimited` (429 without a tier limit). A server that cannot be reached is
:class:`~profiles.errors.StorageUnavailable` naming the base URL, never the key: the key
travels only in the ``Authorization`` header, and no URL carries it.

Requests that are safe to repeat (GET, PUT of checksum-named state, DELETE, lease renew and
release) are retried with exponential backoff on connection errors and 502/503/504, and wait
out a 429's ``Retry-After`` when the wait fits both ``max_retry_after`` and the caller's
deadline (:meth:`HttpService.deadline`, and a lease's own wait); the other POSTs are sent
once. A :class:`RateLimited` error says in its message how many seconds to wait
(``retry_after`` in its details).
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import email.utils
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, TypeVar, cast
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from profiles.catalog.base import LeaseGrant, StateUpdate
from profiles.errors import (
    AuthFailed,
    ChecksumMismatch,
    Conflict,
    Forbidden,
    LeaseLost,
    LinkExpired,
    NoStateData,
    NotFound,
    ProfileBusy,
    ProfileError,
    RateLimited,
    StorageUnavailable,
    Unauthorized,
    ValidationFailed,
    error_from_dict,
    rebuild_error,
)
from profiles.http.outcome import OUTCOME_HEADER, OUTCOME_VERSION, TRAILER_BYTES, parse_trailer
from profiles.http.remote_blobs import BlobBatch, RemoteBlobs
from profiles.http.schemas import (
    AuditPage,
    CloneBody,
    CreateBody,
    EventBody,
    Health,
    LeaseBody,
    LeaseGrantBody,
    LeaseHolderBody,
    LeaseList,
    LeaseRow,
    PatchBody,
    ProfileList,
    PushHeader,
    RenewBody,
    RenewResult,
    RestoreBody,
    SessionEndBody,
    SessionStartBody,
    SimilarNames,
    SnapshotBody,
    SnapshotPage,
)
from profiles.models import AuditEvent, AuditType, Holder, Page, Profile, ProfileStatus, Snapshot
from profiles.service.protocol import UNSET, ProfileService, Unset
from profiles.state.archive import ArchiveLimits
from profiles.state.chunked import PackResult, StatCache, pack_chunked
from profiles.state.manifest import Manifest
from profiles.state.manifest_reader import ManifestReader
from profiles.validation import check_labels, check_limit, check_name

__all__ = [
    "ACCOUNT_ENV",
    "API_KEY_ENV",
    "URL_ENV",
    "AuthFailed",
    "Forbidden",
    "HttpService",
    "RateLimited",
    "Unauthorized",
    "error_from_body",
    "is_service_url",
]

log = logging.getLogger(__name__)

URL_ENV: Final = "PROFILES_URL"
API_KEY_ENV: Final = "PROFILES_API_KEY"
ACCOUNT_ENV: Final = "PROFILES_ACCOUNT"

CHUNK: Final = 1024 * 1024
RETRY_STATUSES: Final = frozenset({502, 503, 504})
DEFAULT_ATTEMPTS: Final = 4
DEFAULT_BACKOFF: Final = 0.2
MAX_RETRY_AFTER: Final = 30.0  # never sleep longer than this on one 429
MAX_BACKOFF: Final = 5.0

#: The most bytes of new blobs a commit sends with itself in one request (``state/push``);
#: past it, each pack goes up on its own first.
PUSH_INLINE_BYTES: Final = 16 * 1024 * 1024
LEASE_POLL_MAX: Final = 25.0  # the longest a lease request waits on the server
Progress = Callable[[int], None]
M = TypeVar("M", bound=BaseModel)

#: The caller's deadline (``time.monotonic()``), set by :meth:`HttpService.deadline`.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "profiles_http_deadline", default=None
)


# --------------------------------------------------------------------------- errors

# The class an error answer that is not the service's own body stands for, by status.
_BY_STATUS: Final[dict[int, type[ProfileError]]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: LinkExpired,
    422: ValidationFailed,
    429: RateLimited,
}


def error_from_body(status: int, body: Any, *, location: str) -> ProfileError:
    """The :class:`ProfileError` an error response stands for: the class its ``code``
    names in the registry of :mod:`profiles.errors`, with the same message and details;
    by status when the body is not the service's. A 5xx is ``transient`` (the service
    failed, not the request: it may pass), as a 429 is."""
    error = _error_from_body(status, body, location=location)
    if status >= 500:
        error.transient = True
    return error


def _error_from_body(status: int, body: Any, *, location: str) -> ProfileError:
    payload = body.get("error") if isinstance(body, dict) else None
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        known = error_from_dict(payload, status=status)
        if known is not None:
            return known
        # A code this client does not know (a newer server's): the class its status
        # stands for, keeping the server's code and status.
        details = {k: v for k, v in payload.items() if k not in ("code", "status", "message")}
        cls = _BY_STATUS.get(status) or ProfileError
        err = rebuild_error(cls, payload["message"], details)
        code = payload.get("code")
        if isinstance(code, str) and code:
            err.code = code
        err.status = status
        return err
    # Not the service's error shape (a proxy, a load balancer, a framework default).
    text = _short(body)
    if status >= 500:
        return StorageUnavailable(
            f"The profile service at {location} answered HTTP {status}{text}; nothing was "
            "changed. Try again later.",
            home=location,
            cause=f"HTTP {status}",
        )
    cls = _BY_STATUS.get(status, ProfileError)
    message = f"The profile service at {location} answered HTTP {status}{text}."
    return rebuild_error(cls, message, {})


def _ours(body: Any) -> bool:
    """Whether an error body has the service's shape (``{"error": {"message": ...}}``)."""
    payload = body.get("error") if isinstance(body, dict) else None
    return isinstance(payload, dict) and isinstance(payload.get("message"), str)


def _short(body: Any) -> str:
    if body is None or body == "":
        return ""
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    text = " ".join(text.split())
    return f": {text[:200]}"


def is_service_url(value: object) -> bool:
    """Whether ``value`` names a profile service over HTTP (``http://`` or ``https://``)."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _check_url(url: str) -> str:
    if not is_service_url(url):
        raise ValidationFailed(
            "The profile service URL must start with http:// or https:// "
            "(for example https://profiles.example/v1).",
            field="service",
        )
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed(
            "Do not put credentials in the profile service URL; pass api_key= (or set "
            f"${API_KEY_ENV}).",
            field="service",
        )
    if parts.query or parts.fragment:
        raise ValidationFailed(
            "The profile service URL takes no query string or fragment.", field="service"
        )
    if not parts.hostname:
        raise ValidationFailed("The profile service URL has no host.", field="service")
    return url.rstrip("/")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _rate_limited(error: ProfileError, header_wait: float | None, fallback: float) -> float:
    """How long a 429 says to wait (its body's ``retry_after``, else ``Retry-After``, else
    ``fallback``), kept in ``retry_after`` and said in the message."""
    sent = error.details.get("retry_after")
    if isinstance(sent, int | float) and not isinstance(sent, bool) and 0 <= sent < 10**7:
        wait = float(sent)
    elif header_wait is not None:
        wait = min(header_wait, 1e7)
    else:
        wait = fallback
    error.details["retry_after"] = wait
    shown = f"{wait:.0f}" if wait >= 1 else f"{wait:.1f}"
    if "retry after" not in error.message.lower() and f"in {shown} s" not in error.message:
        error.message = f"{error.message.rstrip()} Retry after {shown} s."
        error.args = (error.message,)
    return wait


def _check_text(value: object, check: Callable[[Any], object]) -> None:
    """Values JSON would change (bytes, numbers) are refused here as the local store
    refuses them; the server checks everything else, with the same messages."""
    if not isinstance(value, str):
        check(value)


def _check_labels(labels: object) -> None:
    """Labels that are not text to text are refused here, as the local store refuses them
    (the server's body schema would name the field differently)."""
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        check_labels(labels)


def _payload(payload: Mapping[str, Any]) -> Any:
    """An audit payload as JSON values (what the catalog would store: others as text)."""
    return json.loads(json.dumps(dict(payload), default=str))


def _model(cls: type[M], data: Any, *, location: str = "the server") -> M:
    """An answer read with its model (a record of :mod:`profiles.models` or a shape of
    :mod:`profiles.http.schemas`), ignoring fields this client does not know (a newer
    server's); an answer that does not fit it is a :class:`ProfileError`."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in cls.model_fields}
    try:
        return cls.model_validate(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the body"
        raise ProfileError(
            f"The profile service at {location} answered with a {cls.__name__} that does not "
            f"fit this client ({where}: {first['msg']}); is this client as new "
            "as the server?",
            cause="bad answer",
        ) from None


def _body(cls: type[BaseModel], **fields: Any) -> dict[str, Any]:
    """A request body built with the server's own model (:mod:`profiles.http.schemas`),
    read from its JSON as the server reads it: only the fields given are sent, and what
    the server would refuse is refused here, with its message (``Invalid request:
    <field>: <why>.``)."""
    try:
        text = json.dumps(fields, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"The request cannot be sent as JSON: {exc}.") from None
    try:
        model = cls.model_validate_json(text)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"])
        raise ValidationFailed(
            f"Invalid request: {where + ': ' if where else ''}{message}.", field=where
        ) from None
    return model.model_dump(mode="json", exclude_unset=True)


# --------------------------------------------------------------------------- streams


class _StateReader(io.RawIOBase):
    """The body of a ``GET .../state`` response as a readable, non-seekable stream.

    With ``expected``, the bytes are hashed as they are read and must hash to it at the
    end (``ChecksumMismatch`` otherwise). With ``outcome``, the body ends with the trailer
    that says how the server's stream ended (:mod:`profiles.http.outcome`): the last
    :data:`TRAILER_BYTES` are held back and read at the end; an error there is raised as
    itself, and a body without one was cut short (``StorageUnavailable``). Closing it
    closes the response."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        expected: str | None,
        size: int | None,
        location: str,
        name: str,
        progress: Progress | None,
        outcome: bool = False,
    ) -> None:
        super().__init__()
        self._outcome = outcome
        self._held = b""  # the last bytes received, which may be the trailer
        self._response = response
        self._chunks = response.iter_bytes(CHUNK)
        self._pending = b""
        self._hash = hashlib.sha256()
        self._expected = expected
        self._size = size
        self._location = location
        self._name = name
        self._progress = progress
        self._count = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on a closed state stream")
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._done:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._finish()
                break
            except httpx.HTTPError as exc:
                error = StorageUnavailable(
                    f"Reading the state of {self._name!r} from the profile service at "
                    f"{self._location} failed after {self._count} bytes: "
                    f"{_describe(exc)}. Nothing was changed; try again.",
                    home=self._location,
                    cause=_describe(exc),
                )
                error.transient = True
                raise error from exc
            if self._expected is not None:
                self._hash.update(chunk)
            self._count += len(chunk)
            if self._outcome:
                held = self._held + chunk
                chunk, self._held = held[:-TRAILER_BYTES], held[-TRAILER_BYTES:]
            self._pending = chunk
            if self._progress is not None and chunk:
                self._progress(self._count)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _finish(self) -> None:
        self._done = True
        if self._outcome:
            self._end_of_stream()
        if self._expected is None:
            return
        got = self._hash.hexdigest()
        if got != self._expected or (self._size is not None and self._count != self._size):
            raise ChecksumMismatch(
                f"The state of {self._name!r} read from the profile service at "
                f"{self._location} does not match its record ({self._count} bytes hashing to "
                f"{got[:12]}..., expected {self._expected[:12]}...). Nothing was kept; try "
                "again.",
                field="state",
                expected=self._expected,
                actual=got,
            )

    def _end_of_stream(self) -> None:
        """Read the trailer: raise the error the server met while streaming, or
        ``StorageUnavailable`` when the body ended without saying how it ended."""
        said = parse_trailer(self._held)
        if said is None:
            error = StorageUnavailable(
                f"Reading the state of {self._name!r} from the profile service at "
                f"{self._location} stopped after {self._count} bytes, before the server said "
                "the state was complete. Nothing was changed; try again.",
                home=self._location,
                cause="stream cut short",
            )
            error.transient = True
            raise error
        body = said.get("error")
        if isinstance(body, dict):
            status = body.get("status")
            code = status if isinstance(status, int) else 500
            raise error_from_body(code, {"error": body}, location=self._location)

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
            finally:
                super().close()


def _json_content(json_body: Any, headers: dict[str, str]) -> bytes | None:
    """``json_body`` as the bytes of a JSON request (its Content-Type added to
    ``headers``), or ``None`` without one."""
    if json_body is None:
        return None
    try:
        content = json.dumps(json_body, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValidationFailed(f"The request cannot be sent as JSON: {exc}.") from None
    headers["Content-Type"] = "application/json"
    return content


def _body_of(response: httpx.Response) -> Any:
    """A read response's body: its JSON, else its text, else ``None``."""
    try:
        return response.json() if response.content else None
    except ValueError:
        return response.text if response.content else None


def _describe(exc: BaseException) -> str:
    """What went wrong on the wire, without URLs (they are named separately)."""
    text = str(exc).strip() or type(exc).__name__
    if "://" in text:  # httpx names the URL in some messages; we name the base URL ourselves
        text = type(exc).__name__
    return text[:200]


# --------------------------------------------------------------------------- service


class HttpService(ProfileService):
    """A :class:`~profiles.service.catalog.ProfileService` answered by a server over HTTP.

    ``url`` is the API's base URL, version included (``https://profiles.example/v1``).
    ``api_key`` goes in ``Authorization: Bearer``; ``account`` in ``X-Account``. One
    ``httpx.Client`` serves every thread (the lease heartbeat included).
    """

    shared = True
    checks_commits_itself = True  # the server reads the profile as it commits

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        account: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        self.url = _check_url(url)
        self.location = self.url
        if not urlsplit(self.url).path.strip("/"):
            log.warning(
                "the profile service URL %s has no path; the API's routes are under /v1: use %s/v1",
                self.url,
                self.url.rstrip("/"),
            )
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValidationFailed("api_key must be a non-empty string.", field="api_key")
        if account is not None and (not isinstance(account, str) or not account.strip()):
            raise ValidationFailed("account must be a non-empty string.", field="account")
        if not isinstance(attempts, int) or attempts < 1:
            raise ValidationFailed("attempts must be at least 1.", field="attempts")
        self.attempts = attempts
        self.backoff = float(backoff)
        self.max_retry_after = float(max_retry_after)
        headers = {"User-Agent": "playwright-profiles", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key.strip()}"
        if account:
            headers["X-Account"] = account.strip()
        self.account = account
        self.read_timeout = float(timeout)
        self._chunks: bool | None = None  # whether the server speaks chunks, once asked
        self._blobs = RemoteBlobs(self)
        self._manifests = ManifestReader(self._blobs, ArchiveLimits())
        # The token of each writer lease this service was granted, by (profile id, epoch):
        # the proof of holding it, sent as X-Lease-Token with the epoch (renew, release,
        # a commit under it, the session's end). Another key's epoch alone proves nothing.
        self._lease_tokens: dict[tuple[str, int], str] = {}
        self._client = httpx.Client(
            base_url=self.url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"HttpService({self.url!r})"

    @staticmethod
    @contextlib.contextmanager
    def deadline(seconds: float) -> Iterator[None]:
        """Within the block (this thread or task), no request of any service waits to
        retry (a 429's ``Retry-After``) past ``seconds`` from now: it raises instead."""
        when = time.monotonic() + max(0.0, float(seconds))
        outer = _DEADLINE.get()
        token = _DEADLINE.set(when if outer is None else min(outer, when))
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ transport

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body: Callable[[], Iterable[bytes]] | None = None,
        files: Callable[[], Mapping[str, Any]] | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        stream: bool = False,
        deadline: float | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request, retried when that is safe; a non-2xx answer raises its error.
        ``deadline`` (``time.monotonic()``; also :meth:`deadline`): no wait for a retry
        goes past it. ``timeout``: how long this request may wait for its answer, when the
        server takes longer than the client's read timeout on purpose (starting a browser)."""
        ambient = _DEADLINE.get()
        if ambient is not None:
            deadline = ambient if deadline is None else min(deadline, ambient)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        extra = dict(headers or {})
        content = _json_content(json_body, extra)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            retry = idempotent and attempt < self.attempts
            request = self._client.build_request(
                method,
                path,
                params=query,
                content=content if body is None else body(),
                files=files() if files is not None else None,
                data=data,
                headers=extra,
                timeout=self._client.timeout
                if timeout is None
                else httpx.Timeout(timeout, connect=self._client.timeout.connect),
            )
            try:
                response = self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not retry:
                    raise self._unreachable(exc) from exc
                log.debug("%s %s: %s; retrying in %.1f s", method, path, _describe(exc), delay)
            else:
                if response.is_success:
                    return response
                wait = self._wait_to_retry(response, delay, deadline) if retry else None
                if wait is None:
                    raise self._error(response)
                delay = wait
            time.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait_to_retry(
        self, response: httpx.Response, delay: float, deadline: float | None
    ) -> float | None:
        """How long to wait before sending again after the failed ``response`` (closed
        here), or ``None`` when it is not worth retrying; then the caller raises its error.
        A 5xx (``RETRY_STATUSES``) waits ``delay``; a 429 what it asks, within
        ``max_retry_after`` and the ``deadline``."""
        if response.status_code in RETRY_STATUSES:
            response.close()
            log.debug("%s: HTTP %d; retrying in %.1f s", self.location, response.status_code, delay)
            return delay
        if response.status_code != 429:
            return None
        try:
            response.read()
        except httpx.HTTPError:
            return None
        header_wait = _retry_after(response)
        error = error_from_body(response.status_code, _body_of(response), location=self.location)
        if not isinstance(error, RateLimited):
            return None
        wait = _rate_limited(error, header_wait, delay)
        fits = deadline is None or time.monotonic() + wait <= deadline
        if wait > self.max_retry_after or not fits:
            return None
        response.close()
        log.info("rate limited by %s; retrying in %.1f s", self.location, wait)
        return wait

    def _error(self, response: httpx.Response) -> ProfileError:
        try:
            response.read()
            body: Any = response.json() if response.content else None
        except (ValueError, httpx.HTTPError):
            body = response.text if response.content else None
        finally:
            response.close()
        error = error_from_body(response.status_code, body, location=self.location)
        if response.status_code == 404 and (
            error.details.get("resource") == "route" or not _ours(body)
        ):
            return self._no_such_route(response.request, error)
        return error

    def _no_such_route(self, request: httpx.Request, error: ProfileError) -> NotFound:
        """A 404 for the route itself, not for a record: most often a URL that is not the
        API's base (``http://host:8787`` for ``http://host:8787/v1``). Say so."""
        path = urlsplit(self.url).path.rstrip("/")
        if path.endswith("/v1"):
            hint = "is this client as new as the server?"
        else:
            hint = f"is the URL the API's base, ending in /v1 ({self.url.rstrip('/')}/v1)?"
        return NotFound(
            f"The profile service at {self.location} has no route {request.method} "
            f"{request.url.path}: {hint}",
            resource="route",
            cause=error.message,
        )

    def _unreachable(self, exc: httpx.TransportError) -> StorageUnavailable:
        cause = _describe(exc)
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
        error = StorageUnavailable(
            f"The profile service at {self.location} {what} ({cause}). Nothing was changed "
            "that was not confirmed; check the URL and that the service runs, then try again.",
            home=self.location,
            cause=cause,
        )
        error.transient = True
        return error

    def _json(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        response = self._send(method, path, idempotent=idempotent, **kwargs)
        try:
            return response.json() if response.content else None
        except ValueError as exc:
            raise ProfileError(
                f"The profile service at {self.location} answered {method} {path} with "
                "something that is not JSON; is the URL the API's base (ending in /v1)?",
                cause="not JSON",
            ) from exc

    @staticmethod
    def _ref(ref: str, what: str = "profile") -> str:
        if not isinstance(ref, str) or not ref:
            raise ValidationFailed(f"A {what} id or name is required.", field=what)
        return quote(ref, safe="")

    def _profile(self, answer: Any) -> Profile:
        return _model(Profile, answer, location=self.location)

    def _profile_path(self, ref: str, tail: str = "") -> str:
        return f"profiles/{self._ref(ref)}{tail}"

    def _snapshot_path(self, snapshot_id: str, tail: str = "") -> str:
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise ValidationFailed("A snapshot id is required.", field="snapshot")
        return f"profile-snapshots/{quote(snapshot_id, safe='')}{tail}"

    def _page(
        self,
        page: type[ProfileList] | type[SnapshotPage] | type[AuditPage],
        cls: type[Profile] | type[Snapshot] | type[AuditEvent],
        body: Any,
    ) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ProfileError(
                f"The profile service at {self.location} answered a listing without data.",
                cause="bad listing",
            )
        rows = [_model(cls, row, location=self.location) for row in body["data"]]
        read = _model(page, {**body, "data": rows}, location=self.location)
        return {"data": read.data, "has_more": read.has_more, "next_cursor": read.next_cursor}

    # ------------------------------------------------------------------ profiles

    def create(
        self,
        name: str,
        *,
        archetype: str | None = None,
        description: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Profile:
        _check_text(name, check_name)
        if labels is not None:
            _check_labels(labels)  # refused as the local store refuses them (field "labels")
        given = {"archetype": archetype, "description": description, "labels": labels}
        body = _body(CreateBody, name=name, **{k: v for k, v in given.items() if v is not None})
        return self._profile(self._json("POST", "profiles", json_body=body, idempotent=False))

    def get(self, ref: str) -> Profile:
        return self._profile(self._json("GET", self._profile_path(ref), idempotent=True))

    def list(self, *, limit: int = 50, cursor: str | None = None) -> Page[Profile]:
        check_limit(limit)
        body = self._json(
            "GET", "profiles", params={"limit": limit, "cursor": cursor}, idempotent=True
        )
        return Page[Profile](**self._page(ProfileList, Profile, body))

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
        body: dict[str, Any] = {}
        if not isinstance(name, Unset):
            _check_text(name, check_name)
            body["name"] = name
        if not isinstance(description, Unset):
            body["description"] = description
        if not isinstance(labels, Unset):
            _check_labels(labels)
            body["labels"] = labels
        if not isinstance(archetype, Unset):
            body["archetype"] = archetype
        if add_labels is not None:
            _check_labels(add_labels)
            body["add_labels"] = dict(add_labels) if isinstance(add_labels, Mapping) else add_labels
        if remove_labels is not None:
            if isinstance(remove_labels, str):
                raise ValidationFailed(
                    "remove_labels must be a list of label keys, not one string.",
                    field="remove_labels",
                )
            body["remove_labels"] = builtins.list(remove_labels)
        path = self._profile_path(ref)
        body = _body(PatchBody, **body)
        return self._profile(self._json("PATCH", path, json_body=body, idempotent=False))

    def delete(self, ref: str) -> Profile:
        profile = self.get(ref)
        self._send("DELETE", self._profile_path(profile.id), idempotent=True).close()
        return profile

    def clone(
        self,
        ref: str,
        *,
        name: str | None = None,
        with_state: bool = False,
        archetype: str | None = None,
    ) -> Profile:
        body: dict[str, Any] = {"with_state": with_state}
        if name is not None:
            _check_text(name, check_name)
            body["name"] = name
        if archetype is not None:
            body["archetype"] = archetype
        path = self._profile_path(ref, "/clone")
        body = _body(CloneBody, **body)
        return self._profile(self._json("POST", path, json_body=body, idempotent=False))

    def similar_names(self, name: str, *, limit: int = 3) -> builtins.list[str]:
        body = self._json(
            "GET", self._profile_path(name, "/similar"), params={"limit": limit}, idempotent=True
        )
        return _model(SimilarNames, body, location=self.location).names

    # ------------------------------------------------------------------ snapshots

    def snapshot(
        self, ref: str, *, label: str | None = None, description: str | None = None
    ) -> Snapshot:
        body: dict[str, Any] = {}
        if label is not None:
            body["label"] = label
        if description is not None:
            body["description"] = description
        path = self._profile_path(ref, "/snapshots")
        body = _body(SnapshotBody, **body)
        answer = self._json("POST", path, json_body=body, idempotent=False)
        return _model(Snapshot, answer, location=self.location)

    def snapshots(
        self, ref: str | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Snapshot]:
        check_limit(limit)
        path = "profile-snapshots" if ref is None else self._profile_path(ref, "/snapshots")
        body = self._json("GET", path, params={"limit": limit, "cursor": cursor}, idempotent=True)
        return Page[Snapshot](**self._page(SnapshotPage, Snapshot, body))

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        answer = self._json("GET", self._snapshot_path(snapshot_id), idempotent=True)
        return _model(Snapshot, answer, location=self.location)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._send("DELETE", self._snapshot_path(snapshot_id), idempotent=True).close()

    def restore(self, snapshot_id: str, *, name: str | None = None) -> Profile:
        if name is not None:
            _check_text(name, check_name)
        body = _body(RestoreBody) if name is None else _body(RestoreBody, name=name)
        path = self._snapshot_path(snapshot_id, "/restore")
        return self._profile(self._json("POST", path, json_body=body, idempotent=False))

    # ------------------------------------------------------------------ audit

    def audit(
        self, *, profile: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        check_limit(limit)
        body = self._json(
            "GET",
            "audit",
            params={"profile": profile, "limit": limit, "cursor": cursor},
            idempotent=True,
        )
        return Page[AuditEvent](**self._page(AuditPage, AuditEvent, body))

    def record_event(self, type_: AuditType, profile_id: str | None, **payload: Any) -> None:
        if profile_id is None:
            raise ValidationFailed(
                "Over HTTP an audit event belongs to a profile; pass its id.", field="profile"
            )
        path = self._profile_path(profile_id, "/events")
        body = _body(EventBody, type=type_, payload=_payload(payload))
        self._send("POST", path, json_body=body, idempotent=False).close()

    def record_use(self, ref: str, **payload: Any) -> Profile:
        """``POST .../sessions``: a read key may record a read-only session's use."""
        path = self._profile_path(ref, "/sessions")
        readonly = bool(payload.pop("readonly", False))
        body = _body(SessionStartBody, readonly=readonly, payload=_payload(payload))
        return self._profile(self._json("POST", path, json_body=body, idempotent=False))

    def end_session(self, profile_id: str, epoch: int | None, **payload: Any) -> None:
        """``POST .../sessions/end``: release the lease and record ``session.ended`` in one
        request (without ``epoch``, a read-only session's end: a read key may)."""
        path = self._profile_path(profile_id, "/sessions/end")
        body = _body(SessionEndBody, epoch=epoch, payload=_payload(payload))
        headers = self._lease_header(profile_id, epoch)
        self._send("POST", path, json_body=body, headers=headers, idempotent=False).close()
        self._forget_lease(profile_id, epoch)

    # ------------------------------------------------------------------ state bytes

    def open_state(self, profile: Profile, *, progress: Progress | None = None) -> BinaryIO:
        """The committed state as an archive, streamed from the server as it is read.

        ``X-State-Checksum`` names the state the server sends: it must be the one this
        record names (``ChecksumMismatch`` otherwise: the state changed meanwhile). When the
        body is the stored archive itself the server also sends ``X-Checksum`` (the body's
        SHA-256): the bytes are then hashed on the way and checked at the end. A state
        stored as chunks is rendered into a tar on the fly, whose bytes have no stored hash
        (the server checks every chunk as it renders it)."""
        if profile.checksum is None:
            raise NoStateData(
                f"Profile has no data to download: {profile.name!r} is {profile.status}.",
                field="profile",
            )
        response = self._send(
            "GET",
            self._profile_path(profile.id, "/state"),
            params={"checksum": profile.checksum},
            headers={"Accept": "application/octet-stream", OUTCOME_HEADER: OUTCOME_VERSION},
            idempotent=True,
            stream=True,
        )
        content = response.headers.get("X-Checksum") or None
        announced = response.headers.get("X-State-Checksum") or content
        if announced is not None and announced != profile.checksum:
            response.close()
            raise ChecksumMismatch(
                f"The profile service at {self.location} holds another state for "
                f"{profile.name!r} than this record names ({announced[:12]}..., not "
                f"{profile.checksum[:12]}...): it changed meanwhile. Read the profile again.",
                field="state",
                expected=profile.checksum,
                actual=announced,
            )
        size = response.headers.get("Content-Length")
        encoded = response.headers.get("Content-Encoding", "identity") != "identity"
        reader = _StateReader(
            response,
            expected=content,
            size=int(size) if content and size and size.isdigit() and not encoded else None,
            location=self.location,
            name=profile.name,
            progress=progress,
            outcome=response.headers.get(OUTCOME_HEADER) == OUTCOME_VERSION,
        )
        return cast(BinaryIO, io.BufferedReader(reader, CHUNK))

    def commit_archive(
        self,
        profile: Profile,
        spool: Path,
        state: StateUpdate,
        *,
        epoch: int | None,
        event: AuditType,
        progress: Progress | None = None,
        end_session: Mapping[str, Any] | None = None,
        **payload: Any,
    ) -> Profile:
        """Send the spooled archive (streamed from the file) to become the committed state,
        fenced by ``epoch``. The audit payload travels as the JSON query parameter
        ``payload``; ``end_session`` (the ``session.ended`` payload) as ``ended``: the
        server then releases the lease and records the end with the commit."""
        size = os.path.getsize(spool)

        def chunks() -> Iterator[bytes]:
            sent = 0
            with open(spool, "rb") as f:
                while block := f.read(CHUNK):
                    sent += len(block)
                    if progress is not None:
                        progress(sent)
                    yield block

        params: dict[str, Any] = {
            "epoch": epoch,
            "browser_version": state.browser_version,
            "event": event,
        }
        if payload:
            params["payload"] = json.dumps(payload, default=str, separators=(",", ":"))
        if end_session is not None:
            if epoch is None:
                raise ValidationFailed("Ending a session with its commit needs the epoch.")
            params["ended"] = json.dumps(_payload(end_session), default=str, separators=(",", ":"))
        body = self._json(
            "PUT",
            self._profile_path(profile.id, "/state"),
            params=params,
            body=chunks,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "X-Checksum": state.checksum,
                **self._lease_header(profile.id, epoch),
            },
            idempotent=True,
        )
        if end_session is not None:
            self._forget_lease(profile.id, epoch)  # released with the commit
        return self._profile(body)

    # ------------------------------------------------------------------ state as chunks

    @property
    def supports_chunks(self) -> bool:
        """Whether the server speaks chunks (``GET /v1/health`` lists ``"chunks"``): asked
        once. A server without them gets whole archives, as before."""
        if self._chunks is None:
            try:
                health = Health.model_validate(self._json("GET", "health", idempotent=True))
            except (ProfileError, ValueError) as exc:
                log.debug("the profile service's features are unknown (%s): archives", exc)
                return False
            self._chunks = "chunks" in health.features
        return self._chunks

    def chunk_source(self) -> RemoteBlobs:
        return self._blobs

    def manifest(self, checksum: str) -> Manifest | None:
        if not self.supports_chunks:
            return None
        return self._manifests.read(checksum)

    def manifest_of(self, profile: Profile) -> Manifest | None:
        if profile.checksum is None or not self.supports_chunks:
            return None
        with self.reading_state_of(profile):
            return self._manifests.read(profile.checksum, missing_ok=False)

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
        """Chunk ``directory`` here (unchanged files unread, with ``previous_stat``), upload
        the packs the server lacks and then the manifest, and commit the manifest fenced by
        ``epoch``: a commit sends what the session changed. The server reads the browser
        version and cookie domains from the state itself (the ones given are not sent)."""
        if end_session is not None and epoch is None:
            raise ValidationFailed("Ending a session with its commit needs the epoch.")
        batch = BlobBatch(self._blobs, limit=PUSH_INLINE_BYTES)
        result = pack_chunked(
            directory,
            profile.browser_name,
            batch,
            previous=previous,
            previous_stat=previous_stat,
        )
        self._manifests.remember(result.manifest)
        fields: dict[str, Any] = {
            "checksum": result.checksum,
            "epoch": epoch,
            "event": event,
            "payload": _payload(payload),
        }
        if end_session is not None:
            fields["ended"] = _payload(end_session)
        kept = batch.kept
        header = _body(
            PushHeader,
            commit=fields,
            blobs=[{"checksum": name, "size": len(data)} for name, data in kept],
        )
        head = json.dumps(header, separators=(",", ":")).encode() + b"\n"
        size = len(head) + sum(len(data) for _, data in kept)

        def body() -> Iterator[bytes]:
            yield head
            for _, data in kept:
                yield data

        answer = self._json(
            "POST",
            self._profile_path(profile.id, "/state/push"),
            body=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                **self._lease_header(profile.id, epoch),
            },
            idempotent=True,
        )
        if end_session is not None:
            self._forget_lease(profile.id, epoch)  # released with the commit
        return self._profile(answer), result

    def _upload(
        self,
        ref: str,
        source: IO[bytes] | BinaryIO,
        *,
        browser_version: str | None = None,
        progress: Progress | None = None,
        filename: str = "state.tar",
    ) -> Profile:
        """Import an archive through the server's own import (``POST .../upload``, multipart
        ``file``): it is checked there as hostile input. ``source`` is streamed, not read
        whole; it is sent once (not retried)."""

        class _Counting(io.RawIOBase):
            def __init__(self) -> None:
                super().__init__()
                self.count = 0

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                view = memoryview(buffer).cast("B")
                data = source.read(len(view))
                n = len(data)
                view[:n] = data
                self.count += n
                if progress is not None and n:
                    progress(self.count)
                return n

        def files() -> Mapping[str, Any]:
            stream = io.BufferedReader(_Counting(), CHUNK)
            return {"file": (filename, stream, "application/octet-stream")}

        data = {"browser_version": browser_version} if browser_version is not None else None
        body = self._json(
            "POST",
            self._profile_path(ref, "/upload"),
            files=files,
            data=data,
            idempotent=False,
        )
        return self._profile(body)

    def import_archive(
        self,
        ref: str,
        source: IO[bytes] | BinaryIO,
        *,
        browser_version: str | None = None,
    ) -> Profile | None:
        """The server imports archives itself: see :meth:`upload`."""
        return self._upload(ref, source, browser_version=browser_version)

    def set_status(self, profile_id: str, status: ProfileStatus) -> Profile:
        raise ProfileError(
            "Setting a profile's status is not available over HTTP: the server sets it "
            "during its own import (POST /v1/profiles/{ref}/upload).",
            status_requested=status,
        )

    def settle_status(self, profile_id: str) -> None:
        raise ProfileError(
            "Settling a profile's status is not available over HTTP: the server does it "
            "after its own import."
        )

    def collect_garbage(self, *, min_age: float, wait: float) -> builtins.list[str]:
        """Nothing to collect from here: the server frees its state bytes itself."""
        log.info("unreferenced state bytes are collected by the server at %s", self.location)
        return []

    # ------------------------------------------------------------------ writer leases

    def acquire_lease(
        self,
        profile_id: str,
        holder: Holder,
        *,
        ttl: float | None,
        force: bool = False,
        wait: float = 0.0,
    ) -> LeaseGrant | None:
        """``wait``: the server holds the request until the lease is free, for at most
        that long (capped at :data:`LEASE_POLL_MAX`): one request instead of a poll."""
        if force:
            raise ProfileError(
                "A forced (file-lock) lease is the embedded store's mode and is not "
                f"available over HTTP ({self.location}); leases there expire and are renewed.",
                profile_id=profile_id,
            )
        hold = max(0.0, min(float(wait), LEASE_POLL_MAX, self.read_timeout / 2))
        body = _body(
            LeaseBody,
            kind=holder.kind,
            host=holder.host,
            pid=holder.pid,
            wait=round(hold, 3),
            **({} if ttl is None else {"ttl": ttl}),
        )
        try:
            grant = self._json(
                "POST",
                self._profile_path(profile_id, "/lease"),
                json_body=body,
                idempotent=False,
                deadline=time.monotonic() + wait if wait > 0 else None,
            )
        except ProfileBusy:
            return None
        if not isinstance(grant, dict) or not isinstance(grant.get("epoch"), int):
            raise ProfileError(
                f"The profile service at {self.location} granted a lease without an epoch.",
                cause="bad lease",
            )
        record = grant.get("profile")
        read = _model(
            LeaseGrantBody,
            {**grant, "profile": self._profile(record) if isinstance(record, dict) else record},
            location=self.location,
        )
        expires = read.expires_at
        self._lease_tokens[(read.profile_id or profile_id, read.epoch)] = read.token
        return LeaseGrant(
            profile_id=read.profile_id or profile_id,
            epoch=read.epoch,
            expires_at=None
            if expires is None
            else datetime.fromisoformat(expires.replace("Z", "+00:00")),
            profile=read.profile,
        )

    def renew_lease(self, profile_id: str, epoch: int, *, ttl: float | None) -> bool:
        """False when the lease is no longer held, also when this service was not
        granted it (no token of it: the server answers ``LeaseLost``)."""
        try:
            body = self._json(
                "POST",
                self._profile_path(profile_id, "/lease/renew"),
                json_body=_body(RenewBody, epoch=epoch)
                if ttl is None
                else _body(RenewBody, epoch=epoch, ttl=ttl),
                headers=self._lease_header(profile_id, epoch),
                idempotent=True,
            )
        except LeaseLost:
            return False
        return _model(RenewResult, body, location=self.location).renewed

    def release_lease(self, profile_id: str, epoch: int) -> None:
        """Releasing a lease that is not held (or was not granted to this service) changes
        nothing and is not an error, as with a local service."""
        path = self._profile_path(profile_id, "/lease")
        headers = self._lease_header(profile_id, epoch)
        try:
            self._send(
                "DELETE", path, params={"epoch": epoch}, headers=headers, idempotent=True
            ).close()
        except LeaseLost:
            log.debug("the lease %s on %s was not this service's to release", epoch, profile_id)
        self._forget_lease(profile_id, epoch)

    def _lease_header(self, profile_id: str, epoch: int | None) -> dict[str, str]:
        """``X-Lease-Token`` of the lease ``epoch``, if this service was granted it."""
        token = None if epoch is None else self._lease_tokens.get((profile_id, epoch))
        return {"X-Lease-Token": token} if token is not None else {}

    def _forget_lease(self, profile_id: str, epoch: int | None) -> None:
        if epoch is not None:
            self._lease_tokens.pop((profile_id, epoch), None)

    def lease_holder(self, profile_id: str) -> Holder | None:
        try:
            body = self._json("GET", self._profile_path(profile_id, "/lease"), idempotent=True)
        except NotFound:
            return None
        found = body.get("holder") if isinstance(body, dict) and "holder" in body else body
        holder = _model(Holder, found, location=self.location) if isinstance(found, dict) else None
        return _model(LeaseHolderBody, {"holder": holder}, location=self.location).holder

    def leases(self) -> builtins.list[tuple[str, Holder]]:
        body = self._json("GET", "leases", idempotent=True)
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, builtins.list):
            rows = []
        read = _model(
            LeaseList,
            {
                "data": [
                    _model(
                        LeaseRow,
                        {
                            **row,
                            "holder": _model(Holder, row.get("holder"), location=self.location),
                        },
                        location=self.location,
                    )
                    for row in rows
                    if isinstance(row, dict) and isinstance(row.get("holder"), dict)
                ]
            },
            location=self.location,
        )
        return [(row.profile_id, row.holder) for row in read.data]
