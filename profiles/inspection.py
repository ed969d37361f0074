"""What a profile directory says about itself: its engine, cookie domains, browser version.

Everything here reads files that came from an archive or a browser, so it is hostile input.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path

from profiles.state_rules import Engine

__all__ = ["detect_engine", "read_browser_version", "read_cookie_domains"]

log = logging.getLogger(__name__)


def detect_engine(root: Path) -> Engine | None:
    """Which engine made the profile directory ``root``, judged by its files."""
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


def _cookie_db(root: Path, engine: Engine) -> tuple[Path, str, str] | None:
    candidates: list[tuple[Path, str, str]] = {
        "chromium": [
            (root / "Default" / "Network" / "Cookies", "cookies", "host_key"),
            (root / "Default" / "Cookies", "cookies", "host_key"),
        ],
        "firefox": [(root / "cookies.sqlite", "moz_cookies", "host")],
        "webkit": [],
    }[engine]
    return next((c for c in candidates if c[0].is_file()), None)


def read_cookie_domains(root: Path, engine: Engine) -> list[str]:
    """The domains the profile holds cookies for: sorted, unique, no leading dot."""
    found = _cookie_db(Path(root), engine)
    if found is None:
        return []
    db, table, column = found
    with tempfile.TemporaryDirectory(prefix="cookies-") as tmp:
        copy = Path(tmp) / db.name
        try:
            shutil.copyfile(db, copy)
            for suffix in ("-wal", "-journal"):
                side = db.with_name(db.name + suffix)
                if side.is_file():
                    shutil.copyfile(side, copy.with_name(copy.name + suffix))
            conn = sqlite3.connect(copy)
            try:
                rows = conn.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall()
            finally:
                conn.close()
        except (OSError, sqlite3.Error) as exc:
            log.warning("cannot read cookie domains from %s: %s", db, exc)
            return []
    return sorted({str(row[0]).lstrip(".") for row in rows if row[0]})


def read_browser_version(root: Path, engine: Engine) -> str | None:
    """The version of the browser that last wrote the profile, from its own files."""
    root = Path(root)
    try:
        if engine == "chromium":
            version = (root / "Last Version").read_text("utf-8").strip()
            return version or None
        if engine == "firefox":
            for line in (root / "compatibility.ini").read_text("utf-8").splitlines():
                if line.startswith("LastVersion="):
                    return line.split("=", 1)[1].split("_", 1)[0].strip() or None
    except (OSError, UnicodeDecodeError):
        return None
    return None
