"""A per-client-IP rate limit as pure ASGI middleware (bodies keep streaming through it).

A sliding window: at most ``limit`` requests per ``window`` seconds per IP; the next one is
refused with ``429`` (code ``RateLimited``) and ``Retry-After`` (whole seconds until the
oldest request in the window leaves it). ``/v1/health`` is not counted.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RateLimit", "RateLimitMiddleware", "parse_rate_limit"]

EXEMPT: Final = frozenset({"/v1/health"})
_SPEC = re.compile(r"([0-9]{1,9})/([0-9]{1,9})", re.ASCII)
MAX_TRACKED_IPS: Final = 100_000


@dataclass(frozen=True)
class RateLimit:
    limit: int
    window: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.window:g}"


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


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, rate: RateLimit | None) -> None:
        self.app = app
        self.rate = rate
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _retry_after(self, ip: str) -> int | None:
        """``None`` when the request may pass (and is counted), else seconds to wait."""
        assert self.rate is not None
        now = time.monotonic()
        with self._lock:
            hits = self._hits.get(ip)
            if hits is None:
                if len(self._hits) >= MAX_TRACKED_IPS:
                    self._forget_idle(now)
                hits = self._hits[ip] = deque()
            while hits and hits[0] <= now - self.rate.window:
                hits.popleft()
            if len(hits) >= self.rate.limit:
                return max(1, math.ceil(hits[0] + self.rate.window - now))
            hits.append(now)
            return None

    def _forget_idle(self, now: float) -> None:
        assert self.rate is not None
        for ip in [ip for ip, h in self._hits.items() if not h or h[-1] <= now - self.rate.window]:
            del self._hits[ip]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.rate is None or scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        wait = self._retry_after(ip)
        if wait is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "code": "RateLimited",
                    "status": 429,
                    "message": "Too many requests, please try again later.",
                    "limit": self.rate.limit,
                    "window": self.rate.window,
                    "retry_after": wait,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(wait).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
