"""The CDP relay between a client's WebSocket (``connect_url``) and the session's browser.

The client's connection is authenticated and matched to its account's running session by
the route before anything here runs; the browser's DevTools endpoint (loopback only) is
connected first and the client's handshake accepted only then, so a client is either
relayed in full or refused with an error body. The browser's messages pass unchanged; the
client's go through :mod:`.cdp_guard` (what may reach a browser on the service's machine),
and ``Browser.close`` sent by the client (puppeteer's ``browser.close()``, a raw CDP client's):
that is the client ending the session, so it is answered at once and the session stops and
commits, as ``PATCH /v1/sessions/{id} {"action": "stop"}`` would, instead of the browser
vanishing under the service (which would count as a crash and keep the previous state).

A replica that does not run the session relays the client to the replica that does
(:func:`relay_to`): that one authenticates the forwarded handshake and relays it to the
browser, so ``Browser.close`` and the count of clients are handled where the browser runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Final

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from profiles.errors import ProfileError
from profiles.http.server.deps import error_response
from profiles.http.server.remote.cdp_guard import Refused, check_client_message
from profiles.http.server.remote.runner import SessionRun

__all__ = ["MAX_BROWSER_MESSAGE", "relay", "relay_to"]

log = logging.getLogger(__name__)

#: The largest message taken from the browser (a full-page screenshot, a big DOM).
MAX_BROWSER_MESSAGE: Final = 256 * 1024 * 1024
CONNECT_TIMEOUT: Final = 10.0


def _browser_close_id(text: str) -> int | None:
    """The id of a ``Browser.close`` command to the browser itself (not to a target
    session), or None."""
    if "Browser.close" not in text:
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if (
        isinstance(message, dict)
        and message.get("method") == "Browser.close"
        and "sessionId" not in message
        and isinstance(message.get("id"), int)
    ):
        return int(message["id"])
    return None


async def relay(websocket: WebSocket, run: SessionRun, *, subprotocol: str | None = None) -> int:
    """Relay ``websocket`` to the session's browser until either side closes; the status
    the handshake was answered with (101, or the refusal's). ``subprotocol``: the one the
    handshake's answer selects (the web page's live view offers its own)."""
    devtools = run.devtools
    if devtools is None:
        err = ProfileError("The session's browser is not reachable.")
        err.status = 502
        await websocket.send_denial_response(error_response(err))
        return err.status
    try:
        upstream = await connect(
            devtools.url,
            max_size=MAX_BROWSER_MESSAGE,
            compression=None,
            ping_interval=None,
            open_timeout=CONNECT_TIMEOUT,
            proxy=None,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        log.warning("cannot reach the browser of a remote session: %s", type(exc).__name__)
        err = ProfileError("The session's browser is not reachable (it may be stopping).")
        err.status = 502
        await websocket.send_denial_response(error_response(err))
        return err.status
    await websocket.accept(subprotocol=subprotocol)
    run.client_joined()
    try:
        await _pump(websocket, upstream, run)
    finally:
        run.client_left()
    return 101


async def relay_to(
    websocket: WebSocket,
    url: str,
    headers: dict[str, str],
    *,
    subprotocols: Sequence[str] = (),
) -> int:
    """Relay ``websocket`` to another replica's CDP WebSocket (``url``, the session's
    ``/cdp`` or ``/live`` route there, with the client's credentials in ``headers`` and
    the ``subprotocols`` it offered), which runs the session and does what :func:`relay`
    does; a refusal there (its status and error body) is the refusal here, and the
    subprotocol it selects is the one selected here. The status the handshake was
    answered with."""
    try:
        upstream = await connect(
            url,
            additional_headers=headers,
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            max_size=MAX_BROWSER_MESSAGE,
            compression=None,
            ping_interval=None,
            open_timeout=CONNECT_TIMEOUT,
            proxy=None,
        )
    except InvalidStatus as exc:
        answer = exc.response
        await websocket.send_denial_response(
            Response(
                bytes(answer.body or b""),
                status_code=answer.status_code,
                media_type=answer.headers.get("Content-Type", "application/json"),
            )
        )
        return int(answer.status_code)
    except (OSError, TimeoutError, WebSocketException) as exc:
        log.warning("cannot reach the replica running a session: %s", type(exc).__name__)
        err = ProfileError("The replica running the session is not reachable; try again.")
        err.status = 502
        await websocket.send_denial_response(error_response(err))
        return err.status
    await websocket.accept(subprotocol=upstream.subprotocol)
    await _pump(websocket, upstream, None)
    return 101


async def _pump(websocket: WebSocket, upstream: ClientConnection, run: SessionRun | None) -> None:
    """Pass messages both ways until either side closes, then close both."""
    try:
        to_browser = asyncio.ensure_future(_client_to_browser(websocket, upstream, run))
        to_client = asyncio.ensure_future(_browser_to_client(upstream, websocket))
        try:
            await asyncio.wait((to_browser, to_client), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_browser, to_client):
                task.cancel()
            await asyncio.gather(to_browser, to_client, return_exceptions=True)
    finally:
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(Exception):
            await websocket.close()


async def _client_to_browser(
    websocket: WebSocket, upstream: ClientConnection, run: SessionRun | None
) -> None:
    with contextlib.suppress(WebSocketDisconnect, ConnectionClosed):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if run is None:  # to another replica, which guards what reaches its browser
                if text is not None:
                    await upstream.send(text)
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                continue
            if text is None:  # CDP is text: a binary message is not CDP
                await websocket.close(code=1008, reason="CDP messages are text")
                return
            closing = _browser_close_id(text)
            if closing is not None:
                await websocket.send_text(json.dumps({"id": closing, "result": {}}))
                run.request_stop("the client closed the browser (Browser.close)")
                return
            try:
                verdict = check_client_message(text, run.downloads_dir)
            except Refused as exc:
                log.info("closed a CDP connection to a remote session: %s", exc)
                await websocket.close(code=1008, reason=f"not a CDP message: {exc}")
                return
            if verdict.answer is not None:
                await websocket.send_text(verdict.answer)
            elif verdict.forward is not None:
                await upstream.send(verdict.forward)


async def _browser_to_client(upstream: ClientConnection, websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, ConnectionClosed, RuntimeError):
        async for message in upstream:
            if isinstance(message, str):
                await websocket.send_text(message)
            else:
                await websocket.send_bytes(message)
