"""The profile service over HTTP (profiles.http.client.HttpService) against a real server
(``profiles serve`` on loopback, tests/support/http_service.py): errors come back as the classes the
local store raises, state streams both ways, leases fence commits, sessions and fleets of
worker processes run through it, a server that is gone is StorageUnavailable, and the API
key never reaches a log or a message."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fleet import read_counter, start_worker
from support.http_service import HttpServer, free_port, start_http_server
from support.waiting import wait_until

from driver import Session
from profiles import (
    ArchiveInvalid,
    BrowserDowngrade,
    BrowserNotFound,
    ChecksumMismatch,
    Conflict,
    LeaseLost,
    NoStateData,
    NotFound,
    PendingConflict,
    ProfileBusy,
    ProfileError,
    ProfileStore,
    StateCommitFailed,
    StorageUnavailable,
    TierLimit,
    ValidationFailed,
)
from profiles.catalog.base import StateUpdate
from profiles.http.client import (
    Forbidden,
    HttpService,
    RateLimited,
    Unauthorized,
    error_from_body,
)
from profiles.models import Holder, Profile, utcnow
from profiles.state.archive import unpack_archive

from conftest import require_engine


def _chromium_dir(root: Path, marker: str = "1", payload: bytes = b"") -> Path:
    """A directory laid out as a Chromium user-data-dir (its files, written as data)."""
    (root / "Default").mkdir(parents=True)
    (root / "Local State").write_text(json.dumps({"marker": marker}))
    (root / "Last Version").write_text("156.0.0.0")
    (root / "Default" / "Preferences").write_text("{}")
    if payload:
        (root / "Default" / "blob.bin").write_bytes(payload)
    return root


@pytest.fixture
def server(profile_server: HttpServer) -> HttpServer:
    """The session's profile server, through an account of this test's own."""
    return profile_server


@pytest.fixture
def service(server: HttpServer) -> Iterator[HttpService]:
    svc = HttpService(f"{server.url}/v1", api_key=server.api_key)
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def store(server: HttpServer, home: Path) -> Iterator[ProfileStore]:
    with ProfileStore(home, service=f"{server.url}/v1", api_key=server.api_key) as s:
        yield s


@pytest.fixture
def local(tmp_path: Path) -> Iterator[ProfileStore]:
    """An embedded store, to compare errors with."""
    with ProfileStore(tmp_path / "local-home") as s:
        yield s


def _same_error(remote: ProfileError, local: ProfileError) -> None:
    assert type(remote) is type(local)
    assert remote.to_dict() == local.to_dict()
    assert str(remote) == str(local)


def _raised(fn: Any, *args: Any, **kwargs: Any) -> ProfileError:
    with pytest.raises(ProfileError) as err:
        fn(*args, **kwargs)
    return err.value


# ---------------------------------------------------------------------------- wiring


def test_a_url_names_the_service_and_the_home_stays_the_workspace(
    server: HttpServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ProfileStore(f"{server.url}/v1", api_key=server.api_key) as store:
        assert isinstance(store.service, HttpService)
        assert store.home == home  # $PROFILES_HOME (the default home)
        assert store.shared and store.location == f"{server.url}/v1"
        assert store.create("wired").name == "wired"
        assert not (home / "catalog.sqlite3").exists()
        assert not (home / "blobs").exists()
        with pytest.raises(AttributeError):
            _ = store.catalog
    monkeypatch.setenv("PROFILES_URL", f"{server.url}/v1")
    monkeypatch.setenv("PROFILES_API_KEY", server.api_key)
    with ProfileStore() as store:
        assert isinstance(store.service, HttpService)
        assert [p.name for p in store.list().data] == ["wired"]
    monkeypatch.setenv("PROFILES_ACCOUNT", server.account_id)
    with ProfileStore() as store:
        assert store.get("wired").name == "wired"


def test_bad_service_urls_are_refused(home: Path) -> None:
    for url, match in (
        ("http://user:pw@127.0.0.1:1/v1", "credentials"),
        ("http://127.0.0.1:1/v1?key=x", "query"),
    ):
        with pytest.raises(ValidationFailed, match=match) as err:
            ProfileStore(service=url)
        assert "pw" not in str(err.value) and "key=x" not in str(err.value)
    with pytest.raises(ValidationFailed, match="max_profiles"):
        ProfileStore("http://127.0.0.1:1/v1", max_profiles=3)


def test_a_url_without_v1_is_named_as_the_likely_mistake(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="profiles.http.client")
    with ProfileStore(server.url, api_key=server.api_key) as store:
        assert f"use {server.url}/v1" in caplog.text  # said at once
        for call in (store.list, lambda: store.get("p"), lambda: store.create("p")):
            with pytest.raises(NotFound, match="ending in /v1") as err:
                call()
            assert f"({server.url}/v1)?" in err.value.message
            assert err.value.details["resource"] == "route"
    with ProfileStore(f"{server.url}/v1", api_key=server.api_key) as store:
        with pytest.raises(NotFound) as err:  # a missing record is not a missing route
            store.get("missing")
        assert "/v1" not in err.value.message and err.value.details["resource"] == "profile"


# ---------------------------------------------------------------------------- errors


def test_every_error_class_round_trips_through_its_body() -> None:
    """What the server sends for an error (``to_dict``) comes back as the same class with
    the same message and details."""
    samples: list[ProfileError] = [
        ProfileError("plain", extra=1),
        ValidationFailed("bad", field="name"),
        ValidationFailed("bad, no field"),
        ArchiveInvalid("not a tar", field="file"),
        ChecksumMismatch("hash", field="state", expected="a", actual="b"),
        NoStateData("none", field="profile"),
        NotFound("gone", resource="profile", ref="x", suggestions=["y"]),
        Conflict("taken", field="name"),
        ProfileBusy("busy", profile_id="p", holder={"host": "h", "pid": 1}),
        LeaseLost("lost", profile_id="p", epoch=3),
        BrowserDowngrade("newer", profile="p"),
        TierLimit("cap", limit=5, current=5, tier="solo"),
        BrowserNotFound("no chromium", engine="chromium"),
        StorageUnavailable("disk", home="/x", cause="ENOSPC"),
        StateCommitFailed("commit", profile_id="p"),
    ]
    for sample in samples:
        body = json.loads(json.dumps({"error": sample.to_dict()}))
        back = error_from_body(sample.status, body, location="http://h/v1")
        _same_error(back, sample)
        # What the service failed at (5xx, 429) may pass: a session keeps its work for it.
        assert back.transient == (sample.status >= 500), sample.code
    pending = PendingConflict("kept", profile_id="p", state_dir="/h/pending/p/state")
    _same_error(error_from_body(409, {"error": pending.to_dict()}, location="x"), pending)
    assert error_from_body(
        429, {"error": {"code": "RateLimited", "status": 429, "message": "slow down"}}, location="x"
    ).transient
    tier = error_from_body(429, {"error": samples[11].to_dict()}, location="x")
    assert isinstance(tier, TierLimit)
    assert (tier.limit, tier.current, tier.tier, tier.resource) == (5, 5, "solo", "profile")
    stored = error_from_body(503, {"error": samples[13].to_dict()}, location="x")
    assert isinstance(stored, StorageUnavailable)
    assert (stored.home, stored.cause) == ("/x", "ENOSPC")
    # A code this client does not know (a newer server's) keeps its code and status on the
    # class of its status.
    own = error_from_body(
        409, {"error": {"code": "QuotaFrozen", "status": 409, "message": "frozen"}}, location="x"
    )
    assert (type(own), own.code, own.status, own.message) == (
        Conflict,
        "QuotaFrozen",
        409,
        "frozen",
    )
    # Not our shape at all (a proxy's page): by status, naming the service.
    proxy = error_from_body(502, "<html>Bad gateway</html>", location="http://h/v1")
    assert isinstance(proxy, StorageUnavailable) and "http://h/v1" in proxy.message
    assert isinstance(error_from_body(404, None, location="x"), NotFound)


def test_record_errors_match_the_local_store(store: ProfileStore, local: ProfileStore) -> None:
    for s in (store, local):
        s.create("production")
    _same_error(_raised(store.create, "production"), _raised(local.create, "production"))
    remote = _raised(store.get, "prodution")
    _same_error(remote, _raised(local.get, "prodution"))
    assert isinstance(remote, NotFound) and remote.details["suggestions"] == ["production"]
    for bad in ("prof_12345678-1234-1234-1234-123456789abc", "", "a" * 65, "two\nlines"):
        _same_error(_raised(store.create, bad), _raised(local.create, bad))
    _same_error(
        _raised(store.update, "production", archetype="desktop-firefox"),
        _raised(local.update, "production", archetype="desktop-firefox"),
    )
    _same_error(
        _raised(store.create, "x", archetype="nope"), _raised(local.create, "x", archetype="nope")
    )
    _same_error(_raised(store.get_snapshot, "psnap_x"), _raised(local.get_snapshot, "psnap_x"))
    _same_error(_raised(store.list, limit=0), _raised(local.list, limit=0))
    store.delete("production")
    local.delete("production")
    _same_error(_raised(store.delete, "production"), _raised(local.delete, "production"))


def test_tier_limit_comes_back_with_its_fields(tmp_path: Path, home: Path) -> None:
    with (
        start_http_server(tmp_path / "capped", tier="solo", profile_cap=1) as server,
        ProfileStore(home, service=f"{server.url}/v1", api_key=server.api_key) as store,
    ):
        store.create("one")
        err = _raised(store.create, "two")
        assert isinstance(err, TierLimit) and err.status == 429
        assert (err.limit, err.current, err.resource) == (1, 1, "profile")
        assert err.details["limit"] == 1 and err.details["current"] == 1
        assert isinstance(err.tier, str) and err.tier


def test_missing_invalid_and_read_only_keys(server: HttpServer) -> None:
    base = f"{server.url}/v1"
    cases: list[tuple[str | None, type[ProfileError], int, str]] = [
        (None, Unauthorized, 401, "API key required"),
        ("pk_0123456789abcdef_" + "A" * 43, Unauthorized, 401, "Invalid or revoked API key"),
    ]
    for key, cls, status, message in cases:
        svc = HttpService(base, api_key=key)
        try:
            err = _raised(svc.list)
        finally:
            svc.close()
        assert type(err) is cls and err.status == status and err.code == cls.code
        assert message in err.message
    reader = HttpService(base, api_key=server.read_key)
    try:
        assert reader.list().data == []
        err = _raised(reader.create, "nope")
        assert type(err) is Forbidden and err.status == 403
        assert "API key missing required permission" in err.message
    finally:
        reader.close()


def test_lease_errors_and_fencing_over_http(store: ProfileStore, tmp_path: Path) -> None:
    store.create("fenced")
    first = store.lock("fenced", timeout=1)
    first.acquire()
    try:
        assert first.epoch is not None
        holder = store.holder("fenced")
        assert holder is not None and holder.pid == os.getpid()
        assert [pid for pid, _ in store.service.leases()] == [store.get("fenced").id]
        # A second writer (another machine: its own home) waits, then ProfileBusy.
        with ProfileStore(
            tmp_path / "other-machine",
            service=store.service.location,
            api_key=_key(store),
        ) as other:
            started = time.monotonic()
            err = _raised(other.lock("fenced", timeout=0.5).acquire)
            assert isinstance(err, ProfileBusy) and time.monotonic() - started >= 0.5
            assert err.details["holder"]["pid"] == os.getpid()
        stale = first.epoch
    finally:
        first.release()
    assert store.holder("fenced") is None
    second = store.lock("fenced")
    second.acquire()
    try:
        assert second.epoch is not None and second.epoch > stale
        err = _raised(store.commit_state, "fenced", _chromium_dir(tmp_path / "late"), epoch=stale)
        assert isinstance(err, LeaseLost) and err.status == 409
        committed = store.commit_state(
            "fenced", _chromium_dir(tmp_path / "current"), epoch=second.epoch
        )
        assert committed.status == "ready"
    finally:
        second.release()
    with pytest.raises(ProfileError, match="not available over HTTP"):
        store.service.acquire_lease(committed.id, holder, ttl=None, force=True)


def test_another_key_cannot_use_a_lease_it_was_not_granted(
    server: HttpServer, service: HttpService, tmp_path: Path
) -> None:
    """HttpService keeps the token of each lease it was granted and sends it with the
    lease's epoch; another key of the same account, with the epoch alone, can neither
    commit, renew, release nor end the session under it (``LeaseLost`` naming no current
    epoch, ``renewed`` False, a release that changes nothing). The holder still can."""
    from profiles.http.server.accounts import SQLiteAccountsDB

    with SQLiteAccountsDB(server.home / "accounts.sqlite3") as db:
        _, key_b = db.create_key(server.account_id, scopes=("read", "admin"), name="b")
    profile = service.create("guarded")
    me = Holder(kind="session", host="host-a", pid=os.getpid(), since=utcnow())
    grant = service.acquire_lease(profile.id, me, ttl=30.0)
    assert grant is not None
    archive = _archive(tmp_path, "guarded")
    state = StateUpdate(
        checksum=hashlib.sha256(archive.read_bytes()).hexdigest(),
        blob_size=archive.stat().st_size,
        uploaded_at=utcnow(),
        browser_version=None,
        cookie_domains=[],
    )
    other = HttpService(f"{server.url}/v1", api_key=key_b)
    try:
        err = _raised(
            other.commit_archive,
            profile,
            archive,
            state,
            epoch=grant.epoch,
            event="state.uploaded",
            end_session={"reason": "intruder"},
        )
        assert isinstance(err, LeaseLost) and err.status == 409
        assert "current_epoch" not in err.details
        assert other.renew_lease(profile.id, grant.epoch, ttl=30.0) is False
        other.release_lease(profile.id, grant.epoch)
        err = _raised(other.end_session, profile.id, grant.epoch, reason="intruder")
        assert isinstance(err, LeaseLost)
    finally:
        other.close()
    held = service.lease_holder(profile.id)
    assert held is not None and held.host == "host-a"
    assert service.get(profile.id).status == "empty"
    assert service.renew_lease(profile.id, grant.epoch, ttl=30.0) is True
    done = service.commit_archive(
        profile,
        archive,
        state,
        epoch=grant.epoch,
        event="session.ended",
        end_session={"reason": "holder"},
    )
    assert done.status == "ready" and service.lease_holder(profile.id) is None
    # Released with the commit: the token is forgotten, the epoch is worth nothing now.
    assert service.renew_lease(profile.id, grant.epoch, ttl=30.0) is False
    assert not service._lease_tokens


def test_a_wait_is_said_as_the_caller_set_it(store: ProfileStore, tmp_path: Path) -> None:
    """A lease wait over HTTP runs on what the machine lock left of the timeout: the
    message says the timeout (``1.5 s``), not what was left of it (``1.49873 s``)."""
    store.create("waits")
    first = store.lock("waits")
    first.acquire()
    try:
        with ProfileStore(
            tmp_path / "other-machine", service=store.service.location, api_key=_key(store)
        ) as other:
            err = _raised(other.lock("waits", timeout=1.5).acquire)
            assert isinstance(err, ProfileBusy)
            assert "; waited 1.5 s." in err.message, err.message
    finally:
        first.release()
    from profiles.workspace.locks import seconds_text

    assert [seconds_text(x) for x in (0.25, 1.49873, 9.96, 42.4, 299.997, 5400)] == [
        "0.2 s",
        "1.5 s",
        "10 s",
        "42 s",
        "5 min",
        "1.5 h",
    ]


def test_a_lease_is_renewed_by_the_heartbeat_and_expires_without_it(
    server: HttpServer, home: Path, tmp_path: Path
) -> None:
    base = f"{server.url}/v1"
    with ProfileStore(home, service=base, api_key=server.api_key, lease_ttl=0.6) as store:
        profile = store.create("beating")
        lease = store.lock("beating")
        lease.acquire()
        try:
            time.sleep(2.0)  # three lease lifetimes: only the heartbeat keeps it
            assert not lease.lost
            with ProfileStore(
                tmp_path / "other", service=base, api_key=server.api_key, lease_ttl=0.6
            ) as other:
                with pytest.raises(ProfileBusy):
                    other.lock("beating", timeout=0.3).acquire()
                # A holder that stops renewing (a dead machine) loses it within its ttl.
                lease.pause_heartbeat()
                taken = other.lock("beating", timeout=5)  # waits for it to expire
                taken.acquire()
                taken.release()
            assert lease.epoch is not None
            assert store.service.renew_lease(profile.id, lease.epoch, ttl=0.6) is False
        finally:
            lease.release()


def _key(store: ProfileStore) -> str:
    service = store.service
    assert isinstance(service, HttpService)
    header = service._client.headers["Authorization"]
    return header.removeprefix("Bearer ")


# ---------------------------------------------------------------------------- state


def _archive(tmp_path: Path, name: str, payload: bytes = b"", codec: str = "zstd") -> Path:
    """A state archive of a Chromium-shaped directory, exported by an embedded store."""
    out = tmp_path / f"{name}.tar.{'zst' if codec == 'zstd' else 'gz'}"
    with ProfileStore(tmp_path / f"{name}-home") as source:
        source.create(name)
        source.commit_state(name, _chromium_dir(tmp_path / f"{name}-src", payload=payload))
        source.export_state(name, out, codec=codec)  # type: ignore[arg-type]
    return out


def test_state_streams_both_ways_with_progress_and_checks(
    store: ProfileStore, service: HttpService, tmp_path: Path
) -> None:
    store.create("big")
    payload = os.urandom(3 * 1024 * 1024)  # incompressible: several chunks each way
    source = _chromium_dir(tmp_path / "src", payload=payload)
    committed = store.commit_state("big", source)
    assert committed.status == "ready" and committed.checksum and committed.blob_size

    seen: list[int] = []
    with service.open_state(committed, progress=seen.append) as stream:
        assert stream.readable() and not stream.seekable()
        unpack_archive(stream, tmp_path / "read")
    assert (tmp_path / "read" / "Default" / "blob.bin").read_bytes() == payload
    assert len(seen) >= 3 and seen == sorted(seen)  # streamed in chunks, not at once

    # Through the store: export (converted on the fly) and a checkout on another machine.
    out = tmp_path / "out.tar.gz"
    store.export_state("big", out, codec="gzip")
    unpack_archive(out, tmp_path / "exported")
    assert (tmp_path / "exported" / "Default" / "blob.bin").read_bytes() == payload
    with ProfileStore(
        tmp_path / "machine-2", service=service.location, api_key=_key(store)
    ) as other:
        with other.lock("big") as lease:
            _, work = other.checkout("big", lock=lease)
        assert (work / "Default" / "blob.bin").read_bytes() == payload

    # A record naming another state than the server holds (it changed meanwhile): refused.
    stale = committed.model_copy(update={"checksum": "0" * 64})
    with pytest.raises(ChecksumMismatch, match="changed meanwhile"):
        service.open_state(stale)
    with pytest.raises(NoStateData):
        service.open_state(committed.model_copy(update={"checksum": None}))


def test_commit_archive_sends_the_spool_as_a_stream_and_checks_it(
    store: ProfileStore, tmp_path: Path
) -> None:
    # The service that took the lease (it keeps the lease's token) commits under it.
    service = store.service
    assert isinstance(service, HttpService)
    profile = store.create("spooled")
    archive = _archive(tmp_path, "spooled", payload=os.urandom(2_500_000))
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    def update(checksum: str) -> StateUpdate:
        return StateUpdate(
            checksum=checksum,
            blob_size=archive.stat().st_size,
            uploaded_at=utcnow(),
            browser_version="157.0.1.2",
            cookie_domains=[],
        )

    sent: list[int] = []
    with store.lock("spooled") as lease:
        # Bytes that do not hash to the announced checksum: refused, nothing kept.
        err = _raised(
            service.commit_archive,
            profile,
            archive,
            update("f" * 64),
            epoch=lease.epoch,
            event="state.uploaded",
        )
        assert isinstance(err, ChecksumMismatch) and err.status == 400
        assert store.get("spooled").status == "empty"
        updated = service.commit_archive(
            profile,
            archive,
            update(digest),
            epoch=lease.epoch,
            event="state.uploaded",
            progress=sent.append,
            source="test",
        )
    assert updated.status == "ready" and updated.browser_version == "157.0.1.2"
    assert len(sent) >= 3 and sent[-1] == archive.stat().st_size  # 1 MiB blocks
    assert store.audit(profile="spooled", limit=1).data[0].type == "state.uploaded"


def test_import_goes_through_the_servers_upload(store: ProfileStore, tmp_path: Path) -> None:
    store.create("imported")
    archive = _archive(tmp_path, "src", codec="gzip")
    seen: list[int] = []
    profile = store.import_state("imported", archive, progress=seen.append)
    assert profile.status == "ready" and profile.checksum
    assert seen and seen[-1] == archive.stat().st_size
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not an archive at all")
    err = _raised(store.import_state, "imported", bad)
    assert isinstance(err, ArchiveInvalid) and err.status == 400
    assert store.get("imported").checksum == profile.checksum


# ---------------------------------------------------------------------------- faults


def test_a_refused_connection_is_storage_unavailable_naming_the_url_not_the_key(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}/v1"
    secret = "pk_0123456789abcdef_" + "S" * 43
    started = time.monotonic()
    with ProfileStore(home, service=url, api_key=secret) as store:
        err = _raised(store.get, "anything")
        assert isinstance(err, StorageUnavailable) and err.status == 503
        assert url in err.message and err.home == url
        assert time.monotonic() - started >= 0.2 + 0.4 + 0.8  # GET: retried with backoff
        started = time.monotonic()
        assert isinstance(_raised(store.create, "x"), StorageUnavailable)
        assert time.monotonic() - started < 0.5  # POST: sent once
        for text in (err.message, repr(err.to_dict()), repr(store), repr(store.service)):
            assert secret not in text
    assert secret not in caplog.text


def test_a_server_back_within_the_retries_serves_the_request(
    own_profile_server: HttpServer, home: Path
) -> None:
    server = own_profile_server  # stopped and started again
    url = f"{server.url}/v1"
    with ProfileStore(home, service=url, api_key=server.api_key) as store:
        store.create("survivor")
    server.stop()
    # Down now; the same server comes back on the same port while the client retries
    # (8 attempts: about 12 s of backoff).
    svc = HttpService(url, api_key=server.api_key, attempts=8)
    reviver = threading.Timer(0.5, server.start)  # the same command: same port, same home
    reviver.start()
    try:
        assert svc.get("survivor").name == "survivor"
    finally:
        reviver.join()
        svc.close()


def test_rate_limits_are_waited_out_for_reads_and_raised_for_writes(
    tmp_path: Path,
) -> None:
    limited = ["--tier-rate-limit", "enterprise=3/2"]
    with start_http_server(tmp_path / "limited", extra_args=limited) as server:
        svc = HttpService(f"{server.url}/v1", api_key=server.api_key, max_retry_after=10)
        try:
            for _ in range(6):  # past the limit: each GET waits for Retry-After, then passes
                svc.list()
            while True:  # spend the window, then a write is refused with the wait
                try:
                    svc.create(f"p{time.monotonic_ns()}")
                except RateLimited as err:
                    assert err.status == 429 and err.code == "RateLimited"
                    wait = err.details["retry_after"]
                    assert 0 <= float(wait) <= 2
                    assert f"in {wait:.0f} s" in str(err)  # the message says how long
                    break
        finally:
            svc.close()


def test_a_rate_limited_read_does_not_wait_past_the_callers_deadline(tmp_path: Path) -> None:
    limited = ["--tier-rate-limit", "enterprise=2/30"]
    with start_http_server(tmp_path / "limited", extra_args=limited) as server:
        svc = HttpService(f"{server.url}/v1", api_key=server.api_key, max_retry_after=60)
        try:
            svc.list()
            svc.list()
            started = time.monotonic()
            with HttpService.deadline(5), pytest.raises(RateLimited) as caught:
                svc.list()  # the wait (about 30 s) does not fit: raised at once
            assert time.monotonic() - started < 25
            wait = caught.value.details["retry_after"]
            assert 20 <= wait <= 30 and f"in {wait:.0f} s" in str(caught.value)
        finally:
            svc.close()


def test_no_key_in_logs_at_debug(
    store: ProfileStore, server: HttpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store.create("logged")
    store.commit_state("logged", _chromium_dir(tmp_path / "src"))
    store.export_state("logged", tmp_path / "x.tar.gz")
    with store.lock("logged"):
        pass
    _raised(store.get, "missing")
    _raised(store.create, "logged")
    assert caplog.records  # httpx and httpcore did log the requests
    assert server.api_key not in caplog.text
    secret = server.api_key.split("_", 2)[2]  # pk_<id>_<secret>; the secret may hold "_"
    assert len(secret) == 43
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in repr(record.args)


# ---------------------------------------------------------------------------- browsers


def test_a_session_commits_and_reopens_through_http(
    server: HttpServer, http_server: str, home: Path
) -> None:
    require_engine("chromium")
    with ProfileStore(f"{server.url}/v1", api_key=server.api_key) as store:
        with Session(profile="remote", store=store) as page:
            page.goto(f"{http_server}/set-cookie")
        committed = store.get("remote")
        assert committed.status == "ready" and committed.usage_count == 1
        assert "127.0.0.1" in committed.cookie_domains
    # Another machine (a fresh home): the state comes from the server.
    with ProfileStore(
        home.parent / "machine-2", service=f"{server.url}/v1", api_key=server.api_key
    ) as store:
        with Session(profile="remote", store=store, create=False) as page:
            page.goto(f"{http_server}/index.html")
            names = {c["name"] for c in page.context.cookies()}
        assert {"persistent", "sessiononly"} <= names
        types = [e.type for e in store.audit(profile="remote", limit=20).data]
        assert types.count("session.created") == 2 and types.count("session.ended") == 2


def _worker(home: Path, server: HttpServer, url: str, *, rounds: int) -> subprocess.Popen[str]:
    options = {"service": f"{server.url}/v1", "api_key": server.api_key}
    return start_worker(home, options, url, rounds=rounds)


def _counter(server: HttpServer, home: Path, url: str) -> int:
    with ProfileStore(home, service=f"{server.url}/v1", api_key=server.api_key) as store:
        return read_counter(store, url)


def test_two_machines_count_every_session_through_http(
    server: HttpServer, http_server: str, tmp_path: Path
) -> None:
    require_engine("chromium")
    url = f"{http_server}/index.html"
    with ProfileStore(
        tmp_path / "setup", service=f"{server.url}/v1", api_key=server.api_key
    ) as store:
        store.create("counter")
    n = 3
    workers = [_worker(tmp_path / f"machine-{i}", server, url, rounds=n) for i in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
        assert out.count("set ") == n
    assert _counter(server, tmp_path / "reader", url) == 2 * n
    with ProfileStore(
        tmp_path / "check", service=f"{server.url}/v1", api_key=server.api_key
    ) as store:
        assert store.get("counter").usage_count >= 2 * n


def test_a_stored_archive_that_does_not_hash_to_its_checksum_is_refused_at_the_end(
    tmp_path: Path,
) -> None:
    """When the body is the stored archive itself (``X-Checksum`` sent), its bytes are
    hashed while read: a body that differs is ChecksumMismatch once it has been read. (A
    plain loopback server stands for a faulty or tampered-with proxy.)"""
    import http.server

    good = b"\x28\xb5\x2f\xfd" + b"stored archive bytes" * 1000
    checksum = hashlib.sha256(good).hexdigest()
    bodies = {"/v1/profiles/prof_ok/state": good, "/v1/profiles/prof_bad/state": good[:-1] + b"!"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies[self.path.split("?")[0]]
            self.send_response(200)
            self.send_header("Content-Type", "application/zstd")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Checksum", checksum)
            self.send_header("X-State-Checksum", checksum)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    svc = HttpService(f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="k")
    try:
        now = utcnow()
        record = Profile(
            id="prof_ok",
            name="p",
            archetype="desktop-chromium",
            browser_name="chromium",
            status="ready",
            checksum=checksum,
            blob_size=len(good),
            created_at=now,
            updated_at=now,
        )
        with svc.open_state(record) as stream:
            assert stream.read() == good
        bad = svc.open_state(record.model_copy(update={"id": "prof_bad"}))
        with bad, pytest.raises(ChecksumMismatch, match="does not match its record"):
            bad.read()
    finally:
        svc.close()
        server.shutdown()
        server.server_close()


def test_the_profiles_command_uses_a_service_named_in_the_environment(
    server: HttpServer, tmp_path: Path
) -> None:
    with ProfileStore(tmp_path / "a", service=f"{server.url}/v1", api_key=server.api_key) as s:
        s.create("remote-one")
    env = {
        **os.environ,
        "PROFILES_URL": f"{server.url}/v1",
        "PROFILES_API_KEY": server.api_key,
        "PROFILES_HOME": str(tmp_path / "fresh-machine"),  # no store here: the service is
    }
    run = subprocess.run(
        [sys.executable, "-m", "profiles", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert [p["name"] for p in json.loads(run.stdout)["data"]] == ["remote-one"]
    assert server.api_key not in run.stdout + run.stderr


def test_bodies_are_the_servers_models_and_refused_as_the_server_refuses(
    server: HttpServer, service: HttpService
) -> None:
    """The client builds its bodies with the server's models (profiles.http.schemas): a
    body the server would refuse is refused before it is sent, with the server's own
    message; the answers are read with the same models."""
    import httpx

    service.create("contract", labels={"team": "qa"})
    bad = {"remove_labels": [7]}
    raw = httpx.patch(
        f"{server.url}/v1/profiles/contract", json=bad, headers=server.headers(), timeout=30
    )
    assert raw.status_code == 400
    patches = _logged(server, "PATCH /v1/profiles/{ref} 400", at_least=1)
    with pytest.raises(ValidationFailed) as caught:
        service.update("contract", remove_labels=bad["remove_labels"])  # type: ignore[list-item]
    assert caught.value.message == raw.json()["error"]["message"]
    assert caught.value.field == raw.json()["error"]["field"] == "remove_labels.0"
    gets = _logged(server, "GET /v1/profiles/{ref} 200", at_least=0)
    service.get("contract")  # logged after the refused update would have been
    _logged(server, "GET /v1/profiles/{ref} 200", at_least=gets + 1)
    assert _logged(server, "PATCH /v1/profiles/{ref} 400", at_least=0) == patches  # not sent
    renewed = httpx.post(
        f"{server.url}/v1/profiles/contract/lease/renew",
        json={"epoch": 1, "ttl": 7200},
        headers=server.headers(),
        timeout=30,
    )
    with pytest.raises(ValidationFailed) as caught:
        service.renew_lease(service.get("contract").id, 1, ttl=7200)
    assert caught.value.message == renewed.json()["error"]["message"]
    assert service.get("contract").labels == {"team": "qa"}  # nothing was changed
    assert service.similar_names("contrac") == ["contract"]


def _logged(server: HttpServer, line: str, *, at_least: int) -> int:
    """How many access-log lines of the server's account hold ``line``, once there are
    ``at_least`` (they are written after the response goes out)."""
    counts: list[int] = []

    def enough() -> bool:
        ours = [x for x in server.log_text().splitlines() if f"account={server.account_id}" in x]
        counts.append(sum(line in x for x in ours))
        return counts[-1] >= at_least

    wait_until(
        enough,
        what=f"{at_least} access-log lines holding {line!r}",
        detail=lambda: server.log_text()[-2000:],
    )
    return counts[-1]
