"""The engine cache of a fleet: each browser build's cache published once to the shared
backend, fetched by every fresh machine.

:class:`~profiles.engine_cache.cache.EngineCache` keeps one warm-up cache per browser build on a
machine (Firefox's ``startupCache``: without it a cold start costs about 1.5x). A fresh
container on the shared backend (PostgreSQL catalog + S3 blobs) has none, so every one of
them would pay the cold start. Here the cache travels through the backend:

* :class:`CatalogEngineCacheIndex` is the :class:`~profiles.engine_cache.cache.EngineCacheIndex`
  in the catalog (``engine_caches``: ``(engine, build key) -> checksum``, rule 10 of
  :mod:`profiles.catalog.base`); the blob is a zstd tar of the build's cache directory in
  the store's blob store, kept by the garbage collector because the index names it.
* :func:`fetch_shared` runs before a session seeds its working copy: when this machine has
  no cache of the build and the index names one, it is downloaded and checked (names,
  cache formats, sizes, SHA-256 of every file against the manifest) before it is installed.
* :func:`publish_shared` runs after a clean session stored a build's cache locally (the
  first session of that build on this machine): when the index names none for the build
  (or names the one this machine refused), the cache is uploaded and recorded. Two machines
  publishing at once both upload; the last to record wins and the other blob is garbage.

Both only ever cost speed: every failure (the catalog or the blob store unreachable, a
corrupt or hostile blob, a collector at work) is logged at DEBUG or INFO and the session
goes on cold. :mod:`driver.lifecycle` calls them for a store whose service is shared and
never for a read-only store.

Trust
=====

The cache holds compiled browser code (chrome JavaScript) that Firefox runs with chrome
privileges, and a fetch checks names, formats and checksums, not intent. A machine that
publishes therefore decides what every machine of the fleet runs for that build: **only
machines trusted as much as the browser itself should publish.** In particular, a machine
whose browser may have been compromised (by a hostile page) should not: its Firefox could
have written a poisoned ``startupCache`` that the first clean session then publishes. Set
``PROFILES_ENGINE_CACHE_SHARING`` on each machine:

``on`` (the default)
    fetch and publish;
``fetch``
    fetch only, never publish (for machines not trusted to publish);
``off``
    neither: this machine's engine cache stays its own.

Any other value is treated as ``fetch`` (a typo never publishes). Publishing also needs
write access to the catalog and the blob store; fetching only read access.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

from profiles.blobs.base import BlobStore
from profiles.catalog.base import Catalog
from profiles.catalog.registration import UPKEEP_TTL, Registration, blob_writer
from profiles.engine_cache.cache import CACHE_PATHS, UNIDENTIFIED, EngineCache
from profiles.errors import ProfileError
from profiles.state.rules import Engine

__all__ = [
    "SHARING_ENV",
    "CatalogEngineCacheIndex",
    "FetchOutcome",
    "Sharing",
    "fetch_shared",
    "publish_shared",
    "sharing_mode",
]

log = logging.getLogger(__name__)

SHARING_ENV = "PROFILES_ENGINE_CACHE_SHARING"
Sharing = Literal["on", "fetch", "off"]
#: How long a publisher's blob-writer registration lives without its heartbeat: a
#: publisher that dies stops holding the collector off after this (rule 7).
PUBLISH_WRITER_TTL = UPKEEP_TTL


def sharing_mode() -> Sharing:
    """This machine's choice, from ``PROFILES_ENGINE_CACHE_SHARING`` (see the module)."""
    value = os.environ.get(SHARING_ENV, "on").strip().lower()
    if value in ("on", "fetch", "off"):
        return value  # type: ignore[return-value]
    log.info("engine cache: %s=%r is not on, fetch or off; fetching only", SHARING_ENV, value)
    return "fetch"


class CatalogEngineCacheIndex:
    """An :class:`~profiles.engine_cache.cache.EngineCacheIndex` in the catalog (rule 10 of
    :mod:`profiles.catalog.base`): each call is one short transaction. Errors are the
    catalog's (``StorageUnavailable`` for a fault, ``ValidationFailed`` for a bad value)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, engine: str, key: str) -> str | None:
        with self.catalog.transaction(write=False) as tx:
            return tx.engine_cache_get(engine, key)

    def put(self, engine: str, key: str, checksum: str) -> None:
        with self.catalog.transaction() as tx:
            tx.engine_cache_put(engine, key, checksum)

    def checksums(self) -> set[str]:
        with self.catalog.transaction(write=False) as tx:
            return tx.engine_cache_checksums()


class _Recording:
    """An index that remembers what ``get`` answered (the checksum a fetch tried)."""

    def __init__(self, inner: CatalogEngineCacheIndex) -> None:
        self.inner = inner
        self.seen: str | None = None

    def get(self, engine: str, key: str) -> str | None:
        self.seen = self.inner.get(engine, key)
        return self.seen

    def put(self, engine: str, key: str, checksum: str) -> None:
        self.inner.put(engine, key, checksum)


@dataclass(frozen=True)
class FetchOutcome:
    """What :func:`fetch_shared` did: ``fetched`` a cache, or found one it could not use
    (``refused``: the checksum the index named; :func:`publish_shared` may replace it)."""

    fetched: bool = False
    refused: str | None = None


def fetch_shared(
    cache: EngineCache, catalog: Catalog, blobs: BlobStore, engine: Engine, key: str
) -> FetchOutcome:
    """Install the build's published cache when this machine has none. Never raises."""
    if key == UNIDENTIFIED or not CACHE_PATHS.get(engine):
        return FetchOutcome()
    index = _Recording(CatalogEngineCacheIndex(catalog))
    try:
        if cache.has(engine, key):
            return FetchOutcome()
        if cache.fetch(blobs, engine, key, index):
            log.info("engine cache: fetched %s build %s from %s", engine, key, blobs.location)
            return FetchOutcome(fetched=True)
        if index.seen is not None and not cache.has(engine, key):
            return FetchOutcome(refused=index.seen)
    except (OSError, ValueError, ProfileError) as exc:
        log.info("engine cache: could not fetch %s build %s: %s", engine, key, exc)
    except Exception as exc:  # only speed is at stake: never fail a session
        log.info("engine cache: could not fetch %s build %s (%s)", engine, key, type(exc).__name__)
        log.debug("engine cache: fetch failed", exc_info=True)
    return FetchOutcome()


def publish_shared(
    cache: EngineCache,
    catalog: Catalog,
    blobs: BlobStore,
    engine: Engine,
    key: str,
    *,
    replacing: str | None = None,
) -> str | None:
    """Publish the build's local cache when the index names none for it (or names
    ``replacing``, a cache this machine refused). Returns the checksum recorded, or None.
    The upload runs as a registered blob writer (rule 7), so no collector deletes the bytes
    before the index names them; while a collector works, nothing is published. Never
    raises."""
    if key == UNIDENTIFIED or not CACHE_PATHS.get(engine):
        return None
    index = CatalogEngineCacheIndex(catalog)
    try:
        current = index.get(engine, key)
        if current is not None and current != replacing:
            log.debug("engine cache: %s build %s is already published", engine, key)
            return None
        with blob_writer(catalog, ttl=PUBLISH_WRITER_TTL) as writer:
            if writer is None:
                log.debug("engine cache: a collector is at work; %s not published", key)
                return None
            checksum = cache.publish(blobs, engine, key, _FencedIndex(catalog, writer))
    except (OSError, ValueError, ProfileError) as exc:
        log.info("engine cache: could not publish %s build %s: %s", engine, key, exc)
        return None
    except Exception as exc:  # only speed is at stake: never fail a session
        log.info(
            "engine cache: could not publish %s build %s (%s)", engine, key, type(exc).__name__
        )
        log.debug("engine cache: publish failed", exc_info=True)
        return None
    if checksum is not None:
        log.info("engine cache: published %s build %s as %s", engine, key, checksum)
    return checksum


class _FencedIndex(CatalogEngineCacheIndex):
    """The index, recording a publication only while the publisher's blob-writer
    registration holds (in the same transaction): a collector may have deleted the upload
    if it lapsed."""

    def __init__(self, catalog: Catalog, writer: Registration) -> None:
        super().__init__(catalog)
        self.writer = writer

    def put(self, engine: str, key: str, checksum: str) -> None:
        with self.catalog.transaction() as tx:
            self.writer.confirm(tx)
            tx.engine_cache_put(engine, key, checksum)
