"""How many remote sessions run at once: per account by tier, and per service.

Doc 001's tiers cap profiles and say nothing of sessions; these defaults follow the same
ladder (a trial runs one browser, a team ten) and are changed per tier with ``profiles serve
--tier-session-cap TIER=N`` (``off``: no cap). The service's own cap (``--max-sessions``)
defaults to what the machine's memory holds: one browser per :data:`MEMORY_PER_SESSION`
beyond :data:`MEMORY_RESERVED` for the service itself.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = [
    "MEMORY_PER_SESSION",
    "MEMORY_RESERVED",
    "TIER_SESSION_CAPS",
    "default_max_sessions",
    "parse_tier_session_cap",
]

#: Running sessions per account by tier; ``None``: no cap but the service's.
TIER_SESSION_CAPS: Final[dict[str, int | None]] = {
    "trial": 1,
    "solo": 2,
    "team": 10,
    "agency": 25,
    "api-starter": 3,
    "api-builder": 10,
    "api-scale": 25,
    "enterprise": None,
}

#: What one headless Chromium with its Playwright driver takes, with room for its pages.
MEMORY_PER_SESSION: Final = 512 * 1024 * 1024
MEMORY_RESERVED: Final = 1024 * 1024 * 1024


def physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def default_max_sessions() -> int:
    """One session per 512 MiB of the machine's memory beyond the first GiB (at least 1;
    8 where the memory cannot be read)."""
    total = physical_memory()
    if total is None:
        return 8
    return max(1, (total - MEMORY_RESERVED) // MEMORY_PER_SESSION)


def parse_tier_session_cap(value: str) -> tuple[str, int | None]:
    """``"team=20"`` or ``"trial=off"``."""
    tier, sep, cap = value.partition("=")
    tier, cap = tier.strip(), cap.strip().lower()
    if not sep or not tier:
        raise ValueError(f"expected TIER=N or TIER=off, got {value!r}")
    if tier not in TIER_SESSION_CAPS:
        raise ValueError(f"unknown tier {tier!r}; tiers: {', '.join(TIER_SESSION_CAPS)}")
    if cap in ("off", "none"):
        return tier, None
    if not cap.isdigit() or int(cap) < 1:
        raise ValueError(f"a session cap is a whole number of at least 1 or 'off', got {cap!r}")
    return tier, int(cap)
