"""What a profile directory says about itself: its engine, cookie domains, browser version.

Everything here reads files that came from an archive or a browser, so it is hostile input:
databases are read through :mod:`profiles.state.untrusted_sqlite`, metadata files are read as a
bounded prefix of a regular file (no symlinks, FIFOs or devices), and every value that leaves
this module is validated (host names, version strings). Problems are logged as warnings and
come out as "unknown" (``[]`` or ``None``), never as an exception or a hang.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from pathlib import Path

from profiles.state.rules import Engine
from profiles.state.untrusted_sqlite import SqliteLimits, UntrustedDatabaseError, read_text_column
from profiles.validation import BROWSER_VERSION

__all__ = ["detect_engine", "read_browser_version", "read_cookie_domains"]

log = logging.getLogger(__name__)

MAX_DOMAINS = 1000
MAX_HOST_CHARS = 253
# The cookie databases are small in real life (Chromium keeps at most ~3,300 cookies).
COOKIE_DB_LIMITS = SqliteLimits(
    max_file_bytes=64 * 1024 * 1024,
    max_rows=100_000,
    max_seconds=2.0,
    max_value_bytes=1024 * 1024,
    max_chars=MAX_HOST_CHARS + 2,  # room for brackets around an IPv6 literal
)
# "Last Version" holds e.g. "156.0.8078.108"; compatibility.ini is a few hundred bytes.
MAX_LAST_VERSION_BYTES = 256
MAX_COMPATIBILITY_INI_BYTES = 64 * 1024

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_IPV6 = re.compile(r"[0-9a-f:.]{2,45}", re.ASCII)
# Chromium "156.0.8078.108"; Firefox "153.7.0", "115.9.0esr", "154.0b3", "155.0a1".
_VERSION = BROWSER_VERSION


def detect_engine(root: Path) -> Engine | None:
    """Which engine made the profile directory ``root``, judged by its files.

    Only checks that files exist; it never opens them, so a huge or blocking file is harmless.
    """
    root = Path(root)
    if (root / "Local State").is_file() or (root / "Default" / "Preferences").is_file():
        return "chromium"
    if any((root / name).is_file() for name in ("prefs.js", "times.json", "compatibility.ini")):
        return "firefox"
    if (root / "cookies.sqlite").is_file():
        return "firefox"
    # Playwright's WebKit keeps its persistent data in WebsiteData and LocalStorage folders.
    if any((root / name).exists() for name in ("WebsiteData", "LocalStorage", "Databases")):
        return "webkit"
    return None


# Where each engine keeps its cookies: (file, table, host column), the first found wins.
_COOKIE_DBS: dict[Engine, list[tuple[str, str, str]]] = {
    "chromium": [
        ("Default/Network/Cookies", "cookies", "host_key"),
        ("Default/Cookies", "cookies", "host_key"),
    ],
    "firefox": [("cookies.sqlite", "moz_cookies", "host")],
    "webkit": [],
}


def _cookie_db(root: Path, engine: Engine) -> tuple[str, str, str] | None:
    return next((c for c in _COOKIE_DBS[engine] if os.path.lexists(root / c[0])), None)


def inspected_paths(engine: Engine) -> list[str]:
    """The files :func:`read_cookie_domains` and :func:`read_browser_version` read: what a
    service that holds a state as chunks restores to inspect it, rather than the whole
    state. (SQLite sidecars are never read, see :mod:`profiles.state.untrusted_sqlite`.)"""
    versions = {"chromium": ["Last Version"], "firefox": ["compatibility.ini"], "webkit": []}
    return [c[0] for c in _COOKIE_DBS[engine]] + versions[engine]


def read_cookie_domains(root: Path, engine: Engine, *, scratch: Path | None = None) -> list[str]:
    """The host names the profile holds cookies for: sorted, unique, lowercase, no leading dot.

    Only valid host names and IP literals get through (at most :data:`MAX_DOMAINS`); anything
    wrong with the database gives ``[]`` and a warning. ``scratch`` is where the database is
    copied to be read: the store always passes a directory inside its home. Without it a
    private directory under the system temp dir is used.
    """
    root = Path(root)
    found = _cookie_db(root, engine)
    if found is None:
        return []
    relative, table, column = found
    try:
        read = read_text_column(
            root / relative, table, column, scratch=scratch, limits=COOKIE_DB_LIMITS
        )
    except UntrustedDatabaseError as exc:
        log.warning("cookie domains unknown: cannot read %s: %s", relative, exc)
        return []
    hosts: set[str] = set()
    dropped = read.skipped  # not text, not UTF-8, or too long
    for value in read.values:
        host = _host_name(value)
        if host is None:
            dropped += 1
        else:
            hosts.add(host)
    domains = sorted(hosts)
    if len(domains) > MAX_DOMAINS:
        dropped += len(domains) - MAX_DOMAINS
        domains = domains[:MAX_DOMAINS]
    if dropped:
        log.warning(
            "dropped %d cookie host value(s) from %s: not host names, or over the limit"
            " of %d domains",
            dropped,
            relative,
            MAX_DOMAINS,
        )
    return domains


def _host_name(value: str) -> str | None:
    """``value`` as a lowercase host name or IP literal without a leading dot, or None."""
    if not value.isascii():
        return None
    host = value.lower().removeprefix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        if not _IPV6.fullmatch(host):
            return None
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError:
            return None
    if len(host) > MAX_HOST_CHARS or not _HOSTNAME.fullmatch(host):
        return None
    return host


def read_browser_version(root: Path, engine: Engine) -> str | None:
    """The version of the browser that last wrote the profile, from its own files.

    Reads a bounded prefix of ``Last Version`` (Chromium) or ``compatibility.ini`` (Firefox)
    and accepts only a version string such as ``156.0.8078.108`` or ``153.7.0esr``; anything
    else is ``None`` (with a warning if the file was there but unusable).
    """
    root = Path(root)
    if engine == "chromium":
        raw = _read_prefix(root / "Last Version", MAX_LAST_VERSION_BYTES)
        if raw is None:
            return None
        data, complete = raw
        if not complete:
            log.warning("ignoring Last Version: longer than %d bytes", MAX_LAST_VERSION_BYTES)
            return None
        return _version(data.decode("utf-8", "replace").strip(), "Last Version")
    if engine == "firefox":
        raw = _read_prefix(root / "compatibility.ini", MAX_COMPATIBILITY_INI_BYTES)
        if raw is None:
            return None
        data, complete = raw
        lines = data.decode("utf-8", "replace").split("\n")
        if not complete:
            lines.pop()  # possibly cut short by the bound
        for line in lines:
            if line.startswith("LastVersion="):
                value = line.split("=", 1)[1].split("_", 1)[0].strip()
                return _version(value, "compatibility.ini")
        return None
    return None


def _version(value: str, source: str) -> str | None:
    if _VERSION.fullmatch(value):
        return value
    if value:
        log.warning("ignoring %s: not a version string (%d characters)", source, len(value))
    return None


def _read_prefix(path: Path, limit: int) -> tuple[bytes, bool] | None:
    """At most ``limit`` bytes of the regular file ``path``, and whether that was all of it.

    None for a missing file, a symlink, anything but a regular file, or a read error.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path.name, exc.strerror)
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            log.warning("ignoring %s: not a regular file", path.name)
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        log.warning("cannot read %s: %s", path.name, exc.strerror)
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data[:limit], len(data) <= limit
