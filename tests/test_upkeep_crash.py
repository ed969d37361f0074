"""Upkeep after a crash (issue 20): a writer killed with SIGKILL in the middle of a commit
stops holding garbage collection off at once on the embedded store and within the lease
expiry on PostgreSQL, and the last committed state stays whole; a slow live writer is never
taken for a dead one.

A child process commits a sizeable directory through :class:`ProfileStore` and is killed
after a random delay (anywhere from before its first chunk to after its commit), several
times in a row. After each kill the collector must be let in within the bound, collect what
the dead commit left, and the profile must read back exactly as the last commit that
landed wrote it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.pg_service import fresh_database
from support.storefaults import ROOT, chromium_dir

from profiles import ProfileStore, StorageUnavailable
from profiles.blobs.local import LocalBlobStore
from profiles.catalog import Catalog, SQLiteCatalog
from profiles.catalog.postgres import PostgresCatalog
from profiles.catalog.registration import UPKEEP_TTL, Registration, blob_writer, collector
from profiles.service.catalog import CatalogService
from profiles.state.archive import tree_digest
from profiles.workspace.leases import DEFAULT_LEASE_TTL

PAYLOAD = 40 * 1024 * 1024  # ten packs: a commit takes a while
ITERATIONS = 5
TTL = 2.0  # the lease expiry the children use on PostgreSQL (injectable; the default is 30 s)
SLACK = 3.0  # what a loaded machine may add to the bound


def test_the_default_bound_is_the_lease_expiry() -> None:
    assert UPKEEP_TTL == DEFAULT_LEASE_TTL <= 30


@dataclass
class Backend:
    """Where the store lives: the embedded store in ``home`` (SQLite and files), or a
    PostgreSQL catalog with blobs in a directory (every machine's home is then only its
    workspace). Children open the same store."""

    kind: str
    home: Path
    catalog_url: str | None = None

    @property
    def blobs(self) -> Path:
        return self.home / "blobs"

    def store(self, home: Path | None = None) -> ProfileStore:
        if self.catalog_url is None:
            return ProfileStore(self.home)
        return ProfileStore(
            home or self.home, catalog=self.catalog_url, blobs=str(self.blobs), lease_ttl=TTL
        )

    def catalog(self) -> Catalog:
        if self.catalog_url is None:
            return SQLiteCatalog(self.home / "catalog.sqlite3")
        return PostgresCatalog(self.catalog_url, min_size=1, max_size=4)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", tmp_path / "store")
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    with fresh_database(postgres_url) as url:
        yield Backend("postgres", tmp_path / "store", url)


CHILD = """
import sys
from pathlib import Path
from profiles import ProfileStore

home, catalog, blobs, ttl, name, source = sys.argv[1:]
if catalog:
    store = ProfileStore(home, catalog=catalog, blobs=blobs, lease_ttl=float(ttl))
else:
    store = ProfileStore(home)
print("ready", flush=True)
store.commit_state(name, Path(source))
print("committed", flush=True)
"""


def _start_commit(backend: Backend, name: str, source: Path) -> subprocess.Popen[str]:
    """A child process that commits ``source`` (on PostgreSQL from a workspace of its own,
    as another machine would)."""
    home = backend.home if backend.catalog_url is None else backend.home.parent / "child"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [str(home), backend.catalog_url or "", str(backend.blobs), str(TTL), name, str(source)]
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == "ready", child.stderr.read() if child.stderr else line
    return child


def _read_back(store: ProfileStore, name: str, target: Path) -> dict[str, str]:
    store.private_copy(name, target)
    return tree_digest(target, engine="chromium")


def test_a_writer_killed_mid_commit_frees_the_collector_and_keeps_the_last_state(
    backend: Backend, tmp_path: Path
) -> None:
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    print(f"seed {seed}")  # shown when the test fails
    rng.seed(seed)
    name = "crash"
    sources: dict[str, dict[str, str]] = {}  # committed checksum -> the tree it holds

    # Two commits run to their end (the second one warm): how long a commit takes here.
    with backend.store() as store:
        store.create(name)
    for seed in (-2, -1):
        first = chromium_dir(tmp_path / f"src{seed}", payload_bytes=PAYLOAD, seed=seed)
        child = _start_commit(backend, name, first)
        started = time.monotonic()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0 and "committed" in out, err
        took = time.monotonic() - started
    with backend.store() as store:
        committed = store.get(name).checksum
        assert committed is not None
        sources[committed] = tree_digest(first, engine="chromium")

        killed_mid_commit = 0
        for i in range(1, ITERATIONS + 1):
            source = chromium_dir(tmp_path / f"src-{i}", payload_bytes=PAYLOAD, seed=i)
            digest = tree_digest(source, engine="chromium")
            child = _start_commit(backend, name, source)
            delay = rng.uniform(0, took)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=60)
            assert child.returncode == -signal.SIGKILL or "committed" in out, err
            killed_mid_commit += "committed" not in out
            print(f"iteration {i}: killed after {delay:.2f} s of {took:.2f}: {out.split()}")

            # The collector gets in: at once on the embedded store, within the lease
            # expiry on PostgreSQL (the dead writer's registration is left to expire).
            # (On SQLite gc may not wait at all: the child was reaped, so its lock is gone.
            # Not a timed assertion: gc's own work takes longer on a loaded machine.)
            bound = 0.0 if backend.kind == "sqlite" else TTL + SLACK
            try:
                store.collect_garbage(min_age=0, wait=bound)
            except StorageUnavailable as exc:
                pytest.fail(f"iteration {i}: the dead writer still holds gc off: {exc.message}")

            # The last state that landed reads back whole.
            profile = store.get(name)
            assert profile.checksum is not None and profile.status == "ready"
            if profile.checksum not in sources:  # this commit landed before the kill
                sources[profile.checksum] = digest
            assert _read_back(store, name, tmp_path / f"copy-{i}") == sources[profile.checksum]
            assert store.verify(full=True) == []
        # The kills landed mid-commit at least once (else the test proves little).
        assert killed_mid_commit, "every commit finished before its kill: raise PAYLOAD"

    # And 'profiles gc' after one more writer died half-way through its commit.
    source = chromium_dir(tmp_path / "src-cli", payload_bytes=PAYLOAD, seed=99)
    child = _start_commit(backend, name, source)
    time.sleep(took / 3)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    where = ["--home", str(backend.home)]
    if backend.catalog_url is not None:
        where += ["--catalog", backend.catalog_url, "--blobs", str(backend.blobs)]
    started = time.monotonic()
    gc = subprocess.run(
        [sys.executable, "-m", "profiles", *where, "gc", "--min-age", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert gc.returncode == 0, gc.stderr
    assert time.monotonic() - started < (0 if backend.kind == "sqlite" else TTL) + 10


class _SlowBlobs(LocalBlobStore):
    """A blob store whose every upload takes a while (uploads run in parallel)."""

    delay = 2.4

    def put(self, checksum: str, source: Any, *, size: int) -> bool:
        time.sleep(self.delay)
        return super().put(checksum, source, size=size)


class _FirstUploadsSlow(LocalBlobStore):
    """A blob store whose first two uploads take a while each, one after the other: a
    commit that outlives four ttls of 2 s, and no more."""

    delay = 4.4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._puts = 0
        self._one_at_a_time = threading.Lock()

    def put(self, checksum: str, source: Any, *, size: int) -> bool:
        with self._one_at_a_time:
            self._puts += 1
            if self._puts <= 2:
                time.sleep(self.delay)
        return super().put(checksum, source, size=size)


def test_a_slow_live_writer_is_never_taken_for_a_dead_one(backend: Backend, tmp_path: Path) -> None:
    """A commit whose uploads take many times the registration's ttl stays registered (its
    heartbeat renews it): every collection tried meanwhile, from another catalog, is
    refused; the commit lands whole and gc then runs. (Ttls of 0.5 s and 1 s lapsed under a
    loaded CI, two browser lanes on two cores: a heartbeat is a catalog write, and one
    SQLite commit there can stall for a second.)"""
    ttl = 2.0
    backend.home.mkdir(parents=True)
    writer = CatalogService(backend.catalog(), _FirstUploadsSlow(backend.blobs), upkeep_ttl=ttl)
    collector = CatalogService(backend.catalog(), LocalBlobStore(backend.blobs), upkeep_ttl=ttl)
    with ProfileStore(tmp_path / "workspace", service=writer) as store:
        store.create("slow")
        source = chromium_dir(tmp_path / "src", payload_bytes=PAYLOAD, seed=7)
        done = threading.Event()
        refusals: list[float] = []
        granted: list[float] = []

        def collect() -> None:
            while not done.is_set():
                try:
                    collector.collect_garbage(min_age=0, wait=0)
                    granted.append(time.monotonic())
                except StorageUnavailable:
                    refusals.append(time.monotonic())
                time.sleep(0.1)

        started = time.monotonic()
        thread = threading.Thread(target=collect)
        thread.start()
        try:
            profile = store.commit_state("slow", source)
        finally:
            done.set()
            thread.join(30)
        ended = time.monotonic()
        assert ended - started > 4 * ttl  # the commit outlived its ttl several times
        during = [t for t in granted if started + 0.2 < t < ended - 0.2]
        assert not during, "a collector ran while the slow writer was at work"
        assert [t for t in refusals if t > started + 2 * ttl], "no collection was tried late"
        assert collector.collect_garbage(min_age=0, wait=5) == []  # nothing of it is garbage
        assert profile.checksum == store.get("slow").checksum
        assert _read_back(store, "slow", tmp_path / "copy") == tree_digest(
            source, engine="chromium"
        )
        assert store.verify(full=True) == []
    collector.close()


def test_a_paused_writer_is_fenced_off_and_a_paused_collector_stops(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration can lapse while its process lives (paused past its ttl, or cut off
    from the catalog): the other side then drops it and runs. A writer whose registration
    went commits nothing (its uploads may be collected), and a collector whose lock went
    deletes nothing more (writers may have uploaded since)."""
    ttl = 0.5
    backend.home.mkdir(parents=True)
    service = CatalogService(backend.catalog(), _SlowBlobs(backend.blobs), upkeep_ttl=ttl)
    other = CatalogService(backend.catalog(), LocalBlobStore(backend.blobs), upkeep_ttl=ttl)
    with ProfileStore(tmp_path / "workspace", service=service) as store:
        store.create("paused")
        kept = store.commit_state("paused", chromium_dir(tmp_path / "a", seed=1))
        # No heartbeat from here on: what a frozen process looks like to the others.
        registered = threading.Event()
        monkeypatch.setattr(Registration, "start", lambda self: registered.set())
        collected: list[list[str]] = []

        def collect_when_lapsed() -> None:
            assert registered.wait(30)  # the commit's writer is in
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    collected.append(other.collect_garbage(min_age=0, wait=0))
                    return
                except StorageUnavailable:
                    time.sleep(0.1)

        thread = threading.Thread(target=collect_when_lapsed)
        thread.start()
        with pytest.raises(StorageUnavailable, match="registration lapsed") as info:
            store.commit_state(
                "paused", chromium_dir(tmp_path / "b", payload_bytes=PAYLOAD // 4, seed=2)
            )
        thread.join(30)
        assert info.value.transient
        assert collected, "the collector never got in while the writer was frozen"
        assert store.get("paused").checksum == kept.checksum  # nothing was committed
        assert store.verify(full=True) == []

        with collector(backend.catalog(), ttl=ttl) as lock:
            assert lock is not None
            lock.check()  # held
            time.sleep(ttl + 0.3)  # frozen: not renewed
            with blob_writer(other.catalog, ttl=60) as writer:
                assert writer is not None  # the lapsed collector lock was dropped for it
            with pytest.raises(StorageUnavailable, match="Garbage collection stopped"):
                lock.check()
    other.close()
