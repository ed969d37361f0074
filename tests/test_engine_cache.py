"""The engine cache: build-specific caches shared by the profiles of one browser build.

Fabricated working copies check the rules (what may get in, corruption, hostility,
concurrency, permissions); a real Firefox profile made by Playwright directly checks that
no identity reaches the cache and that a seeded (even a garbage) cache leaves Firefox working.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from profiles.blobs.local import LocalBlobStore
from profiles.engine_cache.cache import (
    CACHE_PATHS,
    MANIFEST,
    SCRATCH_PREFIXES,
    UNIDENTIFIED,
    EngineCache,
    JsonFileIndex,
    is_allowed,
)
from profiles.state.archive import pack_dir, unpack_archive
from profiles.state.rules import RULES

from conftest import require_engine

XDR = b"mozXDRcachev003\x00"
CACHE_FILES = {
    "startupCache.8.little": b"startupcache0002" + b"S" * 5000,
    "scriptCache.bin": XDR + b"C" * 70000,
    "scriptCache-current.bin": XDR + os.urandom(3 * 1024 * 1024 + 17),
    "scriptCache-child.bin": XDR + b"child",
}
SECRET = b"SECRET-COOKIE-VALUE-4f1c"


# ------------------------------------------------------------------------- helpers


def fake_firefox(root: Path, build_id: str = "20261103151912", version: str = "153.7.0") -> Path:
    """A directory that looks like a Firefox install to build_key; returns the executable."""
    root.mkdir(parents=True, exist_ok=True)
    exe = root / "firefox"
    exe.write_bytes(b"\x7fELF stub")
    (root / "libxul.so").write_bytes(b"xul" * 100)
    (root / "application.ini").write_text(
        f"[App]\nVersion={version}\nBuildID={build_id}\n", encoding="ascii"
    )
    (root / "platform.ini").write_text(f"[Build]\nBuildID={build_id}\n", encoding="ascii")
    return exe


def firefox_profile(path: Path, *, build_id: str = "20261103151912") -> Path:
    """A working copy with a startupCache, identity files, and things that must not get in."""
    cache = path / "startupCache"
    cache.mkdir(parents=True)
    for name, data in CACHE_FILES.items():
        (cache / name).write_bytes(data)
    (path / "compatibility.ini").write_text(
        f"[Compatibility]\nLastVersion=153.7.0_{build_id}/{build_id}\n", encoding="ascii"
    )
    (path / "cookies.sqlite").write_bytes(b"SQLite format 3\x00" + SECRET)
    (path / "webappsstore.sqlite").write_bytes(SECRET)
    (path / "prefs.js").write_bytes(SECRET)
    (path / "cache2").mkdir()
    (path / "cache2" / "entries").write_bytes(SECRET)
    # hostile or odd entries inside the cache directory
    (cache / "urlCache.bin").write_bytes(b"/home/someone/profile/" + SECRET)  # not on the list
    (cache / "webext.sc.lz4").write_bytes(SECRET)  # not on the list
    (cache / "cookies.sqlite").write_bytes(SECRET)  # identity name
    (cache / "nested").mkdir()
    (cache / "nested" / "scriptCache.bin").write_bytes(SECRET)  # a subdirectory
    (cache / "scriptCache-child-current.bin").symlink_to(path / "cookies.sqlite")
    os.mkfifo(cache / "startupCache.9.little")  # allowed name, not a regular file
    (cache / "startupCache.7.little").write_bytes(SECRET)  # allowed name, not the format
    (path / "stolen").write_bytes(XDR + SECRET)
    os.link(path / "stolen", cache / "scriptCache.bin.tmp")  # not on the list anyway
    os.link(path / "stolen", cache / "startupCache.6.little")  # a hard link: not its own
    return path


def cached_bytes(root: Path) -> bytes:
    out = b""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out += p.read_bytes()
    return out


def scratch_left(root: Path) -> list[str]:
    return [n for n in os.listdir(root) if n.startswith(SCRATCH_PREFIXES)]


def build_dir(cache: EngineCache, key: str) -> Path:
    return cache.root / "firefox" / key


@pytest.fixture
def setup(tmp_path: Path) -> tuple[EngineCache, str, Path]:
    cache = EngineCache(tmp_path / "engine-cache")
    key = cache.build_key("firefox", "153.7.0", fake_firefox(tmp_path / "ff"))
    work = firefox_profile(tmp_path / "work" / "prof_a")
    return cache, key, work


def fresh_dir(tmp_path: Path, name: str = "prof_b") -> Path:
    path = tmp_path / "work" / name
    path.mkdir(parents=True)
    (path / "prefs.js").write_text("// the profile's own\n")
    return path


# ------------------------------------------------------------------------- the rules


def test_cache_paths_are_excluded_from_state_and_identity_never_allowed() -> None:
    for engine, paths in CACHE_PATHS.items():
        for cp in paths:
            assert RULES[engine].excludes(cp.path), (engine, cp.path)
    assert CACHE_PATHS["chromium"] == ()  # nothing measurably helps (see the script)
    for name in CACHE_FILES:
        assert is_allowed("firefox", f"startupCache/{name}")
    for rel in (
        "cookies.sqlite",
        "startupCache/cookies.sqlite",
        "startupCache/webappsstore.sqlite",
        "startupCache/places.sqlite",
        "startupCache/prefs.js",
        "startupCache/urlCache.bin",
        "startupCache/webext.sc.lz4",
        "startupCache/nested/scriptCache.bin",
        "startupCache/../cookies.sqlite",
        "startupCache/",
        "scriptCache.bin",
        "cache2/scriptCache.bin",
        "storage/default/x/ls/data.sqlite",
    ):
        assert not is_allowed("firefox", rel), rel
    assert not is_allowed("chromium", "Default/Code Cache/js/index")


def test_bad_arguments_are_programming_errors(setup: tuple[EngineCache, str, Path]) -> None:
    cache, _key, work = setup
    with pytest.raises(ValueError):
        cache.seed("firefox", "../etc", work)
    with pytest.raises(ValueError):
        cache.refresh("firefox", "", work)
    with pytest.raises(ValueError):
        cache.seed("netscape", "abc", work)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- keys


def test_build_key_changes_with_the_build(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "c")
    exe = fake_firefox(tmp_path / "ff")
    key = cache.build_key("firefox", "153.7.0", exe)
    assert key == cache.build_key("firefox", "153.7.0", exe)
    assert key.startswith("153.7.0-")
    assert key != cache.build_key("firefox", "153.7.1", exe)
    assert key != cache.build_key("chromium", "153.7.0", exe)
    (tmp_path / "ff" / "application.ini").write_text("[App]\nVersion=153.7.0\nBuildID=2\n")
    rebuilt = cache.build_key("firefox", "153.7.0", exe)
    assert rebuilt != key
    os.utime(tmp_path / "ff" / "libxul.so", ns=(1, 1))  # the library replaced, same BuildID
    assert cache.build_key("firefox", "153.7.0", exe) != rebuilt
    link = tmp_path / "bin-firefox"
    link.symlink_to(exe)
    assert cache.build_key("firefox", "153.7.0", link) == cache.build_key("firefox", "153.7.0", exe)
    assert cache.build_key("firefox", "153.7.0", tmp_path / "missing") == UNIDENTIFIED


def test_unidentified_build_never_seeds_or_stores(setup: tuple[EngineCache, str, Path]) -> None:
    cache, _key, work = setup
    assert cache.refresh("firefox", UNIDENTIFIED, work) is False
    assert cache.seed("firefox", UNIDENTIFIED, work) is False
    assert not cache.root.exists()


def test_a_different_build_never_seeds(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    assert cache.refresh("firefox", key, work) is True
    other = cache.build_key("firefox", "153.7.0", fake_firefox(tmp_path / "ff2", build_id="2"))
    assert other != key
    target = fresh_dir(tmp_path)
    assert cache.seed("firefox", other, target) is False
    assert not (target / "startupCache").exists()
    # a manifest copied under another key is refused too
    shutil.copytree(build_dir(cache, key), build_dir(cache, other))
    assert cache.seed("firefox", other, target) is False
    assert not (target / "startupCache").exists()


def test_refresh_refuses_a_working_copy_last_run_by_another_build(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, _key, _work = setup
    other = cache.build_key("firefox", "153.7.0", fake_firefox(tmp_path / "ff2", build_id="777"))
    work = firefox_profile(tmp_path / "work" / "prof_c")  # compatibility.ini: the first build
    assert cache.refresh("firefox", other, work) is False
    assert not cache.has("firefox", other)


# ------------------------------------------------------------------------- round trip


def test_refresh_keeps_only_the_listed_regular_files_privately(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    assert cache.seed("firefox", key, fresh_dir(tmp_path, "early")) is False  # absent
    assert cache.refresh("firefox", key, work) is True
    assert cache.refresh("firefox", key, work) is False  # present: nothing to do
    build = build_dir(cache, key)
    kept = sorted(p.relative_to(build).as_posix() for p in build.rglob("*") if not p.is_dir())
    assert kept == sorted([MANIFEST] + [f"startupCache/{n}" for n in CACHE_FILES])
    assert SECRET not in cached_bytes(cache.root)
    for p in [cache.root, *cache.root.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert not p.is_symlink()
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    manifest = json.loads((build / MANIFEST).read_text())
    assert manifest["engine"] == "firefox" and manifest["key"] == key
    assert set(manifest["files"]) == {f"startupCache/{n}" for n in CACHE_FILES}


def test_seed_copies_a_complete_private_cache(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    cache.refresh("firefox", key, work)
    target = fresh_dir(tmp_path)
    assert cache.seed("firefox", key, target) is True
    seeded = target / "startupCache"
    assert {p.name for p in seeded.iterdir()} == set(CACHE_FILES)
    for name, data in CACHE_FILES.items():
        assert (seeded / name).read_bytes() == data
        assert stat.S_IMODE((seeded / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(seeded.stat().st_mode) == 0o700
    assert (target / "prefs.js").read_text() == "// the profile's own\n"
    assert sorted(os.listdir(target)) == ["prefs.js", "startupCache"]  # no scratch left
    assert scratch_left(cache.root) == []
    # the copy is independent: the browser changing it does not change the cache
    (seeded / "scriptCache.bin").write_bytes(b"changed by the browser")
    assert cache.seed("firefox", key, fresh_dir(tmp_path, "prof_d")) is True


def test_seed_leaves_an_existing_cache_alone(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    cache.refresh("firefox", key, work)
    target = fresh_dir(tmp_path)
    (target / "startupCache").mkdir()
    (target / "startupCache" / "scriptCache.bin").write_bytes(b"mine")
    assert cache.seed("firefox", key, target) is False
    assert os.listdir(target / "startupCache") == ["scriptCache.bin"]
    assert (target / "startupCache" / "scriptCache.bin").read_bytes() == b"mine"


def test_chromium_has_nothing_to_cache(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "c")
    exe = tmp_path / "chrome"
    exe.write_bytes(b"\x7fELF")
    key = cache.build_key("chromium", "156.0.8078.108", exe)
    work = tmp_path / "w"
    (work / "Default" / "GPUCache").mkdir(parents=True)
    (work / "Default" / "GPUCache" / "index").write_bytes(b"x")
    assert cache.refresh("chromium", key, work) is False
    assert cache.seed("chromium", key, work) is False


# ------------------------------------------------------------------------- hostility


def test_hostile_working_copy_cannot_point_the_cache_elsewhere(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, _work = setup
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in CACHE_FILES:
        (elsewhere / name).write_bytes(SECRET)
    work = tmp_path / "work" / "hostile"
    work.mkdir(parents=True)
    (work / "compatibility.ini").write_text(
        "[Compatibility]\nLastVersion=153.7.0_20261103151912/20261103151912\n"
    )
    (work / "startupCache").symlink_to(elsewhere)  # the cache directory is a link
    assert cache.refresh("firefox", key, work) is False
    assert not cache.has("firefox", key)
    # links inside a real directory, and a SQLite database under a cache file's name
    (work / "startupCache").unlink()
    (work / "startupCache").mkdir()
    for name in CACHE_FILES:
        (work / "startupCache" / name).symlink_to(elsewhere / name)
    (work / "startupCache" / "scriptCache.bin").unlink()
    (work / "startupCache" / "scriptCache.bin").write_bytes(b"SQLite format 3\x00" + SECRET)
    assert cache.refresh("firefox", key, work) is False
    (work / "startupCache" / "startupCache.8.little").unlink()
    (work / "startupCache" / "startupCache.8.little").write_bytes(b"startupcache0002 fine")
    assert cache.refresh("firefox", key, work) is True
    assert SECRET not in cached_bytes(cache.root)
    assert os.listdir(build_dir(cache, key) / "startupCache") == ["startupCache.8.little"]


def test_a_seed_never_writes_through_a_link_in_the_working_copy(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    cache.refresh("firefox", key, work)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = fresh_dir(tmp_path)
    (target / "startupCache").symlink_to(outside)
    assert cache.seed("firefox", key, target) is False
    assert os.listdir(outside) == []


# ------------------------------------------------------------------------- corruption


def _corrupt_truncate(build: Path) -> None:
    path = build / "startupCache" / "scriptCache-current.bin"
    with path.open("r+b") as f:
        f.truncate(1000)


def _corrupt_garbage(build: Path) -> None:
    path = build / "startupCache" / "scriptCache.bin"
    path.write_bytes(b"G" * path.stat().st_size)  # same size, other bytes


def _corrupt_dir_is_file(build: Path) -> None:
    shutil.rmtree(build / "startupCache")
    (build / "startupCache").write_bytes(b"not a directory")


def _corrupt_dir_is_link(build: Path) -> None:
    real = build.parent.parent / "elsewhere"
    shutil.move(build / "startupCache", real)
    (build / "startupCache").symlink_to(real)


def _corrupt_file_is_link(build: Path) -> None:
    path = build / "startupCache" / "scriptCache-child.bin"
    path.unlink()
    path.symlink_to("/etc/hostname")


def _corrupt_manifest(build: Path) -> None:
    (build / MANIFEST).write_bytes(b'{"format": 1, "files": {"../prefs.js": {}}')


def _corrupt_manifest_lists_identity(build: Path) -> None:
    manifest = json.loads((build / MANIFEST).read_text())
    manifest["files"]["startupCache/cookies.sqlite"] = {"size": 1, "sha256": "0" * 64}
    (build / MANIFEST).write_text(json.dumps(manifest))


def _corrupt_wrong_format_with_a_matching_manifest(build: Path) -> None:
    data = b"SQLite format 3\x00" + SECRET
    (build / "startupCache" / "scriptCache.bin").write_bytes(data)
    manifest = json.loads((build / MANIFEST).read_text())
    manifest["files"]["startupCache/scriptCache.bin"] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (build / MANIFEST).write_text(json.dumps(manifest))


def _corrupt_missing_file(build: Path) -> None:
    (build / "startupCache" / "startupCache.8.little").unlink()


def _corrupt_build_is_file(build: Path) -> None:
    shutil.rmtree(build)
    build.write_bytes(b"x")


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_truncate,
        _corrupt_garbage,
        _corrupt_dir_is_file,
        _corrupt_dir_is_link,
        _corrupt_file_is_link,
        _corrupt_manifest,
        _corrupt_manifest_lists_identity,
        _corrupt_wrong_format_with_a_matching_manifest,
        _corrupt_missing_file,
        _corrupt_build_is_file,
    ],
)
def test_a_corrupt_cache_is_not_seeded_and_is_replaced(
    setup: tuple[EngineCache, str, Path], tmp_path: Path, corrupt: Any
) -> None:
    cache, key, work = setup
    assert cache.refresh("firefox", key, work) is True
    corrupt(build_dir(cache, key))
    target = fresh_dir(tmp_path)
    assert cache.seed("firefox", key, target) is False
    assert sorted(os.listdir(target)) == ["prefs.js"]  # nothing half-copied
    assert scratch_left(cache.root) == []
    if corrupt is not _corrupt_build_is_file:
        assert not build_dir(cache, key).exists()  # removed, so the next session refreshes
        assert cache.refresh("firefox", key, work) is True
        assert cache.seed("firefox", key, target) is True


# ------------------------------------------------------------------------- bounds


def test_old_builds_are_removed(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "c", keep_builds=2)
    keys = []
    for i in range(3):
        exe = fake_firefox(tmp_path / f"ff{i}", build_id=str(i))
        key = cache.build_key("firefox", "153.7.0", exe)
        assert cache.refresh("firefox", key, firefox_profile(tmp_path / f"w{i}", build_id=str(i)))
        keys.append(key)
        time.sleep(0.01)
    assert sorted(os.listdir(cache.root / "firefox")) == sorted(keys[1:])
    # a build whose browser was replaced goes at the next refresh, whatever keep_builds says
    cache = EngineCache(tmp_path / "c", keep_builds=5)
    (tmp_path / "ff1" / "libxul.so").write_bytes(b"upgraded")
    exe = fake_firefox(tmp_path / "ff9", build_id="9")
    key = cache.build_key("firefox", "153.7.0", exe)
    assert cache.refresh("firefox", key, firefox_profile(tmp_path / "w9", build_id="9"))
    assert sorted(os.listdir(cache.root / "firefox")) == sorted([keys[2], key])


# ------------------------------------------------------------------------- concurrency


def test_concurrent_refreshes_and_seeds_never_see_a_partial_cache(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "c", keep_builds=1)
    builds = []
    for i in range(2):
        exe = fake_firefox(tmp_path / f"ff{i}", build_id=str(i))
        key = cache.build_key("firefox", "153.7.0", exe)
        builds.append((key, firefox_profile(tmp_path / f"w{i}", build_id=str(i))))
    errors: list[BaseException] = []
    outcomes: list[bool] = []
    stop = time.monotonic() + 4.0
    counter = iter(range(10**6))

    def refresher(key: str, work: Path) -> None:
        while time.monotonic() < stop:
            try:
                cache.refresh("firefox", key, work)
            except BaseException as exc:
                errors.append(exc)

    def seeder(key: str) -> None:
        while time.monotonic() < stop:
            target = tmp_path / "targets" / str(next(counter))
            target.mkdir(parents=True)
            try:
                ok = cache.seed("firefox", key, target)
                outcomes.append(ok)
                names = os.listdir(target)
                if ok:
                    assert names == ["startupCache"]
                    for name, data in CACHE_FILES.items():
                        assert (target / "startupCache" / name).read_bytes() == data
                    assert len(os.listdir(target / "startupCache")) == len(CACHE_FILES)
                else:
                    assert names == []
            except BaseException as exc:
                errors.append(exc)
            finally:
                shutil.rmtree(target, ignore_errors=True)

    threads = [threading.Thread(target=refresher, args=b) for b in builds for _ in range(2)]
    threads += [threading.Thread(target=seeder, args=(b[0],)) for b in builds for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert True in outcomes
    assert scratch_left(cache.root) == []
    assert len(os.listdir(cache.root / "firefox")) == 1  # keep_builds


# ------------------------------------------------------------------------- shared backend


def test_publish_and_fetch_through_a_blob_store(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    blobs = LocalBlobStore(tmp_path / "blobs")
    index = JsonFileIndex(tmp_path / "index.json")
    assert cache.publish(blobs, "firefox", key, index) is None  # nothing yet
    cache.refresh("firefox", key, work)
    checksum = cache.publish(blobs, "firefox", key, index)
    assert checksum is not None and index.get("firefox", key) == checksum
    other = EngineCache(tmp_path / "container-2" / "engine-cache")
    assert other.fetch(blobs, "firefox", key, index) is True
    assert other.fetch(blobs, "firefox", key, index) is False  # already here
    target = fresh_dir(tmp_path)
    assert other.seed("firefox", key, target) is True
    assert (target / "startupCache" / "scriptCache.bin").read_bytes() == CACHE_FILES[
        "scriptCache.bin"
    ]
    for p in [other.root, *other.root.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600)


def test_fetch_refuses_a_hostile_blob(setup: tuple[EngineCache, str, Path], tmp_path: Path) -> None:
    cache, key, work = setup
    cache.refresh("firefox", key, work)
    build = build_dir(cache, key)
    (build / "startupCache" / "cookies.sqlite").write_bytes(SECRET)  # not in the manifest
    blobs = LocalBlobStore(tmp_path / "blobs")
    index = JsonFileIndex(tmp_path / "index.json")
    buf = io.BytesIO()
    pack_dir(build, buf, engine="firefox", apply_excludes=False)
    checksum = hashlib.sha256(buf.getvalue()).hexdigest()
    blobs.put(checksum, io.BytesIO(buf.getvalue()), size=len(buf.getvalue()))
    index.put("firefox", key, checksum)
    other = EngineCache(tmp_path / "container-2")
    assert other.fetch(blobs, "firefox", key, index) is False
    assert not other.has("firefox", key)
    index.put("firefox", key, "0" * 64)  # names a blob that is not there
    assert other.fetch(blobs, "firefox", key, index) is False
    assert scratch_left(other.root) == []


# ------------------------------------------------------------------------- real Firefox

COOKIE_VALUE = "cookie-5b0e7d2a9c"
STORAGE_VALUE = "storage-8e41f6c3b7"
VISITED = "visited-c2f9a0d4e1"  # in the URL's query: history, session store


def _firefox() -> tuple[Any, str, dict[str, Any]]:
    from driver.browsers import find_browser, probe_version

    require_engine("firefox")
    browser = find_browser("firefox")
    version = probe_version(browser)
    assert version is not None
    options: dict[str, Any] = {**browser.launch_options(), "headless": True}
    return browser, version, options


def _session(directory: Path, options: dict[str, Any], url: str, *, fill: bool) -> str | None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.firefox.launch_persistent_context(str(directory), **options)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(url)
            if fill:
                ctx.add_cookies(
                    [
                        {
                            "name": "sid",
                            "value": COOKIE_VALUE,
                            "url": url,
                            "expires": time.time() + 86400,
                        }
                    ]
                )
                page.evaluate(f"localStorage.setItem('k', '{STORAGE_VALUE}')")
            value: str | None = page.evaluate("localStorage.getItem('k')")
            assert page.evaluate("1 + 1") == 2
        finally:
            ctx.close()
    return value


@pytest.fixture(scope="module")
def firefox_profile_dir(
    tmp_path_factory: pytest.TempPathFactory, http_server: str
) -> Iterator[tuple[Path, dict[str, Any], str, set[bytes]]]:
    """A real Firefox profile made by Playwright (no library session): cookies and
    localStorage set, closed cleanly, twice (so its startupCache is written). With the
    identifiers in its prefs.js that another new profile does not share (the random
    moz-extension UUIDs of its built-in extensions, ...)."""
    _browser, _version, options = _firefox()
    base = tmp_path_factory.mktemp("real")
    directory = base / "firefox-a"
    _session(directory, options, f"{http_server}/index.html?q={VISITED}", fill=True)
    _session(directory, options, f"{http_server}/index.html?q={VISITED}", fill=False)
    other = base / "firefox-b"
    _session(other, options, f"{http_server}/index.html", fill=False)
    own_ids = _uuids((directory / "prefs.js").read_bytes())
    per_profile = own_ids - _uuids((other / "prefs.js").read_bytes())
    assert per_profile  # Firefox gives each profile its own extension UUIDs
    yield directory, options, http_server, per_profile


def _uuids(data: bytes) -> set[bytes]:
    return set(re.findall(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", data))


def test_real_firefox_cache_holds_no_identity_and_seeds_a_working_browser(
    firefox_profile_dir: tuple[Path, dict[str, Any], str, set[bytes]], tmp_path: Path
) -> None:
    source, options, server, per_profile = firefox_profile_dir
    browser, version, _ = _firefox()
    cache = EngineCache(tmp_path / "engine-cache")
    key = cache.build_key("firefox", version, Path(browser.executable_path))
    assert key != UNIDENTIFIED
    assert cache.refresh("firefox", key, source) is True  # compatibility.ini matched the build
    build = build_dir(cache, key)
    names = sorted(p.name for p in (build / "startupCache").iterdir())
    assert names and all(is_allowed("firefox", f"startupCache/{n}") for n in names)
    profile_bytes = cached_bytes(source)
    for needle in (COOKIE_VALUE, STORAGE_VALUE, VISITED):  # the identity is in the profile...
        assert needle.encode() in profile_bytes or needle.encode("utf-16-le") in profile_bytes
    blob = cached_bytes(cache.root)
    for needle in (COOKIE_VALUE, STORAGE_VALUE, VISITED):  # ...and not in the cache
        assert needle.encode() not in blob
        assert needle.encode("utf-16-le") not in blob
    # (the site's host, 127.0.0.1, is in it: a literal of Firefox's own code, loopbackAddresses)
    assert os.fspath(source).encode() not in blob  # nor the donor profile's path
    assert _uuids(blob) & per_profile == set()  # nor its own extension UUIDs (webext.sc.lz4)

    # a cold working copy: the committed state unpacked, then seeded
    state = io.BytesIO()
    pack_dir(source, state, engine="firefox")
    target = tmp_path / "work" / "prof_cold"
    unpack_archive(io.BytesIO(state.getvalue()), target)
    assert not (target / "startupCache").exists()
    assert cache.seed("firefox", key, target) is True
    assert _session(target, options, f"{server}/index.html", fill=False) == STORAGE_VALUE


def test_real_firefox_starts_on_a_garbage_seed(
    firefox_profile_dir: tuple[Path, dict[str, Any], str, set[bytes]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage that passes the manifest (as if the browser had written it) is seeded; Firefox
    throws it away and works."""
    source, options, server, _ids = firefox_profile_dir
    browser, version, _ = _firefox()
    cache = EngineCache(tmp_path / "engine-cache")
    key = cache.build_key("firefox", version, Path(browser.executable_path))
    assert cache.refresh("firefox", key, source)
    build = build_dir(cache, key)
    manifest = json.loads((build / MANIFEST).read_text())
    for rel in manifest["files"]:
        header = XDR if "scriptCache" in rel else b"startupcache0002"
        garbage = header + os.urandom(4096)
        (build / rel).write_bytes(garbage)
        manifest["files"][rel] = {
            "size": len(garbage),
            "sha256": hashlib.sha256(garbage).hexdigest(),
        }
    (build / MANIFEST).write_text(json.dumps(manifest))
    state = io.BytesIO()
    pack_dir(source, state, engine="firefox")
    target = tmp_path / "work" / "prof_garbage"
    unpack_archive(io.BytesIO(state.getvalue()), target)
    with caplog.at_level(logging.DEBUG, logger="profiles.engine_cache.cache"):
        assert cache.seed("firefox", key, target) is True
    assert _session(target, options, f"{server}/index.html", fill=False) == STORAGE_VALUE


def test_private_whatever_the_umask_and_an_open_root_is_tightened(
    setup: tuple[EngineCache, str, Path], tmp_path: Path
) -> None:
    cache, key, work = setup
    cache.root.mkdir(mode=0o755)
    os.chmod(cache.root, 0o755)
    old = os.umask(0)
    try:
        assert cache.refresh("firefox", key, work) is True
        target = fresh_dir(tmp_path)
        assert cache.seed("firefox", key, target) is True
    finally:
        os.umask(old)
    for p in [cache.root, *cache.root.rglob("*"), *(target / "startupCache").rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert stat.S_IMODE((target / "startupCache").stat().st_mode) == 0o700


def test_sweep_removes_only_old_unowned_scratch(tmp_path: Path) -> None:
    from profiles.workspace.scratch import OwnedDir

    cache = EngineCache(tmp_path / "c")
    cache.root.mkdir()
    dead = cache.root / ".refresh-dead"
    (dead / "startupCache").mkdir(parents=True)
    os.utime(dead, (time.time() - 3600, time.time() - 3600))
    young = cache.root / ".seed-young"  # made a moment ago, its owner about to lock it
    young.mkdir()
    live = OwnedDir(cache.root, ".fetch-")
    os.utime(live.path, (time.time() - 3600, time.time() - 3600))
    try:
        assert cache.sweep_scratch() == [".refresh-dead"]
        assert young.exists() and live.path.exists()
    finally:
        live.release()
