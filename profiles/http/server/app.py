"""The profile service over HTTP: ``profiles serve`` (FastAPI, run by uvicorn).

Every account owns a :class:`~profiles.store.ProfileStore` of its own (isolation by
construction: a profile of another account is simply not in the caller's store, so it is
``404``, never ``403``). API keys, accounts and memberships live in ``<home>/accounts.sqlite3``
or in the PostgreSQL database replicas share (:mod:`.accounts`), with the registry of
remote sessions that routes a session's requests to the replica running it
(:mod:`.remote.registry`); download links and upload targets are HMAC-signed with the
secret in ``<home>/server-secret`` or ``--secret-file`` (:mod:`.signing`); request bodies
are streamed to disk under a cap (:mod:`.streams`), every other body is capped as it is read
and read only once the API key was accepted (:mod:`.bodies`); sliding-window rate limits per
account (by tier, for live keys) and per client address (everything else) sit in front of
everything (:mod:`.ratelimit`).

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

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profiles.errors import NotFound, ProfileError, RateLimited, TierLimit, ValidationFailed
from profiles.http.schemas import Health
from profiles.http.server.access_log import AccessLogMiddleware
from profiles.http.server.accounts import Account, open_accounts
from profiles.http.server.bodies import BodyGuardMiddleware, BodyRefused
from profiles.http.server.config import MAX_JSON_BODY, AccountStores, ServerConfig
from profiles.http.server.deps import Services, authenticate, caller, error_response, reader
from profiles.http.server.fairness import StateSlots
from profiles.http.server.openapi import error_responses, typed_openapi
from profiles.http.server.ratelimit import RateLimitMiddleware
from profiles.http.server.remote.manager import RemoteSessions
from profiles.http.server.remote.registry import Registry, new_replica_id
from profiles.http.server.routes import (
    chunks,
    leases,
    live,
    profiles,
    remote_sessions,
    sessions,
    snapshots,
    state,
    uploads,
    web,
)
from profiles.http.server.signing import Signer, load_secret

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger(__name__)

#: What this server speaks beyond the API's first version (GET /v1/health).
FEATURES = ("chunks",)


class NoStoreMiddleware:
    """``Cache-Control: no-store`` on every answer of the app (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or () if k != b"cache-control"]
                headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


def create_app(config: ServerConfig) -> FastAPI:
    """The FastAPI application of ``profiles serve`` over ``config.home``."""
    config.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    accounts = open_accounts(config.accounts or config.home / "accounts.sqlite3")
    signer = Signer(
        load_secret(config.secret_file, create=False)
        if config.secret_file is not None
        else load_secret(config.home / "server-secret")
    )
    stores = AccountStores(config)
    registry = Registry(
        accounts,
        replica_id=config.replica_id or new_replica_id(),
        replica_url=config.replica_url or "http://127.0.0.1:8787",
        timeout=config.replica_timeout,
    )
    remote = RemoteSessions(
        max_sessions=config.max_sessions,
        tier_caps=config.tier_session_caps,
        replica=registry.replica_id,
        on_change=lambda entry: registry.publish(
            entry.record(), account_id=entry.account_id, created_at=entry.created_at
        ),
        count_elsewhere=registry.running_elsewhere,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        await asyncio.to_thread(registry.start)
        log.info(
            "replica %s, reached by the other replicas at %s (heartbeat every %g s)",
            registry.replica_id,
            registry.replica_url,
            registry.interval,
        )
        beating = asyncio.create_task(registry.heartbeat())
        try:
            yield
        finally:
            beating.cancel()
            try:
                await remote.shutdown()  # every remote session stops and commits first
            finally:
                registry.stop()
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
    app.openapi = typed_openapi(app)  # type: ignore[method-assign]
    app.state.services = Services(
        config=config,
        accounts=accounts,
        signer=signer,
        stores=stores,
        state_slots=StateSlots(config.max_state_operations),
    )
    app.state.accounts = accounts
    app.state.stores = stores
    app.state.config = config
    app.state.remote_sessions = remote
    app.state.live_tickets = live.LiveTickets()
    app.state.registry = registry

    # -------------------------------------------------------------- error handlers

    async def on_profile_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProfileError)
        account: Account | None = getattr(request.state, "account", None)
        if isinstance(exc, TierLimit) and exc.resource == "profile" and account is not None:
            exc = TierLimit(
                f"Tier limit: the {account.tier} tier allows {exc.limit} profiles and this "
                f"account has {exc.current}. Delete a profile or move to a larger tier.",
                limit=exc.limit,
                current=exc.current,
                tier=account.tier,
            )
        wait = exc.details.get("retry_after") if isinstance(exc, RateLimited) else None
        return error_response(exc, headers={"Retry-After": str(wait)} if wait else None)

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
        return error_response(err)

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
        return error_response(err, headers=dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.method, type(exc).__name__, exc_info=exc)
        return error_response(ProfileError("Internal server error"))

    app.add_exception_handler(ProfileError, on_profile_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

    async def on_body_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyRefused)
        return error_response(exc.error, headers=dict(exc.headers or {}))

    app.add_exception_handler(BodyRefused, on_body_refused)

    def identify(token: str) -> tuple[str, str, Any] | None:
        found = accounts.identify(token)
        if found is None:
            return None
        return found[1].id, found[1].tier, found

    # Innermost first: the body guard sees the key the rate limiter identified.
    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(
        BodyGuardMiddleware,
        limit=MAX_JSON_BODY,
        authenticators=(caller, reader),
        authenticate=lambda header, identified: authenticate(accounts, header, identified),
    )
    app.add_middleware(
        RateLimitMiddleware,
        rate=config.rate_limit,
        tiers=config.tier_rate_limits,
        identify=identify,
    )
    app.add_middleware(AccessLogMiddleware)  # outermost: it logs the 429s too

    # -------------------------------------------------------------- health

    @app.get("/v1/health", tags=["service"], responses=error_responses(429))
    def health() -> Health:
        return Health(ok=True, features=list(FEATURES))

    # -------------------------------------------------------------- profiles

    for router in (
        profiles.router,
        uploads.router,
        sessions.router,
        snapshots.router,
        state.router,
        chunks.router,
        leases.router,
        live.router,  # before remote_sessions': its catch-all WebSocket route comes last
        remote_sessions.router,
        web.router,  # the web page (/ and /web/...), not in the OpenAPI document
    ):
        app.include_router(router)
    return app
