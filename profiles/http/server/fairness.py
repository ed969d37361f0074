"""One account's load does not move another's latency.

The routes' blocking work (the stores' calls, and FastAPI's ``def`` routes themselves) runs
on one pool of worker threads, shared by every account. Two things keep one account from
taking all of it:

- **Waiting holds no thread.** An import waiting for a profile held by a session
  (:func:`import_when_free`) tries the lock without waiting on a thread, and sleeps between
  tries on the event loop, up to its deadline; the lease long-poll does the same.
- **A bounded number of state operations per account** (:class:`StateSlots`: uploads,
  commits, reads and downloads of a state, each of which holds a thread for as long as its
  archive takes): past ``--max-state-operations`` at once, a request is answered ``429``
  ``RateLimited`` with ``Retry-After`` at once, before its body is read. Another account's
  slots are its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Final, Literal

import anyio
from fastapi import Depends

from profiles.errors import ProfileBusy, ProfileError, RateLimited
from profiles.http.server.deps import Auth, Svc, busy, run_sync
from profiles.models import Profile
from profiles.store import ProfileStore

__all__ = [
    "RETRY_STATE_AFTER",
    "DownloadSlot",
    "StateSlot",
    "StateSlots",
    "UploadSlot",
    "import_when_free",
]

#: What a refused state operation is told to wait, in seconds.
RETRY_STATE_AFTER: Final = 1
_FIRST_RETRY: Final = 0.05
_MAX_RETRY: Final = 0.5


class StateSlots:
    """At most ``limit`` state operations per account at once (thread-safe: the signed
    download runs on a worker thread)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an account needs at least one state operation at a time")
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def in_use(self, account_id: str) -> int:
        with self._lock:
            return self._held.get(account_id, 0)

    @contextlib.contextmanager
    def hold(self, account_id: str) -> Iterator[None]:
        """One of the account's slots for the block, or ``RateLimited`` (429) at once."""
        with self._lock:
            held = self._held.get(account_id, 0)
            if held >= self.limit:
                raise RateLimited(
                    f"Too many state operations of this account at once (at most "
                    f"{self.limit} uploads, commits and downloads); try again in "
                    f"{RETRY_STATE_AFTER} s.",
                    limit=self.limit,
                    scope="state_operations",
                    retry_after=RETRY_STATE_AFTER,
                )
            self._held[account_id] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[account_id] - 1
                if left:
                    self._held[account_id] = left
                else:
                    del self._held[account_id]


async def _state_slot(s: Svc, c: Auth) -> AsyncIterator[None]:
    # A dependency with yield: held until the answer is sent (a streamed one included).
    with s.state_slots.hold(c.account.id):
        yield


#: A route parameter that holds one of the caller's account's state slots for the request.
StateSlot = Annotated[None, Depends(_state_slot)]


async def import_when_free(
    store: ProfileStore,
    profile: Profile,
    attempt: Callable[[float], Profile],
    *,
    wait: float,
) -> Profile:
    """``attempt(0)`` (an import that takes the profile's writer lock without waiting) on a
    worker thread until the profile is free, up to ``wait`` seconds: between tries the
    request sleeps on the event loop, holding no thread. Then ``ProfileBusy`` naming the
    holder."""
    deadline = time.monotonic() + wait
    delay = _FIRST_RETRY
    while True:
        try:
            return await run_sync(lambda: attempt(0.0))
        except ProfileBusy:
            left = deadline - time.monotonic()
            if left <= 0:
                raise await run_sync(lambda: busy(store, profile)) from None
            await anyio.sleep(min(delay, left))
            delay = min(delay * 2, _MAX_RETRY)


def _token_slot(kind: Literal["download", "upload"]) -> Callable[..., AsyncIterator[None]]:
    """A slot of the account a signed link acts for; a link that does not verify is left
    to its route to answer for."""

    async def slot(s: Svc, token: str) -> AsyncIterator[None]:
        try:
            account_id = s.signer.verify(token, kind).account_id
        except ProfileError:
            account_id = None
        if account_id is None:
            yield
            return
        with s.state_slots.hold(account_id):
            yield

    return slot


#: :data:`StateSlot` for the routes of a signed download link and of a signed upload target.
DownloadSlot = Annotated[None, Depends(_token_slot("download"))]
UploadSlot = Annotated[None, Depends(_token_slot("upload"))]
