"""Archetypes: the engine plus device a profile is pinned to for its whole life.

The table is vendored in ``archetypes.json`` (made by ``scripts/update_archetypes.py`` from
Playwright's device descriptors) instead of read from Playwright at run time: an archetype is
sticky, so a profile pinned to a device must keep resolving after a Playwright upgrade drops
or changes that device. Names are ``desktop-chromium`` (the default), ``desktop-firefox``,
``desktop-webkit`` and a slug of every Playwright device name (``iphone-15-pro``, ``pixel-7``).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from profiles.errors import ValidationFailed
from profiles.state.rules import Engine

__all__ = ["DEFAULT_ARCHETYPE", "Archetype", "Viewport", "all_archetypes", "get_archetype"]

DEFAULT_ARCHETYPE = "desktop-chromium"


class Viewport(BaseModel):
    model_config = ConfigDict(frozen=True)

    width: int
    height: int


class Archetype(BaseModel):
    """One engine + device: what Playwright's device descriptor says, under a stable name."""

    model_config = ConfigDict(frozen=True)

    name: str
    device: str
    engine: Engine
    user_agent: str | None
    viewport: Viewport
    device_scale_factor: float
    is_mobile: bool
    has_touch: bool


@cache
def all_archetypes() -> dict[str, Archetype]:
    """Every known archetype by name, sorted by name."""
    raw = json.loads(resources.files("profiles").joinpath("archetypes.json").read_text("utf-8"))
    return {name: Archetype(name=name, **entry) for name, entry in sorted(raw.items())}


def get_archetype(name: str) -> Archetype:
    """The archetype called ``name``; ``ValidationFailed`` with the closest names otherwise."""
    table = all_archetypes()
    found = table.get(name)
    if found is not None:
        return found
    close = difflib.get_close_matches(name.lower(), table, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValidationFailed(
        f"Unknown archetype {name!r}.{hint} Run 'profiles archetypes' to list all "
        f"{len(table)}; the default is {DEFAULT_ARCHETYPE!r}.",
        field="archetype",
        suggestions=close,
    )
