"""A session whose service goes away before its commit keeps its work as a pending commit
(profiles.workspace.pending): a real ``profiles serve`` stopped mid-session
(tests/support/http_service.py), a real PostgreSQL stopped mid-session
(tests/support/pg_service.py), real Chromium.

The pending commit lands with ``profiles sync`` or at the next session on the profile when
the profile is still at the state the session started from; otherwise it is a conflict that
``profiles ps`` lists and ``profiles sync --force`` / ``--discard`` resolves.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from support.http_service import HttpServer
from support.pg_service import PrivateServer, fresh_database

from driver import Session
from profiles import PendingConflict, ProfileStore, StateCommitFailed
from profiles.catalog.postgres import PostgresCatalog
from profiles.cli.main import main

from conftest import require_engine


@pytest.fixture
def server(own_profile_server: HttpServer) -> HttpServer:
    """A profile server for this test alone: the tests stop it mid-session."""
    return own_profile_server


def _http_store(server: HttpServer, home: Path) -> ProfileStore:
    return ProfileStore(home, service=f"{server.url}/v1", api_key=server.api_key)


def _write(store: ProfileStore, url: str, value: str, **options: Any) -> None:
    """A session that sets localStorage 'v' and a cookie, and ends normally."""
    with Session(profile="work", store=store, **options) as page:
        page.goto(url)
        _set(page, value)


def _set(page: Any, value: str) -> None:
    page.evaluate(f"() => localStorage.setItem('v', {json.dumps(value)})")
    page.context.add_cookies([{"name": "v", "value": value, "url": page.url, "expires": 2e9}])


def _read(store: ProfileStore, url: str) -> tuple[str | None, str | None]:
    """localStorage 'v' and cookie 'v' as the committed state has them (read-only)."""
    with Session(profile="work", store=store, readonly=True, create=False) as page:
        page.goto(url)
        stored = page.evaluate("() => localStorage.getItem('v')")
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    return stored, cookies.get("v")


def _left_pending(store: ProfileStore, url: str, value: str, stop: Any) -> StateCommitFailed:
    """A session that writes ``value``, then loses its service (``stop()``) before its end."""
    with (
        pytest.raises(StateCommitFailed) as info,
        Session(profile="work", store=store, create=False) as page,
    ):
        page.goto(url)
        _set(page, value)
        stop()
    return info.value


def _cli(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_session_whose_service_stopped_keeps_its_work_and_sync_lands_it(
    server: HttpServer,
    http_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_engine("chromium")
    url = f"{http_server}/index.html"
    home = tmp_path / "machine-a"
    with _http_store(server, home) as store:
        _write(store, url, "first")
        error = _left_pending(store, url, "second", server.stop)
    # The real cause and what happens next; not the disk advice of a local fault.
    assert server.url in error.message and "unreachable" in error.message
    assert "free space" not in error.message and "profiles sync work" in error.message
    assert error.details["pending"] is True
    kept = Path(error.details["state_dir"])
    assert kept.is_dir() and kept.is_relative_to(home / "pending")
    assert (kept.parent.stat().st_mode & 0o077) == 0

    monkeypatch.setenv("PROFILES_URL", f"{server.url}/v1")
    monkeypatch.setenv("PROFILES_API_KEY", server.api_key)
    server.start()
    code, out, err = _cli(capsys, home, "ps", "--json")
    assert code == 0, err
    [row] = json.loads(out)["pending"]
    assert row["profile_name"] == "work" and row["status"] == "waiting"
    code, out, err = _cli(capsys, home, "sync")
    assert code == 0, err
    assert out.startswith("landed work")
    code, out, err = _cli(capsys, home, "ps", "--json")
    assert json.loads(out)["pending"] == []
    # Another machine sees what the interrupted session wrote.
    with _http_store(server, tmp_path / "machine-b") as other:
        assert _read(other, url) == ("second", "second")
        events = other.audit(profile="work", limit=50).data
        assert any(
            e.type == "state.uploaded" and e.payload.get("source") == "pending" for e in events
        )


def test_the_next_session_lands_a_pending_commit_first(
    server: HttpServer, http_server: str, tmp_path: Path
) -> None:
    require_engine("chromium")
    url = f"{http_server}/index.html"
    home = tmp_path / "machine-a"
    with _http_store(server, home) as store:
        _write(store, url, "first")
        _left_pending(store, url, "second", server.stop)
        server.start()
        with Session(profile="work", store=store, create=False) as page:
            page.goto(url)
            assert page.evaluate("() => localStorage.getItem('v')") == "second"
        assert store.pending_commits() == []
    with _http_store(server, tmp_path / "machine-b") as other:
        assert _read(other, url) == ("second", "second")


def test_a_conflict_is_listed_refused_and_resolved_by_discard_and_by_force(
    server: HttpServer,
    http_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_engine("chromium")
    url = f"{http_server}/index.html"
    home_a, home_b = tmp_path / "machine-a", tmp_path / "machine-b"
    monkeypatch.setenv("PROFILES_URL", f"{server.url}/v1")
    monkeypatch.setenv("PROFILES_API_KEY", server.api_key)
    with _http_store(server, home_a) as a, _http_store(server, home_b) as b:
        _write(a, url, "first")
        for resolve, expected in (("--discard", "from-b-1"), ("--force", "from-a-2")):
            _left_pending(a, url, f"from-a-{1 if resolve == '--discard' else 2}", server.stop)
            server.start()
            # Another writer commits meanwhile: the pending commit no longer fits.
            _write(b, url, f"from-b-{1 if resolve == '--discard' else 2}", create=False)

            code, out, err = _cli(capsys, home_a, "ps", "--json")
            assert code == 0, err
            [row] = json.loads(out)["pending"]
            assert row["status"] == "conflict"
            code, out, err = _cli(capsys, home_a, "ps")
            assert "conflict" in out and "--force" in err
            # Neither sync nor a session goes over the newer state by itself.
            code, out, err = _cli(capsys, home_a, "sync")
            assert code == 4 and "conflict work" in out
            with pytest.raises(PendingConflict, match="profiles sync work --force"):
                Session(profile="work", store=a, create=False).__enter__()
            assert len(a.pending_commits()) == 1

            code, out, err = _cli(capsys, home_a, "sync", "work", resolve)
            assert code == 0, err
            assert a.pending_commits() == []
            assert _read(b, url) == (expected, expected)
        assert not (home_a / "pending" / a.get("work").id).exists()


def test_the_shared_backend_keeps_the_work_while_postgresql_is_down(
    stoppable_postgres: PrivateServer,
    s3_bucket: str,
    s3_env: Any,
    http_server: str,
    tmp_path: Path,
) -> None:
    require_engine("chromium")
    url = f"{http_server}/index.html"
    with fresh_database(stoppable_postgres.url) as catalog_url:
        catalog = PostgresCatalog(catalog_url, connect_timeout=2)
        blobs = f"s3://{s3_bucket}/pending-{tmp_path.name}"
        with ProfileStore(tmp_path / "machine", catalog=catalog, blobs=blobs) as store:
            _write(store, url, "first")
            server = stoppable_postgres
            with contextlib.ExitStack() as stack:  # stopped mid-session, started at the end
                error = _left_pending(
                    store, url, "second", lambda: stack.enter_context(server.down())
                )
                assert "unreachable" in error.message and "free space" not in error.message
                assert catalog.location in error.message
                assert error.details["pending"] is True
                [row] = store.pending_commits()
                assert row.status == "unknown"
        # PostgreSQL is back: 'profiles sync' (a new process: a new store) lands it.
        with ProfileStore(tmp_path / "machine", catalog=catalog_url, blobs=blobs) as store:
            [(info, outcome)] = store.sync_pending()
            assert outcome == "landed" and info.profile_name == "work"
            assert store.pending_commits() == []
            assert _read(store, url) == ("second", "second")
