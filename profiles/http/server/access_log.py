"""The access log of ``profiles serve``: one line per request, and nothing secret in it.

Each line names the method, the route's *template* (``/v1/profiles/{ref}``,
``/v1/downloads/{token}``), the status, the duration and the account the request acted on.
Never the path as sent (download and upload tokens are path segments), the query string,
headers or keys. A request that matches no route is logged as ``(no route)``. Requests the
rate limit refuses (429) are logged like any other: the middleware sits outside it.

``--log-format json`` writes every line of the server's log, this one included, as one JSON
object (``time``, ``level``, ``logger``, ``message`` and, for the access log, ``method``,
``route``, ``status``, ``duration_ms``, ``account``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, Literal

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS_LOGGER", "AccessLogMiddleware", "JsonFormatter", "configure_server_logging"]

ACCESS_LOGGER: Final = "profiles.http.access"
NO_ROUTE: Final = "(no route)"
LogFormat = Literal["text", "json"]

access_log = logging.getLogger(ACCESS_LOGGER)

# What a record carries besides the standard attributes (set through ``extra=``).
_FIELDS: Final = ("method", "route", "status", "duration_ms", "account")


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The routes with a path template, also those of included routers (FastAPI keeps an
    included router as one entry whose ``original_router`` holds its routes)."""
    for route in routes:
        nested = getattr(getattr(route, "original_router", None), "routes", None)
        if nested is not None:
            yield from _leaf_routes(nested)
        else:
            yield route


def _route_template(scope: Scope) -> str:
    """The template of the route ``scope`` matches (the app's own routes, matched again so
    that requests answered before routing, such as a 429, are named too)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    app = scope.get("app")
    router = getattr(app, "router", None)
    partial: str | None = None
    for candidate in _leaf_routes(getattr(router, "routes", ())):
        try:
            match, _ = candidate.matches(scope)
        except Exception:  # a route that cannot judge this scope is not it
            continue
        template = getattr(candidate, "path", None)
        if not isinstance(template, str):
            continue
        if match is Match.FULL:
            return template
        if match is Match.PARTIAL and partial is None:
            partial = template  # the path, another method: a 405
    return partial or NO_ROUTE


class AccessLogMiddleware:
    """Pure ASGI (streamed bodies pass through untouched): logs each HTTP request once its
    response has been sent, or failed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})  # where the auth dependency notes the account
        status = 500  # what the client gets if the app fails before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            account = getattr(state.get("account"), "id", None) if isinstance(state, dict) else None
            method = str(scope.get("method", "?"))
            route = _route_template(scope)
            duration_ms = round((time.perf_counter() - started) * 1000, 1)
            access_log.info(
                "%s %s %d %.1f ms account=%s",
                method,
                route,
                status,
                duration_ms,
                account or "-",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                    "account": account,
                },
            )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the access
    log's fields when present, and the exception type (never its traceback's locals)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            if name in record.__dict__:
                document[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            document["exception"] = record.exc_info[0].__name__
        return json.dumps(document, ensure_ascii=True, default=str)


def _text_formatter() -> logging.Formatter:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    return formatter


def configure_server_logging(log_format: LogFormat) -> None:
    """The access log on stderr at INFO whatever the command's verbosity, and, for
    ``json``, every handler of the root logger writing JSON too."""
    if log_format not in ("text", "json"):
        raise ValueError(f"unknown log format {log_format!r}")
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else _text_formatter()
    for handler in list(access_log.handlers):
        access_log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    if log_format == "json":
        for root_handler in logging.getLogger().handlers:
            root_handler.setFormatter(formatter)
