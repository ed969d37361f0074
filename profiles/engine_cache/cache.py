"""Caches that belong to a browser build, not to a profile, shared by every profile on it.

A profile's state leaves out the engine's caches (:mod:`profiles.state.rules`), so a working
copy unpacked from the committed state starts cold. Some of those caches are a function of
the browser build alone: Firefox's ``startupCache`` holds the build's own compiled chrome
JavaScript. This module keeps one copy of such caches per build and seeds cold working
copies with it.

What was measured (``scripts/measure_engine_cache.py``, bare Playwright, Firefox ESR 153.7
and Chromium 156 on 2 cores shared with other browser tests; four runs of 7 to 9
interleaved repeats; CPU time of driver + browser, which stays steady where wall time does
not):

* Firefox: a fresh unpack costs 1.36x to 1.53x the CPU of a warm start (+0.7 s; wall 1.52x
  on a quiet machine). The startupCache of ANOTHER profile of the same build brings it back
  to 0.98x to 1.11x; the files kept here (``scriptCache*.bin``, ``startupCache.*.little``),
  seeded by :meth:`EngineCache.seed`, to 1.03x to 1.14x (wall 1.09x on a quiet machine). The
  difference is ``webext.sc.lz4`` (about 0.1 s), which holds the profile's own random
  moz-extension UUIDs (identity: a web-visible tracking id), so it is left out;
  ``urlCache*.bin`` names the profile's absolute path and helps nothing measurable. The
  kept files hold no per-profile identifier (checked against two profiles) and none of a
  session's cookies, storage or history (tests/test_engine_cache.py). Nothing else Firefox
  excludes is build-only: ``cache2`` and ``thumbnails`` are per site, ``datareporting`` holds
  the telemetry client id, ``safebrowsing`` stays empty under Playwright.
* Chromium: a fresh unpack costs only 1.01x to 1.08x the CPU of a warm start, and seeding
  the GPU and shader caches (1.7 MB), the component downloads or everything excluded
  changes nothing beyond the noise (0.97x to 1.13x). ``Code Cache`` is V8 code per site
  (it names the sites visited) and shader caches take WebGL shaders from pages:
  identity-ish, and no gain. So nothing is cached for Chromium.
* Seeding itself (copy 31 MB with size and SHA-256 checks) takes about 26 ms.

The rules are data (:data:`CACHE_PATHS`): a directory of the user-data-dir, the names of
the regular files kept from it and the headers they start with (the engine's own cache
formats). Nothing else is ever copied, in either direction: no other file, no subdirectory,
no symlink, no hard link, no special file, nothing named like an identity database, nothing
that does not start with a cache header (a SQLite database never does); a cache path must
be one that the state rules exclude (so it is never identity by the store's own definition).
Everything is read with ``O_NOFOLLOW`` relative to directory descriptors, so a hostile
working copy cannot point the cache at its cookies.

Layout, under ``root`` (``<home>/engine-cache``), private (``0700``/``0600``)::

    <engine>/<build key>/MANIFEST.json        format, engine, key, build identity, files
                                              (size and sha256 of each)
    <engine>/<build key>/startupCache/...     the cached files, as in the user-data-dir
    .<engine>.lock                            held while a build is stored or removed
    .refresh-* .seed-* .fetch-* .trash-*      scratch, flock-owned by a live process, swept
                                              (sweep_scratch) once old and unowned

A build's directory appears only complete, by one ``rename``; it is never rewritten, only
removed (renamed away first). A reader copies from a directory it has opened, checking every
file's size and SHA-256 against the manifest while it copies, into a scratch directory that
is renamed into the working copy only when complete. A missing, corrupt or mismatched cache
costs only speed: :meth:`EngineCache.seed` and :meth:`EngineCache.refresh` log and return
``False``; they raise only for programming errors (an unknown engine, a malformed key).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from profiles.blobs.base import BlobStore, check_checksum
from profiles.catalog.base import KEY_PATTERN
from profiles.errors import ProfileError
from profiles.fsutil import atomic_write_bytes, tighten_tree
from profiles.state.archive import ArchiveLimits, pack_dir, unpack_archive
from profiles.state.rules import ENGINES, RULES, Engine
from profiles.workspace.scratch import OwnedDir, sweep

__all__ = [
    "CACHE_PATHS",
    "UNIDENTIFIED",
    "CachePath",
    "EngineCache",
    "EngineCacheIndex",
    "JsonFileIndex",
    "is_allowed",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachePath:
    """A directory of the user-data-dir (``path``, relative, ``/``-separated), the
    ``fnmatch`` patterns of the names of the regular files kept directly in it, and the
    headers such a file starts with (the engine's own cache formats: anything else, say a
    database a hostile working copy put there under a cache's name, is left out)."""

    path: str
    files: tuple[str, ...]
    headers: tuple[bytes, ...]


# What measurably helps a cold start and depends on the browser build only (see the module
# docstring and scripts/measure_engine_cache.py for the figures behind each choice).
CACHE_PATHS: dict[Engine, tuple[CachePath, ...]] = {
    "firefox": (
        # The build's compiled chrome JS (scriptCache*) and startup data
        # (startupCache.<ver>.little). Left out: urlCache*.bin (it names the profile's own
        # absolute path; no measurable gain) and webext.sc.lz4 (the profile's extensions
        # with their per-profile moz-extension UUIDs: identity, though it is worth ~0.1 s).
        CachePath(
            "startupCache",
            (
                "startupCache.*.little",
                "scriptCache.bin",
                "scriptCache-current.bin",
                "scriptCache-child.bin",
                "scriptCache-child-current.bin",
            ),
            headers=(b"mozXDRcache", b"startupcache"),
        ),
    ),
    # Seeding Chromium's GPU/shader caches or component downloads changes nothing measurable;
    # its Code Cache is compiled JS per site (it names the sites visited): identity, never here.
    # WebKit: not measured (no WebKit build here); nothing until it is.
    "chromium": (),
    "webkit": (),
}

# Never cached, whatever a cache path's patterns say: names of identity databases and files.
IDENTITY_NAMES: tuple[str, ...] = (
    "*cookie*",
    "*Cookie*",
    "webappsstore*",
    "places*",
    "History*",
    "*history*",
    "Local Storage",
    "Session Storage",
    "*storage*",
    "*Storage*",
    "IndexedDB",
    "idb",
    "ls",
    "Login Data*",
    "logins*",
    "key[34].db",
    "cert[89].db",
    "prefs.js",
    "user.js",
    "Preferences",
    "Secure Preferences",
    "Local State",
    "Web Data*",
    "formhistory*",
    "permissions*",
    "*.sqlite*",
    "*.db",
    "*.db-*",
    "*.ldb",
    "*.log",
    "*.json",
    "*.jsonlz4",
)
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 16
MANIFEST = "MANIFEST.json"
FORMAT = 1
UNIDENTIFIED = "unidentified"  # what build_key returns when the build cannot be told apart
MAX_CACHE_BYTES = 256 * 1024 * 1024
MAX_CACHE_FILES = 256
MAX_MANIFEST_BYTES = 256 * 1024
CHUNK = 1024 * 1024
SCRATCH_PREFIXES = (".refresh-", ".seed-", ".fetch-", ".trash-", ".publish-")
SWEEP_MIN_AGE = 300.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | os.O_CLOEXEC
_HEX = re.compile(r"[0-9a-f]{64}")

# Debian's /usr/bin/chromium is a shell script; the build is the binary it starts.
_CHROMIUM_WRAPPED = ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser")
# Files beside a Firefox executable whose identity is the build's (the executable is a stub).
_FIREFOX_BUILD_FILES = ("libxul.so", "omni.ja", "browser/omni.ja", "XUL", "xul.dll")
_FIREFOX_INI = ("application.ini", "platform.ini", "browser/application.ini")


def _check_cache_paths() -> None:
    for engine, paths in CACHE_PATHS.items():
        for cp in paths:
            if not RULES[engine].excludes(cp.path):
                raise AssertionError(f"{engine} cache path {cp.path!r} is state, not cache")


_check_cache_paths()


def is_allowed(engine: Engine, relpath: str) -> bool:
    """Whether ``relpath`` (``/``-separated, relative to the user-data-dir) may be in the
    engine cache: a file named by a cache path's patterns, directly in it, not named like
    an identity file."""
    directory, _, name = relpath.rpartition("/")
    if not name or name in (".", "..") or "\x00" in relpath:
        return False
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in IDENTITY_NAMES):
        return False
    for cp in CACHE_PATHS[engine]:
        if directory == cp.path and any(fnmatch.fnmatchcase(name, p) for p in cp.files):
            return True
    return False


def _header_ok(engine: Engine, relpath: str, head: bytes) -> bool:
    directory = relpath.rpartition("/")[0]
    if head.startswith(SQLITE_MAGIC):
        return False
    return any(
        head.startswith(h) for cp in CACHE_PATHS[engine] if cp.path == directory for h in cp.headers
    )


class _Corrupt(Exception):
    """A cache's bytes do not match its manifest."""


class EngineCacheIndex(Protocol):
    """Where the checksum of each build's published cache is recorded (shared by a fleet)."""

    def get(self, engine: str, key: str) -> str | None: ...

    def put(self, engine: str, key: str, checksum: str) -> None: ...


class JsonFileIndex:
    """An :class:`EngineCacheIndex` in one JSON file (for one machine, or tests)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}

    def get(self, engine: str, key: str) -> str | None:
        return self._read().get(f"{engine}/{key}")

    def put(self, engine: str, key: str, checksum: str) -> None:
        data = self._read()
        data[f"{engine}/{key}"] = checksum
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode())


@dataclass(frozen=True)
class _Entry:
    relpath: str
    size: int
    sha256: str


class EngineCache:
    """Build-specific caches per browser build, kept under ``root``.

    ``keep_builds`` bounds the builds kept per engine (the least recently used go first;
    builds whose browser has been replaced or removed go at once).
    """

    def __init__(self, root: Path, *, keep_builds: int = 2) -> None:
        if keep_builds < 1:
            raise ValueError("keep_builds must be at least 1")
        self.root = Path(root)
        self.keep_builds = keep_builds
        # What build_key saw, for the manifest and for the check in refresh.
        self._builds: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- keys

    def build_key(self, engine: Engine, browser_version: str, executable_path: Path) -> str:
        """A name for the browser build: its version, and a hash of what identifies the
        build on disk (the real binary's path, size and mtime; for Firefox also the
        ``BuildID`` from ``application.ini``/``platform.ini`` and the identity of
        ``libxul.so`` and ``omni.ja``, since its executable is a stub). Any change to the
        build changes the key. Returns :data:`UNIDENTIFIED` (never seeded, never stored)
        when the executable cannot be read."""
        _check_engine(engine)
        real = Path(os.path.realpath(executable_path))
        if engine == "chromium" and _is_script(real):
            real = next((Path(p) for p in _CHROMIUM_WRAPPED if Path(p).is_file()), real)
        parts: list[str] = [f"engine={engine}", f"version={browser_version}"]
        identity: list[dict[str, Any]] = []
        try:
            identity.append(_file_identity(real))
        except OSError as exc:
            log.info("engine cache: cannot identify the %s build at %s: %s", engine, real, exc)
            return UNIDENTIFIED
        firefox_id: str | None = None
        if engine == "firefox":
            for name in _FIREFOX_BUILD_FILES:
                with contextlib.suppress(OSError):
                    identity.append(_file_identity(real.parent / name))
            ini: dict[str, bytes] = {}
            for name in _FIREFOX_INI:
                with contextlib.suppress(OSError):
                    ini[name] = (real.parent / name).read_bytes()[:65536]
                    parts.append(f"{name}={hashlib.sha256(ini[name]).hexdigest()}")
            firefox_id = _firefox_last_version(ini)
        parts += [f"{i['path']}|{i['size']}|{i['mtime_ns']}" for i in identity]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
        version = re.sub(r"[^A-Za-z0-9.]", "_", browser_version)[:40] or "unknown"
        key = f"{version}-{digest}"
        self._builds[key] = {"identity": identity, "firefox_last_version": firefox_id}
        return key

    # ---------------------------------------------------------------- seeding

    def has(self, engine: Engine, key: str) -> bool:
        """Whether a (complete, by construction) cache of the build is here."""
        _check_key(engine, key)
        return os.path.isfile(self._build_dir(engine, key) / MANIFEST)

    def seed(self, engine: Engine, key: str, working_dir: Path) -> bool:
        """Copy the build's cache into a cold ``working_dir`` before launch. True when
        something was seeded; False (logged) when there is no cache, when it is corrupt
        (it is then removed), or when the working copy already has those caches."""
        _check_key(engine, key)
        if key == UNIDENTIFIED or not CACHE_PATHS[engine]:
            return False
        if all(os.path.lexists(Path(working_dir) / cp.path) for cp in CACHE_PATHS[engine]):
            log.debug("engine cache: %s has its own caches; not seeded", working_dir)
            return False
        build = self._build_dir(engine, key)
        try:
            src_fd = os.open(build, _DIR_FLAGS)
        except OSError as exc:
            log.debug("engine cache: no %s cache for build %s (%s)", engine, key, exc.strerror)
            return False
        try:
            try:
                entries = _read_manifest(src_fd, engine, key)
            except (OSError, ValueError) as exc:
                log.info("engine cache: %s build %s: bad manifest: %s", engine, key, exc)
                self._discard_if_same(build, src_fd)
                return False
            try:
                seeded = self._seed_from(src_fd, entries, engine, Path(working_dir))
            except _Corrupt as exc:
                # Corrupt, or removed under us by a prune (then _discard_if_same does nothing).
                log.info("engine cache: cannot seed from %s build %s: %s", engine, key, exc)
                self._discard_if_same(build, src_fd)
                return False
            except OSError as exc:
                log.info("engine cache: could not seed %s from build %s: %s", working_dir, key, exc)
                return False
            if seeded:
                with contextlib.suppress(OSError):
                    os.utime(build)  # last use, for keep_builds
                log.debug("engine cache: seeded %s with %s", working_dir, ", ".join(seeded))
            return bool(seeded)
        finally:
            os.close(src_fd)

    def _seed_from(
        self, src_fd: int, entries: list[_Entry], engine: Engine, working_dir: Path
    ) -> list[str]:
        seeded: list[str] = []
        for cp in CACHE_PATHS[engine]:
            mine = [e for e in entries if e.relpath.rpartition("/")[0] == cp.path]
            if not mine:
                continue
            dest = working_dir / cp.path
            if os.path.lexists(dest):
                log.debug("engine cache: %s already has %s; left alone", working_dir, cp.path)
                continue
            if not _is_real_dir_below(working_dir, dest.parent):
                log.debug("engine cache: %s is not a plain directory; not seeded", dest.parent)
                continue
            owned = self._scratch(".seed-", near=dest.parent)
            try:
                dst_fd = os.open(owned.path, _DIR_FLAGS)
                try:
                    for entry in mine:
                        _copy_verified(engine, src_fd, entry, dst_fd)
                finally:
                    os.close(dst_fd)
                try:
                    os.rename(owned.path, dest)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    log.debug("engine cache: %s appeared meanwhile; left alone", dest)
                    continue
                seeded.append(cp.path)
            finally:
                owned.release()  # removes the scratch unless it was renamed into place
        return seeded

    # ---------------------------------------------------------------- refreshing

    def refresh(self, engine: Engine, key: str, working_dir: Path) -> bool:
        """After a clean session (the browser closed normally, the working copy still held),
        store the working copy's cache paths as the build's cache when it has none. True when
        a cache was stored. Only the files :func:`is_allowed` names are read, as regular
        files, never through a symlink; other builds' caches past ``keep_builds`` (and those
        whose browser is gone) are removed."""
        _check_key(engine, key)
        if key == UNIDENTIFIED or not CACHE_PATHS[engine]:
            return False
        if self.has(engine, key):
            return False
        if not self._same_build(engine, key, Path(working_dir)):
            return False
        try:
            self._make_root(engine)
            self.sweep_scratch()
            owned = OwnedDir(self.root, ".refresh-")
        except OSError as exc:
            log.info("engine cache: cannot write under %s: %s", self.root, exc)
            return False
        try:
            try:
                entries = _collect(Path(working_dir), engine, owned.path)
            except OSError as exc:
                log.info("engine cache: could not read the caches of %s: %s", working_dir, exc)
                return False
            if not entries:
                log.debug("engine cache: %s has no %s caches to keep", working_dir, engine)
                return False
            manifest = {
                "format": FORMAT,
                "engine": engine,
                "key": key,
                "created": time.time(),
                "build": self._builds.get(key, {}).get("identity", []),
                "files": {e.relpath: {"size": e.size, "sha256": e.sha256} for e in entries},
            }
            _write_new(owned.path / MANIFEST, json.dumps(manifest, indent=1).encode())
            with self._engine_lock(engine):  # install and prune as one step per engine
                if not self._install(owned.path, engine, key):
                    return False
                self._prune(engine, keep=key)
        except OSError as exc:
            log.info("engine cache: could not store %s build %s: %s", engine, key, exc)
            return False
        finally:
            owned.release()
        log.info(
            "engine cache: stored %s build %s (%d files, %d bytes)",
            engine,
            key,
            len(entries),
            sum(e.size for e in entries),
        )
        return True

    def _same_build(self, engine: Engine, key: str, working_dir: Path) -> bool:
        """For Firefox: the working copy's compatibility.ini names the build of ``key``
        (when build_key saw it), so a cache is never stored under another build's key."""
        expected = self._builds.get(key, {}).get("firefox_last_version")
        if engine != "firefox" or not expected:
            return True
        try:
            fd = os.open(working_dir / "compatibility.ini", _READ_FLAGS)
            with os.fdopen(fd, "rb") as f:
                found = _firefox_compat_version(f.read(65536))
        except OSError:
            found = None
        if found != expected:
            log.info(
                "engine cache: %s was last run by Firefox %s, not by build %s (%s); not stored",
                working_dir,
                found,
                key,
                expected,
            )
            return False
        return True

    @contextlib.contextmanager
    def _engine_lock(self, engine: Engine) -> Iterator[None]:
        """An exclusive lock for storing and removing the engine's builds (readers never
        take it: they copy from a directory they opened)."""
        fd = os.open(self.root / f".{engine}.lock", os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _install(self, staged: Path, engine: Engine, key: str) -> bool:
        """Rename the complete ``staged`` directory into place; False when another process
        stored the build first (its copy is as good)."""
        target = self._build_dir(engine, key)
        try:
            os.rename(staged, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                log.debug("engine cache: %s build %s was stored meanwhile", engine, key)
                return False
            log.info("engine cache: could not store %s build %s: %s", engine, key, exc)
            return False
        return True

    def _prune(self, engine: Engine, *, keep: str) -> None:
        """Remove the engine's builds whose browser is gone or replaced, then the least
        recently used past ``keep_builds``."""
        base = self.root / engine
        builds: list[tuple[float, str]] = []
        try:
            names = os.listdir(base)
        except OSError:
            return
        for name in names:
            if name.startswith(".") or name == keep or not KEY_PATTERN.fullmatch(name):
                continue
            path = base / name
            try:
                used = os.lstat(path).st_mtime
            except OSError:
                continue
            if self._is_stale(path):
                self._discard(path, why="its browser build is gone")
            else:
                builds.append((used, name))
        builds.sort(reverse=True)
        for _used, name in builds[max(0, self.keep_builds - 1) :]:
            self._discard(base / name, why=f"more than {self.keep_builds} builds kept")

    def _is_stale(self, build: Path) -> bool:
        try:
            fd = os.open(build, _DIR_FLAGS)
        except OSError:
            return False
        try:
            raw = _read_small(fd, MANIFEST, MAX_MANIFEST_BYTES)
            identity = json.loads(raw).get("build", [])
        except (OSError, ValueError, AttributeError):
            return True  # no readable manifest: nothing worth keeping
        finally:
            os.close(fd)
        if not isinstance(identity, list):
            return True
        for item in identity:
            try:
                if _file_identity(Path(item["path"])) != item:
                    return True
            except OSError:
                return True
            except (KeyError, TypeError):
                return True
        return False

    # ---------------------------------------------------------------- shared backend

    def publish(
        self, blobs: BlobStore, engine: Engine, key: str, index: EngineCacheIndex
    ) -> str | None:
        """Upload the build's cache as one blob (a zstd tar of the build's directory) and
        record its checksum in ``index``; returns the checksum, or None (logged) when there
        is nothing to publish or the upload failed.

        Two things for whoever wires this in: the store's garbage collector deletes blobs
        the catalog does not reference, so the index must count as a reference; and the
        cache holds compiled browser code that Firefox runs with chrome privileges, so only
        machines trusted as much as the browser itself should publish (a fetch checks
        names, formats and checksums, not intent)."""
        _check_key(engine, key)
        if key == UNIDENTIFIED or not self.has(engine, key):
            return None
        build = self._build_dir(engine, key)
        try:
            fd = os.open(build, _DIR_FLAGS)
            try:
                _read_manifest(fd, engine, key)
            finally:
                os.close(fd)
            with _owned(self.root, ".publish-") as scratch:
                archive = scratch / "cache.tar.zst"
                with archive.open("wb") as out:
                    pack_dir(build, out, engine=engine, apply_excludes=False)
                checksum = _sha256_file(archive)
                blobs.put_file(checksum, archive)
        except (OSError, ValueError, ProfileError) as exc:
            log.info("engine cache: could not publish %s build %s: %s", engine, key, exc)
            return None
        index.put(engine, key, checksum)
        return checksum

    def fetch(self, blobs: BlobStore, engine: Engine, key: str, index: EngineCacheIndex) -> bool:
        """Install the build's cache from ``blobs`` when ``index`` names one and none is here.
        The blob is treated as hostile: unpacked with tight caps, anything but the manifest
        and allowed cache files refuses it, every file is checked against the manifest."""
        _check_key(engine, key)
        if key == UNIDENTIFIED or not CACHE_PATHS[engine] or self.has(engine, key):
            return False
        checksum = index.get(engine, key)
        if checksum is None:
            return False
        limits = ArchiveLimits(
            max_compressed_bytes=MAX_CACHE_BYTES,
            max_uncompressed_bytes=MAX_CACHE_BYTES + MAX_MANIFEST_BYTES,
            max_members=MAX_CACHE_FILES + 16,
            max_member_bytes=MAX_CACHE_BYTES,
        )
        try:
            check_checksum(checksum)
            self._make_root(engine)
            owned = OwnedDir(self.root, ".fetch-")
        except (OSError, ProfileError) as exc:
            log.info("engine cache: cannot fetch %s build %s: %s", engine, key, exc)
            return False
        try:
            unpacked = owned.path / "cache"
            try:
                with blobs.open(checksum) as src:
                    unpack_archive(src, unpacked, limits=limits)
                _check_unpacked(unpacked, engine, key)
                tighten_tree(unpacked)
            except (OSError, ValueError, _Corrupt, ProfileError) as exc:
                log.info("engine cache: fetched %s cache %s refused: %s", engine, checksum, exc)
                return False
            try:
                with self._engine_lock(engine):
                    if not self._install(unpacked, engine, key):
                        return False
                    self._prune(engine, keep=key)
            except OSError as exc:
                log.info("engine cache: could not store %s build %s: %s", engine, key, exc)
                return False
            return True
        finally:
            owned.release()

    def sweep_scratch(self, *, min_age: float = SWEEP_MIN_AGE) -> list[str]:
        """Remove scratch that dead processes left under the root (``profiles gc``): entries
        older than ``min_age`` seconds whose owner's lock can be taken. (The age spares a
        directory made a moment ago whose owner has not locked it yet.)"""
        removed = sweep(self.root, SCRATCH_PREFIXES, min_age=min_age)
        if removed:
            log.info("engine cache: swept %d left-over scratch entries", len(removed))
        return removed

    # ---------------------------------------------------------------- helpers

    def _build_dir(self, engine: Engine, key: str) -> Path:
        return self.root / engine / key

    def _make_root(self, engine: Engine) -> None:
        for path in (self.root, self.root / engine):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "not a directory", str(path))
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(path, 0o700)

    def _scratch(self, prefix: str, *, near: Path) -> OwnedDir:
        """Scratch for a seed: under the cache root when it is on the working copy's file
        system (a crash leaves nothing in the working copy), else beside the target."""
        with contextlib.suppress(OSError):
            if os.stat(self.root).st_dev == os.stat(near).st_dev:
                return OwnedDir(self.root, prefix)
        return OwnedDir(near, prefix)

    def _discard_if_same(self, build: Path, fd: int) -> None:
        """Remove ``build`` if it is still the directory open as ``fd`` (not a new one that
        a refresh put in its place meanwhile)."""
        try:
            if os.lstat(build).st_ino != os.fstat(fd).st_ino:
                return
        except OSError:
            return
        self._discard(build, why="corrupt")

    def _discard(self, build: Path, *, why: str) -> None:
        try:
            trash = OwnedDir(self.root, ".trash-")  # owned, so a sweep leaves it alone
        except OSError as exc:
            log.debug("engine cache: could not remove %s: %s", build, exc)
            return
        try:
            os.rename(build, trash.path / "x")
        except OSError as exc:
            log.debug("engine cache: could not remove %s: %s", build, exc)
            return
        finally:
            trash.release()
        log.info("engine cache: removed %s (%s)", build.name, why)


# -------------------------------------------------------------------- module helpers


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}")


def _check_key(engine: str, key: str) -> None:
    _check_engine(engine)
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"malformed engine cache key {key!r}")


def _is_script(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def _file_identity(path: Path) -> dict[str, Any]:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _ini_value(text: bytes, name: str) -> str | None:
    match = re.search(rb"^" + name.encode() + rb"=([^\r\n]*)", text, re.MULTILINE)
    return match.group(1).decode("ascii", "replace").strip() if match else None


def _firefox_last_version(ini: dict[str, bytes]) -> str | None:
    """What Firefox writes as ``LastVersion`` in compatibility.ini for this build:
    ``<app version>_<app build id>/<platform build id>``."""
    app = ini.get("application.ini") or ini.get("browser/application.ini")
    if app is None:
        return None
    version, build_id = _ini_value(app, "Version"), _ini_value(app, "BuildID")
    platform = _ini_value(ini["platform.ini"], "BuildID") if "platform.ini" in ini else None
    if not version or not build_id:
        return None
    return f"{version}_{build_id}/{platform or build_id}"


def _firefox_compat_version(compatibility_ini: bytes) -> str | None:
    return _ini_value(compatibility_ini, "LastVersion")


def _is_real_dir_below(root: Path, path: Path) -> bool:
    """``path`` is ``root`` or a chain of real directories (no symlinks) below it."""
    try:
        rel = path.relative_to(root)
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode):
            return False
        current = root
        for part in rel.parts:
            current = current / part
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return False
    except (OSError, ValueError):
        return False
    return True


def _open_below(root_fd: int, relpath: str) -> int:
    """A descriptor of the directory ``relpath`` below ``root_fd``, never through a link."""
    fd = os.dup(root_fd)
    try:
        for part in relpath.split("/"):
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_small(dir_fd: int, name: str, limit: int) -> bytes:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{name} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{name} is larger than {limit} bytes")
    return data


def _read_manifest(build_fd: int, engine: Engine, key: str) -> list[_Entry]:
    """The files a build's manifest lists, each one allowed; ValueError for anything odd."""
    data = json.loads(_read_small(build_fd, MANIFEST, MAX_MANIFEST_BYTES))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("unknown manifest format")
    if data.get("engine") != engine or data.get("key") != key:
        raise ValueError(f"the manifest is for {data.get('engine')!r} {data.get('key')!r}")
    files = data.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_CACHE_FILES:
        raise ValueError("the manifest lists no files, or too many")
    entries: list[_Entry] = []
    total = 0
    for relpath, info in sorted(files.items()):
        if not isinstance(relpath, str) or not is_allowed(engine, relpath):
            raise ValueError(f"the manifest lists {relpath!r}, which is not a cache file")
        size = info.get("size") if isinstance(info, dict) else None
        digest = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"bad size for {relpath!r}")
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise ValueError(f"bad sha256 for {relpath!r}")
        total += size
        entries.append(_Entry(relpath, size, digest))
    if total > MAX_CACHE_BYTES:
        raise ValueError("the manifest lists more bytes than a cache may hold")
    return entries


def _copy_verified(engine: Engine, src_root_fd: int, entry: _Entry, dst_fd: int) -> None:
    """Copy the cache file ``entry`` from the build directory into ``dst_fd`` (by its name),
    checking its type, size and SHA-256 as it goes: ``_Corrupt`` on any mismatch."""
    directory, _, name = entry.relpath.rpartition("/")
    try:
        dir_fd = _open_below(src_root_fd, directory)
    except FileNotFoundError as exc:
        raise _Corrupt(f"{entry.relpath} is missing") from exc
    except NotADirectoryError as exc:
        raise _Corrupt(f"{directory} is not a directory") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Corrupt(f"{directory} is a symlink") from exc
        raise
    try:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError as exc:
            raise _Corrupt(f"{entry.relpath} is missing") from exc
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise _Corrupt(f"{entry.relpath} is not a regular file") from exc
            raise
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _Corrupt(f"{entry.relpath} is not a regular file")
        if st.st_size != entry.size:
            raise _Corrupt(f"{entry.relpath} is {st.st_size} bytes, not {entry.size}")
        out_fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=dst_fd)
        with os.fdopen(out_fd, "wb") as out:
            head = src.read(HEADER_BYTES)
            if not _header_ok(engine, entry.relpath, head):
                raise _Corrupt(f"{entry.relpath} is not in the engine's cache format")
            digest = hashlib.sha256(head)
            out.write(head)
            copied = len(head)
            while chunk := src.read(CHUNK):
                copied += len(chunk)
                if copied > entry.size:
                    raise _Corrupt(f"{entry.relpath} grew while it was copied")
                digest.update(chunk)
                out.write(chunk)
    if copied != entry.size or digest.hexdigest() != entry.sha256:
        raise _Corrupt(f"{entry.relpath} does not match its checksum")


def _collect(working_dir: Path, engine: Engine, staging: Path) -> list[_Entry]:
    """Copy the allowed cache files of ``working_dir`` into ``staging`` (same layout) and
    return them. Only regular files named by the rules, read without following links, none
    a SQLite database; at most MAX_CACHE_FILES files and MAX_CACHE_BYTES bytes."""
    entries: list[_Entry] = []
    total = 0
    root_fd = os.open(working_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for cp in CACHE_PATHS[engine]:
            try:
                src_fd = _open_below(root_fd, cp.path)
            except OSError as exc:
                log.debug("engine cache: %s/%s skipped: %s", working_dir, cp.path, exc.strerror)
                continue
            try:
                names = sorted(os.listdir(src_fd))
                (staging / cp.path).mkdir(mode=0o700, parents=True, exist_ok=True)
                dst_fd = os.open(staging / cp.path, _DIR_FLAGS)
                try:
                    for name in names:
                        relpath = f"{cp.path}/{name}"
                        if not is_allowed(engine, relpath):
                            continue
                        if len(entries) >= MAX_CACHE_FILES:
                            raise OSError(errno.EFBIG, "too many cache files", str(working_dir))
                        budget = MAX_CACHE_BYTES - total
                        entry = _copy_in(engine, src_fd, name, relpath, dst_fd, budget)
                        if entry is not None:
                            entries.append(entry)
                            total += entry.size
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
    finally:
        os.close(root_fd)
    return entries


def _copy_in(
    engine: Engine, src_fd: int, name: str, relpath: str, dst_fd: int, budget: int
) -> _Entry | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=src_fd)
    except OSError as exc:
        log.debug("engine cache: %s skipped: %s", relpath, exc.strerror)
        return None  # a symlink (ELOOP), a directory, gone meanwhile
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            log.debug("engine cache: %s skipped: not a regular file of its own", relpath)
            return None
        if st.st_size > budget:
            raise OSError(errno.EFBIG, "the caches are larger than allowed", relpath)
        head = src.read(HEADER_BYTES)
        if not _header_ok(engine, relpath, head):
            log.info("engine cache: %s is not in the engine's cache format; skipped", relpath)
            return None
        out_fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=dst_fd)
        digest = hashlib.sha256(head)
        size = len(head)
        with os.fdopen(out_fd, "wb") as out:
            out.write(head)
            while chunk := src.read(CHUNK):
                size += len(chunk)
                if size > budget:
                    raise OSError(errno.EFBIG, "the caches are larger than allowed", relpath)
                digest.update(chunk)
                out.write(chunk)
    return _Entry(relpath, size, digest.hexdigest())


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, _CREATE_FLAGS, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _check_unpacked(root: Path, engine: Engine, key: str) -> None:
    """A fetched build directory holds its manifest and the allowed files it lists, each
    matching: anything else raises."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        entries = _read_manifest(fd, engine, key)
    finally:
        os.close(fd)
    listed = {e.relpath: e for e in entries}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            entry = listed.pop(rel, None)
            if entry is None:
                raise _Corrupt(f"{rel} is not a cache file the manifest lists")
            path = Path(dirpath, name)
            if path.stat().st_size != entry.size or _sha256_file(path) != entry.sha256:
                raise _Corrupt(f"{rel} does not match its checksum")
            with path.open("rb") as f:
                if not _header_ok(engine, rel, f.read(HEADER_BYTES)):
                    raise _Corrupt(f"{rel} is not in the engine's cache format")
    if listed:
        raise _Corrupt(f"{sorted(listed)[0]} is missing")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _owned(parent: Path, prefix: str) -> Iterator[Path]:
    owned = OwnedDir(parent, prefix)
    try:
        yield owned.path
    finally:
        owned.release()
