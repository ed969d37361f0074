"""Replicas of ``profiles serve`` on one shared backend (issue 21, "More than one machine"):
two servers on loopback over one PostgreSQL (each account's catalog in a schema of its own,
the accounts database and the session registry in the public schema) and one S3 server,
sharing the signing secret. A session started on replica A is read, driven over CDP and
stopped through replica B; both list it; another account gets 404 through both; A killed,
B shows A's session failed, and the profile takes a new session once its lease expired.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import sync_playwright
from psycopg import sql
from support.http_service import HttpServer, start_http_server
from support.pg_service import fresh_database
from support.waiting import wait_until
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from driver import Session
from profiles import ProfileStore

from conftest import require_engine

TIMEOUT = 120.0
REPLICA_TIMEOUT = 3.0  # --replica-timeout: a replica silent this long is gone
LEASE_TTL = 5.0  # --session-lease-ttl: a dead replica's profiles are free after this


@contextlib.contextmanager
def _replicas(
    tmp_path: Path, postgres_url: str, bucket: str
) -> Iterator[tuple[HttpServer, HttpServer, str]]:
    """Replicas A and B (ids rep-a and rep-b) on one backend; the accounts database's URL."""
    secret = tmp_path / "server-secret"
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    with fresh_database(postgres_url) as db_url:
        sep = "&" if "?" in db_url else "?"
        catalog = f"{db_url}{sep}options=-csearch_path%3D{{account}}"
        blobs = f"s3://{bucket}/replicas-{uuid.uuid4().hex[:12]}/{{account}}"

        def replica(name: str) -> contextlib.AbstractContextManager[HttpServer]:
            return start_http_server(
                tmp_path / name,
                accounts=db_url,
                extra_args=[
                    *("--catalog", catalog, "--blobs", blobs),
                    *("--secret-file", str(secret), "--replica-id", f"rep-{name}"),
                    *("--replica-timeout", str(REPLICA_TIMEOUT)),
                    *("--session-lease-ttl", str(LEASE_TTL)),
                ],
            )

        with replica("a") as a, replica("b") as b:
            yield a, b, db_url


def _schema_for(db_url: str, account_id: str) -> None:
    """The schema the catalog template puts the account's catalog in."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        name = account_id.replace("-", "_")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))


def _as(server: HttpServer, other: HttpServer) -> HttpServer:
    """``server`` (its URL) through ``other``'s account and keys."""
    return HttpServer(
        url=server.url,
        api_key=other.api_key,
        read_key=other.read_key,
        home=server.home,
        account_id=other.account_id,
        accounts=server.accounts,
    )


def _call(
    server: HttpServer, method: str, path: str, body: Any = None, **headers: str
) -> httpx.Response:
    return httpx.request(
        method,
        f"{server.url}/v1{path}",
        json=body,
        headers=server.headers(**headers),
        timeout=TIMEOUT,
    )


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def _handshake_status(
    url: str, headers: dict[str, str], *, subprotocols: list[str] | None = None
) -> int:
    offered: Any = subprotocols
    try:
        with ws_connect(
            url, additional_headers=headers, subprotocols=offered, open_timeout=30, proxy=None
        ):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


@pytest.fixture
def backend(postgres_url: str, s3_bucket: str, s3_env: object) -> tuple[str, str]:
    return postgres_url, s3_bucket


def test_a_session_runs_on_one_replica_and_is_reached_through_another(
    tmp_path: Path, backend: tuple[str, str], http_server: str
) -> None:
    require_engine("chromium")
    with _replicas(tmp_path, *backend) as (a, b, db_url):
        other = a.with_new_account(name="other")
        for account in (a.account_id, b.account_id, other.account_id):
            _schema_for(db_url, account)
        b_as_a = _as(b, a)  # replica B, through A's account

        # Any replica answers the profile routes: created through B, used on A.
        _ok(_call(b_as_a, "POST", "/profiles", {"name": "shop"}))
        started = time.monotonic()
        record = _ok(
            _call(a, "POST", "/sessions", {"profile_id": "shop", "start_url": http_server})
        )
        print(f"session started on A in {time.monotonic() - started:.2f} s")
        sid = record["id"]
        assert record["status"] == "running" and record["replica"] == "rep-a"

        # Read through B (forwarded to A), listed by both.
        seen = _ok(_call(b_as_a, "GET", f"/sessions/{sid}"))
        assert seen["status"] == "running" and seen["replica"] == "rep-a"
        for server in (a, b_as_a):
            listed = _ok(_call(server, "GET", "/sessions"))["data"]
            assert [s["id"] for s in listed] == [sid], server.url
            assert listed[0]["replica"] == "rep-a"
        # A forwarded request is never forwarded again: B runs nothing of its own.
        r = _call(b_as_a, "GET", f"/sessions/{sid}", **{"X-Profiles-Forwarded": "rep-a"})
        assert r.status_code == 404, r.text

        # Another account: 404 through both replicas, for every route, CDP included.
        b_url_cdp = f"{b.url.replace('http://', 'ws://')}/v1/sessions/{sid}/cdp"
        for server in (a, b):
            theirs = _as(server, other)
            for method, body in (("GET", None), ("PATCH", {"action": "stop"}), ("DELETE", None)):
                r = _call(theirs, method, f"/sessions/{sid}", body)
                assert r.status_code == 404, (server.url, method, r.text)
            assert _ok(_call(theirs, "GET", "/sessions"))["data"] == []
            cdp = f"{server.url.replace('http://', 'ws://')}/v1/sessions/{sid}/cdp"
            assert _handshake_status(cdp, theirs.headers()) == 404
        assert _handshake_status(b_url_cdp, {}) == 401

        # The web page's live view through B: B forwards the ticket request to A (whose
        # browser it reaches), names itself in the ticket's url, and relays the socket to A
        # with the offered subprotocols; A checks the ticket and selects the live protocol.
        ticket = _ok(_call(b_as_a, "POST", f"/sessions/{sid}/live-ticket"))
        b_live = f"{b.url.replace('http://', 'ws://')}/v1/sessions/{sid}/live"
        assert ticket["url"] == b_live
        offered = [ticket["protocol"], f"ticket.{ticket['ticket']}"]
        with ws_connect(b_live, subprotocols=offered, proxy=None) as live:  # type: ignore[arg-type]
            assert live.subprotocol == ticket["protocol"]
            live.send('{"id": 1, "method": "Target.getTargets"}')
            answer = json.loads(live.recv(timeout=30))
            assert answer["id"] == 1 and answer["result"]["targetInfos"]
        # Single use, wherever it is offered.
        assert _handshake_status(b_live, {}, subprotocols=offered) == 401

        # Driven over CDP through B's URL: B relays to A, which relays to the browser.
        with sync_playwright() as p:
            browser = p.chromium.connect_over_cdp(b_url_cdp, headers=a.headers())
            context = browser.contexts[0]
            page = context.pages[0]
            assert page.url.rstrip("/") == http_server
            page.goto(f"{http_server}/set-cookie")
            page.evaluate("""() => {
                document.cookie = "login=alice; Max-Age=86400; Path=/";
                localStorage.setItem("token", "secret-token");
            }""")
            assert _ok(_call(b_as_a, "GET", f"/sessions/{sid}"))["clients"] == 1
            browser.close()

        # Stopped through B: A commits, and B reads the committed state back.
        started = time.monotonic()
        final = _ok(_call(b_as_a, "PATCH", f"/sessions/{sid}", {"action": "stop"}))
        print(f"stopped through B in {time.monotonic() - started:.2f} s")
        assert final["status"] == "stopped" and final["replica"] == "rep-a"
        assert final["outcome"]["committed"] is True, final
        assert _ok(_call(b_as_a, "DELETE", f"/sessions/{sid}")) == final  # stopped: as is
        for server in (a, b_as_a):
            listed = _ok(_call(server, "GET", "/sessions"))["data"]
            assert [(s["id"], s["status"]) for s in listed] == [(sid, "stopped")]
        assert _handshake_status(b_url_cdp, a.headers()) == 409

        store = ProfileStore(tmp_path / "local", service=f"{b.url}/v1", api_key=a.api_key)
        with store, Session(profile="shop", store=store, readonly=True) as local:
            local.goto(f"{http_server}/index.html")
            cookies = {c["name"]: c["value"] for c in local.context.cookies()}
            assert cookies["login"] == "alice" and cookies["persistent"] == "kept"
            assert local.evaluate("localStorage.getItem('token')") == "secret-token"
        assert a.api_key not in a.log_text() + b.log_text()


def test_a_killed_replica_fails_its_sessions_and_frees_its_profiles_after_the_lease(
    tmp_path: Path, backend: tuple[str, str]
) -> None:
    require_engine("chromium")
    with _replicas(tmp_path, *backend) as (a, b, db_url):
        for account in (a.account_id, b.account_id):
            _schema_for(db_url, account)
        b_as_a = _as(b, a)
        _ok(_call(a, "POST", "/profiles", {"name": "kept"}))
        record = _ok(_call(a, "POST", "/sessions", {"profile_id": "kept"}))
        sid = record["id"]
        r = _call(b_as_a, "POST", "/sessions", {"profile_id": "kept", "lock_timeout": 0})
        assert r.status_code == 409 and r.json()["error"]["code"] == "ProfileBusy", r.text

        assert a.process is not None
        os.kill(a.pid, signal.SIGKILL)
        a.process.wait(timeout=10)
        killed = time.monotonic()

        def failed() -> dict[str, Any] | None:
            # Until A's heartbeat is stale, B still forwards to A, which does not answer:
            # 502, and the client may try again.
            r = _call(b_as_a, "GET", f"/sessions/{sid}")
            if r.status_code == 502:
                return None
            seen = _ok(r)
            return seen if seen["status"] == "failed" else None

        gone = wait_until(failed, timeout=REPLICA_TIMEOUT * 4, what="B to see replica A gone")
        print(f"B reported A's session failed {time.monotonic() - killed:.2f} s after SIGKILL")
        assert gone["error"]["code"] == "ReplicaGone" and gone["connect_url"] is None
        assert gone["ended_because"].startswith("replica gone")
        listed = _ok(_call(b_as_a, "GET", "/sessions", None))["data"]
        assert [(s["id"], s["status"]) for s in listed] == [(sid, "failed")]
        # Nothing is forwarded to a replica that is gone: the record is the answer.
        assert _ok(_call(b_as_a, "PATCH", f"/sessions/{sid}", {"action": "stop"})) == gone
        cdp = f"{b.url.replace('http://', 'ws://')}/v1/sessions/{sid}/cdp"
        assert _handshake_status(cdp, a.headers()) == 409

        # The profile takes a new session (on B) once A's lease expired.
        again = _ok(_call(b_as_a, "POST", "/sessions", {"profile_id": "kept", "lock_timeout": 30}))
        waited = time.monotonic() - killed
        print(f"the profile took a new session {waited:.2f} s after SIGKILL")
        assert again["replica"] == "rep-b" and again["status"] == "running"
        assert waited < LEASE_TTL + 20
        final = _ok(_call(b_as_a, "PATCH", f"/sessions/{again['id']}", {"action": "stop"}))
        assert final["outcome"]["committed"] is True, final


def test_replicas_share_accounts_keys_and_the_secret_of_lease_tokens(
    tmp_path: Path, backend: tuple[str, str]
) -> None:
    with _replicas(tmp_path, *backend) as (a, b, db_url):
        _schema_for(db_url, a.account_id)
        b_as_a = _as(b, a)
        me = _ok(_call(b_as_a, "GET", "/account/me"))  # an account A's database made
        assert me["id"] == a.account_id and me["running_sessions"] == 0
        _ok(_call(a, "POST", "/profiles", {"name": "leased"}))
        grant = _ok(_call(a, "POST", "/profiles/leased/lease", {"ttl": 30}))
        renew = {"epoch": grant["epoch"], "ttl": 30}
        # A lease token A signed is checked by B (the same --secret-file).
        r = _call(
            b_as_a,
            "POST",
            "/profiles/leased/lease/renew",
            renew,
            **{"X-Lease-Token": grant["token"]},
        )
        assert _ok(r) == {"renewed": True}
        r = _call(
            b_as_a,
            "POST",
            "/profiles/leased/lease/renew",
            renew,
            **{"X-Lease-Token": "x" + grant["token"][1:]},
        )
        assert r.status_code == 409 and r.json()["error"]["code"] == "LeaseLost", r.text
        # A key revoked in the shared database is refused by every replica.
        from profiles.http.server.accounts import open_accounts

        with open_accounts(db_url) as db:
            db.revoke_key(a.api_key)
        for server in (a, b_as_a):
            r = _call(server, "GET", "/profiles")
            assert r.status_code == 401, (server.url, r.text)
        # No session anywhere: 404 through both, forwarded or not.
        sid = f"sess_{uuid.uuid4()}"
        for server in (a, b):
            r = _call(_as(server, a), "GET", f"/sessions/{sid}", key=a.read_key)
            assert r.status_code == 404, r.text


def test_a_replica_refuses_a_secret_file_it_cannot_read(tmp_path: Path) -> None:
    from profiles.errors import ValidationFailed
    from profiles.http.server import ServerConfig, create_app

    with pytest.raises(ValidationFailed, match="head -c 32 /dev/urandom"):
        create_app(ServerConfig(home=tmp_path / "home", secret_file=tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    with pytest.raises(ValidationFailed, match="too short"):
        create_app(ServerConfig(home=tmp_path / "home", secret_file=short))


def test_the_registry_counts_live_sessions_of_live_replicas_and_fails_the_gone(
    tmp_path: Path,
) -> None:
    from profiles.http.server.accounts import SQLiteAccountsDB
    from profiles.http.server.remote.registry import Registry
    from profiles.http.session_schemas import SessionRecord

    def record(sid: str, status: str) -> str:
        return SessionRecord(
            id=sid,
            profile_id=None,
            status=status,  # type: ignore[arg-type]
            readonly=False,
            ephemeral=True,
            keep_alive=True,
            idle_timeout=300,
            max_duration=None,
            engine="chromium",
            created_at="2026-01-01T00:00:00.000000Z",
            connect_url=f"ws://x/v1/sessions/{sid}/cdp" if status == "running" else None,
        ).model_dump_json()

    with SQLiteAccountsDB(tmp_path / "accounts.sqlite3") as db:
        me = Registry(db, replica_id="me", replica_url="http://me", timeout=REPLICA_TIMEOUT)
        me.start()
        db.replica_heartbeat("alive", "http://alive")
        db.replica_heartbeat("dead", "http://dead", now=time.time() - 10 * REPLICA_TIMEOUT)
        rows = [
            ("sess_1", "me", "running"),
            ("sess_2", "alive", "running"),
            ("sess_3", "alive", "stopped"),
            ("sess_4", "dead", "running"),
        ]
        for sid, replica, status in rows:
            db.put_session(
                sid,
                account_id="acct",
                replica_id=replica,
                replica_url=f"http://{replica}",
                status=status,
                record=record(sid, status),
                created_at=time.time(),
            )
        assert me.running_elsewhere("acct") == 1  # sess_2: not mine, not ended, not dead
        assert me.running_elsewhere("another") == 0
        seen = {r.id: r for r in me.records("acct")}
        assert [seen[s].status for s in ("sess_1", "sess_2", "sess_3")] == [
            "running",
            "running",
            "stopped",
        ]
        gone = seen["sess_4"]
        assert gone.status == "failed" and gone.connect_url is None
        assert gone.error is not None and gone.error.code == "ReplicaGone"
        # A replica that starts again under its id fails what its earlier life left live.
        Registry(db, replica_id="me", replica_url="http://me", timeout=1).start()
        again = db.get_session("sess_1")
        assert again is not None and again.status == "failed"
        assert "restarted" in SessionRecord.model_validate_json(again.record).ended_because
