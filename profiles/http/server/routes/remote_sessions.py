"""Sessions as a service: browsers on the service's machine, bound to a profile at
creation (doc 001's ``POST /v1/sessions {profile_id}``, doc 004's ``SessionView`` and
``PATCH {"action": "stop"}``), driven over CDP through ``/v1/sessions/{id}/cdp``; and
``GET /v1/account/me``.

(``routes/sessions.py`` is another thing: the records a *local* session sends about itself,
under ``/v1/profiles/{ref}/sessions``.)
"""

from __future__ import annotations

import logging
import re
import time
from typing import Annotated, Any, Final

import httpx
from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.requests import HTTPConnection

from profiles.errors import Conflict, NotFound, ProfileError, ValidationFailed
from profiles.http.schemas import ErrorBody
from profiles.http.server.access_log import access_log
from profiles.http.server.accounts import SessionRow
from profiles.http.server.config import MAX_PAGE_NUMBER
from profiles.http.server.deps import (
    Auth,
    Caller,
    ReadAuth,
    base_url,
    connection_caller,
    error_response,
    run_sync,
)
from profiles.http.server.openapi import AUTH, READ, WRITE, error_responses
from profiles.http.server.remote import cdp_proxy
from profiles.http.server.remote.manager import (
    LIVE,
    SHUTDOWN_WAIT,
    RemoteSessions,
    SessionEntry,
)
from profiles.http.server.remote.registry import FORWARDED_HEADER, Registry
from profiles.http.session_schemas import (
    AccountMe,
    SessionAction,
    SessionCreateBody,
    SessionPage,
    SessionRecord,
    SessionStatus,
)
from profiles.store import ProfileStore

log = logging.getLogger(__name__)

router = APIRouter()

CDP_ROUTE: Final = "/v1/sessions/{session_id}/cdp"
_SESSION_ID = re.compile(r"sess_[0-9a-f-]{36}", re.ASCII)


def remote_sessions(request: Request) -> RemoteSessions:
    found: RemoteSessions = request.app.state.remote_sessions
    return found


Remote = Annotated[RemoteSessions, Depends(remote_sessions)]


def registry(request: HTTPConnection) -> Registry:
    found: Registry = request.app.state.registry
    return found


Reg = Annotated[Registry, Depends(registry)]

#: What a forwarded request carries of the client's (the owner authenticates it again).
_PASSED_HEADERS: Final = ("authorization", "x-account")


def forward_headers(request: HTTPConnection, reg: Registry) -> dict[str, str]:
    headers = {k: v for k in _PASSED_HEADERS if (v := request.headers.get(k)) is not None}
    headers[FORWARDED_HEADER] = reg.replica_id
    if request.client is not None:
        # Believed by the owner only if it lists this replica in --forwarded-allow-ips.
        headers["x-forwarded-for"] = request.client.host
    return headers


async def elsewhere(
    request: HTTPConnection, c: Caller, reg: Registry, session_id: str
) -> SessionRow:
    """The registry's row of a session this replica does not run: ``NotFound`` for a
    request another replica forwarded here (never forwarded twice), for an unknown session
    and for another account's."""
    if request.headers.get(FORWARDED_HEADER):
        raise NotFound(f"Session {session_id!r} not found", resource="session")
    return await run_sync(lambda: reg.find(c.account.id, session_id))


async def _answer_elsewhere(
    request: Request,
    c: Caller,
    reg: Registry,
    session_id: str,
    *,
    json: Any = None,
    timeout: float = 30.0,
) -> Response:
    """The answer for a session another replica runs: that replica's own (the request
    forwarded there), or, when it is gone or the session's record says it ended, the
    registry's record."""
    row = await elsewhere(request, c, reg, session_id)
    record = reg.record_of(row)
    if record.status not in LIVE or not reg.alive(row) or row.replica_id == reg.replica_id:
        return JSONResponse(record.model_dump(mode="json"))
    url = f"{row.replica_url}/v1/sessions/{session_id}"
    try:
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            answer = await client.request(
                request.method, url, json=json, headers=forward_headers(request, reg)
            )
    except httpx.HTTPError as exc:
        log.warning(
            "cannot reach replica %s for session %s: %s",
            row.replica_id,
            session_id,
            type(exc).__name__,
        )
        err = ProfileError(
            f"The replica running session {session_id} ({row.replica_id}) did not answer; "
            "try again."
        )
        err.status = 502
        return error_response(err)
    passed = {k: v for k in ("retry-after",) if (v := answer.headers.get(k)) is not None}
    return Response(
        answer.content,
        status_code=answer.status_code,
        media_type=answer.headers.get("content-type", "application/json"),
        headers=passed,
    )


_SESSION_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    429: {
        "model": ErrorBody,
        "description": "RateLimited (Retry-After), or TierLimit with resource 'session': the "
        "account's tier (scope 'account') or the service (scope 'service') runs as many "
        "sessions as it may",
    },
    502: {"model": ErrorBody, "description": "NavigationFailed: the start_url did not open"},
    503: {
        "model": ErrorBody,
        "description": "BrowserNotFound on the service, or the service is shutting down",
    },
}


def _session_id(session_id: str) -> str:
    """Anything not shaped like a session id is not found (and never looked up)."""
    if not _SESSION_ID.fullmatch(session_id):
        raise NotFound(f"Session {session_id[:64]!r} not found", resource="session")
    return session_id


def _connect_base(request: Request) -> str:
    return ws_base(base_url(request))


def ws_base(base: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://")
    return "ws://" + base.removeprefix("http://")


@router.post(
    "/v1/sessions",
    tags=["remote sessions"],
    responses={**error_responses(*WRITE, 404, 409), **_SESSION_ERRORS},
)
async def create_session(
    request: Request, c: ReadAuth, m: Remote, body: SessionCreateBody | None = None
) -> SessionRecord:
    """Start a browser on the service's machine on a profile (``profile_id``, id or name)
    or on none (an ephemeral session), and answer once a client can connect to
    ``connect_url``. A writer session takes the profile's writer lease (waiting up to
    ``lock_timeout``, then ``409 ProfileBusy``) and commits the profile's state when it
    ends, whatever ends it; a read key may start read-only sessions."""
    body = body or SessionCreateBody()
    if not body.readonly:
        c.require_admin("a writer session" if body.profile_id else "an ephemeral session")
    entry = await m.create(c.account, c.store, body, connect_base=_connect_base(request))
    return entry.record()


@router.get(
    "/v1/sessions",
    tags=["remote sessions"],
    response_model=SessionPage,
    responses=error_responses(*READ),
)
async def list_sessions(
    c: Auth,
    m: Remote,
    reg: Reg,
    limit: int | None = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    status: SessionStatus | None = None,
    profile_id: Annotated[str | None, Query(max_length=200)] = None,
    pageSize: int | None = None,
    pageNumber: int | None = None,
) -> Response:
    """The account's sessions on every replica of the service, newest first (running and
    recently ended), by cursor (``limit``, ``cursor``) or by page (doc 004's
    ``pageSize``, ``pageNumber``); ``status`` and ``profile_id`` (id or name) filter."""
    mine = {e.id: (e.created_at, e.record()) for e in m.list(c.account.id)}
    rows = await run_sync(lambda: reg.accounts.sessions(c.account.id))
    found = dict(mine)
    for row in rows:
        if row.id not in found:
            found[row.id] = (row.created_at, reg.record_of(row))
    ordered = sorted(found.items(), key=lambda item: (item[1][0], item[0]), reverse=True)
    entries = [record for _, (_, record) in ordered]
    if status is not None:
        entries = [e for e in entries if e.status == status]
    if profile_id is not None:
        entries = [
            e
            for e in entries
            if e.profile_id is not None and profile_id in (e.profile_id, e.profile_name)
        ]
    if pageSize is None and pageNumber is None:
        size = 50 if limit is None else limit
        if not 1 <= size <= 100:
            raise ValidationFailed(f"limit must be from 1 to 100; got {size}.", field="limit")
        start = 0
        if cursor is not None:
            ids = [e.id for e in entries]
            if cursor not in ids:
                raise ValidationFailed(
                    "Unknown cursor: pass the next_cursor of the previous page.", field="cursor"
                )
            start = ids.index(cursor) + 1
        chunk = entries[start : start + size]
        more = start + size < len(entries)
        page = SessionPage(
            data=chunk,
            has_more=more,
            next_cursor=chunk[-1].id if more and chunk else None,
        )
        return JSONResponse(page.model_dump(mode="json", exclude={"pageNumber", "pageSize"}))
    size = 50 if pageSize is None else pageSize
    number = 1 if pageNumber is None else pageNumber
    if not 1 <= number <= MAX_PAGE_NUMBER:
        raise ValidationFailed(
            f"pageNumber must be from 1 to {MAX_PAGE_NUMBER}; got {number}.", field="pageNumber"
        )
    if not 1 <= size <= 100:
        raise ValidationFailed(f"pageSize must be from 1 to 100; got {size}.", field="pageSize")
    start = (number - 1) * size
    chunk = entries[start : start + size]
    more = start + size < len(entries)
    numbered = SessionPage(
        data=chunk,
        has_more=more,
        next_cursor=chunk[-1].id if more and chunk else None,
        pageNumber=number,
        pageSize=size,
    )
    return JSONResponse(numbered.model_dump(mode="json"))


@router.get(
    "/v1/sessions/{session_id}",
    tags=["remote sessions"],
    response_model=SessionRecord,
    responses=error_responses(*READ, 404),
)
async def get_session(request: Request, c: Auth, m: Remote, reg: Reg, session_id: str) -> Response:
    """The session, from whichever replica runs it."""
    sid = _session_id(session_id)
    entry = m.find(c.account.id, sid)
    if entry is None:
        return await _answer_elsewhere(request, c, reg, sid)
    return JSONResponse(entry.record().model_dump(mode="json"))


async def _stop(
    request: Request, c: Caller, m: RemoteSessions, reg: Registry, session_id: str
) -> Response:
    sid = _session_id(session_id)
    entry = m.find(c.account.id, sid)
    if entry is None:
        body = {"action": "stop"} if request.method == "PATCH" else None
        return await _answer_elsewhere(request, c, reg, sid, json=body, timeout=SHUTDOWN_WAIT)
    if not (entry.readonly or entry.ephemeral):
        c.require_admin("stopping a writer session")
    await m.stop(entry, "stopped by the client")
    return JSONResponse(entry.record().model_dump(mode="json"))


@router.patch(
    "/v1/sessions/{session_id}",
    tags=["remote sessions"],
    response_model=SessionRecord,
    responses=error_responses(*WRITE, 404, 409),
)
async def stop_session(
    request: Request, c: ReadAuth, m: Remote, reg: Reg, session_id: str, body: SessionAction
) -> Response:
    """Doc 004's ``{"action": "stop"}``: close the browser so the engine flushes, commit
    the state as a local session does (fenced by the lease's epoch), release the lease,
    and answer the final record (its ``outcome``). A stopped session answers as it is."""
    return await _stop(request, c, m, reg, session_id)


@router.delete(
    "/v1/sessions/{session_id}",
    tags=["remote sessions"],
    response_model=SessionRecord,
    responses=error_responses(*AUTH, 404, 409),
)
async def delete_session(
    request: Request, c: ReadAuth, m: Remote, reg: Reg, session_id: str
) -> Response:
    """The same as ``PATCH {"action": "stop"}``."""
    return await _stop(request, c, m, reg, session_id)


def _count_profiles(store: ProfileStore, cap: int | None) -> int:
    total, cursor = 0, None
    for _ in range(10_000):
        page = store.list(limit=100, cursor=cursor)
        total += len(page.data)
        if not page.has_more or page.next_cursor is None:
            break
        cursor = page.next_cursor
    return total


@router.get("/v1/account/me", tags=["account"], responses=error_responses(*READ))
async def account_me(c: Auth, m: Remote, reg: Reg) -> AccountMe:
    """Doc 001's account: its tier, ``profile_cap`` (null for enterprise), its
    ``session_cap`` (null: only the service's, ``service_session_cap``), and what it
    uses now."""
    profiles = await run_sync(lambda: _count_profiles(c.store, c.account.cap))
    elsewhere = await run_sync(lambda: reg.running_elsewhere(c.account.id))
    return AccountMe(
        id=c.account.id,
        name=c.account.name,
        tier=c.account.tier,
        profile_cap=c.account.cap,
        session_cap=m.session_cap(c.account),
        service_session_cap=m.max_sessions,
        profiles=profiles,
        running_sessions=m.running(c.account.id) + elsewhere,
    )


# ------------------------------------------------------------------ the CDP WebSocket


@router.websocket(CDP_ROUTE)
async def session_cdp(websocket: WebSocket, session_id: str) -> None:
    """The session's browser over CDP (``connect_url``): authenticated with the
    ``Authorization`` header of the handshake; refused with an error body (401, 403, 404,
    409) before anything reaches the browser."""
    started = time.perf_counter()
    status = 500
    account: str | None = None
    try:
        try:
            c = await connection_caller(websocket)
            account = c.account.id
            m: RemoteSessions = websocket.app.state.remote_sessions
            sid = _session_id(session_id)
            found = m.find(c.account.id, sid)
            if found is None:
                reg = registry(websocket)
                row = await elsewhere(websocket, c, reg, sid)
                record = reg.record_of(row)
                if record.status != "running" or row.replica_id == reg.replica_id:
                    raise Conflict(
                        f"Session {sid} is {record.status}: only a running session takes "
                        "connections.",
                        session_id=sid,
                        status=record.status,
                    )
                owner = ws_base(row.replica_url)
                status = await cdp_proxy.relay_to(
                    websocket, f"{owner}/v1/sessions/{sid}/cdp", forward_headers(websocket, reg)
                )
                return
            entry: SessionEntry = found
            if not (entry.readonly or entry.ephemeral):
                c.require_admin("driving a writer session")
            if entry.status != "running":
                raise Conflict(
                    f"Session {entry.id} is {entry.status}: only a running session takes "
                    "connections.",
                    session_id=entry.id,
                    status=entry.status,
                )
        except ProfileError as err:
            status = err.status
            await websocket.send_denial_response(error_response(err))
            return
        status = await cdp_proxy.relay(websocket, entry.run)
    finally:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        access_log.info(
            "%s %s %d %.1f ms account=%s",
            "GET",
            CDP_ROUTE,
            status,
            duration_ms,
            account or "-",
            extra={
                "method": "GET",
                "route": CDP_ROUTE,
                "status": status,
                "duration_ms": duration_ms,
                "account": account,
            },
        )


@router.websocket("/{path:path}")
async def no_websocket_route(websocket: WebSocket, path: str) -> None:
    """A WebSocket to any other path: 404 as an HTTP request would get (Starlette's own
    answer is a bare 403)."""
    await websocket.send_denial_response(
        error_response(NotFound("Not found: no such route.", resource="route"))
    )
    access_log.info(
        "GET (no route) 404 0.0 ms account=-",
        extra={"method": "GET", "route": "(no route)", "status": 404, "duration_ms": 0.0},
    )
