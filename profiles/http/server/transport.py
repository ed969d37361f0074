"""How ``profiles serve`` meets its connections, before any request reaches the app.

- **Forwarded headers** (``X-Forwarded-For``, ``X-Forwarded-Proto``) are believed only from
  the reverse proxies the operator names (``--forwarded-allow-ips``); by default from none,
  so a client cannot pick the address its rate limit is counted against (uvicorn's default
  trusts loopback, and a client on the same machine, an SSH tunnel or a sidecar is loopback).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Transport", "parse_forwarded_allow_ips", "uvicorn_options"]


def parse_forwarded_allow_ips(spec: str) -> tuple[str, ...]:
    """``"10.0.0.1,192.168.0.0/16"``: the proxies whose forwarded headers are believed;
    ``"*"``: every peer (only where a proxy in front always overwrites them); ``""`` or
    ``"none"``: none."""
    text = spec.strip()
    if text.lower() in ("", "none", "off"):
        return ()
    items = tuple(item.strip() for item in text.split(","))
    if "*" in items:
        if items != ("*",):
            raise ValueError("forwarded-allow-ips: '*' trusts every peer; give it alone")
        return items
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"forwarded-allow-ips: {item!r} is not an IP address or network; use "
                "addresses or networks separated by commas, e.g. 10.0.0.1,192.168.0.0/16"
            ) from None
    return items


@dataclass(frozen=True)
class Transport:
    """What the server's connections are held to."""

    forwarded_allow_ips: Sequence[str] = ()


def uvicorn_options(transport: Transport) -> dict[str, Any]:
    """The keyword arguments of :class:`uvicorn.Config` that carry ``transport``."""
    trusted = list(transport.forwarded_allow_ips)
    return {
        # Off unless a proxy is named: uvicorn would otherwise trust 127.0.0.1 (or
        # $FORWARDED_ALLOW_IPS) and let any local client rewrite its own address.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
    }
