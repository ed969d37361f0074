"""The accounts database's behaviour, the same on both of its implementations: SQLite (one
server's home) and PostgreSQL (what replicas of a service share, ``--accounts URL``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiles.errors import Conflict, NotFound, StorageUnavailable, ValidationFailed
from profiles.http.server.accounts import (
    AccountsDB,
    PostgresAccountsDB,
    SQLiteAccountsDB,
    open_accounts,
)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountsDB]:
    if request.param == "sqlite":
        with open_accounts(tmp_path / "accounts.sqlite3") as found:
            assert isinstance(found, SQLiteAccountsDB)
            yield found
        return
    from support.pg_service import fresh_database

    with (
        fresh_database(request.getfixturevalue("postgres_url")) as url,
        open_accounts(url) as found,
    ):
        assert isinstance(found, PostgresAccountsDB)
        yield found


def test_accounts_are_created_listed_and_switched(db: AccountsDB) -> None:
    a = db.create_account("alpha", tier="trial")
    b = db.create_account("beta", profile_cap=7)
    assert a.cap == 1 and b.cap == 7 and b.tier == "team"
    assert [x.id for x in db.accounts()] == [a.id, b.id]
    assert db.get_account(a.id) == a
    assert not db.set_active(a.id, False).active
    assert db.set_active(a.id, True).active
    changed = db.set_tier(b.id, tier="solo")
    assert changed.tier == "solo" and changed.cap == 5
    with pytest.raises(NotFound):
        db.get_account("acct_00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFound):
        db.set_active("acct_nope", False)
    for bad in ({"name": ""}, {"name": "x", "tier": "gold"}, {"name": "x", "profile_cap": -1}):
        with pytest.raises(ValidationFailed):
            db.create_account(**bad)  # type: ignore[arg-type]


def test_keys_authenticate_until_revoked(db: AccountsDB) -> None:
    account = db.create_account("keys")
    key, token = db.create_key(account.id, scopes=["read"], name="ci")
    assert key.scopes == ("read",) and token.startswith(f"pk_{key.id}_")
    assert db.authenticate(token) == key
    found = db.identify(token)
    assert found is not None and found[0] == key and found[1].id == account.id
    assert db.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert db.authenticate("pk_nope") is None and db.identify("garbage") is None
    assert [k.id for k in db.keys(account.id)] == [key.id]
    assert db.get_key(key.id) == key
    db.set_active(account.id, False)
    assert db.identify(token) is None  # a deactivated account's keys identify nothing
    db.set_active(account.id, True)
    revoked = db.revoke_key(key.prefix)
    assert revoked.revoked_at is not None
    assert db.authenticate(token) is None and db.identify(token) is None
    with pytest.raises(Conflict):
        db.revoke_key(key.id)
    with pytest.raises(NotFound):
        db.revoke_key("0123456789abcdef")
    with pytest.raises(ValidationFailed):
        db.create_key(account.id, scopes=["root"])
    with pytest.raises(NotFound):
        db.create_key("acct_nope")


def test_memberships(db: AccountsDB) -> None:
    owner, member = db.create_account("owner"), db.create_account("member")
    assert db.role(owner.id, member.id) is None
    db.add_member(owner.id, member.id, "member")
    assert db.role(owner.id, member.id) == "member"
    db.add_member(owner.id, member.id, "admin")  # changes the role
    assert db.role(owner.id, member.id) == "admin"
    db.remove_member(owner.id, member.id)
    assert db.role(owner.id, member.id) is None
    assert db.role("not-an-account", member.id) is None
    with pytest.raises(ValidationFailed):
        db.add_member(owner.id, member.id, "owner")


def test_one_time_tokens_are_claimed_once(db: AccountsDB) -> None:
    later = time.time() + 60
    assert db.claim_token("nonce-1", later) is True
    assert db.claim_token("nonce-1", later) is False
    assert db.claim_token("nonce-2", later) is True


def test_the_session_registry_names_replicas_and_their_heartbeats(db: AccountsDB) -> None:
    a, b = db.create_account("a"), db.create_account("b")
    db.replica_heartbeat("rep-1", "http://one:8787", now=100.0)
    db.replica_heartbeat("rep-1", "http://one:8787", now=105.0)
    db.put_session(
        "sess_1",
        account_id=a.id,
        replica_id="rep-1",
        replica_url="http://one:8787",
        status="running",
        record='{"id": "sess_1"}',
        created_at=1.0,
    )
    db.put_session(
        "sess_2",
        account_id=a.id,
        replica_id="rep-gone",
        replica_url="http://two:8787",
        status="running",
        record="{}",
        created_at=2.0,
    )
    db.put_session(
        "sess_1",
        account_id=a.id,
        replica_id="rep-1",
        replica_url="http://one:8787",
        status="stopped",
        record='{"id": "sess_1", "status": "stopped"}',
        created_at=1.0,
    )
    row = db.get_session("sess_1")
    assert row is not None and row.status == "stopped" and row.heartbeat_at == 105.0
    assert row.record == '{"id": "sess_1", "status": "stopped"}'
    assert [s.id for s in db.sessions(a.id)] == ["sess_1", "sess_2"]
    assert db.sessions(b.id) == [] and db.get_session("sess_3") is None
    gone = db.get_session("sess_2")
    assert gone is not None and gone.heartbeat_at is None
    replicas = db.replicas()
    assert [(r.id, r.started_at, r.heartbeat_at) for r in replicas] == [("rep-1", 100.0, 105.0)]
    # Ended sessions and those of replicas that stopped beating are forgotten in time.
    assert db.forget_sessions(ended_before=time.time() + 1) == 2
    db.remove_replica("rep-1")
    assert db.replicas() == []


def test_an_unreachable_postgres_is_storage_unavailable_without_its_password() -> None:
    with pytest.raises(StorageUnavailable) as caught:
        PostgresAccountsDB("postgresql://u:s3cret@127.0.0.1:9/db", connect_timeout=1)
    assert "s3cret" not in str(caught.value) and "127.0.0.1:9" in str(caught.value)
