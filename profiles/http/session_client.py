"""The client of a service's sessions (``/v1/sessions`` of ``profiles serve``): browsers
that run on the service's machine, bound to a profile, driven over CDP.

:class:`RemoteSessionsClient` speaks the routes through an :class:`HttpService`'s own
connection (its key, retries and error mapping); :class:`driver.RemoteSession` builds the
``with ... as page:`` shape on it. Only a store on ``profiles serve`` has sessions to run:
any other store is refused with a ``ValidationFailed`` that says so.
"""

from __future__ import annotations

import builtins
from typing import Any, Final
from urllib.parse import quote

from profiles.errors import ValidationFailed
from profiles.http.client import HttpService, _model
from profiles.http.session_schemas import (
    AccountMe,
    SessionCreateBody,
    SessionPage,
    SessionRecord,
    SessionStatus,
)
from profiles.store import ProfileStore

__all__ = ["RemoteSessionsClient"]

#: How long ``POST /v1/sessions`` may take: waiting for the profile's lease (at most 60 s,
#: ``lock_timeout``) and starting a browser on the service's machine.
START_TIMEOUT: Final = 180.0


class RemoteSessionsClient:
    """``/v1/sessions`` and ``/v1/account/me`` through ``service``'s connection."""

    def __init__(self, service: HttpService) -> None:
        self.service = service

    @classmethod
    def of(cls, store: ProfileStore) -> RemoteSessionsClient:
        """The sessions of the service behind ``store``; ``ValidationFailed`` when the store
        does not run on ``profiles serve``."""
        service = store.service
        if not isinstance(service, HttpService):
            raise ValidationFailed(
                f"Remote sessions run on a profile service, and this store is "
                f"{service.location}. Open the store on one: "
                'ProfileStore("http://HOST:8787/v1", api_key=...), or run a local '
                "Session(profile=...) instead.",
                field="store",
            )
        return cls(service)

    @property
    def location(self) -> str:
        return self.service.location

    def connect_headers(self) -> dict[str, str]:
        """The headers a CDP connection to a session's ``connect_url`` sends: the store's
        key (``Authorization``) and account (``X-Account``). Never put them in a URL."""
        headers = self.service._client.headers
        return {k: headers[k] for k in ("Authorization", "X-Account") if k in headers}

    # ------------------------------------------------------------------ the routes
    def start(
        self,
        profile: str | None = None,
        *,
        start_url: str | None = None,
        screen: tuple[int, int] | None = None,
        proxy: str | dict[str, Any] | None = None,
        readonly: bool = False,
        idle_timeout: float | None = None,
        max_duration: float | None = None,
        keep_alive: bool = True,
        lock_timeout: float | None = None,
    ) -> SessionRecord:
        """``POST /v1/sessions``: start a browser on the service on ``profile`` (id or name;
        None: an ephemeral session whose state is discarded). Answers once a client can
        connect to the record's ``connect_url``."""
        fields: dict[str, Any] = {"readonly": readonly, "keep_alive": keep_alive}
        if profile is not None:
            fields["profile_id"] = profile
        if start_url is not None:
            fields["start_url"] = start_url
        if screen is not None:
            width, height = screen
            fields["screen"] = {"width": width, "height": height}
        if proxy is not None:
            fields["proxy"] = proxy
        if idle_timeout is not None:
            fields["idle_timeout"] = idle_timeout
        if max_duration is not None:
            fields["max_duration"] = max_duration
        if lock_timeout is not None:
            fields["lock_timeout"] = lock_timeout
        try:  # the server's own model checks what is sent, with its messages
            body = SessionCreateBody.model_validate(fields)
        except ValueError as exc:
            raise ValidationFailed(f"Bad session options: {exc}") from None
        answer = self.service._json(
            "POST",
            "sessions",
            json_body=body.model_dump(mode="json", exclude_none=True, exclude_unset=True),
            idempotent=False,  # a retry would start a second browser
            timeout=START_TIMEOUT,
        )
        return _model(SessionRecord, answer, location=self.location)

    def get(self, session_id: str) -> SessionRecord:
        """``GET /v1/sessions/{id}``."""
        answer = self.service._json("GET", self._path(session_id), idempotent=True)
        return _model(SessionRecord, answer, location=self.location)

    def list(
        self,
        *,
        status: SessionStatus | None = None,
        profile: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """``GET /v1/sessions``: the account's sessions on the service, newest first."""
        params = {"status": status, "profile_id": profile, "limit": limit, "cursor": cursor}
        answer = self.service._json(
            "GET",
            "sessions",
            params={k: v for k, v in params.items() if v is not None},
            idempotent=True,
        )
        return _model(SessionPage, answer, location=self.location)

    def all(self, *, status: SessionStatus | None = None) -> builtins.list[SessionRecord]:
        """Every session of the account on the service (every page)."""
        found: builtins.list[SessionRecord] = []
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=100, cursor=cursor)
            found.extend(page.data)
            if not page.has_more or page.next_cursor is None:
                return found
            cursor = page.next_cursor

    def stop(self, session_id: str) -> SessionRecord:
        """``PATCH /v1/sessions/{id} {"action": "stop"}``: the browser closes, the state is
        committed, and the final record (with its ``outcome``) is answered. Stopping a
        stopped session answers its record. Safe to retry: a stop is idempotent."""
        answer = self.service._json(
            "PATCH",
            self._path(session_id),
            json_body={"action": "stop"},
            idempotent=True,
            timeout=START_TIMEOUT,
        )
        return _model(SessionRecord, answer, location=self.location)

    def account(self) -> AccountMe:
        """``GET /v1/account/me``: the account, its tier, caps and what it uses now."""
        answer = self.service._json("GET", "account/me", idempotent=True)
        return _model(AccountMe, answer, location=self.location)

    @staticmethod
    def _path(session_id: str) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise ValidationFailed("A session id is required.", field="session")
        return f"sessions/{quote(session_id, safe='')}"
