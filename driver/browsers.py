"""Finding a browser for an engine, and knowing its version before launching it.

Search order for each engine:

1. an environment variable naming the executable: ``PROFILES_CHROMIUM_PATH``,
   ``PROFILES_FIREFOX_PATH``, ``PROFILES_WEBKIT_PATH``;
2. Playwright's own build, if ``playwright install <engine>`` put it there;
3. a system browser: Chromium or Chrome for ``chromium``; Firefox or Firefox ESR for
   ``firefox``, driven over WebDriver BiDi (Playwright's ``moz-firefox`` channel).
   WebKit has no system fallback.

None found raises :class:`~profiles.errors.BrowserNotFound` saying what to install.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from profiles.errors import BrowserNotFound
from profiles.fsutil import atomic_write_bytes
from profiles.state.rules import Engine

__all__ = ["BrowserInstall", "find_browser", "major_version", "probe_version"]

log = logging.getLogger(__name__)

ENV_OVERRIDE: dict[Engine, str] = {
    "chromium": "PROFILES_CHROMIUM_PATH",
    "firefox": "PROFILES_FIREFOX_PATH",
    "webkit": "PROFILES_WEBKIT_PATH",
}
SYSTEM_CANDIDATES: dict[Engine, tuple[str, ...]] = {
    "chromium": (
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
        "/Applications/Chromium.app/Contents/MacOS/Chromium",
        "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    ),
    "firefox": (
        "firefox-esr",
        "firefox",
        "/Applications/Firefox.app/Contents/MacOS/firefox",
    ),
    "webkit": (),
}
INSTALL_HINT: dict[Engine, str] = {
    "chromium": (
        "Install one: 'python -m playwright install chromium' (Playwright's build), or a "
        "system Chromium ('apt-get install chromium' on Debian/Ubuntu), or set "
        "PROFILES_CHROMIUM_PATH to a Chromium or Chrome executable."
    ),
    "firefox": (
        "Install one: 'python -m playwright install firefox' (Playwright's build), or a "
        "system Firefox ('apt-get install firefox-esr' on Debian, 'firefox' elsewhere), or "
        "set PROFILES_FIREFOX_PATH to a Firefox executable."
    ),
    "webkit": (
        "Install Playwright's WebKit: 'python -m playwright install --with-deps webkit' "
        "(there is no system WebKit fallback), or set PROFILES_WEBKIT_PATH."
    ),
}


@dataclass(frozen=True)
class BrowserInstall:
    """A browser that can run an engine's profiles here, and how to launch it."""

    engine: Engine
    source: Literal["env", "playwright", "system"]
    executable_path: str
    channel: str | None = None  # "moz-firefox" for a system Firefox over WebDriver BiDi

    def launch_options(self) -> dict[str, str]:
        """Keyword arguments for ``BrowserType.launch_persistent_context``."""
        options = {"executable_path": self.executable_path}
        if self.channel:
            options["channel"] = self.channel
        return options


def _playwright_build(engine: Engine) -> str | None:
    """Where Playwright's own build of ``engine`` lives, if it is installed.

    Reads Playwright's ``browsers.json`` and the registry directory instead of starting
    Playwright, which would cost a driver process on every session start.
    """
    root = os.environ.get("PLAYWRIGHT_BROWSERS_PATH")
    base = Path(root) if root and root != "0" else Path.home() / ".cache" / "ms-playwright"
    if not base.is_dir():
        return None
    candidates = {
        "chromium": (
            "chromium-*/chrome-linux*/chrome",
            "chromium-*/chrome-mac*/Chromium.app/Contents/MacOS/Chromium",
            "chromium-*/chrome-win*/chrome.exe",
        ),
        "firefox": (
            "firefox-*/firefox/firefox",
            "firefox-*/firefox/Nightly.app/Contents/MacOS/firefox",
            "firefox-*/firefox/firefox.exe",
        ),
        "webkit": (
            "webkit-*/pw_run.sh",
            "webkit-*/Playwright.app/Contents/MacOS/Playwright",
            "webkit-*/Playwright.exe",
        ),
    }[engine]
    found = sorted(p for pattern in candidates for p in base.glob(pattern) if p.is_file())
    return str(found[-1]) if found else None


def find_browser(engine: Engine) -> BrowserInstall:
    """The browser to launch for ``engine`` (see the module docstring for the order)."""
    env_name = ENV_OVERRIDE[engine]
    override = os.environ.get(env_name)
    if override:
        path = shutil.which(override) or override
        if not Path(path).is_file():
            raise BrowserNotFound(f"{env_name}={override!r} is not an executable file.")
        channel = "moz-firefox" if engine == "firefox" and "ms-playwright" not in path else None
        return BrowserInstall(engine, "env", path, channel)
    managed = _playwright_build(engine)
    if managed:
        return BrowserInstall(engine, "playwright", managed)
    for candidate in SYSTEM_CANDIDATES[engine]:
        found = shutil.which(candidate)
        if found:
            channel = "moz-firefox" if engine == "firefox" else None
            return BrowserInstall(engine, "system", found, channel)
    raise BrowserNotFound(
        f"No browser for the {engine} engine was found on this machine. {INSTALL_HINT[engine]}",
        engine=engine,
    )


_VERSION = re.compile(r"(\d+(?:\.\d+)+)")


def major_version(version: str | None) -> int | None:
    """``"156.0.8078.79"`` -> 156; None for None or an unparsable string."""
    if not version:
        return None
    match = re.match(r"\s*(\d+)", version)
    return int(match.group(1)) if match else None


@cache
def _probe_uncached(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not ask %s for its version: %s", path, exc)
        return None
    match = _VERSION.search(out)
    return match.group(1) if match else None


def probe_version(browser: BrowserInstall, cache_file: Path | None = None) -> str | None:
    """The browser's version, by ``--version``, cached by the binary's identity (in memory
    and in ``cache_file``) because asking costs a few hundred milliseconds."""
    real = os.path.realpath(browser.executable_path)
    if browser.engine == "chromium" and browser.source == "system":
        # Debian's /usr/bin/chromium is a shell wrapper; key the cache on the real binary.
        for sibling in ("/usr/lib/chromium/chromium", "/usr/lib/chromium-browser/chromium-browser"):
            if Path(sibling).is_file():
                real = sibling
                break
    try:
        st = os.stat(real)
    except OSError:
        return None
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    cached: dict[str, str] = {}
    if cache_file is not None:
        try:
            cached = json.loads(cache_file.read_text("utf-8"))
        except (OSError, ValueError):
            cached = {}
        if isinstance(cached, dict) and isinstance(cached.get(key), str):
            return cached[key]
    version = _probe_uncached(browser.executable_path, st.st_size, st.st_mtime_ns)
    if version and cache_file is not None:
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = version
        try:
            atomic_write_bytes(cache_file, json.dumps(cached, indent=1).encode())
        except OSError as exc:
            log.debug("could not write the browser version cache: %s", exc)
    return version
