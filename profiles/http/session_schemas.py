"""The bodies and answers of sessions as a service (``/v1/sessions``, ``/v1/account/me``).

A session runs on the service's machine, on a profile's state (or on none: an ephemeral
session), and a client drives it over CDP through ``connect_url``. The request body takes
doc 001's snake_case and doc 004's camelCase names (``profileId``, ``startUrl``,
``browserScreenWidth`` / ``browserScreenHeight``, ``keepAlive``, ``customProxy``).

Only pydantic and :mod:`profiles.models` here, like :mod:`profiles.http.schemas`.
"""

from __future__ import annotations

from typing import Any, Final, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "MAX_SESSION_SECONDS",
    "AccountMe",
    "SessionAction",
    "SessionCreateBody",
    "SessionOutcome",
    "SessionPage",
    "SessionProxy",
    "SessionRecord",
    "SessionScreen",
    "SessionStatus",
]

DEFAULT_IDLE_TIMEOUT: Final = 300.0
MAX_SESSION_SECONDS: Final = 7 * 24 * 3600.0

SessionStatus = Literal["starting", "running", "stopping", "stopped", "failed"]


class SessionScreen(BaseModel):
    """The browser's viewport in CSS pixels."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=10_000)
    height: int = Field(ge=1, le=10_000)


PROXY_SCHEMES: Final = ("http", "https", "socks4", "socks5")


class SessionProxy(BaseModel):
    """A proxy for the session's browser (Playwright's ``proxy`` option): ``server`` is
    ``scheme://host:port`` (http, https, socks4, socks5)."""

    model_config = ConfigDict(extra="forbid")

    server: str = Field(min_length=1, max_length=2048)
    bypass: str | None = Field(default=None, max_length=2048)
    username: str | None = Field(default=None, max_length=1024)
    password: str | None = Field(default=None, max_length=1024)

    @model_validator(mode="after")
    def _server_url(self) -> SessionProxy:
        _check_url(self.server, PROXY_SCHEMES, "a proxy server")
        return self


def _check_url(url: str, schemes: tuple[str, ...], what: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"{what} must be a URL") from None
    if parts.scheme not in schemes:
        raise ValueError(f"{what} must be a {', '.join(schemes)} URL")
    if parts.scheme in ("http", "https", "socks4", "socks5") and not parts.hostname:
        raise ValueError(f"{what} must name a host")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in url):
        raise ValueError(f"{what} must not hold control characters")


def _proxy_of(url: str) -> dict[str, Any]:
    """Doc 004's ``customProxy`` URL as a proxy: credentials in it move to their fields."""
    _check_url(url, PROXY_SCHEMES, "customProxy (scheme://host:port, e.g. http://proxy:3128)")
    parts = urlsplit(url)
    proxy: dict[str, Any] = {}
    if parts.username is not None or parts.password is not None:
        proxy["username"] = unquote(parts.username or "")
        proxy["password"] = unquote(parts.password or "")
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    proxy["server"] = url
    return proxy


class SessionCreateBody(BaseModel):
    """``POST /v1/sessions``: start a browser on the service's machine.

    ``profile_id`` (``profileId``): the profile's id or name; without it, an ephemeral
    session on a fresh profile-less browser whose state is discarded. ``screen``
    (``browserScreenWidth`` and ``browserScreenHeight``), ``proxy`` (``customProxy``, an
    object or a URL), ``start_url`` (``startUrl``). ``idle_timeout``: seconds with no
    client connected before the session stops and commits; ``max_duration``: seconds
    after which it stops and commits whatever is connected; ``keep_alive``
    (``keepAlive``, default true): false stops and commits as soon as the last client
    disconnects. ``lock_timeout``: how long to wait for another writer session on the
    profile (then ``409 ProfileBusy``). ``readonly``: a private copy, nothing committed.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    profile_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        validation_alias=AliasChoices("profile_id", "profileId"),
    )
    start_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=8192,
        validation_alias=AliasChoices("start_url", "startUrl"),
    )
    screen: SessionScreen | None = None
    browserScreenWidth: int | None = Field(default=None, ge=1, le=10_000)
    browserScreenHeight: int | None = Field(default=None, ge=1, le=10_000)
    proxy: SessionProxy | str | None = Field(
        default=None, validation_alias=AliasChoices("proxy", "customProxy")
    )
    readonly: bool = False
    idle_timeout: float = Field(
        default=DEFAULT_IDLE_TIMEOUT,
        gt=0,
        le=MAX_SESSION_SECONDS,
        validation_alias=AliasChoices("idle_timeout", "idleTimeout"),
    )
    max_duration: float | None = Field(
        default=None,
        gt=0,
        le=MAX_SESSION_SECONDS,
        validation_alias=AliasChoices("max_duration", "maxDuration"),
    )
    keep_alive: bool = Field(default=True, validation_alias=AliasChoices("keep_alive", "keepAlive"))
    lock_timeout: float = Field(
        default=10.0, ge=0, le=60.0, validation_alias=AliasChoices("lock_timeout", "lockTimeout")
    )

    @model_validator(mode="after")
    def _one_screen(self) -> SessionCreateBody:
        sized = (self.browserScreenWidth, self.browserScreenHeight)
        if any(v is not None for v in sized):
            if self.screen is not None:
                raise ValueError("give screen or browserScreenWidth/Height, not both")
            if None in sized:
                raise ValueError("browserScreenWidth and browserScreenHeight go together")
            self.screen = SessionScreen(width=sized[0] or 0, height=sized[1] or 0)
        if isinstance(self.proxy, str):
            self.proxy = SessionProxy(**_proxy_of(self.proxy))
        if self.start_url is not None:
            _check_url(self.start_url, ("http", "https", "about", "data"), "start_url")
        return self


class SessionAction(BaseModel):
    """``PATCH /v1/sessions/{session_id}``: doc 004's ``{"action": "stop"}``."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["stop"]


class SessionOutcome(BaseModel):
    """How a session ended: ``outcome`` (``ok``, ``error``, ``crashed``), whether its
    state was ``committed``, why not (``reason``), the error (``error``, redacted), and
    ``seconds`` it ran. ``committed`` is false for read-only and ephemeral sessions."""

    model_config = ConfigDict(extra="allow")

    outcome: str
    committed: bool
    reason: str | None = None
    error: str | None = None
    seconds: float | None = None


class SessionError(BaseModel):
    """Why a session failed, as the API words errors (``code``, ``message``)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class SessionRecord(BaseModel):
    """A session: ``connect_url`` is the WebSocket for
    ``chromium.connect_over_cdp(connect_url, headers={"Authorization": "Bearer <key>"})``
    (the profile's persistent context is ``browser.contexts[0]``). ``live_url`` (while
    running) is the service's web page on the session: its live view, after signing in
    there. ``ended_because`` says what stopped it; ``outcome`` how it ended, ``error`` why
    it failed. ``replica``: the id of the service's replica that runs it (any replica
    answers its routes, forwarding them to that one); a replica that is gone leaves its
    live sessions ``failed`` with the error ``ReplicaGone``."""

    id: str
    profile_id: str | None
    profile_name: str | None = None
    status: SessionStatus
    readonly: bool
    ephemeral: bool
    keep_alive: bool
    idle_timeout: float
    max_duration: float | None
    engine: str
    browser_version: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    connect_url: str | None
    live_url: str | None = None
    clients: int = 0
    ended_because: str | None = None
    outcome: SessionOutcome | None = None
    error: SessionError | None = None
    replica: str | None = None


class SessionPage(BaseModel):
    """A page of sessions, newest first (the shape of every page: pass ``next_cursor`` as
    ``cursor`` for the next one)."""

    data: list[SessionRecord]
    has_more: bool
    next_cursor: str | None = None
    pageNumber: int | None = None
    pageSize: int | None = None


class AccountMe(BaseModel):
    """``GET /v1/account/me`` (doc 001): the account, its tier and caps (``null``: none),
    and what it uses now."""

    id: str
    name: str
    tier: str
    profile_cap: int | None
    session_cap: int | None
    service_session_cap: int
    profiles: int
    running_sessions: int
