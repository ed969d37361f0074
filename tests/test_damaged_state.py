"""A stored state damaged in the blob store reads as ``StateCorrupt`` naming the profile read,
never as a bad upload (``ArchiveInvalid``) or a fault of the wire, on the embedded store and
through a real ``profiles serve`` (issue 20, hole 7).

Each case commits a state (chunked, or a whole archive: the format before chunking), damages
one stored object directly in the blob store (the manifest, a pack, the archive), then reads
it one way: an export, a checkout (materialised afresh), a private copy (a read-only
session), a profile restored from a snapshot of it, a clone of it with its state. Reads go
through another store than the one that committed (another process, as it were), so nothing
read before the damage is remembered.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import zstandard
from support.http_service import HttpServer, start_http_server
from support.storefaults import chromium_dir

from profiles import ProfileStore, StateCorrupt, StorageUnavailable
from profiles.blobs.local import LocalBlobStore
from profiles.catalog.sqlite import SQLiteCatalog
from profiles.http.client import _StateReader
from profiles.http.outcome import TRAILER_BYTES, trailer
from profiles.models import Profile
from profiles.service.catalog import CatalogService
from profiles.state.manifest import MANIFEST_MAGIC

PAYLOAD = 600 * 1024  # random, so a state's packs are its own; past one streamed piece


def _object(blobs: Path, checksum: str) -> Path:
    path = blobs / "sha256" / checksum[:2] / checksum
    assert path.is_file(), path
    os.chmod(path, 0o600)
    return path


def _overwrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) * 3 // 4  # past the head: read after a stream has started
    for i in range(at, min(at + 16, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


Damage = Callable[[Path], None]

#: What is damaged (the state's own blob, or its first pack) and how.
MANIFEST_DAMAGES: dict[str, Damage] = {
    "manifest-random": lambda p: _overwrite(p, os.urandom(p.stat().st_size)),
    "manifest-truncated": _truncate,
    "manifest-flipped": _flip,
    "manifest-zstd-of-garbage": lambda p: _overwrite(p, MANIFEST_MAGIC + _zstd(os.urandom(4096))),
    "manifest-bare-zstd-of-garbage": lambda p: _overwrite(p, _zstd(os.urandom(4096))),
    "manifest-gzip-of-garbage": lambda p: _overwrite(p, b"\x1f\x8b" + os.urandom(4096)),
    "manifest-wrong-shape": lambda p: _overwrite(
        p, MANIFEST_MAGIC + _zstd(b'{"engine":"chromium","version":2}')
    ),
    "manifest-json-list": lambda p: _overwrite(p, MANIFEST_MAGIC + _zstd(b"[1,2,3]")),
    "manifest-empty": lambda p: _overwrite(p, b""),
    "manifest-deleted": lambda p: p.unlink(),
}
PACK_DAMAGES: dict[str, Damage] = {
    "pack-deleted": lambda p: p.unlink(),
    "pack-truncated": _truncate,
    "pack-flipped": _flip,
    "pack-random": lambda p: _overwrite(p, os.urandom(p.stat().st_size)),
}
ARCHIVE_DAMAGES: dict[str, Damage] = {
    "archive-truncated": _truncate,
    "archive-random": lambda p: _overwrite(p, os.urandom(p.stat().st_size)),
    "archive-flipped": _flip,
    "archive-garbage-after-magic": lambda p: _overwrite(p, p.read_bytes()[:4] + os.urandom(2048)),
    "archive-deleted": lambda p: p.unlink(),
}
DAMAGES = {**MANIFEST_DAMAGES, **PACK_DAMAGES, **ARCHIVE_DAMAGES}
READS = ("export", "checkout", "private-copy", "restored", "cloned")


def _damage(name: str, blobs: Path, profile: Profile, writer: ProfileStore) -> None:
    assert profile.checksum is not None
    if name in PACK_DAMAGES:
        assert isinstance(writer.service, CatalogService)
        manifest = writer.service.manifest_of(profile)
        assert manifest is not None and manifest.packs
        target = _object(blobs, manifest.packs[0][0])
    else:
        target = _object(blobs, profile.checksum)
    DAMAGES[name](target)


def _read(how: str, store: ProfileStore, profile: Profile, scratch: Path) -> str:
    """Read the state ``how``; the name of the profile whose state is read."""
    if how == "export":
        store.export_state(profile.name, scratch / "export.tar.gz")
        return profile.name
    if how == "checkout":
        with store.lock(profile.name) as lease:
            store.checkout(profile.name, lock=lease)
        return profile.name
    if how == "private-copy":
        store.private_copy(profile.name, scratch / "copy")
        return profile.name
    if how == "restored":
        made = store.restore(store.snapshot(profile.name).id)
    else:
        made = store.clone(profile.name, with_state=True)
    with store.lock(made.name) as lease:
        store.checkout(made.name, lock=lease)
    return made.name


#: What a message says of the stored object (from the store's side, also over HTTP).
REASONS = ("damaged", "missing", "does not hash", "does not match", "shorter", "corrupt", "early")


def _check(error: StateCorrupt, how: str, name: str) -> None:
    """The error names the profile read (a restored or cloned one: the new profile, named
    after the damaged one) and says what is wrong with the stored bytes."""
    message = error.message
    expected = repr(name) if how in ("export", "checkout", "private-copy") else repr(name)[:-1]
    assert expected in message, message
    assert "profile_id" in error.details, error.details
    assert any(reason in message for reason in REASONS), message
    assert "Only .tar.gz" not in message and "is empty" not in message, message


def _cases() -> Iterator[tuple[str, str]]:
    for damage in DAMAGES:
        for how in READS:
            yield damage, how


@pytest.mark.parametrize(("damage", "how"), list(_cases()))
def test_embedded(damage: str, how: str, tmp_path: Path) -> None:
    home = tmp_path / "store"
    with ProfileStore(home, chunked=damage not in ARCHIVE_DAMAGES) as writer:
        name = f"p-{uuid.uuid4().hex[:8]}"
        writer.create(name)
        profile = writer.commit_state(name, chromium_dir(tmp_path / "src", payload_bytes=PAYLOAD))
        _damage(damage, home / "blobs", profile, writer)
    # Another machine's workspace on the same catalog and blobs: nothing kept from before.
    reader = ProfileStore(
        tmp_path / "reader",
        catalog=SQLiteCatalog(home / "catalog.sqlite3"),
        blobs=LocalBlobStore(home / "blobs"),
    )
    with reader, pytest.raises(StateCorrupt) as info:
        read = _read(how, reader, reader.get(name), tmp_path)
        pytest.fail(f"{read} was read whole")
    _check(info.value, how, name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    with start_http_server(tmp_path_factory.mktemp("damaged") / "server-home") as running:
        yield running


@pytest.mark.parametrize(("damage", "how"), list(_cases()))
def test_through_http(damage: str, how: str, server: HttpServer, tmp_path: Path) -> None:
    client = ProfileStore(tmp_path / "client", service=f"{server.url}/v1", api_key=server.api_key)
    with client:
        name = f"p-{uuid.uuid4().hex[:8]}"
        client.create(name)  # the account's store now exists on the server
        account_home = server.home / "accounts" / server.account_id
        # Committed on the server's store directly: the server has read nothing of it yet.
        with ProfileStore(account_home, chunked=damage not in ARCHIVE_DAMAGES) as writer:
            seed = random.randrange(1 << 30)
            src = chromium_dir(tmp_path / "src", payload_bytes=PAYLOAD, seed=seed)
            profile = writer.commit_state(name, src)
            _damage(damage, account_home / "blobs", profile, writer)
        with pytest.raises(StateCorrupt) as info:
            read = _read(how, client, client.get(name), tmp_path)
            pytest.fail(f"{read} was read whole")
    _check(info.value, how, name)


# ---------------------------------------------------------------- the stream's trailer


def _reader(body: bytes, *, outcome: bool) -> io.BufferedReader:
    response = httpx.Response(200, content=body)
    raw = _StateReader(
        response,
        expected=None,
        size=None,
        location="http://server/v1",
        name="p",
        progress=None,
        outcome=outcome,
    )
    return io.BufferedReader(raw)


def test_a_streamed_state_ends_with_how_it_ended() -> None:
    """A rendered state's body ends with a trailer (profiles.http.outcome): held back from
    the reader; an error in it is raised as itself; a body without one was cut short on
    the way, which is the wire's fault (transient), not the state's."""
    data = os.urandom(3 * TRAILER_BYTES + 7)
    assert _reader(data + trailer(), outcome=True).read() == data
    assert _reader(trailer(), outcome=True).read() == b""
    damaged = StateCorrupt("The committed state of profile 'p' cannot be read.", profile_id="x")
    with pytest.raises(StateCorrupt) as info:
        _reader(data + trailer(damaged), outcome=True).read()
    assert info.value.message == damaged.message and info.value.details == damaged.details
    for cut in (data, data + trailer()[:-1], b""):
        with pytest.raises(StorageUnavailable) as cut_short:
            _reader(cut, outcome=True).read()
        assert cut_short.value.transient and "before the server said" in cut_short.value.message
    assert _reader(data, outcome=False).read() == data  # an old server: no trailer
    # zstd tools (and older clients) skip the frame: the body stays a valid .tar.zst.
    packed = zstandard.ZstdCompressor().compress(data) + trailer(damaged)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(packed) == data
    long = StateCorrupt("x" * 10_000, profile_id="y", many=["z" * 100] * 100)
    assert len(trailer(long)) == TRAILER_BYTES


def test_the_collector_deletes_nothing_while_a_kept_manifest_is_damaged(tmp_path: Path) -> None:
    """Which packs a damaged manifest needs is unknown: the collector deletes nothing (a
    manifest put back from a backup must find its packs) and says which states to see to."""
    blobs = tmp_path / "store" / "blobs"
    with ProfileStore(tmp_path / "store") as store:
        store.create("p")
        profile = store.commit_state("p", chromium_dir(tmp_path / "src", payload_bytes=PAYLOAD))
        assert profile.checksum is not None
        garbage = os.urandom(100)  # referenced by nothing: collected when all is well
        store.blobs.put(hashlib.sha256(garbage).hexdigest(), io.BytesIO(garbage), size=100)
        _overwrite(_object(blobs, profile.checksum), os.urandom(1000))
    before = sorted(p.name for p in (blobs / "sha256").rglob("*") if p.is_file())
    with ProfileStore(tmp_path / "store") as store:
        with pytest.raises(StateCorrupt, match="Nothing was collected") as info:
            store.collect_garbage(min_age=0)
        assert profile.checksum in info.value.message
        assert sorted(p.name for p in (blobs / "sha256").rglob("*") if p.is_file()) == before
        assert [c for c, _ in store.verify()] == [profile.checksum]
