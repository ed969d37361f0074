"""Request bodies: never read for a stranger, and capped while they are read.

:class:`BodyGuardMiddleware` (pure ASGI) hands the app a ``receive`` that, the first time
the app asks for the body (FastAPI reads a JSON body before it runs the route's
dependencies, so before the API key is checked):

- answers for a route that needs an API key and a request without a live one with the
  ``401``/``403`` the route would give, having read none of the body;
- counts the bytes of every other route's body as they arrive and answers ``413``
  (``ValidationFailed`` with ``limit``) once they pass :data:`MAX_JSON_BODY`, whether the
  body declared its length or came ``Transfer-Encoding: chunked``; a declared
  ``Content-Length`` above the cap is answered before any of it is read.

Which routes stream their body (spooled to disk under the upload cap by
:mod:`profiles.http.server.streams`, and left uncounted here) is a property of the route
matched, never of the path as sent: the endpoint is marked with :func:`streams_body`. A
request that matched no route is capped like any other.

A refusal is raised from ``receive`` as :class:`BodyRefused` (an ``HTTPException``, which
FastAPI passes on unchanged) and answered by the app's handler with the error's body and
``Connection: close``: the rest of the body is not read, the connection ends with the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Final, TypeVar

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profiles.errors import ProfileError, ValidationFailed

__all__ = ["STREAMS_BODY", "BodyGuardMiddleware", "BodyRefused", "streams_body"]

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute :func:`streams_body` sets on an endpoint.
STREAMS_BODY: Final = "__profiles_streams_body__"

#: What checks a request's credentials from its ``Authorization`` header: raises the
#: error to answer, or returns what the route's dependency reuses (``identified_key``).
Authenticate = Callable[[str | None, Any], Any]


def streams_body(endpoint: F) -> F:
    """Mark ``endpoint`` as reading its request body itself, as a stream spooled to disk
    under a cap of its own: :class:`BodyGuardMiddleware` does not count it."""
    setattr(endpoint, STREAMS_BODY, True)
    return endpoint


class BodyRefused(HTTPException):
    """A body refused before (or while) it was read; ``error`` is what the client gets."""

    def __init__(self, error: ProfileError) -> None:
        super().__init__(error.status, error.message, headers={"Connection": "close"})
        self.error = error


def body_too_large(limit: int) -> ValidationFailed:
    err = ValidationFailed(f"The request body is larger than {limit} bytes.", limit=limit)
    err.status = 413
    return err


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BodyGuardMiddleware:
    """See the module: ``limit`` caps every body but those of :func:`streams_body`
    routes; a route that depends on one of ``authenticators`` reads no body until
    ``authenticate`` accepted the request's key."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        authenticators: Collection[Callable[..., Any]],
        authenticate: Authenticate,
    ) -> None:
        self.app = app
        self.limit = limit
        self.authenticators = frozenset(authenticators)
        self.authenticate = authenticate
        self._keyed: dict[int, bool] = {}

    def needs_key(self, route: Any) -> bool:
        """Whether ``route``'s dependencies (at any depth) authenticate an API key."""
        if route is None:
            return False
        found = self._keyed.get(id(route))
        if found is None:
            found = False
            pending = [getattr(route, "dependant", None)]
            while pending:
                dependant = pending.pop()
                if dependant is None:
                    continue
                if getattr(dependant, "call", None) in self.authenticators:
                    found = True
                    break
                pending.extend(getattr(dependant, "dependencies", ()))
            self._keyed[id(route)] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, _GuardedReceive(self, scope, receive), send)


class _GuardedReceive:
    """The ``receive`` of one request (see :class:`BodyGuardMiddleware`)."""

    def __init__(self, guard: BodyGuardMiddleware, scope: Scope, receive: Receive) -> None:
        self.guard = guard
        self.scope = scope
        self.receive = receive
        self.checked = False
        self.refused: BodyRefused | None = None
        self.streamed = False
        self.seen = 0

    def _check(self) -> None:
        """Once, before the first byte is read: the key, then the declared length."""
        route = self.scope.get("route")
        endpoint = getattr(route, "endpoint", None)
        self.streamed = bool(getattr(endpoint, STREAMS_BODY, False))
        if self.guard.needs_key(route):
            state = self.scope.setdefault("state", {})
            try:
                state["identified_key"] = self.guard.authenticate(
                    _header(self.scope, b"authorization"), state.get("identified_key")
                )
            except ProfileError as exc:
                raise BodyRefused(exc) from None
        if self.streamed:
            return
        declared = _header(self.scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BodyRefused(ValidationFailed("Invalid Content-Length."))
            if int(declared) > self.guard.limit:
                raise BodyRefused(body_too_large(self.guard.limit))

    async def __call__(self) -> Message:
        if self.refused is not None:
            raise self.refused  # nothing more is read of a refused body
        try:
            if not self.checked:
                self.checked = True
                self._check()
            message = await self.receive()
            if not self.streamed and message["type"] == "http.request":
                self.seen += len(message.get("body", b""))
                if self.seen > self.guard.limit:
                    raise BodyRefused(body_too_large(self.guard.limit))
        except BodyRefused as refused:
            self.refused = refused
            raise
        return message
