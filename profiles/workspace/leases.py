"""Writer leases: one writer per profile, with a fencing token that stops a late writer.

A writer (a session, an import) holds two things:

- the **machine lock** (:class:`~profiles.workspace.locks.ProfileLock`, an ``flock`` under
  the home): this machine's working copy of the profile is used by one process at a time;
- the **catalog lease**: a row in the catalog with a holder (host, pid, since), an expiry and
  an ``epoch`` that grows by one at every grant. The epoch is the fencing token: the commit
  lands only if the epoch it was granted is still the profile's current one
  (:meth:`~profiles.catalog.base.CatalogTransaction.set_state`), so a worker that was paused
  or cut off past its lease can never overwrite a newer state; it gets ``LeaseLost``.

On the embedded store every writer is on this machine, so the ``flock`` alone decides who
writes; the catalog lease is then taken over (``force``) right after it, without expiry, only
to bump the epoch. On a shared catalog the lease is what decides: it is granted when free or
expired, and a heartbeat thread renews it while it is held, so a worker that dies frees the
profile within ``ttl`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from profiles.errors import ProfileError
from profiles.models import Holder, HolderKind
from profiles.workspace.locks import ProfileLock, poll_until_free

if TYPE_CHECKING:
    from profiles.models import Profile
    from profiles.service.protocol import ProfileService

__all__ = ["DEFAULT_LEASE_TTL", "WriterLease"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 30.0


class WriterLease:
    """The writer lease of one profile: the machine lock plus the catalog lease.

    Use it like a lock (``acquire``/``release`` or ``with``); :attr:`epoch` is the fencing
    token to pass to ``commit_state``. ``shared`` selects the catalog-decided mode (a
    shared catalog, with expiry and heartbeat) over the embedded one.
    """

    def __init__(
        self,
        service: ProfileService,
        locks_dir: Path,
        profile_id: str,
        *,
        name: str | None = None,
        timeout: float = 600.0,
        kind: HolderKind = "session",
        shared: bool = False,
        ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        self.service = service
        self.profile_id = profile_id
        self.display_name = name or profile_id
        self.timeout = timeout
        self.kind: HolderKind = kind
        self.shared = shared
        self.ttl = ttl
        self.machine_lock = ProfileLock(
            locks_dir, profile_id, timeout=timeout, name=name, kind=kind
        )
        self.epoch: int | None = None
        #: The profile's record sent along with the grant (over HTTP), else None.
        self.granted: Profile | None = None
        self.lost = False
        self._ending = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # the ProfileLock surface, so callers need not care which mode they hold
    @property
    def path(self) -> Path:
        return self.machine_lock.path

    @property
    def is_locked(self) -> bool:
        return self.epoch is not None

    def holder(self) -> Holder | None:
        """Who holds the profile now: the catalog's lease holder on a shared catalog."""
        if self.shared:
            return self.service.lease_holder(self.profile_id)
        return self.machine_lock.holder()

    def remove_file(self) -> None:
        self.machine_lock.remove_file()

    def acquire(self, timeout: float | None = None) -> None:
        wait = self.timeout if timeout is None else timeout
        started = time.monotonic()
        self.machine_lock.acquire(timeout=wait)
        try:
            me = Holder(
                kind=self.kind,
                host=socket.gethostname(),
                pid=os.getpid(),
                since=datetime.now(UTC),
            )
            self._ending = False
            if not self.shared:
                grant = self.service.acquire_lease(self.profile_id, me, ttl=None, force=True)
                assert grant is not None
                self.epoch, self.granted = grant.epoch, grant.profile
                return
            left = max(0.0, wait - (time.monotonic() - started))
            self.epoch = self._acquire_shared(me, left)
            self.lost = False
            self._stop.clear()
            self._heartbeat = threading.Thread(
                target=self._beat, name=f"lease-{self.profile_id}", daemon=True
            )
            self._heartbeat.start()
        except BaseException:
            self.machine_lock.release()
            raise

    def _acquire_shared(self, me: Holder, wait: float) -> int:
        deadline = time.monotonic() + wait

        def attempt() -> int | None:
            # A service that can wait on its side (HTTP) holds the request until the lease
            # frees (one request, not a poll); the others answer at once.
            left = max(0.0, deadline - time.monotonic())
            grant = self.service.acquire_lease(self.profile_id, me, ttl=self.ttl, wait=left)
            if grant is None:
                return None
            self.granted = grant.profile
            return grant.epoch

        return poll_until_free(
            attempt,
            self.holder,
            name=self.display_name,
            profile_id=self.profile_id,
            wait=wait,
            nobody="another writer",
        )

    def _beat(self) -> None:
        """Renew the lease every third of its time to live, until released or lost."""
        interval = max(0.05, self.ttl / 3)
        while not self._stop.wait(interval):
            epoch = self.epoch
            if epoch is None:
                return
            try:
                kept = self.service.renew_lease(self.profile_id, epoch, ttl=self.ttl)
            except ProfileError as exc:
                log.warning("could not renew the lease on %s: %s", self.display_name, exc)
                continue
            if not kept:
                if self._ending or self._stop.is_set():
                    return  # released with the session's end meanwhile: not lost
                self.lost = True
                log.warning(
                    "the lease on profile %r was lost (epoch %d): another writer took it; "
                    "this session's state will not be written back",
                    self.display_name,
                    epoch,
                )
                return

    def ending(self) -> None:
        """The session's end (which releases the lease on the service's side) is on its
        way: a renewal refused from now on means released, not lost. The heartbeat keeps
        renewing meanwhile (a long commit keeps its lease)."""
        self._ending = True

    def pause_heartbeat(self) -> None:
        """Stop renewing the lease and wait for the heartbeat to stop, keeping everything
        else: what a paused or frozen worker looks like to the others (its lease expires
        after its ttl and another writer may take it; this one's commit is then fenced off
        with ``LeaseLost``). :meth:`release` still frees what it holds."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
            self._heartbeat = None

    def forget(self) -> None:
        """The lease was released on the service's side (with a commit or a session's
        end): stop renewing it; :meth:`release` then frees only the machine lock."""
        self._ending = True
        self.epoch = None
        self.pause_heartbeat()

    def release(self) -> None:
        epoch, self.epoch = self.epoch, None
        self.pause_heartbeat()
        try:
            if epoch is not None:
                with contextlib.suppress(ProfileError):
                    self.service.release_lease(self.profile_id, epoch)
        finally:
            self.machine_lock.release()

    def __enter__(self) -> WriterLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
