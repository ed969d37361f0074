"""Blob writers and collectors registered for as long as their process works (rule 7 of
:mod:`profiles.catalog.base`).

:func:`blob_writer` registers this process as a writer of state bytes, :func:`collector`
takes the collector lock; each gives a :class:`Registration` that a heartbeat thread renews
every third of its ``ttl`` while the block runs, so a slow writer (a long commit of a large
profile) stays live, and a process that dies stops holding the other side off within
``ttl`` (at once on a catalog that sees dead processes, the embedded one).

A registration may still lapse while its process lives (paused, or cut off from the
catalog for longer than ``ttl``); the other side may then have run. So a writer confirms
its registration in the transaction that references what it uploaded
(:meth:`Registration.confirm`), and a collector checks its lock before it deletes
(:meth:`Registration.check`); both raise ``StorageUnavailable`` when it lapsed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Final, Literal

from profiles.catalog.base import Catalog, CatalogTransaction
from profiles.errors import ProfileError, StorageUnavailable
from profiles.models import new_id, seconds_text

__all__ = ["UPKEEP_TTL", "Registration", "blob_writer", "collector"]

log = logging.getLogger(__name__)

#: How long a writer's registration or the collector lock lives without its heartbeat:
#: the writer lease's expiry (profiles.workspace.leases.DEFAULT_LEASE_TTL).
UPKEEP_TTL: Final = 30.0
POLL: Final = 0.05

Kind = Literal["writer", "collector"]


class Registration:
    """A blob writer's registration or the collector lock, held by this process."""

    def __init__(self, catalog: Catalog, kind: Kind, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError("a registration's ttl must be above 0")
        self.catalog = catalog
        self.kind: Kind = kind
        self.id = new_id(kind)
        self.ttl = float(ttl)
        #: The registration was dropped (it lapsed and the other side took over).
        self.lost = False
        self._renewed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ in a transaction
    def grant(self, tx: CatalogTransaction) -> bool:
        if self.kind == "writer":
            return tx.register_blob_writer(self.id, ttl=self.ttl)
        return tx.acquire_collector(self.id, ttl=self.ttl)

    def renew(self, tx: CatalogTransaction) -> bool:
        if self.kind == "writer":
            kept = tx.renew_blob_writer(self.id, ttl=self.ttl)
        else:
            kept = tx.renew_collector(self.id, ttl=self.ttl)
        if kept:
            self._renewed = time.monotonic()
        else:
            self.lost = True
        return kept

    def end(self, tx: CatalogTransaction) -> None:
        if self.kind == "writer":
            tx.unregister_blob_writer(self.id)
        else:
            tx.release_collector(self.id)

    def confirm(self, tx: CatalogTransaction) -> None:
        """A writer's last renewal, inside the transaction that references the bytes it
        stored: ``StorageUnavailable`` (transient) when the registration lapsed, so that
        nothing references bytes a collector may have deleted meanwhile."""
        if self.lost or not self.renew(tx):
            raise self._lapsed(
                "The state was not committed: this writer's registration lapsed (the process "
                f"did not renew it for {seconds_text(self.ttl)}: paused, or cut off from the "
                "catalog) and a collector may have removed bytes it stored. Commit again."
            )

    def check(self) -> None:
        """Before a collector deletes: its lock is still held (renewed within half its
        ttl, else renewed now), or ``StorageUnavailable``."""
        if not self.lost and time.monotonic() - self._renewed < self.ttl / 2:
            return
        if not self.lost:
            with self.catalog.transaction() as tx:
                if self.renew(tx):
                    return
        raise self._lapsed(
            "Garbage collection stopped: its lock lapsed (the process did not renew it for "
            f"{seconds_text(self.ttl)}) and writers may have stored bytes since. Collect "
            "garbage again."
        )

    def _lapsed(self, message: str) -> StorageUnavailable:
        error = StorageUnavailable(
            f"{message} ({self.catalog.location})",
            home=self.catalog.location,
            cause=f"{self.kind} registration lapsed",
        )
        error.transient = True
        return error

    # ------------------------------------------------------------------ the heartbeat
    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"upkeep-{self.kind}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with self.catalog.transaction() as tx:
                    kept = self.renew(tx)
            except ProfileError as exc:
                log.warning("could not renew the %s registration %s: %s", self.kind, self.id, exc)
                continue
            if not kept:
                log.warning(
                    "the %s registration %s lapsed (not renewed in %s); the other side may "
                    "have run meanwhile",
                    self.kind,
                    self.id,
                    seconds_text(self.ttl),
                )
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


@contextlib.contextmanager
def _registered(
    catalog: Catalog, kind: Kind, ttl: float, wait: float
) -> Iterator[Registration | None]:
    registration = Registration(catalog, kind, ttl)
    deadline = time.monotonic() + wait
    while True:
        with catalog.transaction() as tx:
            granted = registration.grant(tx)
        if granted or time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    if not granted:
        yield None
        return
    registration.start()
    try:
        yield registration
    finally:
        registration.stop()
        with contextlib.suppress(ProfileError), catalog.transaction() as tx:
            registration.end(tx)


def blob_writer(
    catalog: Catalog, *, ttl: float = UPKEEP_TTL, wait: float = 0.0
) -> contextlib.AbstractContextManager[Registration | None]:
    """This process registered as a writer of state bytes for the block (``None``: a
    collector held its lock for all of ``wait`` seconds), renewed while the block runs."""
    return _registered(catalog, "writer", ttl, wait)


def collector(
    catalog: Catalog, *, ttl: float = UPKEEP_TTL, wait: float = 0.0
) -> contextlib.AbstractContextManager[Registration | None]:
    """The collector lock for the block (``None``: writers or another collector held it
    off for all of ``wait`` seconds), renewed while the block runs."""
    return _registered(catalog, "collector", ttl, wait)
