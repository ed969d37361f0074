"""How ``profiles serve`` meets its connections, before any request reaches the app.

uvicorn closes a connection only when it is idle *between* requests (its keep-alive
timeout, armed once a response is sent): a connection that never sends a request, or sends
its headers a byte at a time, or stops in the middle of a body, is kept open for ever, and it
holds a file descriptor. A client without a key could open more of them than the process
has descriptors (systemd's default soft limit is 1024), and the server could then accept
nothing at all. :class:`GuardedH11Protocol` (uvicorn's h11 protocol, and what it adds):

- **Header timeout** (``--header-timeout``, 10 s): from the connection's opening, and from
  the first byte of each later request on it, the client has that long to finish the
  request line and headers; trickling bytes does not extend it. Then the connection is
  closed. (Headers larger than h11's 16 KiB are refused with 400 by uvicorn already.)
- **Keep-alive** (``--keep-alive``, 5 s): uvicorn's ``timeout_keep_alive``, the silence
  allowed between requests.
- **Read timeout** (``--read-timeout``, 60 s): the longest silence of a client in the middle
  of a request body, while the server is reading it (not while it paused reading to let the
  app catch up).
- **Connections at once** (``--max-connections``, 1000, and never more than half the
  open-file limit, read when each connection opens, so the app keeps descriptors for its
  files): a connection past it is answered ``503`` and closed as it is accepted, which
  frees its descriptor at once (uvicorn's ``limit_concurrency`` answers only the requests of
  connections it keeps open, so it bounds no descriptors and is not used). asyncio
  accepts as many connections in one go as the backlog it was given, before the protocol
  of any of them can count it: it is given a sixteenth of the open-file limit (8 to 128),
  so that a burst stays inside the descriptors the limit leaves over, and the kernel's
  queue of connections waiting to be accepted is then set back to 2048
  (:class:`GuardedServer`), so that a flood does not make clients' connects wait.
- **Connections per client address** (``--max-connections-per-address``, 128; an IPv6
  client's /64 counts as one address): past it, a connection from that address is answered
  ``429`` and closed as it is accepted, so one address cannot take the others' share. The
  proxies named in ``--forwarded-allow-ips`` carry many clients and are held only to the
  global limit.

**Forwarded headers** (``X-Forwarded-For``, ``X-Forwarded-Proto``) are believed only from
the reverse proxies the operator names (``--forwarded-allow-ips``); by default from none,
so a client cannot pick the address its rate limit is counted against (uvicorn's default
trusts loopback, and a client on the same machine, an SSH tunnel or a sidecar is loopback).

WebSocket upgrades (a remote session's CDP connection, ``/v1/sessions/{id}/cdp``) go to
:class:`GuardedWebSocketProtocol`, uvicorn's ``websockets`` sans-I/O protocol, which takes
over the count the upgraded connection held and gives it back when the WebSocket closes; a
client's message is at most :data:`MAX_WS_MESSAGE`, without compression (CDP's screenshots
would cost the server's CPU twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEP_ALIVE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS",
    "DEFAULT_READ_TIMEOUT",
    "ConnectionGuard",
    "GuardedH11Protocol",
    "GuardedServer",
    "GuardedWebSocketProtocol",
    "Transport",
    "address_key",
    "parse_forwarded_allow_ips",
    "serve_app",
    "uvicorn_options",
]

log = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT: Final = 10.0
DEFAULT_KEEP_ALIVE: Final = 5
DEFAULT_READ_TIMEOUT: Final = 60.0
DEFAULT_MAX_CONNECTIONS: Final = 1000
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: Final = 128
#: What share of the open-file limit connections may take at most; the rest is the app's
#: files and the connections accepted but not yet counted (see :func:`backlog`).
FILE_SHARE: Final = 0.5
KERNEL_BACKLOG: Final = 2048  # connections the kernel queues until they are accepted
REFUSAL_LOG_EVERY: Final = 10.0  # seconds between two log lines about refused connections
MAX_WS_MESSAGE: Final = 64 * 1024 * 1024  # a client's CDP message (a file it uploads)
_WS_LOG = logging.getLogger(__name__ + ".websocket")
_WS_LOG.setLevel(logging.WARNING)


def parse_forwarded_allow_ips(spec: str) -> tuple[str, ...]:
    """``"10.0.0.1,192.168.0.0/16"``: the proxies whose forwarded headers are believed;
    ``"*"``: every peer (only where a proxy in front always overwrites them); ``""`` or
    ``"none"``: none."""
    text = spec.strip()
    if text.lower() in ("", "none", "off"):
        return ()
    items = tuple(item.strip() for item in text.split(","))
    if "*" in items:
        if items != ("*",):
            raise ValueError("forwarded-allow-ips: '*' trusts every peer; give it alone")
        return items
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"forwarded-allow-ips: {item!r} is not an IP address or network; use "
                "addresses or networks separated by commas, e.g. 10.0.0.1,192.168.0.0/16"
            ) from None
    return items


@dataclass(frozen=True)
class Transport:
    """What the server's connections are held to (see the module)."""

    forwarded_allow_ips: Sequence[str] = ()
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    keep_alive: int = DEFAULT_KEEP_ALIVE
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keep_alive", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be above 0 seconds")
        for name in ("max_connections", "max_connections_per_address"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")


def _open_file_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def accept_batch() -> int:
    """What the event loop accepts in one go, before the protocol of any of them counts
    it (a sixteenth of the open-file limit, 8 to 128)."""
    soft = _open_file_limit()
    return 128 if soft is None else max(8, min(128, soft // 16))


def _canned(status: int, reason: str, code: str, message: str, **details: Any) -> bytes:
    body = json.dumps(
        {"error": {"code": code, "status": status, "message": message, **details}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def address_key(host: str | None) -> str:
    """What the per-address limit counts ``host`` as: itself, or for IPv6 its /64 (one
    machine's share; a client holds a whole /64 as easily as one address)."""
    if host is None:
        return "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


class ConnectionGuard:
    """The connections open now, in all and per client address (the event loop's thread
    only: uvicorn calls its protocols there)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.open = 0
        self.per_address: dict[str, int] = {}
        self._trust_all = "*" in transport.forwarded_allow_ips
        self._proxies = [
            ipaddress.ip_network(item, strict=False)
            for item in transport.forwarded_allow_ips
            if item != "*"
        ]
        self._last_log: dict[str, float] = {}
        self.too_many = _canned(
            503,
            "Service Unavailable",
            "ProfileError",
            "The server has too many connections open; try again in a moment.",
            retry_after=1,
        )
        self.too_many_here = _canned(
            429,
            "Too Many Requests",
            "RateLimited",
            f"Too many connections from this address (at most "
            f"{transport.max_connections_per_address} at once); close some and try again.",
            limit=transport.max_connections_per_address,
            scope="connections",
            retry_after=1,
        )

    def limit(self) -> int:
        """The connections allowed at once now: ``--max-connections``, and no more than
        :data:`FILE_SHARE` of the open-file limit."""
        soft = _open_file_limit()
        if soft is None:
            return self.transport.max_connections
        return max(1, min(self.transport.max_connections, int(soft * FILE_SHARE)))

    def is_proxy(self, host: str) -> bool:
        if self._trust_all:
            return True
        if not self._proxies:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._proxies)

    def admit(self, host: str | None) -> bytes | None:
        """Count a new connection from ``host``, or the answer that refuses it."""
        if self.open >= self.limit():
            self._note("the server's", "--max-connections")
            return self.too_many
        key = address_key(host)
        here = self.per_address.get(key, 0)
        if here >= self.transport.max_connections_per_address and not (
            host is not None and self.is_proxy(host)
        ):
            self._note("one address's", "--max-connections-per-address")
            return self.too_many_here
        self.open += 1
        self.per_address[key] = here + 1
        return None

    def leave(self, host: str | None) -> None:
        key = address_key(host)
        self.open -= 1
        left = self.per_address.get(key, 1) - 1
        if left > 0:
            self.per_address[key] = left
        else:
            self.per_address.pop(key, None)

    def _note(self, whose: str, option: str) -> None:
        # Once in a while, not once per refusal: a flood must not flood the log too.
        now = time.monotonic()
        if now - self._last_log.get(option, -REFUSAL_LOG_EVERY) >= REFUSAL_LOG_EVERY:
            self._last_log[option] = now
            log.warning("refusing connections: %s connection limit is reached (%s)", whose, option)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header and read timeouts and the connection limits
    of :class:`ConnectionGuard` (a subclass made by :func:`uvicorn_options` sets
    :attr:`guard`)."""

    guard: ClassVar[ConnectionGuard]

    _admitted = False
    _header_timer: asyncio.TimerHandle | None = None
    _read_timer: asyncio.TimerHandle | None = None
    _last_read = 0.0

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        refusal = self.guard.admit(self._host())
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            return
        self._admitted = True
        self._last_read = self.loop.time()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self.guard.leave(self._host())
        self._cancel_header_timer()
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused: closing, and nothing of it is parsed
        self._last_read = self.loop.time()
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            # The first bytes of a request (after a keep-alive pause): the headers have
            # till the timer, however they trickle in.
            if self._header_timer is None:
                self._arm_header_timer()
        else:
            self._cancel_header_timer()
            if self.conn.their_state is h11.SEND_BODY and self._read_timer is None:
                self._arm_read_timer(self.guard.transport.read_timeout)

    def _host(self) -> str | None:
        return self.client[0] if self.client else None

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The WebSocket protocol takes the connection, and its count, from here on: this
        # protocol's connection_lost is not called again.
        self._cancel_header_timer()
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._admitted = False
        super().handle_websocket_upgrade(event)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(
            self.guard.transport.header_timeout, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._close("its request's headers took too long")

    def _arm_read_timer(self, delay: float) -> None:
        self._read_timer = self.loop.call_later(delay, self._check_read)

    def _check_read(self) -> None:
        """While a body is being received: close the connection after
        ``read_timeout`` seconds without a byte, unless the server paused reading."""
        self._read_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        now = self.loop.time()
        timeout = self.guard.transport.read_timeout
        if self.flow.read_paused:
            self._last_read = now  # the server's own pause, not the client's silence
        elif now - self._last_read >= timeout:
            self._close("its client sent nothing of the body for too long")
            return
        self._arm_read_timer(max(0.01, self._last_read + timeout - now))

    def _close(self, why: str) -> None:
        # connection_lost follows: a request being read then sees http.disconnect.
        log.debug("closing a connection from %s: %s", self._host() or "?", why)
        self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol on a connection :class:`GuardedH11Protocol` upgraded:
    the connection stays counted by :attr:`guard` until it closes."""

    guard: ClassVar[ConnectionGuard]
    _counted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn logs every handshake with the path as sent, at INFO: the access log
        # (the route template) says it instead.
        self.logger = _WS_LOG

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._counted = True  # the upgraded HTTP connection's count, handed over

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.guard.leave(self.client[0] if self.client else None)
        super().connection_lost(exc)


def uvicorn_options(transport: Transport) -> dict[str, Any]:
    """The keyword arguments of :class:`uvicorn.Config` that carry ``transport``."""
    guard = ConnectionGuard(transport)
    protocol = type("Protocol", (GuardedH11Protocol,), {"guard": guard})
    websocket = type("WebSocketProtocol", (GuardedWebSocketProtocol,), {"guard": guard})
    trusted = list(transport.forwarded_allow_ips)
    return {
        "http": protocol,
        "ws": websocket,
        "ws_max_size": MAX_WS_MESSAGE,
        "ws_per_message_deflate": False,
        "backlog": accept_batch(),  # the kernel's queue: GuardedServer
        "timeout_keep_alive": transport.keep_alive,
        # Off unless a proxy is named: uvicorn would otherwise trust 127.0.0.1 (or
        # $FORWARDED_ALLOW_IPS) and let any local client rewrite its own address.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
    }


class GuardedServer(uvicorn.Server):
    """uvicorn's server, its listening sockets' kernel backlog set back to
    :data:`KERNEL_BACKLOG` once asyncio serves them (asyncio uses the backlog it was given,
    :func:`accept_batch`, both for ``listen`` and as the number of connections it accepts
    in one go; calling ``listen`` again changes only the kernel's queue)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for server in getattr(self, "servers", ()):
            for listening in server.sockets or ():
                with socket.socket(fileno=os.dup(listening.fileno())) as same:
                    same.listen(KERNEL_BACKLOG)


def serve_app(app: Any, *, host: str, port: int, transport: Transport, **options: Any) -> None:
    """Run ``app`` with uvicorn on ``host:port`` under ``transport`` until SIGINT/SIGTERM;
    ``options``: more of :class:`uvicorn.Config`'s."""
    config = uvicorn.Config(app, host=host, port=port, **options, **uvicorn_options(transport))
    server = GuardedServer(config)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
