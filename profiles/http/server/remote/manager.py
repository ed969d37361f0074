"""The registry of a service's remote sessions: who runs what, the caps, stopping.

Each session belongs to the account that created it; another account's session is not
found (404), whatever the route. A session runs in this process (its browser, its relay);
each change of its record is also written to the registry the replicas share
(``on_change``, :mod:`.registry`), from which the other replicas list it and route its
requests here (what it committed is in the profile; its ``session.created`` and
``session.ended`` are in the profile's audit log). Ended sessions stay listed (the newest
:data:`HISTORY` of them here, the registry's for a week).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from profiles.errors import Conflict, NotFound, ProfileError, TierLimit, ValidationFailed
from profiles.http.server.accounts import Account
from profiles.http.server.deps import iso, run_sync
from profiles.http.server.remote.limits import TIER_SESSION_CAPS, default_max_sessions
from profiles.http.server.remote.runner import RunSpec, SessionRun
from profiles.http.session_schemas import (
    SessionCreateBody,
    SessionError,
    SessionOutcome,
    SessionRecord,
    SessionStatus,
)
from profiles.models import new_id
from profiles.store import ProfileStore

__all__ = ["HISTORY", "RemoteSessions", "SessionEntry"]

log = logging.getLogger(__name__)

HISTORY: Final = 1000  # ended sessions kept listed, all accounts together
SHUTDOWN_WAIT: Final = 300.0  # seconds the service waits for its sessions to commit
LIVE: Final[tuple[SessionStatus, ...]] = ("starting", "running", "stopping")
FIREFOX_REFUSAL: Final = (
    "Remote sessions serve Chromium profiles only: a client attaches to a running browser "
    "with Playwright's connect_over_cdp, and Playwright speaks CDP to Chromium alone "
    "(firefox.connect_over_cdp: 'CDP connections are only supported by Chromium'); "
    "Firefox's own WebDriver BiDi endpoint admits one session, which the service's "
    "Playwright holds, and Playwright's launch_server (its own protocol) exists only in "
    "Node.js and cannot serve a persistent context. Run a local Session on this profile "
    "instead (ProfileStore('<this service>/v1', api_key=...)): the browser runs on your "
    "machine with the same writer lease and commit."
)


@dataclass
class SessionEntry:
    id: str
    account_id: str
    connect_base: str  # ws(s)://host:port of the service, as the client reached it
    created_at: float
    run: SessionRun
    readonly: bool
    ephemeral: bool
    engine: str
    profile_id: str | None
    profile_name: str | None
    replica: str | None = None
    status: SessionStatus = "starting"
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def connect_url(self) -> str:
        return f"{self.connect_base}/v1/sessions/{self.id}/cdp"

    @property
    def live_url(self) -> str:
        """The web page's view of the session (its live view), on the service's own host:
        it asks for the API key in the page, never in the URL."""
        page = "https://" + self.connect_base.removeprefix("wss://")
        if self.connect_base.startswith("ws://"):
            page = "http://" + self.connect_base.removeprefix("ws://")
        return f"{page}/#/sessions/{self.id}"

    def record(self) -> SessionRecord:
        run, spec = self.run, self.run.spec
        ended = run.ended
        error = run.error
        return SessionRecord(
            id=self.id,
            profile_id=self.profile_id,
            profile_name=self.profile_name,
            status=self.status,
            readonly=self.readonly,
            ephemeral=self.ephemeral,
            keep_alive=spec.keep_alive,
            idle_timeout=spec.idle_timeout,
            max_duration=spec.max_duration,
            engine=self.engine,
            browser_version=run.browser_version,
            created_at=iso(self.created_at),
            started_at=iso(self.started_at) if self.started_at is not None else None,
            finished_at=iso(self.finished_at) if self.finished_at is not None else None,
            connect_url=self.connect_url if self.status == "running" else None,
            live_url=self.live_url if self.status == "running" else None,
            clients=run.clients,
            ended_because=run.stop_reason if not self.live else None,
            outcome=SessionOutcome(**_outcome_fields(ended)) if ended is not None else None,
            error=(
                SessionError(code=error.code, message=error.message) if error is not None else None
            ),
            replica=self.replica,
        )


def _outcome_fields(ended: dict[str, Any]) -> dict[str, Any]:
    keys = ("outcome", "committed", "reason", "error", "seconds")
    return {k: ended.get(k) for k in keys}


class RemoteSessions:
    """Every remote session of this service (thread-safe: the sessions' threads report
    here)."""

    def __init__(
        self,
        *,
        max_sessions: int | None = None,
        tier_caps: dict[str, int | None] | None = None,
        replica: str | None = None,
        on_change: Callable[[SessionEntry], None] | None = None,
        count_elsewhere: Callable[[str], int] | None = None,
    ) -> None:
        """``replica``: this replica's id (in the records); ``on_change``: called with a
        session whose record changed once it started (from any thread; it may block);
        ``count_elsewhere``: the account's sessions running on the other replicas, which
        count against the account's cap too (it blocks)."""
        self.replica = replica
        self.on_change = on_change
        self.count_elsewhere = count_elsewhere
        self.max_sessions = max_sessions if max_sessions is not None else default_max_sessions()
        self.tier_caps = {**TIER_SESSION_CAPS, **(tier_caps or {})}
        self._lock = threading.Lock()
        self._entries: dict[str, SessionEntry] = {}
        self._closing = False

    # ------------------------------------------------------------------ counts and caps

    def session_cap(self, account: Account) -> int | None:
        return self.tier_caps.get(account.tier)

    def running(self, account_id: str | None = None) -> int:
        with self._lock:
            return self._count(account_id)

    def _count(self, account_id: str | None) -> int:
        return sum(
            1
            for e in self._entries.values()
            if e.live and (account_id is None or e.account_id == account_id)
        )

    def _admit(self, account: Account, elsewhere: int = 0) -> None:
        """Under the lock: refuse a new session past the account's or the service's cap
        (``elsewhere``: the account's sessions running on the other replicas)."""
        if self._closing:
            err = ProfileError("The service is shutting down; start the session elsewhere.")
            err.status = 503
            raise err
        mine = self._count(account.id) + elsewhere
        cap = self.session_cap(account)
        if cap is not None and mine >= cap:
            raise TierLimit(
                f"Tier limit: the {account.tier} tier runs {cap} session"
                f"{'s' if cap != 1 else ''} at once and this account runs {mine}. Stop one "
                '(PATCH /v1/sessions/{id} {"action": "stop"}) or move to a larger tier.',
                limit=cap,
                current=mine,
                tier=account.tier,
                resource="session",
                scope="account",
            )
        everyone = self._count(None)
        if everyone >= self.max_sessions:
            raise TierLimit(
                f"This service runs at most {self.max_sessions} sessions at once and runs "
                f"{everyone}; try again when one has ended.",
                limit=self.max_sessions,
                current=everyone,
                tier=account.tier,
                resource="session",
                scope="service",
            )

    # ------------------------------------------------------------------ lifecycle

    async def create(
        self,
        account: Account,
        store: ProfileStore,
        body: SessionCreateBody,
        *,
        connect_base: str,
    ) -> SessionEntry:
        """Start a session and wait until a client can connect: the record, or the error
        that ended the start (``ProfileBusy`` after ``lock_timeout``, ``NotFound``, ...)."""
        engine = "chromium"
        if body.profile_id is not None:
            ref = body.profile_id
            profile = await run_sync(lambda: store.get(ref))
            engine = profile.browser_name
            if engine != "chromium":
                raise ValidationFailed(
                    f"Profile {profile.name!r} is a {engine} profile. {FIREFOX_REFUSAL}",
                    field="profile_id",
                    engine=engine,
                )
            profile_ref: str | None = profile.id
            profile_name: str | None = profile.name
        else:
            profile_ref = profile_name = None
            if body.readonly:
                raise ValidationFailed(
                    "readonly applies to a session on a profile (profile_id); an ephemeral "
                    "session keeps nothing anyway.",
                    field="readonly",
                )
        session_id = new_id("sess")
        spec = RunSpec(
            session_id=session_id,
            store=store,
            profile=profile_ref,
            readonly=body.readonly,
            lock_timeout=body.lock_timeout,
            start_url=body.start_url,
            viewport=body.screen.model_dump() if body.screen is not None else None,
            proxy=body.proxy.model_dump(exclude_none=True)
            if body.proxy is not None and not isinstance(body.proxy, str)
            else None,
            idle_timeout=body.idle_timeout,
            max_duration=body.max_duration,
            keep_alive=body.keep_alive,
            audit={"remote": True, "account": account.id, "remote_session": session_id},
        )
        run = SessionRun(spec, self._on_event)
        entry = SessionEntry(
            id=session_id,
            account_id=account.id,
            connect_base=connect_base,
            created_at=time.time(),
            run=run,
            readonly=body.readonly,
            ephemeral=profile_ref is None,
            engine=engine,
            profile_id=profile_ref,
            profile_name=profile_name,
            replica=self.replica,
        )
        elsewhere = 0
        if self.count_elsewhere is not None:
            count = self.count_elsewhere
            elsewhere = await run_sync(lambda: count(account.id))
        with self._lock:
            self._admit(account, elsewhere)
            self._entries[session_id] = entry
        run.start()
        try:
            await asyncio.shield(asyncio.wrap_future(run.ready))
        except ProfileError:
            # Nothing ran: the answer is the error, and no session is listed.
            await asyncio.shield(asyncio.wrap_future(run.done))
            with self._lock:
                self._entries.pop(session_id, None)
            raise
        log.info(
            "remote session %s started on %s for account %s",
            session_id,
            run.profile_id or "an ephemeral profile",
            account.id,
        )
        return entry

    def _on_event(self, event: str, run: SessionRun) -> None:
        with self._lock:
            entry = self._entries.get(run.spec.session_id)
            if entry is None:
                return
            if event == "running":
                entry.status = "running"
                entry.started_at = time.time()
            elif event == "stopping" and entry.status in ("starting", "running"):
                entry.status = "stopping"
            elif event == "ended":
                entry.finished_at = time.time()
                ended = run.ended or {}
                failed = run.error is not None or ended.get("outcome") not in (None, "ok")
                entry.status = "failed" if failed else "stopped"
                self._prune()
        if self.on_change is not None and entry.started_at is not None:
            self.on_change(entry)  # a start that failed was never listed: nothing to write
        if event == "ended":
            log.info(
                "remote session %s ended (%s): %s",
                run.spec.session_id,
                run.stop_reason or "start failed",
                (run.ended or {}).get("outcome", "not started"),
            )

    def _prune(self) -> None:
        ended = [k for k, e in self._entries.items() if not e.live]
        for key in ended[: max(0, len(ended) - HISTORY)]:
            del self._entries[key]

    def get(self, account_id: str, session_id: str) -> SessionEntry:
        """The account's session, or ``NotFound`` (another account's too)."""
        entry = self.find(account_id, session_id)
        if entry is None:
            raise NotFound(f"Session {session_id!r} not found", resource="session")
        return entry

    def runs(self, session_id: str) -> bool:
        """Whether this replica runs (or ran) the session, whoever's it is."""
        with self._lock:
            return session_id in self._entries

    def find(self, account_id: str, session_id: str) -> SessionEntry | None:
        """The account's session if this replica runs (or ran) it, else None."""
        with self._lock:
            entry = self._entries.get(session_id)
        if entry is None or entry.account_id != account_id:
            return None
        return entry

    def list(
        self,
        account_id: str,
        *,
        status: SessionStatus | None = None,
        profile: str | None = None,
    ) -> list[SessionEntry]:
        """The account's sessions, newest first."""
        with self._lock:
            entries = [e for e in self._entries.values() if e.account_id == account_id]
        entries.reverse()
        if status is not None:
            entries = [e for e in entries if e.status == status]
        if profile is not None:
            entries = [
                e
                for e in entries
                if e.profile_id is not None and profile in (e.profile_id, e.profile_name)
            ]
        return entries

    async def stop(self, entry: SessionEntry, reason: str) -> SessionEntry:
        """Stop the session (close the browser, commit as a local session does, release
        the lease) and wait until it has ended; a session already ended answers as is."""
        if entry.status == "starting":
            raise Conflict(
                f"Session {entry.id} is still starting; stop it once it runs.",
                session_id=entry.id,
                status=entry.status,
            )
        entry.run.request_stop(reason)
        await asyncio.shield(asyncio.wrap_future(entry.run.done))
        return entry

    async def shutdown(self) -> None:
        """Stop every session and wait for their commits (the service is exiting)."""
        with self._lock:
            self._closing = True
            live = [e for e in self._entries.values() if e.live]
        if not live:
            return
        log.info("stopping %d remote session(s) before exiting", len(live))
        for entry in live:
            entry.run.request_stop("the service is shutting down")
        waits = [asyncio.wrap_future(e.run.done) for e in live]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), SHUTDOWN_WAIT)
        left = [e.id for e in live if e.live]
        if left:
            log.error("remote sessions still running at exit (not committed): %s", left)
