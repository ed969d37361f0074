"""The engine cache through the shared backend (issue 12): a build's cache published by one
machine to the catalog (PostgreSQL) and the blob store (S3, moto's server), fetched by a
fresh container before its first launch.

Real Firefox sessions check the fleet's path end to end: machine A publishes after a clean
session, a second, empty home fetches and seeds before launch, a corrupt published blob only
costs speed, and the published blob holds nothing but the allowed cache files. Fabricated
caches (from tests/test_engine_cache.py) check the wiring, a hostile blob and the garbage
collector without a browser.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from support.backends import fresh_shared_urls, store_on
from support.pg_service import fresh_database
from support.s3_service import S3Endpoint
from test_engine_cache import CACHE_FILES, SECRET, fake_firefox, firefox_profile

from driver import Session
from driver.browsers import BrowserInstall
from driver.lifecycle import SessionLifecycle, SessionOptions
from profiles import ProfileStore
from profiles.blobs.s3 import S3BlobStore
from profiles.engine_cache.cache import MANIFEST, EngineCache, is_allowed
from profiles.engine_cache.fleet import (
    SHARING_ENV,
    CatalogEngineCacheIndex,
    fetch_shared,
    publish_shared,
)
from profiles.state.archive import pack_dir

from conftest import require_engine

COOKIE_VALUE = "cookie-shared-71c4be09"
STORAGE_VALUE = "storage-shared-3d9a55e2"
VISITED = "visited-shared-a04f6b1c"
ARCHETYPE = "desktop-firefox"


def _builds(home: Path) -> list[str]:
    root = home / "engine-cache" / "firefox"
    return (
        sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        if root.is_dir()
        else []
    )


def _index(store: ProfileStore) -> CatalogEngineCacheIndex:
    return CatalogEngineCacheIndex(store.catalog)


def _machine(catalog_url: str, blobs_url: str, home: Path) -> ProfileStore:
    """Another machine (a fresh container) on the same shared backend: its own home."""
    return ProfileStore(home, catalog=catalog_url, blobs=blobs_url)


# ------------------------------------------------------------------------- the fleet


@dataclass(frozen=True)
class Fleet:
    catalog_url: str
    blobs_url: str
    donor_home: Path  # machine A's home: its engine cache holds the build
    key: str
    checksum: str  # what A published
    server: str


@pytest.fixture(scope="module")
def module_s3_env(s3_endpoint: S3Endpoint) -> Iterator[S3Endpoint]:
    """The standard AWS variables pointing at the test server, for the module's fixtures."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_endpoint.env().items():
            mp.setenv(name, value)
        yield s3_endpoint


@pytest.fixture(scope="module")
def fleet(
    postgres_url: str,
    s3_bucket: str,
    module_s3_env: S3Endpoint,
    http_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    """Machine A on a shared backend: real Firefox sessions on profile ``donor`` (a cookie,
    localStorage and a visit) until its engine cache holds the build, which the session
    then published."""
    require_engine("firefox")
    with fresh_database(postgres_url) as catalog_url:
        blobs_url = f"s3://{s3_bucket}/fleet-{uuid.uuid4().hex[:12]}"
        home = tmp_path_factory.mktemp("machine-a")
        with _machine(catalog_url, blobs_url, home) as store:
            url = f"{http_server}/index.html?q={VISITED}"
            for _ in range(3):  # the first session normally does it
                with Session(profile="donor", store=store, archetype=ARCHETYPE) as page:
                    page.goto(url)
                    page.context.add_cookies(
                        [{"name": "sid", "value": COOKIE_VALUE, "url": url, "expires": 2e9}]
                    )
                    page.evaluate(f"localStorage.setItem('k', '{STORAGE_VALUE}')")
                if _builds(home):
                    break
            assert len(_builds(home)) == 1, "no session of machine A stored the build's cache"
            key = _builds(home)[0]
            checksum = _index(store).get("firefox", key)
            assert checksum is not None, "machine A did not publish the build's cache"
            assert store.blobs.exists(checksum)
        yield Fleet(catalog_url, blobs_url, home, key, checksum, http_server)


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def _first(messages: list[str], fragment: str) -> int:
    found = [i for i, m in enumerate(messages) if fragment in m]
    assert found, f"no log record with {fragment!r} in {messages}"
    return found[0]


def test_a_fresh_container_fetches_and_seeds_before_its_first_launch(
    fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "container-b"  # empty: a fresh container
    build = home / "engine-cache" / "firefox" / fleet.key
    with (
        caplog.at_level(logging.DEBUG, logger="driver.lifecycle"),
        caplog.at_level(logging.DEBUG, logger="profiles.engine_cache.fleet"),
        _machine(fleet.catalog_url, fleet.blobs_url, home) as store,
    ):
        with Session(profile="donor", store=store) as page:
            assert build.is_dir() and (build / MANIFEST).is_file()  # installed before launch
            page.goto(f"{fleet.server}/index.html")
            assert page.evaluate("localStorage.getItem('k')") == STORAGE_VALUE
            assert page.evaluate("1 + 1") == 2
        assert store.get("donor").usage_count >= 2
        assert _index(store).get("firefox", fleet.key) == fleet.checksum  # not republished
    messages = _messages(caplog)
    fetched = _first(messages, f"fetched firefox build {fleet.key}")
    seeded = _first(messages, "seeded donor from the engine cache")
    launched = _first(messages, "session on 'donor'")  # the launch options, just before launch
    assert fetched < seeded < launched, messages
    assert _builds(home) == [fleet.key]


def test_the_published_blob_holds_only_allowed_cache_files(fleet: Fleet, tmp_path: Path) -> None:
    with (
        _machine(fleet.catalog_url, fleet.blobs_url, tmp_path / "inspector") as store,
        store.blobs.open(fleet.checksum) as src,
    ):
        data = src.read()
    assert hashlib.sha256(data).hexdigest() == fleet.checksum
    files: dict[str, bytes] = {}
    with (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as raw,
        tarfile.open(fileobj=raw, mode="r|") as tar,
    ):
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if member.isdir():
                assert name in ("", ".", "startupCache"), name
                continue
            assert member.isreg(), (name, member.type)  # no links, devices, fifos
            assert name == MANIFEST or is_allowed("firefox", name), name
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[name] = extracted.read()
    assert MANIFEST in files and len(files) > 1
    assert {n for n in files if n != MANIFEST} == set(json.loads(files[MANIFEST])["files"])
    blob = b"".join(files.values())
    for needle in (COOKIE_VALUE, STORAGE_VALUE, VISITED):
        assert needle.encode() not in blob and needle.encode("utf-16-le") not in blob
    assert str(fleet.donor_home).encode() not in blob  # nor where machine A keeps profiles


def test_a_corrupt_published_cache_only_costs_speed(
    fleet: Fleet, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The index names a blob whose bytes were replaced with garbage: the fresh container
    refuses it, installs nothing, starts cold and works; then its own clean cache replaces
    the bad entry."""
    for catalog_url, blobs_url in fresh_shared_urls(request):  # a fleet of its own
        home = tmp_path / "container-c"
        build = home / "engine-cache" / "firefox" / fleet.key
        with _machine(catalog_url, blobs_url, home) as store:
            donor = EngineCache(fleet.donor_home / "engine-cache")
            bad = donor.publish(store.blobs, "firefox", fleet.key, _index(store))
            assert bad is not None
            blobs = store.blobs
            assert isinstance(blobs, S3BlobStore)
            blobs.client.put_object(
                Bucket=blobs.bucket, Key=blobs.key(bad), Body=b"\x28\xb5\x2f\xfd garbage" * 999
            )
            with (
                caplog.at_level(logging.INFO, logger="profiles.engine_cache.cache"),
                Session(profile="cold", store=store, archetype=ARCHETYPE) as page,
            ):
                assert not build.exists()  # nothing was installed from the bad blob
                page.goto(f"{fleet.server}/index.html")
                page.evaluate(f"localStorage.setItem('k', '{STORAGE_VALUE}')")
            assert any("refused" in m for m in _messages(caplog)), _messages(caplog)
            assert store.get("cold").status == "ready"  # the session committed as usual
            assert build.is_dir(), "the clean session did not store this machine's own cache"
            now = _index(store).get("firefox", fleet.key)
            assert now is not None and now != bad  # republished over the refused entry
            other = EngineCache(tmp_path / "container-d" / "engine-cache")
            assert other.fetch(store.blobs, "firefox", fleet.key, _index(store)) is True


# ------------------------------------------------------------------------- without a browser


def _fabricated(tmp_path: Path) -> tuple[EngineCache, str, Path]:
    """A machine's engine cache holding a fabricated Firefox build (key), and its browser."""
    exe = fake_firefox(tmp_path / "ff")
    cache = EngineCache(tmp_path / "donor-cache")
    key = cache.build_key("firefox", "153.7.0", exe)
    assert cache.refresh("firefox", key, firefox_profile(tmp_path / "donor-work"))
    return cache, key, exe


def test_a_hostile_published_blob_is_refused(shared_store: ProfileStore, tmp_path: Path) -> None:
    cache, key, _exe = _fabricated(tmp_path)
    build = cache.root / "firefox" / key
    (build / "startupCache" / "cookies.sqlite").write_bytes(SECRET)  # not in the manifest
    buf = io.BytesIO()
    pack_dir(build, buf, engine="firefox", apply_excludes=False)
    checksum = hashlib.sha256(buf.getvalue()).hexdigest()
    shared_store.blobs.put(checksum, io.BytesIO(buf.getvalue()), size=len(buf.getvalue()))
    _index(shared_store).put("firefox", key, checksum)
    fresh = EngineCache(tmp_path / "fresh" / "engine-cache")
    outcome = fetch_shared(fresh, shared_store.catalog, shared_store.blobs, "firefox", key)
    assert outcome.fetched is False and outcome.refused == checksum
    assert not fresh.has("firefox", key)
    assert SECRET not in b"".join(p.read_bytes() for p in fresh.root.rglob("*") if p.is_file())


def test_fetch_and_publish_never_raise_on_a_broken_backend(
    shared_store: ProfileStore, tmp_path: Path
) -> None:
    cache, key, _exe = _fabricated(tmp_path)
    fresh = EngineCache(tmp_path / "fresh" / "engine-cache")
    catalog, blobs = shared_store.catalog, shared_store.blobs
    _index(shared_store).put("firefox", key, "0" * 64)  # names a blob that is not there
    assert fetch_shared(fresh, catalog, blobs, "firefox", key).refused == "0" * 64
    catalog.close()  # every catalog call now fails
    assert fetch_shared(fresh, catalog, blobs, "firefox", key).fetched is False
    assert publish_shared(cache, catalog, blobs, "firefox", key) is None
    assert not fresh.has("firefox", key)


def _lifecycle(store: ProfileStore, tmp_path: Path, exe: Path, name: str) -> SessionLifecycle:
    """A session's lifecycle on a fabricated Firefox (no browser is launched)."""
    life = SessionLifecycle(name, store, SessionOptions.build())
    life.browser = BrowserInstall(engine="firefox", source="env", executable_path=str(exe))
    return life


@pytest.mark.parametrize(
    ("sharing", "fetches", "publishes"),
    [("on", True, True), ("fetch", True, False), ("off", False, False), ("bogus", True, False)],
)
def test_sessions_fetch_and_publish_as_the_machine_chose(
    shared_store: ProfileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sharing: str,
    fetches: bool,
    publishes: bool,
) -> None:
    monkeypatch.setenv(SHARING_ENV, sharing)
    donor, key, exe = _fabricated(tmp_path)
    published = donor.publish(shared_store.blobs, "firefox", key, _index(shared_store))
    assert published is not None
    profile = shared_store.create("p", archetype=ARCHETYPE)

    # before launch: a cold working copy on a machine without the build
    life = _lifecycle(shared_store, tmp_path, exe, "p")
    work = tmp_path / "work-1"
    work.mkdir()
    life.user_data_dir = work
    life._seed_engine_cache(profile, "153.7.0")
    assert shared_store.home.joinpath("engine-cache", "firefox", key).is_dir() is fetches
    assert (work / "startupCache" / "scriptCache.bin").is_file() is fetches

    # after a clean session on a machine that stored a build the fleet lacks
    other_key = EngineCache(tmp_path / "x").build_key(
        "firefox", "153.7.0", fake_firefox(tmp_path / "ff-2", build_id="2")
    )
    life = _lifecycle(shared_store, tmp_path, tmp_path / "ff-2" / "firefox", "p")
    life.profile = profile
    life.user_data_dir = firefox_profile(tmp_path / "work-2", build_id="2")
    life._seed_engine_cache(profile, "153.7.0")  # nothing to fetch: the fleet lacks it
    assert life._engine_key == other_key
    life._refresh_engine_cache()
    assert shared_store.home.joinpath("engine-cache", "firefox", other_key).is_dir()
    recorded = _index(shared_store).get("firefox", other_key)
    assert (recorded is not None) is publishes
    if recorded is not None:
        assert shared_store.blobs.exists(recorded)


def test_no_fetch_or_publish_from_a_store_that_is_not_shared_or_read_only(
    request: pytest.FixtureRequest, tmp_path: Path, home: Path
) -> None:
    _donor, key, exe = _fabricated(tmp_path)
    for store in store_on(request, home, "embedded"):
        _index(store).put("firefox", key, "0" * 64)  # even if an embedded index names one
        profile = store.create("p", archetype=ARCHETYPE)
        life = _lifecycle(store, tmp_path, exe, "p")
        life.profile = profile
        life.user_data_dir = firefox_profile(tmp_path / "work")
        life._seed_engine_cache(profile, "153.7.0")
        assert life._engine_cache_refused is None  # never asked the index
        life._refresh_engine_cache()
        assert store.home.joinpath("engine-cache", "firefox", key).is_dir()  # local only
        assert _index(store).get("firefox", key) == "0" * 64
    for catalog_url, blobs_url in fresh_shared_urls(request):
        with _machine(catalog_url, blobs_url, tmp_path / "ro-home") as store:
            profile = store.create("p", archetype=ARCHETYPE)
            store.read_only = True  # as a store whose home cannot be written
            life = _lifecycle(store, tmp_path, exe, "p")
            life.profile = profile
            life.user_data_dir = firefox_profile(tmp_path / "work-ro")
            life._seed_engine_cache(profile, "153.7.0")
            life._refresh_engine_cache()
            assert not (tmp_path / "ro-home" / "engine-cache").exists()
            assert _index(store).get("firefox", key) is None


# ------------------------------------------------------------------------- garbage collection


def test_garbage_collection_keeps_published_engine_caches(
    local_store: ProfileStore, tmp_path: Path
) -> None:
    cache, key, _exe = _fabricated(tmp_path)
    checksum = publish_shared(cache, local_store.catalog, local_store.blobs, "firefox", key)
    assert checksum is not None
    with local_store.catalog.transaction(write=False) as tx:
        assert tx.engine_cache_checksums() == {checksum}
    orphan = b"bytes nothing references"
    orphan_checksum = hashlib.sha256(orphan).hexdigest()
    local_store.blobs.put(orphan_checksum, io.BytesIO(orphan), size=len(orphan))
    freed = local_store.collect_garbage(min_age=0)
    assert orphan_checksum in freed  # the collector did run
    assert checksum not in freed and local_store.blobs.exists(checksum)
    fresh = EngineCache(tmp_path / "fresh" / "engine-cache")
    assert fetch_shared(fresh, local_store.catalog, local_store.blobs, "firefox", key).fetched
    assert (fresh.root / "firefox" / key / "startupCache" / "scriptCache.bin").read_bytes() == (
        CACHE_FILES["scriptCache.bin"]
    )
