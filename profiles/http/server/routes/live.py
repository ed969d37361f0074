"""The web page's live view of a remote session: its browser over CDP, from a browser tab.

A page cannot set ``Authorization`` on a WebSocket, and the key must not travel in a URL
(URLs end up in logs, history and ``Referer``) nor in a cookie (the API is keyed, not
cookie-authenticated, so no request of another site can act with it). So the page trades
its key for a ticket first, then opens the socket with the ticket as a subprotocol:

1. ``POST /v1/sessions/{id}/live-ticket`` with ``Authorization: Bearer <key>`` answers
   ``{"ticket", "protocol", "expires_in", "url"}``, after the checks the CDP socket makes
   (the account's session, running; a writer session needs a key that may write).
2. ``new WebSocket(url, [protocol, "ticket." + ticket])``: ``Sec-WebSocket-Protocol`` carries
   it (a header, not part of the URL). The answer selects ``protocol`` only: the ticket is
   never echoed.

A ticket is 32 random bytes, good for :data:`TICKET_SECONDS`, for one socket to the one
session it names, and spent when the socket is offered, accepted or not; the service keeps
its SHA-256 only, in memory (a ticket works on the replica that issued it, which is the one
that runs the session). When the socket comes, the key that took the ticket is checked
again (revoked since: 401; account deactivated: 403; membership gone: 404), and so is the
session (another account's or gone: 404; not running: 409). Refusals are answered before
anything reaches the browser, as on ``/v1/sessions/{id}/cdp``; then
:func:`~profiles.http.server.remote.cdp_proxy.relay` relays CDP both ways, counting the page
as one of the session's clients.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Final

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.websockets import WebSocket

from profiles.errors import Conflict, Forbidden, NotFound, ProfileError, Unauthorized
from profiles.http.server.access_log import access_log
from profiles.http.server.accounts import AccountsDB
from profiles.http.server.deps import Caller, ReadAuth, base_url, error_response, run_sync
from profiles.http.server.openapi import AUTH, error_responses
from profiles.http.server.remote import cdp_proxy
from profiles.http.server.remote.manager import RemoteSessions, SessionEntry
from profiles.http.server.remote.registry import FORWARDED_HEADER
from profiles.http.server.routes.remote_sessions import (
    elsewhere,
    forward_headers,
    registry,
    ws_base,
)

__all__ = [
    "LIVE_PROTOCOL",
    "LIVE_ROUTE",
    "TICKET_PREFIX",
    "TICKET_SECONDS",
    "LiveTicket",
    "LiveTickets",
    "router",
]

log = logging.getLogger(__name__)

router = APIRouter()

LIVE_ROUTE: Final = "/v1/sessions/{session_id}/live"
#: The subprotocol the page offers and the service selects.
LIVE_PROTOCOL: Final = "profiles.live.v1"
#: The prefix of the subprotocol value that carries the ticket.
TICKET_PREFIX: Final = "ticket."
TICKET_SECONDS: Final = 30.0
#: Tickets outstanding at once, all accounts together (the oldest go first beyond it).
MAX_TICKETS: Final = 10_000

_SESSION_ID = re.compile(r"sess_[0-9a-f-]{36}", re.ASCII)
_TICKET = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)


class LiveTicket(BaseModel):
    """A ticket for the live view's WebSocket: open ``url`` offering the subprotocols
    ``protocol`` and ``"ticket." + ticket`` within ``expires_in`` seconds; it serves once."""

    ticket: str
    protocol: str
    expires_in: float
    url: str


@dataclass(frozen=True)
class _Ticket:
    key_id: str
    account_id: str  # the account acted on (X-Account's, or the key's own)
    session_id: str
    expires: float


class LiveTickets:
    """The outstanding tickets of this process, by the SHA-256 of each (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}

    @staticmethod
    def _digest(ticket: str) -> str:
        return hashlib.sha256(ticket.encode("ascii")).hexdigest()

    def issue(self, *, key_id: str, account_id: str, session_id: str) -> str:
        ticket = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for digest in [d for d, t in self._tickets.items() if t.expires <= now]:
                del self._tickets[digest]
            while len(self._tickets) >= MAX_TICKETS:
                del self._tickets[next(iter(self._tickets))]
            self._tickets[self._digest(ticket)] = _Ticket(
                key_id=key_id,
                account_id=account_id,
                session_id=session_id,
                expires=now + TICKET_SECONDS,
            )
        return ticket

    def spend(self, ticket: str, session_id: str) -> _Ticket | None:
        """The ticket's grant, once: None when it is unknown, spent, expired or for
        another session."""
        if not _TICKET.fullmatch(ticket):
            return None
        with self._lock:
            found = self._tickets.pop(self._digest(ticket), None)
        if found is None or found.expires <= time.monotonic():
            return None
        if not secrets.compare_digest(found.session_id, session_id):
            return None
        return found


def live_tickets(request: Request) -> LiveTickets:
    found: LiveTickets = request.app.state.live_tickets
    return found


Tickets = Annotated[LiveTickets, Depends(live_tickets)]


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"Session {session_id[:64]!r} not found", resource="session")


def _running(entry: SessionEntry) -> None:
    if entry.status != "running":
        raise Conflict(
            f"Session {entry.id} is {entry.status}: only a running session has a live view.",
            session_id=entry.id,
            status=entry.status,
        )


def _socket_url(request: Request, session_id: str) -> str:
    base = base_url(request)
    scheme = "wss://" if base.startswith("https://") else "ws://"
    host = base.split("://", 1)[1]
    return f"{scheme}{host}{LIVE_ROUTE.replace('{session_id}', session_id)}"


@router.post(
    "/v1/sessions/{session_id}/live-ticket",
    tags=["remote sessions"],
    response_model=LiveTicket,
    responses=error_responses(*AUTH, 404, 409),
)
async def live_ticket(
    request: Request, c: ReadAuth, tickets: Tickets, session_id: str
) -> LiveTicket | Response:
    """A single-use ticket (good for 30 s) for the session's live view: a WebSocket at
    ``url`` that relays CDP as ``connect_url`` does, for a browser page, which cannot set
    ``Authorization`` on a WebSocket. Offer the subprotocols ``protocol`` and
    ``"ticket." + ticket``; the key never goes in a URL. A writer session needs a key
    that may write, as on ``connect_url``."""
    if not _SESSION_ID.fullmatch(session_id):
        raise _not_found(session_id)
    m: RemoteSessions = request.app.state.remote_sessions
    found = m.find(c.account.id, session_id)
    if found is None:  # another replica's session (or none): its owner issues the ticket
        return await _ticket_elsewhere(request, c, session_id)
    entry: SessionEntry = found
    if not (entry.readonly or entry.ephemeral):
        c.require_admin("driving a writer session")
    _running(entry)
    ticket = tickets.issue(key_id=c.key.id, account_id=c.account.id, session_id=entry.id)
    return LiveTicket(
        ticket=ticket,
        protocol=LIVE_PROTOCOL,
        expires_in=TICKET_SECONDS,
        url=_socket_url(request, entry.id),
    )


async def _ticket_elsewhere(request: Request, c: Caller, session_id: str) -> Response:
    """The ticket for a session another replica runs, from that replica (tickets live in
    the memory of the replica whose browser they reach); its ``url`` names this replica,
    which relays the socket there."""
    reg = registry(request)
    row = await elsewhere(request, c, reg, session_id)
    record = reg.record_of(row)
    if record.status != "running" or not reg.alive(row) or row.replica_id == reg.replica_id:
        raise Conflict(
            f"Session {session_id} is {record.status}: only a running session has a live view.",
            session_id=session_id,
            status=record.status,
        )
    try:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
            answer = await client.post(
                f"{row.replica_url}/v1/sessions/{session_id}/live-ticket",
                headers=forward_headers(request, reg),
            )
    except httpx.HTTPError as exc:
        log.warning("cannot reach replica %s: %s", row.replica_id, type(exc).__name__)
        err = ProfileError(
            f"The replica running session {session_id} ({row.replica_id}) did not answer; "
            "try again."
        )
        err.status = 502
        return error_response(err)
    if not answer.is_success:
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )
    body = answer.json()
    body["url"] = _socket_url(request, session_id)
    return JSONResponse(body)


# ------------------------------------------------------------------ the WebSocket


def _offered_ticket(websocket: WebSocket) -> str | None:
    """The ticket among the offered subprotocols, when the page offered the live view's
    protocol and exactly one ticket."""
    offered = websocket.scope.get("subprotocols") or []
    if LIVE_PROTOCOL not in offered:
        return None
    tickets = [p.removeprefix(TICKET_PREFIX) for p in offered if p.startswith(TICKET_PREFIX)]
    return tickets[0] if len(tickets) == 1 else None


def _grant_writes(accounts: AccountsDB, grant: _Ticket) -> bool:
    """Whether the key that took the ticket may still act on its account, and write: the
    key live, its account (and the one acted on) active, the membership still there.
    Raises the error to answer otherwise."""
    try:
        key = accounts.get_key(grant.key_id)
    except NotFound:
        key = None
    if key is None or key.revoked_at is not None:
        raise Unauthorized("Invalid or revoked API key")
    own = accounts.get_account(key.account_id)
    if not own.active:
        raise Forbidden("Account is deactivated")
    role: str | None = None
    if grant.account_id != own.id:
        role = accounts.role(grant.account_id, own.id)
        if role is None:
            raise _not_found(grant.session_id)
        if not accounts.get_account(grant.account_id).active:
            raise Forbidden("Account is deactivated")
    if not {"read", "admin"} & set(key.scopes):
        raise Forbidden("API key missing required permission: read", permission="read")
    return "admin" in key.scopes and role != "member"


async def _relay_elsewhere(websocket: WebSocket, session_id: str) -> int | None:
    """When another live replica runs the session: the socket relayed there with the
    subprotocols offered (the ticket among them; that replica, which issued it, checks it),
    and the handshake's status. None when the session is this replica's, or no live
    replica's (then the ticket is checked here, and refused)."""
    m: RemoteSessions = websocket.app.state.remote_sessions
    if m.runs(session_id) or websocket.headers.get(FORWARDED_HEADER):
        return None  # never relayed twice
    reg = registry(websocket)
    row = await run_sync(lambda: reg.accounts.get_session(session_id))
    if row is None or row.replica_id == reg.replica_id or not reg.alive(row):
        return None
    if reg.record_of(row).status != "running":
        return None
    url = ws_base(row.replica_url) + LIVE_ROUTE.replace("{session_id}", session_id)
    offered = [str(p) for p in websocket.scope.get("subprotocols") or []]
    return await cdp_proxy.relay_to(
        websocket, url, forward_headers(websocket, reg), subprotocols=offered
    )


@router.websocket(LIVE_ROUTE, name="session_live")
async def _live_socket(websocket: WebSocket) -> None:
    session_id = str(websocket.path_params.get("session_id", ""))
    started = time.perf_counter()
    status = 500
    account: str | None = None
    try:
        relayed = await _relay_elsewhere(websocket, session_id)
        if relayed is not None:
            status = relayed
            return
        try:
            ticket = _offered_ticket(websocket)
            if ticket is None:
                raise Unauthorized(
                    "A live-view ticket is required: POST "
                    "/v1/sessions/{session_id}/live-ticket with the API key, then offer "
                    f"the subprotocols {LIVE_PROTOCOL!r} and 'ticket.<ticket>'."
                )
            tickets: LiveTickets = websocket.app.state.live_tickets
            grant = tickets.spend(ticket, session_id)
            if grant is None:
                raise Unauthorized(
                    "Invalid or expired live-view ticket: a ticket serves one socket to "
                    f"its session, within {TICKET_SECONDS:g} s; ask for another."
                )
            account = grant.account_id
            accounts: AccountsDB = websocket.app.state.accounts
            can_write = _grant_writes(accounts, grant)
            m: RemoteSessions = websocket.app.state.remote_sessions
            entry = m.get(grant.account_id, session_id)
            if not (entry.readonly or entry.ephemeral) and not can_write:
                raise Forbidden(
                    "API key missing required permission: admin (driving a writer session "
                    "writes; a read key runs read-only sessions).",
                    permission="admin",
                )
            _running(entry)
        except ProfileError as err:
            status = err.status
            await websocket.send_denial_response(error_response(err))
            return
        # Accepted with the live view's subprotocol: a browser closes a socket whose answer
        # selects none of those it offered.
        status = await cdp_proxy.relay(websocket, entry.run, subprotocol=LIVE_PROTOCOL)
    finally:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        access_log.info(
            "%s %s %d %.1f ms account=%s",
            "GET",
            LIVE_ROUTE,
            status,
            duration_ms,
            account or "-",
            extra={
                "method": "GET",
                "route": LIVE_ROUTE,
                "status": status,
                "duration_ms": duration_ms,
                "account": account,
            },
        )
