"""Regenerate ``profiles/archetypes.json`` from the installed Playwright's device descriptors.

Archetypes are vendored rather than read from Playwright at run time: an archetype is sticky
for a profile's lifetime, so a profile pinned to a device must keep resolving even after a
Playwright upgrade drops or changes that device. New devices are added by re-running this
script; existing entries are never removed or changed by it.

Usage: python scripts/update_archetypes.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

TARGET = Path(__file__).resolve().parent.parent / "profiles" / "archetypes.json"

BASE: dict[str, dict[str, Any]] = {
    "desktop-chromium": {"device": "Desktop Chrome", "engine": "chromium"},
    "desktop-firefox": {"device": "Desktop Firefox", "engine": "firefox"},
    "desktop-webkit": {"device": "Desktop Safari", "engine": "webkit"},
}


def slug(name: str) -> str:
    """``"iPhone 15 Pro Max landscape"`` -> ``"iphone-15-pro-max-landscape"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    existing: dict[str, Any] = json.loads(TARGET.read_text()) if TARGET.exists() else {}
    with sync_playwright() as p:
        devices = p.devices
    table: dict[str, Any] = dict(existing)
    for archetype, base in BASE.items():
        entry = _entry(base["device"], base["engine"], devices[base["device"]])
        # The engine's own user agent: a descriptor's hard-coded desktop UA goes stale with
        # every browser upgrade and names another OS than the one the browser runs on.
        entry["user_agent"] = None
        table.setdefault(archetype, entry)
    for name, descriptor in devices.items():
        table.setdefault(slug(name), _entry(name, descriptor["default_browser_type"], descriptor))
    TARGET.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")


def _entry(device: str, engine: str, d: dict[str, Any]) -> dict[str, Any]:
    return {
        "device": device,
        "engine": engine,
        "user_agent": d["user_agent"],
        "viewport": d["viewport"],
        "device_scale_factor": d["device_scale_factor"],
        "is_mobile": d["is_mobile"],
        "has_touch": d["has_touch"],
    }


if __name__ == "__main__":
    main()
