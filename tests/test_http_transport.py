"""``profiles serve`` against clients that try to take it down without a key (issue 20's
holes in the service): bodies read before authentication, slow and idle connections, one
account stalling the others, and forwarded headers that reset the rate limit.

Nothing is mocked: every test talks to a real uvicorn process on loopback.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from http_service import start_http_server


def _err(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"}, body
    error: dict[str, object] = body["error"]
    assert error["status"] == r.status_code, body
    return error


# ------------------------------------------------------------------ forwarded headers


def test_a_fresh_x_forwarded_for_does_not_reset_the_address_budget(tmp_path: Path) -> None:
    """Loopback is a client like any other: its X-Forwarded-For is not believed unless the
    operator names the proxy (--forwarded-allow-ips)."""
    with (
        start_http_server(tmp_path / "h", extra_args=["--rate-limit", "3/60"]) as s,
        httpx.Client(base_url=s.url) as c,
    ):
        codes = [
            c.get("/v1/profiles", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
            for i in range(1, 6)
        ]
        assert codes == [401, 401, 401, 429, 429], codes
        r = c.get(
            "/v1/profiles",
            headers={"X-Forwarded-For": "198.51.100.7", "Forwarded": "for=198.51.100.8"},
        )
        assert r.status_code == 429 and _err(r)["scope"] == "address"


def test_forwarded_headers_are_believed_from_the_proxies_named(tmp_path: Path) -> None:
    with (
        start_http_server(
            tmp_path / "h",
            extra_args=["--rate-limit", "2/60", "--forwarded-allow-ips", "127.0.0.1"],
        ) as s,
        httpx.Client(base_url=s.url) as c,
    ):
        # each forwarded client has a budget of its own behind the named proxy
        for i in range(1, 5):
            h = {"X-Forwarded-For": f"203.0.113.{i}"}
            assert [c.get("/v1/profiles", headers=h).status_code for _ in range(3)] == [
                401,
                401,
                429,
            ]
