"""The registry of remote sessions that the replicas of a service share, and the routing of
a session's requests to the replica that runs it.

Several ``profiles serve`` replicas on one shared backend (PostgreSQL + S3) share the
accounts database (``--accounts postgresql://...``). Each replica:

- beats a heartbeat in its ``replicas`` row every third of ``--replica-timeout`` (with the
  URL the others reach it at, ``--replica-url``);
- writes the record of each session it runs into ``remote_sessions`` whenever the record
  changes (started, stopping, ended), naming itself (``replica``);
- answers a session's routes itself when it runs the session, else forwards the request to
  the replica the registry names: HTTP with httpx, the CDP WebSocket by relaying it to the
  owner's. The client's ``Authorization`` and ``X-Account`` go along, and
  :data:`FORWARDED_HEADER` marks the request, so a replica that does not run the session
  answers 404 instead of forwarding it again; the owner authenticates the forwarded request
  as it would any other.

A replica whose heartbeat is older than the timeout is gone (killed, or cut off): its
sessions that were live are shown ``failed`` ("replica gone") by every other replica, and
nothing is forwarded to it. Their profiles are free again once their writer leases expire
(``--session-lease-ttl``). Clocks: heartbeats are the replicas' own ``time.time()``, so the
replicas' clocks must agree to well within the timeout (NTP does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Final

from profiles.errors import NotFound
from profiles.http.server.accounts import LIVE_STATUSES, AccountsDB, SessionRow
from profiles.http.session_schemas import SessionError, SessionRecord

__all__ = ["FORWARDED_HEADER", "Registry", "new_replica_id"]

log = logging.getLogger(__name__)

#: Marks a request one replica forwarded to another (its value: the forwarding replica).
FORWARDED_HEADER: Final = "X-Profiles-Forwarded"
#: Ended sessions' records are kept this long in the registry.
HISTORY_SECONDS: Final = 7 * 24 * 3600.0


def new_replica_id() -> str:
    return f"rep_{secrets.token_hex(6)}"


class Registry:
    """This replica's view of the shared registry (blocking calls: run them off the loop)."""

    def __init__(
        self, accounts: AccountsDB, *, replica_id: str, replica_url: str, timeout: float
    ) -> None:
        self.accounts = accounts
        self.replica_id = replica_id
        self.replica_url = replica_url.rstrip("/")
        self.timeout = timeout
        self._last_prune = 0.0

    @property
    def interval(self) -> float:
        return max(0.05, self.timeout / 3)

    # ------------------------------------------------------------------ this replica

    def start(self) -> None:
        """Beat the first heartbeat; sessions an earlier life of this replica id left live
        are failed (this process does not run them)."""
        self.beat()
        for row in self.accounts.sessions(replica_id=self.replica_id):
            if row.status in LIVE_STATUSES:
                record = self._gone(row, "the replica running it restarted")
                self.accounts.put_session(
                    row.id,
                    account_id=row.account_id,
                    replica_id=row.replica_id,
                    replica_url=row.replica_url,
                    status=record.status,
                    record=record.model_dump_json(),
                    created_at=row.created_at,
                )

    def beat(self) -> None:
        self.accounts.replica_heartbeat(self.replica_id, self.replica_url)
        now = time.time()
        if now - self._last_prune > 3600:
            self._last_prune = now
            self.accounts.forget_sessions(ended_before=now - HISTORY_SECONDS)

    async def heartbeat(self) -> None:
        """Beat until cancelled (a failed beat is logged; the next one tries again)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.beat)
            except Exception as exc:
                log.warning("replica %s: heartbeat failed: %s", self.replica_id, exc)

    def stop(self) -> None:
        """This replica leaves (its sessions have ended and are recorded so)."""
        with contextlib.suppress(Exception):
            self.accounts.remove_replica(self.replica_id)

    def publish(self, record: SessionRecord, *, account_id: str, created_at: float) -> None:
        """Write the record of a session this replica runs (logged, not raised, when the
        database fails: the session goes on, and the next change writes it again)."""
        try:
            self.accounts.put_session(
                record.id,
                account_id=account_id,
                replica_id=self.replica_id,
                replica_url=self.replica_url,
                status=record.status,
                record=record.model_dump_json(),
                created_at=created_at,
            )
        except Exception as exc:
            log.warning("could not write the record of session %s: %s", record.id, exc)

    # ------------------------------------------------------------------ every replica

    def alive(self, row: SessionRow) -> bool:
        """Whether the replica running the session beats its heartbeat (this one does)."""
        if row.replica_id == self.replica_id:
            return True
        return row.heartbeat_at is not None and time.time() - row.heartbeat_at <= self.timeout

    def _gone(self, row: SessionRow, why: str) -> SessionRecord:
        record = SessionRecord.model_validate_json(row.record)
        message = (
            f"replica gone: {why}; the session's profile is free again once its writer "
            "lease expires, with its last committed state"
        )
        return record.model_copy(
            update={
                "status": "failed",
                "connect_url": None,
                "clients": 0,
                "ended_because": message,
                "error": SessionError(code="ReplicaGone", message=message),
            }
        )

    def record_of(self, row: SessionRow) -> SessionRecord:
        """The session's record as the registry holds it; a live session of a replica that
        is gone is ``failed`` ("replica gone")."""
        if row.status in LIVE_STATUSES and not self.alive(row):
            return self._gone(
                row,
                f"replica {row.replica_id} has not beaten its heartbeat for more than "
                f"{self.timeout:g} s",
            )
        return SessionRecord.model_validate_json(row.record)

    def find(self, account_id: str, session_id: str) -> SessionRow:
        """The account's session in the registry, or ``NotFound`` (another account's
        too)."""
        row = self.accounts.get_session(session_id)
        if row is None or row.account_id != account_id:
            raise NotFound(f"Session {session_id!r} not found", resource="session")
        return row

    def records(self, account_id: str) -> list[SessionRecord]:
        """The account's sessions on every replica, oldest first."""
        return [self.record_of(row) for row in self.accounts.sessions(account_id)]

    def running_elsewhere(self, account_id: str) -> int:
        """The account's live sessions on the other replicas that are alive (they count
        against the account's session cap here too)."""
        return sum(
            1
            for row in self.accounts.sessions(account_id)
            if row.replica_id != self.replica_id and row.status in LIVE_STATUSES and self.alive(row)
        )
