"""State archives: hostile input never escapes or half-lands; real profiles round-trip."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from support.archives import Unsized, assert_untouched

from driver import Session
from profiles import ArchiveInvalid, ProfileStore
from profiles.state.archive import (
    ArchiveLimits,
    detect_codec,
    pack_dir,
    remove_engine_locks,
    tree_digest,
    unpack_archive,
)
from profiles.state.inspection import detect_engine, read_browser_version, read_cookie_domains
from profiles.state.rules import RULES, Engine

from conftest import ARCHETYPE_OF

MiB = 1024 * 1024


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


HOSTILE: dict[str, tuple[Callable[[], bytes], str]] = {
    "dot-dot path": (
        lambda: _gz(_tar([(_member("../escaped.txt"), b"x")])),
        "outside the profile",
    ),
    "nested dot-dot": (
        lambda: _gz(_tar([(_member("Default/../../escaped.txt"), b"x")])),
        "outside the profile",
    ),
    "absolute path": (
        lambda: _gz(_tar([(_member("/tmp/escaped-absolute.txt"), b"x")])),
        "outside the profile",
    ),
    "symlink escape": (
        lambda: _gz(_tar([(_member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None)])),
        "symbolic link",
    ),
    "symlink then file through it": (
        lambda: _gz(
            _tar(
                [
                    (_member("dir", tarfile.SYMTYPE, linkname=".."), None),
                    (_member("dir/escaped.txt"), b"x"),
                ]
            )
        ),
        "symbolic link",
    ),
    "hardlink escape": (
        lambda: _gz(_tar([(_member("hard", tarfile.LNKTYPE, linkname="/etc/passwd"), None)])),
        "hard link",
    ),
    "character device": (
        lambda: _gz(_tar([(_member("tty", tarfile.CHRTYPE, devmajor=5, devminor=0), None)])),
        "character device",
    ),
    "block device": (
        lambda: _gz(_tar([(_member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0), None)])),
        "block device",
    ),
    "fifo": (lambda: _gz(_tar([(_member("pipe", tarfile.FIFOTYPE), None)])), "FIFO"),
    "truncated gzip": (
        lambda: _gz(_tar([(_member("Local State"), os.urandom(200_000))]))[:50_000],
        "not a complete",
    ),
    "zstd garbage": (lambda: b"\x28\xb5\x2f\xfd" + os.urandom(4096), "not a complete"),
    "zip renamed": (lambda: _zip(), "ZIP"),
    "empty file": (lambda: b"", "empty"),
    "gzip of text": (lambda: _gz(b"hello, this is not a tar archive at all\n" * 100), "not a"),
    "plain text": (lambda: b"just text", "Only .tar.gz"),
}


def _zip() -> bytes:
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w") as z:
        z.writestr("Local State", "{}")
    return raw.getvalue()


def _bomb(size: int) -> bytes:
    """A zstd tar whose one member expands to ``size`` bytes of zeros, made in chunks."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as z:
        header = _member("Default/History")
        header.size = size
        z.write(header.tobuf(format=tarfile.PAX_FORMAT))
        zeros = bytes(MiB)
        for _ in range(size // MiB):
            z.write(zeros)
        z.write(bytes(2 * tarfile.RECORDSIZE))
    return out.getvalue()


def _assert_untouched(area: Path, target: Path, tmp_path: Path) -> None:
    assert_untouched(area, target)
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/escaped-absolute.txt").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_cleanly(
    case: str, tmp_path: Path, target_area: tuple[Path, Path]
) -> None:
    make, message = HOSTILE[case]
    area, target = target_area
    source = tmp_path / "upload.tar.gz"
    source.write_bytes(make())
    with pytest.raises(ArchiveInvalid, match=message) as err:
        unpack_archive(source, target, replace=True)
    assert err.value.status == 400 and err.value.code == "ArchiveInvalid"
    _assert_untouched(area, target, tmp_path)


def test_a_one_gigabyte_bomb_stops_before_writing(
    tmp_path: Path, target_area: tuple[Path, Path]
) -> None:
    area, target = target_area
    bomb = _bomb(1024 * MiB)
    assert len(bomb) < 2 * MiB
    with pytest.raises(ArchiveInvalid, match="decompression bomb"):
        unpack_archive(io.BytesIO(bomb), target, replace=True)
    _assert_untouched(area, target, tmp_path)


def test_a_bomb_from_a_stream_of_unknown_size_stops_early(tmp_path: Path) -> None:
    limits = ArchiveLimits(ratio_floor=8 * MiB)
    with pytest.raises(ArchiveInvalid, match="bomb"):
        unpack_archive(Unsized(_bomb(256 * MiB)), tmp_path / "t", limits=limits)
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_caps_on_members_size_and_compressed_bytes(tmp_path: Path) -> None:
    many = _gz(_tar([(_member(f"f{i}"), b"x") for i in range(50)]))
    with pytest.raises(ArchiveInvalid, match="more than 10 members"):
        unpack_archive(io.BytesIO(many), tmp_path / "a", limits=ArchiveLimits(max_members=10))
    big = _gz(_tar([(_member("big"), os.urandom(2 * MiB))]))
    with pytest.raises(ArchiveInvalid, match="per file"):
        unpack_archive(io.BytesIO(big), tmp_path / "b", limits=ArchiveLimits(max_member_bytes=MiB))
    with pytest.raises(ArchiveInvalid, match="upload limit"):
        unpack_archive(
            io.BytesIO(big), tmp_path / "c", limits=ArchiveLimits(max_compressed_bytes=MiB)
        )
    path = tmp_path / "big.tar.gz"
    path.write_bytes(big)
    with pytest.raises(ArchiveInvalid, match="upload limit"):
        unpack_archive(path, tmp_path / "d", limits=ArchiveLimits(max_compressed_bytes=MiB))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tar.gz"]


def test_unpack_refuses_an_existing_target_without_replace(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    with pytest.raises(ValueError, match="replace=True"):
        unpack_archive(io.BytesIO(_gz(_tar([]))), tmp_path / "t")


def test_codec_is_read_from_magic_bytes_not_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "Default").mkdir(parents=True)
    (src / "Local State").write_text("{}")
    for codec in ("gzip", "zstd"):
        misnamed = tmp_path / f"{codec}.zip"  # the name lies; the bytes decide
        with misnamed.open("wb") as f:
            pack_dir(src, f, engine="chromium", codec=codec)  # type: ignore[arg-type]
        assert detect_codec(misnamed.read_bytes()[:4]) == codec
        stats = unpack_archive(misnamed, tmp_path / f"out-{codec}")
        assert stats.codec == codec
        assert tree_digest(tmp_path / f"out-{codec}") == tree_digest(src)


def test_exclude_rules_are_data() -> None:
    chromium = RULES["chromium"]
    for kept in (
        "Local State",
        "Last Version",
        "Default/Cookies",
        "Default/Network/Cookies",
        "Default/Local Storage/leveldb/000003.log",
        "Default/IndexedDB/x/1.ldb",
        "Default/Service Worker/Database/CURRENT",
        "Default/Service Worker/CacheStorage/a",
        "Default/Preferences",
        "Default/Login Data",
        "Default/Web Data",
    ):
        assert not chromium.excludes(kept), kept
    for dropped in (
        "Default/Cache/Cache_Data/data_0",
        "Default/Code Cache/js/index",
        "GrShaderCache/data_0",
        "Default/GPUCache/index",
        "Safe Browsing/x",
        "SingletonLock",
        "Default/blob_storage/x",
        "component_crx_cache/a",
        "optimization_guide_model_store/x",
        "Crashpad/settings.dat",
    ):
        assert chromium.excludes(dropped), dropped
    firefox = RULES["firefox"]
    for kept in (
        "cookies.sqlite",
        "cookies.sqlite-wal",
        "places.sqlite-journal",
        "prefs.js",
        "storage/default/http+++127.0.0.1/ls/data.sqlite",
        "storage.sqlite",
    ):
        assert not firefox.excludes(kept), kept
    for dropped in (
        "cache2/entries/A",
        "startupCache/scriptCache.bin",
        "lock",
        ".parentlock",
        "storage/temporary/x",
        "storage/to-be-removed/x",
        "cookies.sqlite-shm",
        "datareporting/state.json",
        "minidumps/x.dmp",
    ):
        assert firefox.excludes(dropped), dropped
    assert RULES["webkit"].excludes("NetworkCache/Records/x")


@pytest.fixture(scope="module")
def real_profiles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """User-data-dirs left by real Chromium and Firefox sessions that visited a local page."""
    import http.server
    import threading

    from conftest import _QuietHandler, require_engine

    for engine in ("chromium", "firefox"):
        require_engine(engine)  # type: ignore[arg-type]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    home = tmp_path_factory.mktemp("real-home")
    found: dict[str, Path] = {}
    with ProfileStore(home) as store:
        for engine in ("chromium", "firefox"):
            with Session(profile=engine, store=store, archetype=ARCHETYPE_OF[engine]) as page:  # type: ignore[index]
                page.goto(f"{base}/set-cookie")
                page.evaluate("window.idbPut('k', 1)")
            found[engine] = store.working_copies.path(store.get(engine).id)
    server.shutdown()
    server.server_close()
    return found


@pytest.mark.parametrize("engine", ["chromium", "firefox"])
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_real_profiles_round_trip(
    real_profiles: dict[str, Path], engine: Engine, codec: str, tmp_path: Path
) -> None:
    src = real_profiles[engine]
    assert detect_engine(src) == engine
    assert "127.0.0.1" in read_cookie_domains(src, engine)
    assert read_browser_version(src, engine)
    archive = tmp_path / "state"
    with archive.open("wb") as f:
        stats = pack_dir(src, f, engine=engine, codec=codec)  # type: ignore[arg-type]
    assert stats.compressed_bytes == archive.stat().st_size
    assert stats.excluded_files > 0
    unpack_archive(archive, tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(src, engine=engine)
    left_out = {p.relative_to(src).as_posix() for p in src.rglob("*")} - {
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
    }
    assert left_out and all(RULES[engine].excludes(p) for p in left_out)


def test_stale_engine_locks_are_removed(real_profiles: dict[str, Path], tmp_path: Path) -> None:
    chromium = tmp_path / "c"
    (chromium / "Default").mkdir(parents=True)
    os.symlink("somehost-1234", chromium / "SingletonLock")  # dangling, as Chromium leaves it
    (chromium / "SingletonCookie").write_text("x")
    assert remove_engine_locks(chromium, "chromium") == ["SingletonCookie", "SingletonLock"]
    assert list(chromium.iterdir()) == [chromium / "Default"]
    firefox = tmp_path / "f"
    firefox.mkdir()
    os.symlink("127.0.0.1:+1234", firefox / "lock")
    (firefox / ".parentlock").write_text("")
    (firefox / "prefs.js").write_text("")
    assert remove_engine_locks(firefox, "firefox") == [".parentlock", "lock"]
    assert [p.name for p in firefox.iterdir()] == ["prefs.js"]
