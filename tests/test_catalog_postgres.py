"""What is particular to the PostgreSQL catalog: its location hides the password, connection
faults are StorageUnavailable quickly, concurrent migrations, a server restart mid-way.
(The shared behaviour is in test_catalog_contract.py.)"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support.pg_service import PrivateServer, fresh_database, with_database

from profiles.catalog import SQLiteCatalog
from profiles.catalog.postgres import MIGRATIONS, PostgresCatalog, redact_location
from profiles.errors import StorageUnavailable
from profiles.testing.catalog_contract import make_event, make_profile, make_snapshot

SECRET = "s3cr3t-Pa55word"


@pytest.fixture
def catalog(postgres_database: str) -> Iterator[PostgresCatalog]:
    c = PostgresCatalog(postgres_database, max_size=4)
    try:
        yield c
    finally:
        c.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "location"),
    [
        (
            f"postgresql://alice:{SECRET}@db.example:5433/profiles?sslmode=require",
            "postgresql://alice@db.example:5433/profiles?sslmode=require",
        ),
        (
            f"postgres://alice:{SECRET}@db.example/profiles?password={SECRET}&application_name=x",
            "postgres://alice@db.example/profiles?application_name=x",
        ),
        ("postgresql://alice@db.example/profiles", "postgresql://alice@db.example/profiles"),
        (
            f"host=db.example port=5433 user=alice password={SECRET} dbname=profiles",
            "postgresql://alice@db.example:5433/profiles",
        ),
    ],
)
def test_location_hides_the_password(url: str, location: str) -> None:
    assert redact_location(url) == location
    assert SECRET not in redact_location(url)


def test_location_of_an_open_catalog(
    postgres_database: str,
) -> None:
    catalog = PostgresCatalog(postgres_database)
    try:
        assert catalog.location == redact_location(postgres_database)
        with catalog.transaction() as tx:
            tx.insert_profile(make_profile())
    finally:
        catalog.close()
        catalog.close()  # twice is fine


def test_unreachable_server_is_storage_unavailable_quickly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql://alice:{SECRET}@127.0.0.1:{_closed_port()}/profiles"
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        PostgresCatalog(url, connect_timeout=5)
    assert time.monotonic() - started < 5
    error = info.value
    assert error.home == redact_location(url)
    assert redact_location(url) in error.message
    assert SECRET not in str(error) and SECRET not in repr(error.to_dict())
    assert SECRET not in caplog.text
    assert error.__cause__ is None and error.__suppress_context__  # no psycopg traceback


@pytest.fixture
def password_role(postgres_url: str) -> Iterator[str]:
    """A role that logs in with SECRET (dropped afterwards); its name. A server whose URL
    may not create roles (services.sh's least-privilege role) lends the URL's own role:
    it has a password too, and a wrong one is refused the same way."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper OR rolcreaterole FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
    assert row is not None
    if not row[1]:
        yield str(row[0])
        return
    role = f"profiles_pw_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(SECRET)
            )
        )
    try:
        yield role
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _as_role(url: str, role: str, password: str, dbname: str = "postgres") -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    host = params.get("host") or "127.0.0.1"
    if str(host).startswith("/"):
        host = "127.0.0.1"  # a password is asked on TCP
    port = params.get("port") or 5432
    return f"postgresql://{role}:{password}@{host}:{port}/{dbname}"


def test_wrong_password_is_storage_unavailable_quickly(
    postgres_url: str,
    password_role: str,
) -> None:
    wrong = _as_role(postgres_url, password_role, "not-the-password")
    try:
        with psycopg.connect(wrong, connect_timeout=5):
            pass
    except psycopg.OperationalError:
        pass
    else:
        pytest.skip("this server does not ask this role for a password (trust)")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        PostgresCatalog(wrong, connect_timeout=5)
    assert time.monotonic() - started < 5
    assert "password" in info.value.cause.lower()
    assert "not-the-password" not in str(info.value)
    assert info.value.home == redact_location(wrong)
    assert not info.value.transient  # a refusal, not an outage: nothing waits for it


def test_missing_database_is_storage_unavailable(postgres_url: str) -> None:
    url = with_database(postgres_url, f"missing_{secrets.token_hex(4)}")
    with pytest.raises(StorageUnavailable) as info:
        PostgresCatalog(url, connect_timeout=5)
    assert "does not exist" in info.value.cause
    assert not info.value.transient


def _open_at(url: str, start: Any) -> int:
    """Open (and so migrate) the catalog once every process is at the ``start`` barrier;
    its schema version."""
    start.wait(timeout=60)
    catalog = PostgresCatalog(url, connect_timeout=10)
    catalog.close()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else -1


def test_processes_migrating_a_fresh_database_at_once(postgres_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with fresh_database(postgres_url) as first, fresh_database(postgres_url) as second:
        with context.Manager() as manager, context.Pool(4) as pool:
            start = manager.Barrier(4)  # the four jobs run at once, each in its own worker
            jobs = [pool.apply_async(_open_at, (url, start)) for url in (first, second) * 2]
            versions = [job.get(60) for job in jobs]
        assert versions == [len(MIGRATIONS)] * 4
        catalog = PostgresCatalog(first)
        try:
            with catalog.transaction() as tx:
                tx.insert_profile(make_profile())
                assert tx.count_profiles() == 1
        finally:
            catalog.close()


def test_records_are_the_same_as_sqlite(catalog: PostgresCatalog, tmp_path: Path) -> None:
    """The same records come back, to the serialised byte, from both backends."""
    lite = SQLiteCatalog(tmp_path / "catalog.sqlite3")
    try:
        profile = make_profile(labels={"zeta": "1", "a": "2", "mid": "3"}, description="d")
        snapshot = make_snapshot(profile, checksum="sha-1")
        event = make_event(profile.id)
        results = []
        for backend in (catalog, lite):
            with backend.transaction() as tx:
                tx.insert_profile(profile)
                tx.insert_snapshot(snapshot)
                tx.insert_event(event)
                tx.bump_usage(profile.id, event.at)
            with backend.transaction(write=False) as tx:
                results.append(
                    (
                        tx.get_profile(profile.id),
                        tx.get_snapshot(snapshot.id),
                        tx.list_events(profile_id=profile.id, limit=1, after=None)[0],
                    )
                )
        (pg, sq) = results
        for a, b in zip(pg, sq, strict=True):
            assert a is not None and b is not None
            assert a.model_dump_json() == b.model_dump_json()
            assert a == b
    finally:
        lite.close()


def test_server_restart_mid_transaction(stoppable_postgres: PrivateServer) -> None:
    with fresh_database(stoppable_postgres.url) as url:
        catalog = PostgresCatalog(url, max_size=4)
        try:
            _restart_mid_transaction(catalog, stoppable_postgres)
        finally:
            catalog.close()


def _restart_mid_transaction(catalog: PostgresCatalog, server: PrivateServer) -> None:
    kept = make_profile()
    with catalog.transaction() as tx:
        tx.insert_profile(kept)
    lost = make_profile()
    with pytest.raises(StorageUnavailable) as info, catalog.transaction() as tx:
        tx.insert_profile(lost)
        server.restart()
        tx.bump_usage(kept.id, lost.created_at)
    assert catalog.location in info.value.message
    assert info.value.transient  # the server went away: it may come back
    # The pool recovers: idle connections broken by the restart are replaced on checkout.
    for _ in range(5):
        with catalog.transaction(write=False) as tx:
            assert tx.get_profile(lost.id) is None
            got = tx.get_profile(kept.id)
            assert got is not None and got.usage_count == 0
    with catalog.transaction() as tx:
        tx.bump_usage(kept.id, lost.created_at)
