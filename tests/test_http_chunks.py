"""State as chunks through ``profiles serve``: a commit sends what changed, a checkout reads
spans, and everything a client sends is hostile input to the server (manifests, blobs,
ranges), within one account's storage.

No browser: the states are user-data-dirs made by hand (a Chromium-shaped tree with a real
SQLite cookie database), committed and checked out through ProfileStore as a session does.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard
from support.http_service import HttpServer, start_http_server

from profiles import ProfileStore
from profiles.errors import ArchiveInvalid, ChecksumMismatch, ProfileError, ValidationFailed
from profiles.http.client import HttpService
from profiles.http.server.accounts import SQLiteAccountsDB
from profiles.state.chunked import pack_chunked
from profiles.state.manifest import MANIFEST_MAGIC, encode_manifest

MiB = 1024 * 1024
DATA = Path("Default") / "IndexedDB" / "https_example.com_0.indexeddb.blob"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    with start_http_server(tmp_path_factory.mktemp("chunks") / "server-home") as running:
        yield running


def _second_key(server: HttpServer, name: str) -> str:
    """An admin key of a new account on ``server``."""
    with SQLiteAccountsDB(server.home / "accounts.sqlite3") as db:
        account = db.create_account(name, tier="enterprise")
        _, key = db.create_key(account.id, scopes=("read", "admin"), name=name)
    return key


def _store(server: HttpServer, home: Path, key: str | None = None) -> ProfileStore:
    return ProfileStore(home, service=f"{server.url}/v1", api_key=key or server.api_key)


class Sent:
    """The request bytes a store's client sends (its Content-Length headers)."""

    def __init__(self, store: ProfileStore) -> None:
        assert isinstance(store.service, HttpService)
        self.bytes = 0
        self.ranged = 0  # bytes asked for with Range
        self.requests: list[str] = []
        store.service._client.event_hooks["request"].append(self._count)

    def _count(self, request: httpx.Request) -> None:
        self.bytes += int(request.headers.get("content-length", "0"))
        span = request.headers.get("range")
        if span:
            first, last = span.removeprefix("bytes=").split("-")
            self.ranged += int(last) - int(first) + 1
        self.requests.append(f"{request.method} {request.url.path}")

    def reset(self) -> None:
        self.bytes = self.ranged = 0
        self.requests.clear()


def _chromium_tree(root: Path, *, megabytes: int, hosts: list[str]) -> None:
    """A Chromium-shaped user-data-dir: incompressible site data, a Last Version, and a
    real cookie database holding ``hosts``."""
    (root / "Default" / "Network").mkdir(parents=True)
    (root / DATA).mkdir(parents=True)
    for i in range(megabytes):
        (root / DATA / f"f_{i:04d}").write_bytes(os.urandom(MiB))
    (root / "Default" / "Preferences").write_text('{"profile": {"name": "Person 1"}}')
    (root / "Last Version").write_text("140.0.7339.80")
    with sqlite3.connect(root / "Default" / "Network" / "Cookies") as db:
        db.execute("CREATE TABLE cookies (host_key TEXT, name TEXT, value TEXT)")
        db.executemany("INSERT INTO cookies VALUES (?, 'sid', 'secret')", [(h,) for h in hosts])
    db.close()


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _commit(
    store: ProfileStore, name: str, source: Path | None = None, change: bytes = b""
) -> None:
    """A writer session's path: lease, checkout, change the working copy, commit."""
    with store.lock(name) as lease:
        profile, work = store.checkout(name, lock=lease)
        if source is not None:
            for path in sorted(source.rglob("*")):
                target = work / path.relative_to(source)
                if path.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.write_bytes(path.read_bytes())
        if change:
            (work / "Default" / "Preferences").write_bytes(change)
        store.commit_state(profile, work, epoch=lease.epoch)


def test_a_small_change_sends_what_changed_and_reads_back_on_a_fresh_machine(
    server: HttpServer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    _chromium_tree(source, megabytes=12, hosts=["example.com", ".login.example.org"])
    with _store(server, tmp_path / "machine-a") as a:
        sent = Sent(a)
        a.create("chunked-small", archetype="desktop-chromium")
        _commit(a, "chunked-small", source)
        first = sent.bytes
        assert first > 12 * MiB  # the first commit sends the whole state, once
        sent.reset()
        _commit(a, "chunked-small", change=b'{"profile": {"name": "Person 2"}}')
        assert sent.bytes < MiB, sent.requests  # one pack and a manifest, not 12 MB
        assert not any(r.endswith("/state") for r in sent.requests)  # no archive route
        profile = a.get("chunked-small")
        # Read by the server from the state's own cookie database.
        assert profile.cookie_domains == ["example.com", "login.example.org"]
        assert profile.browser_version == "140.0.7339.80"
    with _store(server, tmp_path / "machine-b") as b, b.lock("chunked-small") as lease:
        _, work = b.checkout("chunked-small", lock=lease)
        got = _tree_digest(work)
    want = _tree_digest(source)
    want["Default/Preferences"] = hashlib.sha256(b'{"profile": {"name": "Person 2"}}').hexdigest()
    assert got == want


def test_a_warm_copy_applies_what_another_machine_changed(
    server: HttpServer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    _chromium_tree(source, megabytes=4, hosts=["a.example"])
    with _store(server, tmp_path / "a") as a, _store(server, tmp_path / "b") as b:
        a.create("warm", archetype="desktop-chromium")
        _commit(a, "warm", source)
        _commit(b, "warm", change=b"changed on b")  # b: a cold checkout, then a commit
        received = Sent(a)
        with a.lock("warm") as lease:
            _, work = a.checkout("warm", lock=lease)
            assert (work / "Default" / "Preferences").read_bytes() == b"changed on b"
            assert (work / DATA / "f_0003").read_bytes() == (source / DATA / "f_0003").read_bytes()
        # Nothing uploaded by a checkout; the unchanged 4 MB are not fetched again.
        assert not [r for r in received.requests if r.startswith("PUT")]
        assert 0 < received.ranged < MiB


def test_the_server_reads_cookie_domains_itself(server: HttpServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    _chromium_tree(source, megabytes=1, hosts=["real.example"])
    with _store(server, tmp_path / "home") as store:
        profile = store.create("told", archetype="desktop-chromium")
        service = store.service
        assert isinstance(service, HttpService)
        with store.lock("told") as lease:
            updated, _ = service.commit_directory(
                profile,
                source,
                previous=None,
                previous_stat=None,
                browser_version="999.0.0.0",
                cookie_domains=["lie.example"],
                epoch=lease.epoch,
                event="state.uploaded",
            )
        assert updated.cookie_domains == ["real.example"]
        assert updated.browser_version == "140.0.7339.80"


def _raw(server: HttpServer, key: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.url}/v1/",
        headers={"Authorization": f"Bearer {key or server.api_key}"},
        timeout=30,
    )


def _put(client: httpx.Client, data: bytes, name: str | None = None) -> httpx.Response:
    name = name or hashlib.sha256(data).hexdigest()
    return client.put(f"state/blobs/{name}", content=data)


def _manifest_of(tree: Path, tmp_path: Path) -> tuple[bytes, list[Path]]:
    """The manifest blob and pack files of ``tree`` as a client would make them."""
    from profiles.blobs import LocalBlobStore

    blobs = LocalBlobStore(tmp_path / "client-blobs")
    result = pack_chunked(tree, "chromium", blobs)
    manifest = blobs.local_path(result.checksum)
    assert manifest is not None
    packs = [p for b in result.manifest.packs if (p := blobs.local_path(b[0])) is not None]
    return manifest.read_bytes(), packs


def test_hostile_blobs_and_manifests_are_refused(server: HttpServer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _chromium_tree(tree, megabytes=1, hosts=["h.example"])
    manifest, packs = _manifest_of(tree, tmp_path)
    checksum = hashlib.sha256(manifest).hexdigest()
    with _store(server, tmp_path / "home") as store, _raw(server) as client:
        store.create("hostile", archetype="desktop-chromium")
        # A body that does not hash to its name is not kept.
        answer = _put(client, b"not the bytes", "0" * 64)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == ChecksumMismatch.code
        assert client.head(f"state/blobs/{'0' * 64}").status_code == 404
        # Names that are not SHA-256 hex.
        assert _put(client, b"x", "../../etc/passwd").status_code in (400, 404)
        assert client.get("state/blobs/ABC").status_code == 400
        # A manifest whose packs were never uploaded.
        assert _put(client, manifest).status_code == 200
        answer = client.post("profiles/hostile/state/commit", json={"checksum": checksum})
        assert answer.status_code == 400, answer.text
        assert "does not hold" in answer.json()["error"]["message"]
        # A blob that is not a manifest.
        junk = os.urandom(1000)
        assert _put(client, junk).status_code == 200
        answer = client.post(
            "profiles/hostile/state/commit", json={"checksum": hashlib.sha256(junk).hexdigest()}
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == ArchiveInvalid.code
        # A manifest of another engine than the profile's.
        store.create("fox", archetype="desktop-firefox")
        for pack in packs:
            assert _put(client, pack.read_bytes()).status_code == 200
        answer = client.post("profiles/fox/state/commit", json={"checksum": checksum})
        assert answer.status_code == 400
        assert "chromium" in answer.json()["error"]["message"]
        # A pack whose chunks are not what the manifest says: same size, other bytes.
        forged_tree = tmp_path / "forged"
        _chromium_tree(forged_tree, megabytes=1, hosts=["h.example"])
        forged_manifest, forged_packs = _manifest_of(forged_tree, tmp_path / "other")
        from profiles.state.manifest import parse_manifest

        parsed = parse_manifest(forged_manifest)
        pack_name, pack_size = parsed.packs[0]
        bogus = zstandard.ZstdCompressor().compress(os.urandom(pack_size))[:pack_size]
        bogus = bogus.ljust(pack_size, b"\0")
        forged = parsed.model_copy(
            update={"packs": ((hashlib.sha256(bogus).hexdigest(), pack_size), *parsed.packs[1:])}
        )
        forged_blob = encode_manifest(forged)
        assert forged_blob.startswith(MANIFEST_MAGIC)
        assert _put(client, bogus).status_code == 200
        for pack in forged_packs[1:]:
            assert _put(client, pack.read_bytes()).status_code == 200
        assert _put(client, forged_blob).status_code == 200
        answer = client.post(
            "profiles/hostile/state/commit",
            json={"checksum": hashlib.sha256(forged_blob).hexdigest()},
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == ArchiveInvalid.code
        assert pack_name  # the honest pack was never uploaded under the forged name
        # The profile kept no state from any of it.
        assert store.get("hostile").checksum is None
        # Ranges: one span, bounded, well-formed.
        assert (
            client.get(f"state/blobs/{checksum}", headers={"Range": "bytes=5-1"}).status_code == 400
        )
        assert (
            client.get(f"state/blobs/{checksum}", headers={"Range": "bytes=0-99999999"}).status_code
            == 400
        )
        assert (
            client.get(f"state/blobs/{checksum}", headers={"Range": "bytes=0-1,4-5"}).status_code
            == 400
        )
        span = client.get(f"state/blobs/{checksum}", headers={"Range": "bytes=0-7"})
        assert span.status_code == 206 and span.content == manifest[:8]


def test_nothing_crosses_accounts(server: HttpServer, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _chromium_tree(tree, megabytes=1, hosts=["mine.example"])
    manifest, packs = _manifest_of(tree, tmp_path)
    checksum = hashlib.sha256(manifest).hexdigest()
    other_key = _second_key(server, "other-account")
    with _raw(server) as mine, _raw(server, other_key) as theirs:
        for blob in (*[p.read_bytes() for p in packs], manifest):
            assert _put(mine, blob).status_code == 200
        # The other account can neither learn that the bytes exist nor read them...
        for pack in packs:
            name = (
                pack.name if len(pack.name) == 64 else hashlib.sha256(pack.read_bytes()).hexdigest()
            )
            assert theirs.head(f"state/blobs/{name}").status_code == 404
            assert theirs.get(f"state/blobs/{name}").status_code == 404
        # ...nor commit a manifest that names them.
        assert theirs.post("profiles", json={"name": "thief", "archetype": "desktop-chromium"})
        assert _put(theirs, manifest).status_code == 200
        answer = theirs.post("profiles/thief/state/commit", json={"checksum": checksum})
        assert answer.status_code == 400
        assert "does not hold" in answer.json()["error"]["message"]


def test_a_read_key_reads_blobs_but_cannot_write_them(server: HttpServer, tmp_path: Path) -> None:
    with _raw(server, server.read_key) as reader:
        answer = _put(reader, b"hello")
        assert answer.status_code == 403
        assert reader.head(f"state/blobs/{hashlib.sha256(b'hello').hexdigest()}").status_code == 404


def test_archive_states_convert_to_chunks_through_http(server: HttpServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    _chromium_tree(source, megabytes=2, hosts=["old.example"])
    # A state an older server stored as one archive: written into the account's store.
    with ProfileStore(server.home / "accounts" / server.account_id, chunked=False) as old:
        old.create("legacy", archetype="desktop-chromium")
        old.commit_state("legacy", source)
        assert old.service.manifest_of(old.get("legacy")) is None  # a whole archive
    with _store(server, tmp_path / "new") as new:
        migrated = new.migrate("legacy")
        assert migrated is not None and migrated.checksum is not None
        assert new.service.manifest_of(migrated) is not None
        with new.lock("legacy") as lease:
            _, work = new.checkout("legacy", lock=lease)
            assert _tree_digest(work) == _tree_digest(source)


def test_a_commit_without_a_lease_of_its_own_is_fenced(server: HttpServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    _chromium_tree(source, megabytes=1, hosts=["f.example"])
    with _store(server, tmp_path / "a") as a:
        a.create("fenced", archetype="desktop-chromium")
        with a.lock("fenced") as lease:
            profile, work = a.checkout("fenced", lock=lease)
            (work / "x").write_bytes(b"1")
            with pytest.raises(ProfileError) as caught:
                a.commit_state(profile, work, epoch=lease.epoch + 1000)
            assert caught.value.code in ("LeaseLost", "Conflict")
        assert a.get("fenced").checksum is None
    with _store(server, tmp_path / "c") as c:
        service = c.service
        assert isinstance(service, HttpService)
        with pytest.raises(ValidationFailed, match="epoch"):
            service.commit_directory(
                c.get("fenced"),
                source,
                previous=None,
                previous_stat=None,
                browser_version=None,
                cookie_domains=[],
                epoch=None,
                event="state.uploaded",
                end_session={"reason": "x"},
            )


def _push(
    client: httpx.Client, ref: str, header: dict[str, object], *parts: bytes
) -> httpx.Response:
    import json

    body = json.dumps(header).encode() + b"\n" + b"".join(parts)
    return client.post(
        f"profiles/{ref}/state/push",
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )


def test_a_push_carries_a_small_commit_in_one_request_and_refuses_what_does_not_add_up(
    server: HttpServer, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    _chromium_tree(tree, megabytes=1, hosts=["push.example"])
    manifest, packs = _manifest_of(tree, tmp_path)
    blobs = [p.read_bytes() for p in packs] + [manifest]
    listed = [{"checksum": hashlib.sha256(b).hexdigest(), "size": len(b)} for b in blobs]
    commit = {"checksum": hashlib.sha256(manifest).hexdigest()}
    with _store(server, tmp_path / "home") as store, _raw(server) as client:
        store.create("pushed", archetype="desktop-chromium")
        # Declared sizes that the body does not hold: short, long, or a part that lies.
        short = _push(client, "pushed", {"commit": commit, "blobs": listed}, *blobs[:-1])
        assert short.status_code == 400 and "short" in short.json()["error"]["message"]
        extra = _push(client, "pushed", {"commit": commit, "blobs": listed}, *blobs, b"x")
        assert extra.status_code == 400 and "more bytes" in extra.json()["error"]["message"]
        lying = [dict(listed[0], checksum="f" * 64), *listed[1:]]
        answer = _push(client, "pushed", {"commit": commit, "blobs": lying}, *blobs)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == ChecksumMismatch.code
        # Header: not JSON, unknown fields, too many blobs, too many bytes, no newline.
        bad = client.post("profiles/pushed/state/push", content=b"{not json}\n")
        assert bad.status_code == 400
        assert _push(client, "pushed", {"commit": commit, "evil": 1}).status_code == 400
        many = [{"checksum": "0" * 64, "size": 1}] * 65
        assert _push(client, "pushed", {"commit": commit, "blobs": many}).status_code == 400
        huge = [{"checksum": "0" * 64, "size": 40 * MiB}] * 2
        assert _push(client, "pushed", {"commit": commit, "blobs": huge}).status_code == 413
        endless = client.post("profiles/pushed/state/push", content=b"{" + b" " * 300_000)
        assert endless.status_code in (400, 413)
        assert store.get("pushed").checksum is None  # nothing of it committed
        # Without a key, nothing is read.
        assert (
            httpx.post(f"{server.url}/v1/profiles/pushed/state/push", content=b"{}\n").status_code
            == 401
        )
        # The honest push: one request, and the state is the tree.
        done = _push(client, "pushed", {"commit": commit, "blobs": listed}, *blobs)
        assert done.status_code == 200, done.text
        assert done.json()["cookie_domains"] == ["push.example"]
    with _store(server, tmp_path / "reader") as reader, reader.lock("pushed") as lease:
        _, work = reader.checkout("pushed", lock=lease)
        assert _tree_digest(work) == _tree_digest(tree)
