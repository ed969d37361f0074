"""Sessions through ``profiles serve`` with the server's default settings (issue 18): what a
session costs of the rate-limit budget, many sessions from one address, and read keys.

The budget is read from the server's side: every counted answer carries
``RateLimit-Remaining``, so a request before and one after a session tell what it cost.
The account is of tier ``team``, the one ``profiles accounts create`` gives by default.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.http_service import HttpServer, start_http_server

from driver import Session
from profiles import ProfileStore
from profiles.http.client import Forbidden

from conftest import require_engine


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    with start_http_server(tmp_path / "server-home", tier="team", default_limits=True) as s:
        yield s


def _remaining(server: HttpServer, key: str) -> int:
    r = httpx.get(f"{server.url}/v1/profiles", headers=server.headers(key), timeout=30)
    assert r.status_code == 200, r.text
    return int(r.headers["RateLimit-Remaining"])


def _store(server: HttpServer, home: Path, key: str | None = None) -> ProfileStore:
    return ProfileStore(home, service=f"{server.url}/v1", api_key=key or server.api_key)


def test_what_a_session_costs_of_the_budget(server: HttpServer, tmp_path: Path) -> None:
    require_engine("chromium")
    with _store(server, tmp_path / "w") as store:
        with Session(profile="cost", store=store):
            pass  # creates the profile
        before = _remaining(server, server.api_key)
        with Session(profile="cost", store=store):
            pass
        writer = before - _remaining(server, server.api_key) - 1
        before = _remaining(server, server.api_key)
        with Session(profile="cost", store=store, readonly=True):
            pass
        reader = before - _remaining(server, server.api_key) - 1
    # a writer: resolve, lease (with the record), use, commit (with release and end);
    # a reader: resolve, use, end. Lease renewals are not counted.
    assert writer <= 4, writer
    assert reader <= 3, reader


def test_thirty_sessions_in_a_row_from_one_address(server: HttpServer, tmp_path: Path) -> None:
    require_engine("chromium")
    with _store(server, tmp_path / "w") as store:
        for _ in range(30):
            with Session(profile="busy", store=store):
                pass
        assert store.get("busy").usage_count == 30


def test_two_workers_doing_fifteen_sessions_each_side_by_side(
    server: HttpServer, tmp_path: Path
) -> None:
    require_engine("chromium")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with _store(server, tmp_path / f"worker{n}") as store:
                for _ in range(15):
                    with Session(profile=f"worker-{n}", store=store):
                        pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with _store(server, tmp_path / "check") as store:
        assert [store.get(f"worker-{n}").usage_count for n in range(2)] == [15, 15]


def test_a_read_key_runs_a_readonly_session(server: HttpServer, tmp_path: Path) -> None:
    require_engine("chromium")
    with _store(server, tmp_path / "admin") as admin:
        with Session(profile="shared", store=admin):
            pass
        used = admin.get("shared").usage_count
    with _store(server, tmp_path / "reader", server.read_key) as reader:
        with Session(profile="shared", store=reader, readonly=True) as page:
            assert page.evaluate("1 + 1") == 2
        after = reader.get("shared")
        assert after.usage_count == used + 1
        events = reader.audit(profile="shared", limit=2).data
        assert [e.type for e in events] == ["session.ended", "session.created"]
        assert all(e.payload.get("readonly") is True for e in events)


@pytest.mark.parametrize("profile", ["shared", "missing"])
def test_a_read_key_asking_for_a_writer_session_fails_before_the_browser_starts(
    server: HttpServer, tmp_path: Path, profile: str
) -> None:
    require_engine("chromium")
    with _store(server, tmp_path / "admin") as admin:
        admin.create("shared")
    with _store(server, tmp_path / "reader", server.read_key) as reader:
        # An executable that cannot run: had a launch been tried, it would fail with a
        # Playwright error, not with the key's missing permission.
        session = Session(
            profile=profile, store=reader, launch_options={"executable_path": "/bin/false"}
        )
        with pytest.raises(Forbidden, match="admin"), session:
            pass
        assert reader.holder("shared") is None  # nothing was left held
        assert [e.type for e in reader.audit(profile="shared", limit=5).data] == ["profile.created"]
