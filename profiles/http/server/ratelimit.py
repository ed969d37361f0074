"""Rate limits as pure ASGI middleware (bodies keep streaming through it).

Two budgets, each a sliding window (at most ``limit`` requests per ``window`` seconds):

- **per account**, for requests that carry a live API key: the budget of the key's account
  tier (:data:`profiles.http.server.accounts.TIER_RATE_LIMITS`, ``profiles serve --tier-rate-limit``
  overrides it). Every key and every worker of an account share it, wherever they run.
- **per client address**, for everything else: no key, an unknown, revoked or malformed key,
  a deactivated account, and the token routes (signed downloads and uploads). 100 requests
  per 15 minutes per address (the hosted API's limit we follow) protects the service from
  strangers.

Identifying the key is cheap on purpose: a header that does not have a key's shape is never
looked up, and one that has costs one primary-key read of the accounts database and one
SHA-256 (:meth:`~profiles.http.server.accounts.AccountsDB.identify`); nothing else runs before the
budget is checked. The key identified is handed to the route (``scope["state"]``) so it is
not looked up twice.

Not counted: ``/v1/health``, the web page (``/`` and its files under ``/web/``: no data,
nothing to guess), and lease renewals (``POST .../lease/renew``) made with a live key: a
heartbeat keeps a running session's lease and is not the traffic the budget is for. A
renewal without a live key counts against the address like any other request.

A refused request is ``429`` (code ``RateLimited``) with ``Retry-After`` and ``retry_after``
(whole seconds until the oldest counted request leaves the window) and the budget's
``limit``, ``window`` and ``scope`` (``account`` or ``address``). Every counted answer carries
``RateLimit-Limit`` and ``RateLimit-Remaining``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_ADDRESS_LIMIT",
    "RateLimit",
    "RateLimitMiddleware",
    "SlidingWindow",
    "parse_rate_limit",
    "parse_tier_rate_limit",
]

EXEMPT: Final = frozenset({"/v1/health", "/"})
#: The web page's files (routes/web.py): they hold no data and cost nothing to serve.
EXEMPT_PREFIXES: Final = ("/web/",)
_RENEW: Final = re.compile(r"/v1/profiles/[^/]{1,300}/lease/renew", re.ASCII)
_SPEC = re.compile(r"([0-9]{1,9})/([0-9]{1,9})", re.ASCII)
MAX_TRACKED_KEYS: Final = 100_000
MAX_AUTHORIZATION: Final = 512  # longer headers are not keys: never looked up


@dataclass(frozen=True)
class RateLimit:
    limit: int
    window: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.window:g}"


#: 100 requests per 15 minutes per client address, for traffic without a live key (the
#: limit of the hosted profile API we follow: docs/http-api.md).
DEFAULT_ADDRESS_LIMIT: Final = RateLimit(100, 900.0)


def parse_rate_limit(spec: str) -> RateLimit | None:
    """``"100/900"`` (requests per seconds); ``"off"`` or ``"0"``: no limit."""
    if spec.strip().lower() in ("off", "0", "none"):
        return None
    match = _SPEC.fullmatch(spec.strip())
    if match is None or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise ValueError(
            f"rate limit {spec!r}: use REQUESTS/SECONDS with both at least 1, e.g. 100/900"
        )
    return RateLimit(int(match.group(1)), float(match.group(2)))


def parse_tier_rate_limit(spec: str, tiers: Mapping[str, object]) -> tuple[str, RateLimit | None]:
    """``"team=6000/900"``: a tier's budget (``off``: none)."""
    tier, sep, rest = spec.partition("=")
    tier = tier.strip()
    if not sep or tier not in tiers:
        raise ValueError(
            f"tier rate limit {spec!r}: use TIER=REQUESTS/SECONDS with a tier among "
            f"{', '.join(tiers)}, e.g. team=6000/900"
        )
    return tier, parse_rate_limit(rest)


class SlidingWindow:
    """At most ``limit`` hits per ``window`` seconds per key (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def hit(self, key: str, rate: RateLimit) -> tuple[int | None, int]:
        """Count one hit: ``(None, remaining)`` when it may pass, else ``(seconds to wait,
        0)`` (a refused hit is not counted)."""
        now = self._clock()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= MAX_TRACKED_KEYS:
                    self._forget_idle(now, rate.window)
                hits = self._hits[key] = deque()
            while hits and hits[0] <= now - rate.window:
                hits.popleft()
            if len(hits) >= rate.limit:
                return max(1, math.ceil(hits[0] + rate.window - now)), 0
            hits.append(now)
            return None, rate.limit - len(hits)

    def _forget_idle(self, now: float, window: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - window]:
            del self._hits[key]


#: What the middleware learns from a bearer token: ``(account id, tier)`` and the key
#: itself (handed on to the route), or ``None`` for anything that is not a live key.
Identify = Callable[[str], tuple[str, str, Any] | None]


def _exempt(path: str) -> bool:
    return path in EXEMPT or path.startswith(EXEMPT_PREFIXES)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            if len(value) > MAX_AUTHORIZATION:
                return None
            text = bytes(value).decode("latin-1")
            scheme, _, token = text.partition(" ")
            token = str(token).strip()
            # pk_<16 hex>_<43 url-safe base64>: anything else is not looked up.
            if scheme.lower() != "bearer" or not token.startswith("pk_") or len(token) != 63:
                return None
            return token
    return None


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        rate: RateLimit | None,
        *,
        tiers: Mapping[str, RateLimit | None] | None = None,
        identify: Identify | None = None,
    ) -> None:
        self.app = app
        self.rate = rate
        self.tiers = dict(tiers or {})
        self.identify = identify
        self.addresses = SlidingWindow()
        self.accounts = SlidingWindow()

    def _who(self, scope: Scope) -> tuple[str, str, Any] | None:
        token = _bearer(scope)
        if token is None or self.identify is None:
            return None
        return self.identify(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or _exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        # A WebSocket handshake (a remote session's CDP connection) counts as one request.
        prefix = "websocket.http" if scope["type"] == "websocket" else "http"
        who = self._who(scope)
        if who is not None:
            account_id, tier, key = who
            scope.setdefault("state", {})["identified_key"] = key
            if scope.get("method") == "POST" and _RENEW.fullmatch(scope["path"]):
                await self.app(scope, receive, send)  # a heartbeat: not counted
                return
            rate = self.tiers.get(tier)
            bucket, windows, what = f"acct:{account_id}", self.accounts, "account"
        else:
            rate = self.rate
            client = scope.get("client")
            bucket, windows, what = (
                f"ip:{client[0] if client else 'unknown'}",
                self.addresses,
                "address",
            )
        if rate is None:
            await self.app(scope, receive, send)
            return
        wait, remaining = windows.hit(bucket, rate)
        if wait is None:
            await self.app(scope, receive, _with_headers(send, rate, remaining))
            return
        await _refuse(send, rate, wait, what, prefix=prefix)


def _with_headers(send: Send, rate: RateLimit, remaining: int) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers") or ())
            headers += [
                (b"ratelimit-limit", str(rate.limit).encode()),
                (b"ratelimit-remaining", str(remaining).encode()),
            ]
            message = {**message, "headers": headers}
        await send(message)

    return sending


async def _refuse(
    send: Send, rate: RateLimit, wait: int, what: str, *, prefix: str = "http"
) -> None:
    whose = "this account" if what == "account" else "this address"
    body = json.dumps(
        {
            "error": {
                "code": "RateLimited",
                "status": 429,
                "message": (
                    f"Too many requests from {whose} (at most {rate.limit} per "
                    f"{rate.window:g} s); try again in {wait} s."
                ),
                "limit": rate.limit,
                "window": rate.window,
                "scope": what,
                "retry_after": wait,
            }
        }
    ).encode()
    await send(
        {
            "type": f"{prefix}.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(wait).encode()),
                (b"ratelimit-limit", str(rate.limit).encode()),
                (b"ratelimit-remaining", b"0"),
            ],
        }
    )
    await send({"type": f"{prefix}.response.body", "body": body})
