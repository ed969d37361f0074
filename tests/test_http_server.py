"""The profile server (``profiles serve``) on loopback, driven by httpx: the error rows of
the reference docs, accounts and keys, isolation, signed links, streamed uploads under the
cap, the rate limit, leases, and schemathesis over /openapi.json.

Nothing is mocked: every test talks to a real uvicorn process on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from support.http_service import HttpServer, start_http_server
from support.waiting import wait_until

from profiles.http.server import cli as server_cli
from profiles.http.server.accounts import SQLiteAccountsDB
from profiles.state.archive import unpack_archive
from profiles.state.inspection import detect_engine

TIMEOUT = httpx.Timeout(60.0)


# ------------------------------------------------------------------ helpers


def _tar(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def chromium_targz(seed: str = "1") -> bytes:
    """A minimal Chromium user-data-dir as .tar.gz."""
    return gzip.compress(
        _tar(
            {
                "Local State": json.dumps({"seed": seed}).encode(),
                "Default/Preferences": b"{}",
            }
        )
    )


def firefox_targz() -> bytes:
    return gzip.compress(_tar({"prefs.js": b"// prefs\n", "times.json": b"{}"}))


@dataclass
class Acct:
    id: str
    admin: str
    read: str

    def h(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin}", **extra}


def new_account(
    server: HttpServer, *, tier: str = "enterprise", cap: int | None = None, name: str = "a"
) -> Acct:
    with SQLiteAccountsDB(server.home / "accounts.sqlite3") as db:
        account = db.create_account(name, tier=tier, profile_cap=cap)
        _, admin = db.create_key(account.id, scopes=("read", "admin"))
        _, read = db.create_key(account.id, scopes=("read",))
    return Acct(account.id, admin, read)


def err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["status"] == r.status_code, body
    assert error["code"] and error["message"], body
    return error


@pytest.fixture
def acct(session_profile_server: HttpServer) -> Acct:
    return new_account(session_profile_server)


@pytest.fixture
def client(session_profile_server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=session_profile_server.url, timeout=TIMEOUT) as c:
        yield c


def create(client: httpx.Client, acct: Acct, name: str, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/profiles", headers=acct.h(), json={"name": name, **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def upload(
    client: httpx.Client, acct: Acct, ref: str, data: bytes, filename: str = "p.tar.gz"
) -> httpx.Response:
    return client.post(
        f"/v1/profiles/{ref}/upload",
        headers=acct.h(),
        files={"file": (filename, data, "application/gzip")},
    )


# ------------------------------------------------------------------ doc 000: auth


def test_401_api_key_required(client: httpx.Client) -> None:
    r = client.get("/v1/profiles")
    assert r.status_code == 401
    assert err(r)["message"] == "API key required"


def test_401_invalid_or_revoked_key(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    r = client.get("/v1/profiles", headers={"Authorization": "Bearer pk_0123456789abcdef_nope"})
    assert r.status_code == 401
    assert err(r)["message"] == "Invalid or revoked API key"
    # a key with the right id and a wrong secret
    forged = acct.admin[:-4] + ("AAAA" if not acct.admin.endswith("AAAA") else "BBBB")
    r = client.get("/v1/profiles", headers=acct.h(forged))
    assert err(r)["message"] == "Invalid or revoked API key"
    assert client.get("/v1/profiles", headers=acct.h()).status_code == 200
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        db.revoke_key(acct.admin)
    r = client.get("/v1/profiles", headers=acct.h())
    assert r.status_code == 401
    assert err(r)["message"] == "Invalid or revoked API key"


def test_403_account_deactivated(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        db.set_active(acct.id, False)
    r = client.get("/v1/profiles", headers=acct.h())
    assert r.status_code == 403
    assert err(r)["message"] == "Account is deactivated"


def test_403_read_key_cannot_write(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "readable")
    assert client.get("/v1/profiles/readable", headers=acct.h(acct.read)).status_code == 200
    for method, path, body in [
        ("POST", "/v1/profiles", {"name": "x"}),
        ("PATCH", "/v1/profiles/readable", {"description": "d"}),
        ("DELETE", "/v1/profiles/readable", None),
        ("POST", "/v1/profiles/readable/lease", {"host": "h", "pid": 1}),
    ]:
        r = client.request(method, path, headers=acct.h(acct.read), json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert err(r)["message"] == "API key missing required permission: admin"


def test_404_profile_not_found(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "production")
    r = client.get("/v1/profiles/productoin", headers=acct.h())
    assert r.status_code == 404
    e = err(r)
    assert e["code"] == "NotFound" and "not found" in e["message"]
    assert e["suggestions"] == ["production"]
    r = upload(client, acct, "nope", chromium_targz())
    assert r.status_code == 404
    assert client.get("/v1/profiles/nope/download", headers=acct.h()).status_code == 404


# ------------------------------------------------------------------ doc 000: upload/download


def test_400_no_file_provided(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "p")
    r = client.post("/v1/profiles/p/upload", headers=acct.h(), data={"other": "field"})
    assert r.status_code == 400
    assert err(r)["message"] == "No file provided"
    r = client.post(
        "/v1/profiles/p/upload", headers=acct.h(), files={"notfile": ("a.tar.gz", b"x")}
    )
    assert err(r)["message"] == "No file provided"
    r = client.post("/v1/profiles/p/upload", headers=acct.h(), content=b"raw bytes")
    assert r.status_code == 400
    assert err(r)["message"] == "No file provided"


def test_400_only_tar_gz(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "p")
    for data, name in [
        (b"PK\x03\x04 a zip file", "p.zip"),
        (_tar({"Local State": b"{}"}), "p.tar"),
    ]:
        r = upload(client, acct, "p", data, name)
        assert r.status_code == 400, r.text
        e = err(r)
        assert e["message"].startswith("Only .tar.gz files are allowed: ")  # doc 000's words
        assert e["code"] == "ArchiveInvalid"
    assert client.get("/v1/profiles/p", headers=acct.h()).json()["status"] == "empty"


def test_random_bytes_as_tar_gz_get_the_message_the_cli_gives(
    client: httpx.Client, acct: Acct, tmp_path: Path
) -> None:
    """What is wrong and what to do, over HTTP as in the CLI, for each way a file is not
    an archive: random bytes, a ZIP, an uncompressed tar, an empty file."""
    from profiles import ArchiveInvalid, ProfileStore

    create(client, acct, "p")
    cases = {
        "random": bytes(range(7, 250)) * 40,
        "zip": b"PK\x03\x04 a zip file",
        "tar": _tar({"Local State": b"{}"}),
        "empty": b"",
    }
    with ProfileStore(tmp_path / "cli-home") as local:
        local.create("p")
        for what, data in cases.items():
            (tmp_path / what).write_bytes(data)
            with pytest.raises(ArchiveInvalid) as cli_err:
                local.import_state("p", tmp_path / what)
            said = cli_err.value.message.split(": ", 1)[1]  # after "Only .tar.gz (...) ...: "
            r = upload(client, acct, "p", data)
            assert r.status_code == 400, r.text
            message = err(r)["message"]
            assert message == f"Only .tar.gz files are allowed: {said}", what
            assert "tar czf" in message
            r = client.put(
                "/v1/profiles/p/state",
                headers=acct.h(**{"X-Checksum": hashlib.sha256(data).hexdigest()}),
                content=data,
            )
            assert r.status_code == 400 and err(r)["message"].endswith(said), r.text
    assert "uncompressed tar" in upload(client, acct, "p", cases["tar"]).text


def test_broken_json_names_no_bogus_field(client: httpx.Client, acct: Acct) -> None:
    """Malformed JSON is about the body (with where it broke), never a field named after
    the character offset."""
    headers = acct.h(**{"Content-Type": "application/json"})
    for body in ('{"name": "x",, }', '{"name": ', "[1, 2", "nul\x00"):
        r = client.post("/v1/profiles", headers=headers, content=body)
        assert r.status_code == 400, r.text
        e = err(r)
        assert e["code"] == "ValidationFailed" and e["field"] == "body", e
        assert "not valid JSON" in e["message"] and "character" in e["message"], e
        assert isinstance(e["position"], int)
    # A real field error still names its field.
    r = client.post("/v1/profiles", headers=acct.h(), json={"name": "x", "labels": {"a": 8}})
    assert r.status_code == 400 and err(r)["field"] == "labels.a", r.text


def test_400_no_data_to_download(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "p")
    r = client.get("/v1/profiles/p/download", headers=acct.h())
    assert r.status_code == 400
    e = err(r)
    assert e["code"] == "NoStateData"
    assert e["message"].startswith("Profile has no data to download")
    r = client.get("/v1/profiles/p/state", headers=acct.h())
    assert r.status_code == 400 and err(r)["code"] == "NoStateData"


def test_upload_then_signed_download(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    create(client, acct, "p")
    r = upload(client, acct, "p", chromium_targz("up"))
    assert r.status_code == 200, r.text
    profile = r.json()
    assert profile["status"] == "ready" and profile["checksum"]
    r = client.get("/v1/profiles/p/download", headers=acct.h())
    assert r.status_code == 200
    link = r.json()
    assert link["expiresIn"] == 3600 and link["expiresAt"].endswith("Z")
    assert link["downloadUrl"].startswith(f"{session_profile_server.url}/v1/downloads/")
    got = httpx.get(link["downloadUrl"], timeout=TIMEOUT)  # no Authorization needed
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(got.content), mode="r:gz") as tar:
        state = tar.extractfile("Local State")
        assert state is not None and json.loads(state.read()) == {"seed": "up"}

    # tampered: any change to the payload or the signature
    token = link["downloadUrl"].rsplit("/", 1)[1]
    payload, mac = token.split(".")
    for bad in (f"{payload}x.{mac}", f"{payload}.{mac[:-2]}AA", "garbage", f"{mac}.{payload}"):
        r = client.get(f"/v1/downloads/{bad}")
        assert r.status_code == 403, bad
        assert err(r)["code"] == "SignatureInvalid"
    # an upload token is not a download token
    up = client.post("/v1/profiles/initiate-upload", headers=acct.h()).json()
    r = client.get(f"/v1/downloads/{up['upload_fields']['x-signature']}")
    assert r.status_code == 403

    # the state changed: the old link is stale (410); deleted: 404
    assert upload(client, acct, "p", chromium_targz("v2")).status_code == 200
    r = client.get(f"/v1/downloads/{token}")
    assert r.status_code == 410 and err(r)["code"] == "LinkExpired"
    link2 = client.get("/v1/profiles/p/download", headers=acct.h()).json()["downloadUrl"]
    assert client.delete("/v1/profiles/p", headers=acct.h()).status_code == 204
    r = httpx.get(link2, timeout=TIMEOUT)
    assert r.status_code == 404 and err(r)["code"] == "NotFound"
    # tokens and keys never reach the log
    log_text = session_profile_server.log_text()
    assert token not in log_text and payload not in log_text
    assert acct.admin not in log_text
    assert "/v1/downloads/" not in log_text.replace("/v1/downloads/{token}", "")


def test_x_checksum_is_the_sha256_of_the_body_and_one_file_is_one_state(
    client: httpx.Client, acct: Acct
) -> None:
    """A header named checksum is the checksum of the body a curl user saved; the state's
    identity is X-State-Checksum (the profile's ``checksum``), and the same file uploaded
    twice is the same state (an implicit directory, ``Default``, included)."""
    create(client, acct, "p")
    data = chromium_targz("twice")
    first = upload(client, acct, "p", data).json()["checksum"]
    second = upload(client, acct, "p", data).json()["checksum"]
    assert second == first
    link = client.get("/v1/profiles/p/download", headers=acct.h()).json()["downloadUrl"]
    got = httpx.get(link, timeout=TIMEOUT)
    assert got.status_code == 200
    assert got.headers["x-checksum"] == hashlib.sha256(got.content).hexdigest()
    assert got.headers["x-state-checksum"] == first
    assert int(got.headers["content-length"]) == len(got.content)
    # What came down goes up again as the same state.
    assert upload(client, acct, "p", got.content).json()["checksum"] == first


def test_exports_and_signed_downloads_are_in_the_audit_log(
    client: httpx.Client, acct: Acct
) -> None:
    p = create(client, acct, "p")
    assert upload(client, acct, "p", chromium_targz("audit")).status_code == 200
    link = client.get("/v1/profiles/p/download", headers=acct.h()).json()["downloadUrl"]
    got = httpx.get(link, timeout=TIMEOUT)
    assert got.status_code == 200
    events = client.get(f"/v1/audit?profile={p['id']}", headers=acct.h()).json()["data"]
    by_type = {e["type"]: e["payload"] for e in events}
    made = by_type["state.download_link_created"]
    assert made["checksum"] == got.headers["x-state-checksum"] and made["expires_at"]
    assert made["key_id"] and acct.admin not in json.dumps(events)
    done = by_type["state.downloaded"]
    assert done["sha256"] == got.headers["x-checksum"] and done["bytes"] == len(got.content)
    assert token_of(link) not in json.dumps(events)


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def test_download_link_expires(tmp_path: Path) -> None:
    with start_http_server(tmp_path / "h", extra_args=["--download-expires", "0.5"]) as s:
        h = s.headers()
        assert httpx.post(f"{s.url}/v1/profiles", headers=h, json={"name": "p"}).is_success
        r = httpx.post(
            f"{s.url}/v1/profiles/p/upload",
            headers=h,
            files={"file": ("p.tar.gz", chromium_targz())},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        link = httpx.get(f"{s.url}/v1/profiles/p/download", headers=h).json()
        assert link["expiresIn"] == 0
        time.sleep(0.8)
        r = httpx.get(link["downloadUrl"])
        assert r.status_code == 410
        assert err(r)["code"] == "LinkExpired"


def test_a_signed_link_dies_with_the_key_that_made_it(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    """A download link or an upload target made by a key stops working when that key is
    revoked, its account deactivated, or (made by a member through ``X-Account``) the
    membership removed: as an S3 presigned URL dies with its credentials. What a live
    key made still works."""
    member = new_account(session_profile_server, name="member")
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        key_b, secret_b = db.create_key(acct.id, scopes=("read", "admin"), name="b")
        db.add_member(acct.id, member.id, "admin")
    create(client, acct, "linked")
    assert upload(client, acct, "linked", chromium_targz("linked")).status_code == 200

    def link(headers: dict[str, str]) -> str:
        r = client.get("/v1/profiles/linked/download", headers=headers)
        assert r.status_code == 200, r.text
        url: str = r.json()["downloadUrl"]
        return url

    def target(headers: dict[str, str]) -> dict[str, Any]:
        r = client.post("/v1/profiles/initiate-upload", headers=headers)
        assert r.status_code == 200, r.text
        found: dict[str, Any] = r.json()
        return found

    by_b, by_a = link(acct.h(secret_b)), link(acct.h())
    by_member = link(member.h(**{"X-Account": acct.id}))
    target_b, target_a = target(acct.h(secret_b)), target(acct.h())
    target_member = target(member.h(**{"X-Account": acct.id}))
    assert httpx.get(by_b, timeout=TIMEOUT).status_code == 200  # while the key is live
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        db.revoke_key(key_b.id)
        db.remove_member(acct.id, member.id)
    for dead in (by_b, by_member):
        r = httpx.get(dead, timeout=TIMEOUT)
        assert r.status_code == 403, r.text
        e = err(r)
        assert e["code"] == "Forbidden" and "revoked" in e["message"], e
        assert token_of(dead) not in r.text
    for dead_target in (target_b, target_member):
        r = _post_to_target(dead_target, chromium_targz("late"))
        assert r.status_code == 403, r.text
        assert err(r)["code"] == "Forbidden" and "revoked" in err(r)["message"]
    # What the live key made still works.
    assert httpx.get(by_a, timeout=TIMEOUT).status_code == 200
    assert _post_to_target(target_a, chromium_targz("pre")).status_code == 204
    # A deactivated account's links die too (and come back with it).
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        db.set_active(acct.id, False)
    r = httpx.get(by_a, timeout=TIMEOUT)
    assert r.status_code == 403 and err(r)["code"] == "Forbidden"
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        db.set_active(acct.id, True)
    assert httpx.get(by_a, timeout=TIMEOUT).status_code == 200


# ------------------------------------------------------------------ doc 001


def test_400_validation(client: httpx.Client, acct: Acct) -> None:
    for body in (
        {"name": "has space"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "ok", "description": "d" * 2049},
        {"description": "no name"},
        {"name": "ok", "unknown": 1},
        {"name": 5},
        {"name": "prof_1234"},
    ):
        r = client.post("/v1/profiles", headers=acct.h(), json=body)
        assert r.status_code == 400, (body, r.text)
        assert err(r)["code"] == "ValidationFailed", body
    r = client.post("/v1/profiles", headers=acct.h(), content=b"{not json")
    assert r.status_code == 400
    r = client.get("/v1/profiles?limit=0", headers=acct.h())
    assert r.status_code == 400 and err(r)["field"] == "limit"
    r = client.get("/v1/profiles?limit=abc", headers=acct.h())
    assert r.status_code == 400


def test_409_name_taken(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "production")
    r = client.post("/v1/profiles", headers=acct.h(), json={"name": "production"})
    assert r.status_code == 409
    assert err(r)["code"] == "Conflict"
    create(client, acct, "other")
    r = client.patch("/v1/profiles/other", headers=acct.h(), json={"name": "production"})
    assert r.status_code == 409


def test_429_tier_limit_body(session_profile_server: HttpServer, client: httpx.Client) -> None:
    trial = new_account(session_profile_server, tier="trial")
    create(client, trial, "only")
    for method, path, body in [
        ("POST", "/v1/profiles", {"name": "second"}),
        ("POST", "/v1/profiles/only/clone", {}),
        ("POST", "/v1/profiles/initiate-upload", None),
    ]:
        r = client.request(method, path, headers=trial.h(), json=body)
        assert r.status_code == 429, r.text
        e = err(r)
        assert e["code"] == "TierLimit"
        assert (e["limit"], e["current"], e["resource"], e["tier"]) == (1, 1, "profile", "trial")
        assert "Tier limit" in e["message"]
    snap = client.post("/v1/profiles/only/snapshots", headers=trial.h(), json={}).json()
    r = client.post(f"/v1/profile-snapshots/{snap['id']}/restore", headers=trial.h(), json={})
    assert r.status_code == 429
    # a cap of the account's own overrides the tier's
    custom = new_account(session_profile_server, tier="trial", cap=2)
    create(client, custom, "one")
    create(client, custom, "two")
    r = client.post("/v1/profiles", headers=custom.h(), json={"name": "three"})
    assert r.status_code == 429 and err(r)["limit"] == 2


def test_404_cross_account(session_profile_server: HttpServer, client: httpx.Client) -> None:
    a = new_account(session_profile_server, name="a")
    b = new_account(session_profile_server, name="b")
    p = create(client, a, "secret")
    snap = client.post("/v1/profiles/secret/snapshots", headers=a.h(), json={}).json()
    for ref in (p["id"], "secret"):
        for method, path, body in [
            ("GET", f"/v1/profiles/{ref}", None),
            ("PATCH", f"/v1/profiles/{ref}", {"description": "mine"}),
            ("DELETE", f"/v1/profiles/{ref}", None),
            ("POST", f"/v1/profiles/{ref}/clone", {}),
            ("GET", f"/v1/profiles/{ref}/download", None),
            ("GET", f"/v1/profiles/{ref}/state", None),
            ("POST", f"/v1/profiles/{ref}/lease", {"host": "h", "pid": 1}),
            ("POST", f"/v1/profiles/{ref}/snapshots", {}),
        ]:
            r = client.request(method, path, headers=b.h(), json=body)
            assert r.status_code == 404, (method, path, r.text)
    for method in ("GET", "DELETE"):
        r = client.request(method, f"/v1/profile-snapshots/{snap['id']}", headers=b.h())
        assert r.status_code == 404
    assert client.get("/v1/profiles", headers=b.h()).json()["data"] == []
    assert client.get("/v1/profile-snapshots", headers=b.h()).json()["data"] == []
    assert client.get("/v1/leases", headers=b.h()).json()["data"] == []
    # B's same-named profile is its own
    create(client, b, "secret")
    assert client.get("/v1/profiles/secret", headers=a.h()).json()["id"] == p["id"]
    # not a member: X-Account is refused as not found
    r = client.get("/v1/profiles", headers=b.h(**{"X-Account": a.id}))
    assert r.status_code == 404


def test_204_delete_then_404(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "gone")
    r = client.delete("/v1/profiles/gone", headers=acct.h())
    assert r.status_code == 204 and r.content == b""
    assert client.delete("/v1/profiles/gone", headers=acct.h()).status_code == 404
    assert client.get("/v1/profiles/gone", headers=acct.h()).status_code == 404


def test_x_account_member_read_only_admin_writes(
    session_profile_server: HttpServer, client: httpx.Client
) -> None:
    owner = new_account(session_profile_server, name="owner")
    reader = new_account(session_profile_server, name="reader")
    writer = new_account(session_profile_server, name="writer")
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        db.add_member(owner.id, reader.id, "member")
        db.add_member(owner.id, writer.id, "admin")
    create(client, owner, "shared")
    as_owner = {"X-Account": owner.id}
    r = client.get("/v1/profiles/shared", headers=reader.h(**as_owner))
    assert r.status_code == 200
    r = client.patch("/v1/profiles/shared", headers=reader.h(**as_owner), json={"description": "x"})
    assert r.status_code == 403
    assert "API key missing required permission: admin" in err(r)["message"]
    r = client.patch("/v1/profiles/shared", headers=writer.h(**as_owner), json={"description": "x"})
    assert r.status_code == 200 and r.json()["description"] == "x"
    # the admin member's read-only key stays read-only
    r = client.delete("/v1/profiles/shared", headers=writer.h(writer.read, **as_owner))
    assert r.status_code == 403
    # without the header each acts on its own account
    assert client.get("/v1/profiles/shared", headers=writer.h()).status_code == 404


def test_profile_routes(client: httpx.Client, acct: Acct) -> None:
    p = create(client, acct, "main", description="d", labels={"team": "qa"})
    r = client.patch(
        "/v1/profiles/main",
        headers=acct.h(),
        json={"description": None, "add_labels": {"env": "prod"}, "remove_labels": ["team"]},
    )
    assert r.status_code == 200
    assert r.json()["description"] is None and r.json()["labels"] == {"env": "prod"}
    r = client.patch("/v1/profiles/main", headers=acct.h(), json={"archetype": "desktop-firefox"})
    assert r.status_code == 400 and err(r)["field"] == "archetype"
    r = client.post("/v1/profiles/main/clone", headers=acct.h(), json={})
    assert r.status_code == 200 and r.json()["name"] == "main-copy"
    assert client.get("/v1/profiles/mian/similar", headers=acct.h()).json() == {"names": ["main"]}
    r = client.post(
        "/v1/profiles/main/events",
        headers=acct.h(),
        json={"type": "session.created", "payload": {"headless": True}},
    )
    assert r.status_code == 200 and r.json()["usage_count"] == 1
    r = client.post(
        "/v1/profiles/main/events",
        headers=acct.h(),
        json={"type": "session.ended", "payload": {"outcome": "ok"}},
    )
    assert r.status_code == 204
    r = client.post("/v1/profiles/main/events", headers=acct.h(), json={"type": "profile.deleted"})
    assert r.status_code == 400
    events = client.get(f"/v1/audit?profile={p['id']}", headers=acct.h()).json()["data"]
    assert [e["type"] for e in events][:2] == ["session.ended", "session.created"]
    snap = client.post(
        "/v1/profiles/main/snapshots", headers=acct.h(), json={"label": "base"}
    ).json()
    assert snap["id"].startswith("psnap_") and snap["parent_name"] == "main"
    assert client.get("/v1/profiles/main/snapshots", headers=acct.h()).json()["data"][0] == snap
    assert client.get(f"/v1/profile-snapshots/{snap['id']}", headers=acct.h()).json() == snap
    r = client.post(
        f"/v1/profile-snapshots/{snap['id']}/restore", headers=acct.h(), json={"name": "back"}
    )
    assert r.status_code == 200 and r.json()["name"] == "back"
    assert client.delete(f"/v1/profile-snapshots/{snap['id']}", headers=acct.h()).status_code == 204
    assert client.get(f"/v1/profile-snapshots/{snap['id']}", headers=acct.h()).status_code == 404


# ------------------------------------------------------------------ audit payloads

# Keys a client may not use: what the server records itself, and the names of the
# parameters a payload is passed beside (a clash was a TypeError, a 500).
_SERVER_KEYS = ("ref", "type_", "profile_id", "tx", "self", "checksum", "epoch", "blob_size")
# ... and on a commit, the parameters of the commit's own path.
_COMMIT_KEYS = ("browser_version", "end_session", "directory", "profile", "fresh", "state")
_BAD_SHAPES: tuple[Any, ...] = (
    {"nested": {"a": 1}},
    {"listed": [1, 2]},
    {f"k{i}": i for i in range(33)},
    {"k" * 65: 1},
    {"not-an-identifier": 1},
    {"": 1},
    {"1st": 1},
    {"big": "x" * (300 * 1024)},
    {"deep": {"deeper": ["x" * (300 * 1024)]}},
    ["not", "an", "object"],
)


def test_audit_payloads_are_checked_redacted_and_never_a_500(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    """Every route that takes an audit payload from a client (an event, a session's start
    and end, a commit's ``payload`` and ``ended``) checks it with one model: no key of the
    server's or of a parameter it is passed beside, identifier keys, at most 32, scalar
    values of bounded length; 400 for the rest, answered at once (a 300 KiB value took
    the redaction minutes), never a 500 or a traceback in the log. Text is redacted as
    everywhere else: no userinfo, query string or ``token=`` value is stored."""
    p = create(client, acct, "audited")
    grant = _lease(client, acct, "audited").json()
    lease_headers = {"X-Lease-Token": grant["token"]}
    logged = len(session_profile_server.log_text())
    data = chromium_targz("payload")

    def sends(payload: Any, *, commit: bool) -> list[httpx.Response]:
        text = json.dumps(payload)
        answers = [
            client.post(
                "/v1/profiles/audited/events",
                headers=acct.h(),
                json={"type": kind, "payload": payload},
                timeout=20,
            )
            for kind in ("session.ended", "session.created", "state.exported")
        ]
        answers.append(
            client.post(
                "/v1/profiles/audited/sessions",
                headers=acct.h(),
                json={"readonly": True, "payload": payload},
                timeout=20,
            )
        )
        answers.append(
            client.post(
                "/v1/profiles/audited/sessions/end",
                headers=acct.h(),
                json={"payload": payload},
                timeout=20,
            )
        )
        if len(text) < 4000:  # the query parameters are capped at 4096 characters
            if commit:
                answers.append(_put_state(client, acct, "other", data, payload=text))
            answers.append(
                client.put(
                    "/v1/profiles/audited/state",
                    headers=acct.h(
                        **{"X-Checksum": hashlib.sha256(data).hexdigest(), **lease_headers}
                    ),
                    params={"epoch": grant["epoch"], "ended": text},
                    content=data,
                    timeout=20,
                )
            )
        return answers

    create(client, acct, "other")
    for key in _SERVER_KEYS:
        for r in sends({key: 1}, commit=True):
            assert r.status_code == 400, (key, r.request.url.path, r.text)
            assert err(r)["code"] == "ValidationFailed" and key in err(r)["message"]
    for key in _COMMIT_KEYS:
        r = _put_state(client, acct, "other", data, payload=json.dumps({key: "1"}))
        assert r.status_code == 400, (key, r.text)
        assert err(r)["code"] == "ValidationFailed" and key in err(r)["message"]
    for bad in _BAD_SHAPES:
        started = time.monotonic()
        for r in sends(bad, commit=True):
            assert r.status_code == 400, (json.dumps(bad)[:80], r.request.url.path, r.text)
            assert err(r)["code"] == "ValidationFailed"
            assert len(r.text) < 2000  # the error does not quote the value back
        assert time.monotonic() - started < 10, json.dumps(bad)[:80]
    # Nothing of that was stored: the lease is still held, the profile has no state.
    assert client.get("/v1/profiles/audited", headers=acct.h()).json()["status"] == "empty"
    assert client.get("/v1/profiles/audited/lease", headers=acct.h()).json()["holder"]
    assert client.get("/v1/profiles/other", headers=acct.h()).json()["status"] == "empty"

    # What is allowed is stored redacted, the same way on every route.
    secret = {
        "url": "https://alice:hunter2@example.com/cb?token=abc123&code=xyz#frag",
        "note": "failed with token=abc123 and password: hunter2",
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "nothing": None,
    }
    for r in sends(secret, commit=False):
        assert r.status_code in (200, 204), (r.request.url.path, r.text)
    r = _put_state(client, acct, "other", data, payload=json.dumps(secret))
    assert r.status_code == 200, r.text
    assert client.get("/v1/profiles/audited/lease", headers=acct.h()).json() == {"holder": None}
    events = [
        *client.get(f"/v1/audit?profile={p['id']}&limit=50", headers=acct.h()).json()["data"],
        *client.get("/v1/audit?profile=other&limit=50", headers=acct.h()).json()["data"],
    ]
    stored = [e["payload"] for e in events if "url" in e["payload"]]
    assert len(stored) == 7  # 3 events, a start, an end, a commit's ended and payload
    for payload in stored:
        assert payload["url"] == "https://…@example.com/cb?…"
        assert "hunter2" not in json.dumps(payload) and "abc123" not in json.dumps(payload)
        assert (payload["count"], payload["ratio"], payload["ok"]) == (3, 0.5, True)
    log = session_profile_server.log_text()[logged:]
    assert "Traceback" not in log and "internal error" not in log and " 500 " not in log


def test_the_audit_payload_model_is_in_the_openapi_document(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    payload = schemas["AuditPayload"]
    assert payload["type"] == "object" and payload["maxProperties"] == 32
    assert payload["propertyNames"]["pattern"]
    assert "ref" in payload["propertyNames"]["not"]["enum"]
    for body in ("EventBody", "SessionStartBody", "SessionEndBody"):
        assert schemas[body]["properties"]["payload"]["$ref"].endswith("/AuditPayload")


def test_no_audit_payload_key_can_name_a_parameter_it_is_passed_beside() -> None:
    """A client's payload reaches the store as ``**payload``, beside named parameters: a
    key with a parameter's name was a ``TypeError`` (a 500) or changed what the call did
    (``fresh``, ``epoch``). Every parameter of those paths is reserved; a parameter added
    to them fails here until it is."""
    import inspect

    from profiles.http.schemas import COMMIT_RESERVED_KEYS, RESERVED_KEYS
    from profiles.service.catalog import CatalogService
    from profiles.service.protocol import ProfileService
    from profiles.store import ProfileStore

    def named(fn: Any) -> set[str]:
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds}

    events = (
        ProfileStore.record_event,
        ProfileStore.record_use,
        ProfileStore.end_session,
        CatalogService.record_event,
        CatalogService.record_use,
        CatalogService.end_session,
        CatalogService._event,
        ProfileService.end_session,
    )
    commits = (
        ProfileStore.commit_archive,
        ProfileStore.commit_state,
        ProfileStore._commit_chunked,
        CatalogService.commit_archive,
        CatalogService.commit_directory,
        CatalogService.commit_manifest,
        CatalogService._set_state,
    )
    for fn in events:
        assert named(fn) <= RESERVED_KEYS, (fn.__qualname__, named(fn) - RESERVED_KEYS)
    for fn in commits + events:
        missing = named(fn) - COMMIT_RESERVED_KEYS
        assert not missing, (fn.__qualname__, missing)


def test_pagination_cursor_and_page_numbers(client: httpx.Client, acct: Acct) -> None:
    names = [f"p{i}" for i in range(5)]
    for n in names:
        create(client, acct, n)
    newest_first = list(reversed(names))
    r = client.get("/v1/profiles?limit=2", headers=acct.h()).json()
    assert [p["name"] for p in r["data"]] == newest_first[:2] and r["has_more"]
    r = client.get(f"/v1/profiles?limit=2&cursor={r['next_cursor']}", headers=acct.h()).json()
    assert [p["name"] for p in r["data"]] == newest_first[2:4]
    r = client.get("/v1/profiles?pageSize=2&pageNumber=3", headers=acct.h()).json()
    assert [p["name"] for p in r["data"]] == newest_first[4:]
    assert (r["pageNumber"], r["pageSize"], r["has_more"]) == (3, 2, False)
    r = client.get("/v1/profiles?pageSize=2&pageNumber=9", headers=acct.h()).json()
    assert r["data"] == []
    assert client.get("/v1/profiles?pageNumber=0", headers=acct.h()).status_code == 400


# ------------------------------------------------------------------ doc 002/003


def test_003_404_no_pending_upload(client: httpx.Client, acct: Acct) -> None:
    body = {"name": "x", "browser_name": "chromium", "browser_version": "131"}
    r = client.post(
        "/v1/profiles/prof_00000000-0000-0000-0000-000000000000/complete-upload",
        headers=acct.h(),
        json=body,
    )
    assert r.status_code == 404
    assert err(r)["code"] == "NotFound"
    # initiated but nothing uploaded yet: still no pending upload
    up = client.post("/v1/profiles/initiate-upload", headers=acct.h()).json()
    r = client.post(f"/v1/profiles/{up['profile_id']}/complete-upload", headers=acct.h(), json=body)
    assert r.status_code == 404


def test_003_422_invalid_body(client: httpx.Client, acct: Acct) -> None:
    up = client.post("/v1/profiles/initiate-upload", headers=acct.h()).json()
    url = f"/v1/profiles/{up['profile_id']}/complete-upload"
    for body in (
        {"name": "x", "browser_name": "selenium", "browser_version": "131"},
        {"name": "x", "browser_name": "chromium", "browser_version": "latest"},
        {"name": "bad name", "browser_name": "chromium", "browser_version": "131"},
        {"name": "x", "browser_name": "chromium"},
        {"name": "x", "browser_name": "chromium", "browser_version": "1", "labels": {"": "v"}},
    ):
        r = client.post(url, headers=acct.h(), json=body)
        assert r.status_code == 422, (body, r.text)
        assert err(r)["code"] == "ValidationFailed"


def _post_to_target(target: dict[str, Any], data: bytes) -> httpx.Response:
    return httpx.post(
        target["upload_url"],
        data=target["upload_fields"],
        files={"file": ("profile.tar.gz", data, "application/gzip")},
        timeout=TIMEOUT,
    )


def test_003_201_initiate_upload_complete(client: httpx.Client, acct: Acct) -> None:
    target = client.post("/v1/profiles/initiate-upload", headers=acct.h()).json()
    assert set(target) == {"profile_id", "upload_url", "upload_fields", "upload_expires_in"}
    assert target["upload_expires_in"] == 3600
    assert target["upload_url"].startswith("http://127.0.0.1:")
    r = _post_to_target(target, chromium_targz("pre"))
    assert r.status_code == 204, r.text
    # one-time: the same target refuses a second upload
    r = _post_to_target(target, chromium_targz("again"))
    assert r.status_code == 409 and err(r)["code"] == "Conflict"
    body = {
        "name": "acme-prod-login",
        "browser_name": "chromium",
        "browser_version": "131",
        "labels": {"team": "qa"},
    }
    url = f"/v1/profiles/{target['profile_id']}/complete-upload"
    r = client.post(url, headers=acct.h(), json=body)
    assert r.status_code == 201, r.text
    profile = r.json()
    assert profile["id"] == target["profile_id"]
    assert (profile["status"], profile["browser_version"]) == ("ready", "131")
    assert profile["labels"] == {"team": "qa"} and profile["checksum"]
    got = client.get("/v1/profiles/acme-prod-login", headers=acct.h()).json()
    assert got["id"] == profile["id"]
    assert client.post(url, headers=acct.h(), json=body).status_code == 404  # consumed


def test_003_422_archive_of_another_engine(client: httpx.Client, acct: Acct) -> None:
    target = client.post("/v1/profiles/initiate-upload", headers=acct.h()).json()
    assert _post_to_target(target, firefox_targz()).status_code == 204
    r = client.post(
        f"/v1/profiles/{target['profile_id']}/complete-upload",
        headers=acct.h(),
        json={"name": "ff", "browser_name": "chromium", "browser_version": "131"},
    )
    assert r.status_code == 422
    assert client.get("/v1/profiles/ff", headers=acct.h()).status_code == 404


def test_upload_target_fields_are_signed(
    session_profile_server: HttpServer, client: httpx.Client
) -> None:
    a = new_account(session_profile_server)
    target = client.post("/v1/profiles/initiate-upload", headers=a.h()).json()
    forged = {**target, "upload_fields": {**target["upload_fields"], "key": "pending/x/y"}}
    r = _post_to_target(forged, chromium_targz())
    assert r.status_code == 403 and err(r)["code"] == "SignatureInvalid"
    token = target["upload_url"].rsplit("/", 1)[1]
    r = httpx.post(
        f"{session_profile_server.url}/v1/uploads/{token[:-3]}abc",
        files={"file": ("p.tar.gz", chromium_targz())},
        timeout=TIMEOUT,
    )
    assert r.status_code == 403


def test_upload_target_expires(tmp_path: Path) -> None:
    with start_http_server(tmp_path / "h", extra_args=["--upload-expires", "0.5"]) as s:
        target = httpx.post(f"{s.url}/v1/profiles/initiate-upload", headers=s.headers()).json()
        time.sleep(0.8)
        r = _post_to_target(target, chromium_targz())
        assert r.status_code == 410 and err(r)["code"] == "LinkExpired"


# ------------------------------------------------------------------ state and leases


def _lease(client: httpx.Client, acct: Acct, ref: str, **body: Any) -> httpx.Response:
    return client.post(
        f"/v1/profiles/{ref}/lease", headers=acct.h(), json={"host": "w1", "pid": 42, **body}
    )


def test_leases(client: httpx.Client, acct: Acct) -> None:
    p = create(client, acct, "busy")
    r = _lease(client, acct, "busy", ttl=30)
    assert r.status_code == 200
    grant = r.json()
    assert grant["profile_id"] == p["id"] and grant["epoch"] >= 1 and grant["expires_at"]
    holder = client.get("/v1/profiles/busy/lease", headers=acct.h()).json()["holder"]
    assert (holder["kind"], holder["host"], holder["pid"]) == ("session", "w1", 42)
    listed = client.get("/v1/leases", headers=acct.h()).json()["data"]
    assert [x["profile_id"] for x in listed] == [p["id"]]
    started = time.monotonic()
    r = _lease(client, acct, "busy", wait=0.5)
    assert time.monotonic() - started >= 0.5
    assert r.status_code == 409
    e = err(r)
    assert e["code"] == "ProfileBusy" and e["holder"]["host"] == "w1"
    held = acct.h(**{"X-Lease-Token": grant["token"]})
    r = client.post("/v1/profiles/busy/lease/renew", headers=held, json={"epoch": grant["epoch"]})
    assert r.json() == {"renewed": True}
    # another epoch: its token is not this one
    r = client.post(
        "/v1/profiles/busy/lease/renew", headers=held, json={"epoch": grant["epoch"] + 5}
    )
    assert r.status_code == 409 and err(r)["code"] == "LeaseLost"
    r = client.delete(f"/v1/profiles/busy/lease?epoch={grant['epoch']}", headers=held)
    assert r.status_code == 204
    assert client.get("/v1/profiles/busy/lease", headers=acct.h()).json() == {"holder": None}
    r = _lease(client, acct, "busy", kind="import")
    assert r.status_code == 200 and r.json()["epoch"] == grant["epoch"] + 1


def test_lease_expires_and_is_taken_over(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "p")
    first = _lease(client, acct, "p", ttl=0.3).json()
    time.sleep(0.5)
    assert client.get("/v1/profiles/p/lease", headers=acct.h()).json() == {"holder": None}
    second = _lease(client, acct, "p", ttl=30, host="w2").json()
    assert second["epoch"] == first["epoch"] + 1
    r = client.post(
        "/v1/profiles/p/lease/renew",
        headers=acct.h(**{"X-Lease-Token": first["token"]}),
        json={"epoch": first["epoch"]},
    )
    assert r.json() == {"renewed": False}


def _put_state(
    client: httpx.Client, acct: Acct, ref: str, data: bytes, **params: Any
) -> httpx.Response:
    checksum = params.pop("checksum", hashlib.sha256(data).hexdigest())
    token = params.pop("token", None)
    lease = {"X-Lease-Token": token} if token is not None else {}
    return client.put(
        f"/v1/profiles/{ref}/state",
        headers=acct.h(**{"X-Checksum": checksum, **lease}),
        params=params,
        content=data,
    )


def test_put_state_and_get_state(client: httpx.Client, acct: Acct, tmp_path: Path) -> None:
    create(client, acct, "p")
    grant = _lease(client, acct, "p").json()
    epoch, token = grant["epoch"], grant["token"]
    r = _put_state(
        client, acct, "p", chromium_targz("s1"), epoch=epoch, token=token, browser_version="131.0"
    )
    assert r.status_code == 200, r.text
    profile = r.json()
    assert profile["status"] == "ready" and profile["browser_version"] == "131.0"
    r = client.get("/v1/profiles/p/state", headers=acct.h())
    assert r.status_code == 200
    # A chunked state comes back as a tar stream built from its chunks, named by the state.
    assert r.headers["x-state-checksum"] == profile["checksum"]
    assert "x-checksum" not in r.headers  # the body is not the stored bytes
    unpacked = tmp_path / "got"
    unpack_archive(io.BytesIO(r.content), unpacked)
    assert detect_engine(unpacked) == "chromium"
    # a body that does not hash to its X-Checksum
    r = _put_state(
        client, acct, "p", chromium_targz("s2"), epoch=epoch, token=token, checksum="0" * 64
    )
    assert r.status_code == 400 and err(r)["code"] == "ChecksumMismatch"
    # no epoch: the server takes the lease itself, and the session holds it
    r = _put_state(client, acct, "p", chromium_targz("s3"))
    assert r.status_code == 409 and err(r)["code"] == "ProfileBusy"
    r = client.delete(
        f"/v1/profiles/p/lease?epoch={epoch}", headers=acct.h(**{"X-Lease-Token": token})
    )
    assert r.status_code == 204
    assert _put_state(client, acct, "p", chromium_targz("s3")).status_code == 200


def test_put_state_with_stale_epoch_is_lease_lost(client: httpx.Client, acct: Acct) -> None:
    create(client, acct, "p")
    first = _lease(client, acct, "p", ttl=0.2).json()
    old = first["epoch"]
    time.sleep(0.4)
    new = _lease(client, acct, "p", ttl=30).json()["epoch"]
    r = _put_state(client, acct, "p", chromium_targz("late"), epoch=old, token=first["token"])
    assert r.status_code == 409
    e = err(r)
    assert e["code"] == "LeaseLost" and e["epoch"] == old
    # The answer names the caller's epoch, not the current one (issue 20, hole 5).
    assert "current_epoch" not in e and f"epoch {new}" not in e["message"]
    assert client.get("/v1/profiles/p", headers=acct.h()).json()["status"] == "empty"


def test_a_lease_is_held_by_the_key_it_was_granted_to(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    """The epoch orders writers; the lease's token proves holding it. Another key of the
    account, or an admin member through ``X-Account``, that knows the epoch can neither
    commit, renew, release nor end the session under the holder's lease: each is a
    ``LeaseLost`` that names neither the current epoch nor a token. The holder can."""
    member = new_account(session_profile_server, name="member")
    with SQLiteAccountsDB(session_profile_server.home / "accounts.sqlite3") as db:
        _, key_b = db.create_key(acct.id, scopes=("read", "admin"), name="b")
        db.add_member(acct.id, member.id, "admin")
    p = create(client, acct, "held")
    grant = _lease(client, acct, "held", ttl=60).json()
    epoch = grant["epoch"]
    create(client, acct, "mine")
    theirs = _lease(client, acct, "mine", ttl=60).json()
    data = chromium_targz("intruder")
    checksum = hashlib.sha256(data).hexdigest()
    intruders = {
        "another key": acct.h(key_b),
        "an admin member": member.h(**{"X-Account": acct.id}),
    }
    tokens: tuple[str | None, ...] = (None, "A" * 43, theirs.get("token") or "")
    for who, headers in intruders.items():
        for token in tokens:
            h = {**headers, **({"X-Lease-Token": token} if token is not None else {})}
            answers = {
                "commit": client.put(
                    "/v1/profiles/held/state",
                    headers={**h, "X-Checksum": checksum},
                    params={"epoch": epoch},
                    content=data,
                ),
                "renew": client.post(
                    "/v1/profiles/held/lease/renew", headers=h, json={"epoch": epoch}
                ),
                "release": client.delete(f"/v1/profiles/held/lease?epoch={epoch}", headers=h),
                "end": client.post(
                    "/v1/profiles/held/sessions/end",
                    headers=h,
                    json={"epoch": epoch, "payload": {"by": "intruder"}},
                ),
            }
            for what, r in answers.items():
                assert r.status_code == 409, (who, token, what, r.status_code, r.text)
                e = err(r)
                assert e["code"] == "LeaseLost", (who, what, e)
                assert "current_epoch" not in e and "token" not in e, (who, what, e)
                if grant.get("token"):
                    assert grant["token"] not in r.text
    # Nothing happened: the holder holds, the profile has no state, no session ended.
    holder = client.get("/v1/profiles/held/lease", headers=acct.h()).json()["holder"]
    assert holder is not None and holder["host"] == "w1"
    assert client.get("/v1/profiles/held", headers=acct.h()).json()["status"] == "empty"
    events = client.get(f"/v1/audit?profile={p['id']}", headers=acct.h()).json()["data"]
    assert "session.ended" not in [e["type"] for e in events]

    # The holder's key, with the grant's token, can.
    token = grant["token"]
    assert isinstance(token, str) and len(token) >= 32 and str(epoch) != token
    mine = acct.h(**{"X-Lease-Token": token})
    r = client.post("/v1/profiles/held/lease/renew", headers=mine, json={"epoch": epoch})
    assert r.json() == {"renewed": True}
    # ... but not without it, nor with it for another epoch.
    r = client.post("/v1/profiles/held/lease/renew", headers=acct.h(), json={"epoch": epoch})
    assert r.status_code == 409 and err(r)["code"] == "LeaseLost"
    r = client.post("/v1/profiles/held/lease/renew", headers=mine, json={"epoch": epoch + 1})
    assert r.status_code == 409 and err(r)["code"] == "LeaseLost"
    r = _put_state(client, acct, "held", data, epoch=epoch)
    assert r.status_code == 409 and err(r)["code"] == "LeaseLost"
    r = client.put(
        "/v1/profiles/held/state",
        headers={**mine, "X-Checksum": checksum},
        params={"epoch": epoch},
        content=data,
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/v1/profiles/held/sessions/end",
        headers=mine,
        json={"epoch": epoch, "payload": {"by": "holder"}},
    )
    assert r.status_code == 204, r.text
    assert client.get("/v1/profiles/held/lease", headers=acct.h()).json() == {"holder": None}
    # A new grant has a new token; the old one is worth nothing under it.
    again = _lease(client, acct, "held", ttl=60).json()
    assert again["token"] != token
    r = client.delete(
        f"/v1/profiles/held/lease?epoch={again['epoch']}",
        headers=acct.h(**{"X-Lease-Token": token}),
    )
    assert r.status_code == 409
    assert client.get("/v1/profiles/held/lease", headers=acct.h()).json()["holder"]
    r = client.delete(
        f"/v1/profiles/held/lease?epoch={again['epoch']}",
        headers=acct.h(**{"X-Lease-Token": again["token"]}),
    )
    assert r.status_code == 204
    assert client.get("/v1/profiles/held/lease", headers=acct.h()).json() == {"holder": None}
    # Tokens never reach the log.
    assert (
        token not in session_profile_server.log_text()
        and again["token"] not in session_profile_server.log_text()
    )


# ------------------------------------------------------------------ limits


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_600_mb_upload_is_refused_with_flat_memory(tmp_path: Path) -> None:
    with start_http_server(tmp_path / "h") as s:
        h = s.headers()
        assert httpx.post(f"{s.url}/v1/profiles", headers=h, json={"name": "p"}).is_success
        # warm up every code path once before measuring
        r = httpx.post(
            f"{s.url}/v1/profiles/p/upload",
            headers=h,
            files={"file": ("p.tar.gz", chromium_targz())},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200
        before = _vm_hwm_kb(s.pid)
        boundary = "x" * 32
        chunk = b"\x1f\x8b" + bytes(1024 * 1024 - 2)

        def body() -> Iterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="big.tar.gz"\r\nContent-Type: application/gzip\r\n\r\n'
            ).encode()
            for _ in range(600):
                yield chunk
            yield f"\r\n--{boundary}--\r\n".encode()

        r = httpx.post(
            f"{s.url}/v1/profiles/p/upload",
            headers={**h, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
            timeout=httpx.Timeout(300.0),
        )
        assert r.status_code == 413, r.text
        e = err(r)
        assert e["code"] == "ArchiveInvalid" and e["limit"] == 500 * 1024 * 1024
        grown_mb = (_vm_hwm_kb(s.pid) - before) / 1024
        print(f"peak RSS before {before // 1024} MB, grew by {grown_mb:.1f} MB")
        assert grown_mb < 100, f"the server's peak RSS grew by {grown_mb:.0f} MB"
        # nothing of it was kept, and the profile kept its state
        assert httpx.get(f"{s.url}/v1/profiles/p", headers=h).json()["status"] == "ready"
        assert list((s.home / "accounts" / s.account_id / "tmp").glob("http-*")) == []
        # a declared Content-Length above the cap is refused before the body is read
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                (
                    "PUT /v1/profiles/p/state HTTP/1.1\r\n"
                    f"Host: {host}\r\nAuthorization: {h['Authorization']}\r\n"
                    f"X-Checksum: {'0' * 64}\r\nContent-Length: {600 * 1024 * 1024}\r\n\r\n"
                ).encode()
                + chunk
            )
            answer = b""
            while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
                answer += data
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_rate_limit_per_address_for_requests_without_a_live_key(tmp_path: Path) -> None:
    with (
        start_http_server(tmp_path / "h", extra_args=["--rate-limit", "5/60"]) as s,
        httpx.Client(base_url=s.url) as c,
    ):
        fake = "pk_" + "0" * 16 + "_" + "A" * 43  # shaped like a key, unknown
        wrong_secret = s.api_key[:-1] + ("B" if s.api_key.endswith("A") else "A")
        strangers = [
            {},
            {"Authorization": f"Bearer {fake}"},
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": "Bearer " + "x" * 5000},
            {"Authorization": f"Bearer {wrong_secret}"},  # a live key id, a wrong secret
        ]
        assert [c.get("/v1/profiles", headers=h).status_code for h in strangers] == [401] * 5
        r = c.get("/v1/profiles", headers={"Authorization": f"Bearer {fake}"})
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        body = err(r)
        assert body["code"] == "RateLimited" and body["scope"] == "address"
        assert f"in {body['retry_after']} s" in body["message"]
        # a renewal without a live key counts like the rest; health never does
        assert c.post("/v1/profiles/p/lease/renew", json={"epoch": 1}).status_code == 429
        assert c.get("/v1/health").status_code == 200
        # the address's budget is spent, but a live key has its account's own
        ok = c.get("/v1/profiles", headers=s.headers())
        assert ok.status_code == 200 and int(ok.headers["RateLimit-Remaining"]) > 5


def test_rate_limit_per_account_shared_by_its_keys_and_heartbeats_are_free(
    tmp_path: Path,
) -> None:
    with (
        start_http_server(
            tmp_path / "h",
            extra_args=["--rate-limit", "3/60", "--tier-rate-limit", "enterprise=6/60"],
        ) as s,
        httpx.Client(base_url=s.url) as c,
    ):
        profile = c.post("/v1/profiles", json={"name": "p"}, headers=s.headers()).json()
        lease = c.post(
            f"/v1/profiles/{profile['id']}/lease", json={"ttl": 60}, headers=s.headers()
        ).json()
        assert lease["profile"]["id"] == profile["id"]  # the grant carries the record
        for _ in range(20):  # heartbeats with a live key are not counted
            renew = c.post(
                f"/v1/profiles/{profile['id']}/lease/renew",
                json={"epoch": lease["epoch"], "ttl": 60},
                headers=s.headers(**{"X-Lease-Token": lease["token"]}),
            )
            assert renew.status_code == 200 and renew.json() == {"renewed": True}
        # both keys of the account share one budget: 2 spent, 4 left
        codes = [
            c.get("/v1/profiles", headers=s.headers(key)).status_code
            for key in (s.api_key, s.read_key, s.api_key, s.read_key)
        ]
        assert codes == [200] * 4
        r = c.get("/v1/profiles", headers=s.headers(s.read_key))
        assert r.status_code == 429
        assert err(r)["scope"] == "account" and err(r)["limit"] == 6
        # the account's budget is not the address's: strangers still get theirs
        assert c.get("/v1/profiles").status_code == 401


# ------------------------------------------------------------------ the CLI


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_cli_accounts_and_keys(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """The same commands on the home's SQLite file and, with ``--accounts URL``, on the
    PostgreSQL database replicas share."""
    home = tmp_path / "cli"
    where: list[str] = []
    with contextlib.ExitStack() as stack:
        if database == "postgres":
            from support.pg_service import fresh_database

            url = stack.enter_context(fresh_database(request.getfixturevalue("postgres_url")))
            where = ["--accounts", url]
        _cli_accounts_and_keys(home, capsys, where)
        if database == "sqlite":
            assert (home / "accounts.sqlite3").stat().st_mode & 0o777 == 0o600
        else:
            assert not (home / "accounts.sqlite3").exists()


def _cli_accounts_and_keys(
    home: Path, capsys: pytest.CaptureFixture[str], where: list[str]
) -> None:
    def run(*args: str) -> str:
        """A command in this process: an interpreter's start costs more than the command
        (the entry point runs in a process of its own once, for the first command)."""
        assert server_cli.main([*args, "--home", str(home), *where]) == 0
        return capsys.readouterr().out

    create = ["accounts", "create", "acme", "--tier", "solo", "--json", "--home", str(home)]
    create += where
    done = subprocess.run(
        [sys.executable, "-m", "profiles.http.server.cli", *create],
        capture_output=True,
        text=True,
        check=True,
    )
    account = json.loads(done.stdout)
    assert account["profile_cap"] == 5 and account["active"]
    key = json.loads(run("keys", "create", "--account", account["id"], "--scope", "read", "--json"))
    assert key["key"].startswith(f"pk_{key['id']}_") and key["scopes"] == ["read"]
    listed = run("keys", "list")
    assert key["id"] in listed and key["key"] not in listed
    run("keys", "revoke", key["id"])
    assert "revoked" in run("keys", "list")
    run("accounts", "deactivate", account["id"])
    assert "deactivated" in run("accounts", "list")


# ------------------------------------------------------------------ schemathesis


def test_openapi_no_server_errors(session_profile_server: HttpServer) -> None:
    """Every operation of /openapi.json, with generated requests and the admin key: the
    server never answers 5xx. (schemathesis' lazy pytest fixture loader does not run under
    pytest 9, so the operations' strategies are driven by hypothesis here.)"""
    acct = new_account(session_profile_server, name="fuzz")
    with httpx.Client(base_url=session_profile_server.url, timeout=TIMEOUT) as c:
        create(c, acct, "fuzzed")
    api = schemathesis.openapi.from_url(f"{session_profile_server.url}/openapi.json")
    results = list(api.get_all_operations())
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) == len(results)  # every operation's schema is valid
    # POST /v1/sessions starts a browser for every valid body: its hostile bodies are
    # tested in test_remote_sessions.py, without a dozen Chromiums left running here.
    operations = [o for o in operations if (o.method.upper(), o.path) != ("POST", "/v1/sessions")]
    assert len(operations) >= 25
    headers = acct.h()
    seen: list[str] = []
    for operation in operations:

        @settings(
            max_examples=12,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            response = case.call(base_url=session_profile_server.url, headers=headers, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.text)
            seen.append(f"{case.method} {response.status_code}")

        run()
    assert len(seen) >= len(operations)


def test_the_access_log_names_routes_statuses_and_accounts_never_secrets(
    tmp_path: Path,
) -> None:
    """``profiles serve --log-format json``: a line per request (method, route template,
    status, duration, account), 429s included; no key, token, query string or raw path."""
    with (
        start_http_server(
            tmp_path / "h",
            extra_args=["--tier-rate-limit", "enterprise=8/600", "--log-format", "json"],
        ) as s,
        httpx.Client(base_url=s.url, timeout=TIMEOUT) as c,
    ):
        h = s.headers()
        assert c.post("/v1/profiles", headers=h, json={"name": "logged"}).status_code == 200
        assert c.get("/v1/profiles/logged?cursor=secret-cursor", headers=h).status_code == 200
        r = c.post("/v1/profiles/logged/upload", headers=h, files={"file": ("p.tar.gz", b"x")})
        assert r.status_code == 400
        assert c.get("/v1/no/such/secret-path", headers=h).status_code == 404
        assert c.get("/v1/profiles", headers={"Authorization": "Bearer pk_bad"}).status_code == 401
        statuses = [c.get("/v1/profiles", headers=h).status_code for _ in range(5)]
        assert statuses[-1] == 429

        def all_logged() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in s.log_text().splitlines() if line.startswith("{")]
            access = [x for x in lines if x["logger"] == "profiles.http.access"]
            # The server's own health probe is a line too: wait for the last request's.
            done = len(access) >= 10 and any(x["status"] == 429 for x in access)
            return access if done else []

        access = wait_until(all_logged, timeout=30, detail=s.log_text)
    seen = {(x["method"], x["route"], x["status"]) for x in access}
    assert ("POST", "/v1/profiles", 200) in seen
    assert ("GET", "/v1/profiles/{ref}", 200) in seen
    assert ("POST", "/v1/profiles/{ref}/upload", 400) in seen
    assert ("GET", "(no route)", 404) in seen
    assert ("GET", "/v1/profiles", 401) in seen
    assert ("GET", "/v1/profiles", 429) in seen
    ok = next(x for x in access if x["route"] == "/v1/profiles/{ref}")
    assert ok["account"] == s.account_id and ok["duration_ms"] >= 0 and ok["level"] == "INFO"
    assert next(x for x in access if x["status"] == 401)["account"] is None
    text = s.log_text()
    for secret in (s.api_key, "secret-cursor", "secret-path", "pk_bad"):
        assert secret not in text, secret
    assert not [x for x in access if "logged" in json.dumps(x)]  # templates, not paths


def test_the_access_log_is_text_by_default(
    session_profile_server: HttpServer, client: httpx.Client, acct: Acct
) -> None:
    create(client, acct, "text-log")
    assert client.get("/v1/profiles/text-log", headers=acct.h()).status_code == 200

    # The line is written once the response has gone out: poll for it.
    def ours() -> list[str]:
        return [
            x
            for x in session_profile_server.log_text().splitlines()
            if f"account={acct.id}" in x and "{ref} 200" in x
        ]

    [line] = wait_until(ours, timeout=30, detail=session_profile_server.log_text)
    assert "profiles.http.access" in line and " ms " in line
