"""``profiles serve`` against clients that try to take it down without a key (issue 20's
holes in the service): bodies read before authentication, slow and idle connections, one
account stalling the others, and forwarded headers that reset the rate limit.

Nothing is mocked: every test talks to a real uvicorn process on loopback.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import resource
import select
import socket
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.http_service import HttpServer, start_http_server

from profiles.http.server.accounts import SQLiteAccountsDB

MIB = 1024 * 1024
TIMEOUT = httpx.Timeout(60.0)


def _err(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"}, body
    error: dict[str, object] = body["error"]
    assert error["status"] == r.status_code, body
    return error


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _chromium_targz(size: int) -> bytes:
    """A Chromium user-data-dir as .tar.gz of about ``size`` bytes (incompressible)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in {
            "Local State": json.dumps({"seed": "1"}).encode(),
            "Default/Preferences": b"{}",
            "Default/blob": os.urandom(size),
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=1)


def _chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON-looking body of ``total`` bytes, sent Transfer-Encoding: chunked (httpx
    chunks a generator's body)."""
    yield b'{"description": "'
    sent = 18
    while sent < total:
        yield b"x" * piece
        sent += piece
    yield b'"}'


def _address(s: HttpServer) -> tuple[str, int]:
    host, port = s.url.removeprefix("http://").split(":")
    return host, int(port)


def _send_chunked_until_answered(
    s: HttpServer, head: str, total: int, piece: int = MIB
) -> tuple[bytes, int]:
    """Send ``head`` and then a chunked body of up to ``total`` bytes on a raw socket,
    stopping as soon as the server answers or closes: (what it answered, bytes sent)."""
    answer = b""
    sent = 0
    chunk = f"{piece:x}\r\n".encode() + b"x" * piece + b"\r\n"
    with socket.create_connection(_address(s), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(chunk)
                sent += piece
            else:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: what it said is still readable
            pass
        try:
            while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
                answer += data
        except OSError:
            pass
    return answer, sent


# ------------------------------------------------------------------ bodies


def test_a_body_without_a_key_is_not_read(tmp_path: Path) -> None:
    """A chunked body to a JSON route from a client with no key: answered 401 before the
    body is read, so neither the server's memory nor its time goes to it."""
    with start_http_server(tmp_path / "h") as s:
        host, _ = _address(s)
        assert httpx.get(f"{s.url}/v1/profiles", headers=s.headers()).status_code == 200
        before = _vm_hwm_kb(s.pid)
        total = 256 * MIB
        for method, path, auth in [
            ("POST", "/v1/profiles", ""),
            ("PATCH", "/v1/profiles/upload", "Authorization: Bearer pk_nope\r\n"),
        ]:
            answer, sent = _send_chunked_until_answered(
                s,
                f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                total,
            )
            grown_mb = (_vm_hwm_kb(s.pid) - before) / 1024
            assert grown_mb < 32, f"{path}: the server's peak RSS grew by {grown_mb:.0f} MB"
            assert sent < total // 4, f"{path}: the server read {sent // MIB} MiB before answering"
            assert answer.startswith(b"HTTP/1.1 401 "), (path, answer[:300])


def test_json_bodies_are_capped_as_they_are_read_whatever_the_path(tmp_path: Path) -> None:
    """The 1 MiB cap of JSON bodies holds for chunked bodies and for routes whose path ends
    like a streamed one's (a profile named "upload" or "state"); the streamed routes,
    chosen by the route matched, still take bodies past it."""
    with (
        start_http_server(tmp_path / "h") as s,
        httpx.Client(base_url=s.url, headers=s.headers(), timeout=TIMEOUT) as c,
    ):
        for name in ("upload", "state"):
            assert c.post("/v1/profiles", json={"name": name}).status_code == 200
        for method, path in [
            ("POST", "/v1/profiles"),
            ("PATCH", "/v1/profiles/upload"),
            ("PATCH", "/v1/profiles/state"),
        ]:
            r = c.request(
                method,
                path,
                content=_chunked(3 * MIB),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 413, (method, path, r.status_code, r.text[:300])
            e = _err(r)
            assert e["code"] == "ValidationFailed" and e["limit"] == MIB, e
            # a declared length past the cap: refused before it is read
            r = c.request(
                method,
                path,
                content=b'{"description": "' + b"x" * (2 * MIB) + b'"}',
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 413, (method, path, r.status_code, r.text[:300])
        # the streamed routes, on the same profiles: past 1 MiB, and stored
        archive = _chromium_targz(2 * MIB)
        assert len(archive) > 2 * MIB
        r = c.post("/v1/profiles/upload/upload", files={"file": ("p.tar.gz", archive)})
        assert r.status_code == 200, r.text
        r = c.put(
            "/v1/profiles/state/state",
            content=archive,
            headers={"X-Checksum": hashlib.sha256(archive).hexdigest()},
        )
        assert r.status_code == 200, r.text
        assert c.get("/v1/profiles/state").json()["checksum"]


# ------------------------------------------------------------------ connections


def _read_available(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server sent on ``sock`` so far, and whether it closed it (EOF or reset),
    without waiting."""
    sock.setblocking(False)
    got = b""
    try:
        while data := sock.recv(65536):
            got += data
    except BlockingIOError:
        return got, False
    except OSError:
        return got, True
    return got, True


FILES = 512  # the server's open-file limit in the next test
SOCKETS = 600  # more connections than that, from one address
HEADER_TIMEOUT = 5.0


def test_idle_and_slow_header_connections_do_not_take_the_server_down(tmp_path: Path) -> None:
    """More idle and slow-header connections from one address than the server has file
    descriptors: past the per-address limit they are refused as they come, another client
    is still served at once, the rest are closed at the header timeout, and the server
    never runs out of descriptors."""
    with contextlib.ExitStack() as stack:
        # the server starts with 512 descriptors (it reads the limit when it starts)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, hard))
        try:
            s = stack.enter_context(
                start_http_server(
                    tmp_path / "h", extra_args=["--header-timeout", str(HEADER_TIMEOUT)]
                )
            )
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        resource.prlimit(s.pid, resource.RLIMIT_NOFILE, (FILES, FILES))
        address = _address(s)
        idle: list[socket.socket] = []
        slow: list[socket.socket] = []
        for i in range(SOCKETS):
            sock = stack.enter_context(socket.create_connection(address, timeout=5))
            if i % 2:
                sock.sendall(b"GET /v1/profiles HTTP/1.1\r\nHost: x\r\n")
                slow.append(sock)
            else:
                idle.append(sock)
        started = time.monotonic()
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(base_url=s.url, transport=other, timeout=10.0) as c:
            r = c.get("/v1/profiles", headers=s.headers())
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 3.0
        # past the per-address limit (128 by default): answered 429 and closed at once
        # (what a slow one had sent makes its close a reset, and the answer is lost)
        time.sleep(0.5)
        seen = [_read_available(sock) for sock in idle + slow]
        assert sum(not closed for _, closed in seen) <= 128
        assert all(closed and got.startswith(b"HTTP/1.1 429 ") for got, closed in seen if got)
        assert sum(bool(got) for got, _ in seen[: len(idle)]) > 0
        # the slow ones trickle a header line now and then: it does not buy them time
        deadline = time.monotonic() + HEADER_TIMEOUT + 1.0
        while time.monotonic() < deadline:
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.5)
        still_open = [sock for sock in idle + slow if not _read_available(sock)[1]]
        assert not still_open, f"{len(still_open)} of {SOCKETS} connections still open"
        with httpx.Client(base_url=s.url, timeout=10.0) as c:
            assert c.get("/v1/profiles", headers=s.headers()).status_code == 200
        assert "out of system resource" not in s.log_text(), s.log_text()[-2000:]


def test_a_body_that_stops_coming_is_cut_off(tmp_path: Path) -> None:
    """A client that stops in the middle of a body (to a route that reads it, and to one
    that answered without it) loses its connection after the read timeout."""
    with start_http_server(tmp_path / "h", extra_args=["--read-timeout", "1"]) as s:
        host, _ = _address(s)
        socks = []
        for head in [
            f"POST /v1/uploads/not-a-token HTTP/1.1\r\nHost: {host}\r\n",  # drains it
            f"POST /v1/profiles/p/upload HTTP/1.1\r\nHost: {host}\r\n",  # 401, unread
        ]:
            sock = socket.create_connection(_address(s), timeout=5)
            sock.sendall(f"{head}Content-Length: 100000\r\n\r\n".encode() + b"x" * 1000)
            socks.append(sock)
        try:
            time.sleep(0.5)
            early = [_read_available(sock) for sock in socks]
            assert not any(closed for _, closed in early), early
            time.sleep(2.0)
            late = [_read_available(sock) for sock in socks]
            assert all(closed for _, closed in late), late
            assert (early[1][0] + late[1][0]).startswith(b"HTTP/1.1 401 "), early + late
        finally:
            for sock in socks:
                sock.close()


# ------------------------------------------------------------------ accounts apart


@pytest.mark.parametrize(
    "slots", [None, 64], ids=["default-state-operations", "waits-without-a-thread"]
)
def test_one_account_waiting_on_a_held_profile_does_not_stall_another(
    tmp_path: Path, slots: int | None
) -> None:
    """45 uploads of one account to a profile whose lease it holds (each would wait up to
    10 s for it) leave another account's requests as fast as ever: one account runs a
    bounded number of state operations at once (the rest are 429 RateLimited with
    Retry-After), and, with the bound above 45, waiting still holds no worker thread."""
    archive = _chromium_targz(1024)
    extra = [] if slots is None else ["--max-state-operations", str(slots)]
    with (
        start_http_server(tmp_path / "h", extra_args=extra) as s,
        httpx.Client(
            base_url=s.url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=100)
        ) as c,
    ):
        with SQLiteAccountsDB(s.home / "accounts.sqlite3") as db:
            other = db.create_account("other", tier="enterprise")
            _, other_key = db.create_key(other.id, scopes=("read", "admin"))
        profile = c.post("/v1/profiles", json={"name": "p"}, headers=s.headers()).json()
        lease = c.post(f"/v1/profiles/{profile['id']}/lease", json={"ttl": 60}, headers=s.headers())
        assert lease.status_code == 200, lease.text

        def flood(_: int) -> httpx.Response:
            return c.post(
                f"/v1/profiles/{profile['id']}/upload",
                files={"file": ("p.tar.gz", archive)},
                headers=s.headers(),
            )

        with ThreadPoolExecutor(max_workers=45) as pool:
            uploads = [pool.submit(flood, i) for i in range(45)]
            time.sleep(1.5)  # the uploads are in: waiting for the lease
            took = []
            for _ in range(3):
                started = time.monotonic()
                r = c.get("/v1/profiles", headers={"Authorization": f"Bearer {other_key}"})
                took.append(time.monotonic() - started)
                assert r.status_code == 200, r.text
            waiting = sum(not u.done() for u in uploads)
            released = c.delete(
                f"/v1/profiles/{profile['id']}/lease",
                params={"epoch": lease.json()["epoch"]},
                headers=s.headers(**{"X-Lease-Token": lease.json()["token"]}),
            )
            assert released.status_code == 204, released.text
            answers = [u.result() for u in uploads]
        assert max(took) < 2.0, f"the other account waited {max(took):.1f} s ({waiting} waiting)"
        codes = Counter(r.status_code for r in answers)
        assert set(codes) <= ({200, 409, 429} if slots is None else {200, 409}), codes
        for r in answers:
            if r.status_code == 429:
                e = _err(r)
                assert e["code"] == "RateLimited" and int(r.headers["Retry-After"]) >= 1, e
        # the account's own work still went through once the lease was released
        assert codes[200] >= 1, codes


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
