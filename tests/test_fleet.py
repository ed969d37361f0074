"""Two machines, one shared backend: worker processes with separate homes (standing for
separate machines) run writer sessions on one profile in real Chromium.

- N sessions each, at the same time: the localStorage counter ends at exactly 2N.
- A worker paused (SIGSTOP) past its lease: the other commits; the paused one, resumed, is
  refused with LeaseLost and the counter is not rolled back.
- A worker killed (SIGKILL) mid-session: the other proceeds within the lease expiry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.fleet import read_counter, start_worker, wait_for_line

from profiles import ProfileStore

from conftest import require_engine


@pytest.fixture
def urls(shared_urls: tuple[str, str]) -> tuple[str, str]:
    """The shared backend the machines work on (the workers drive Chromium)."""
    require_engine("chromium")
    return shared_urls


def _worker(
    home: Path,
    urls: tuple[str, str],
    url: str,
    *,
    rounds: int,
    ttl: float = 30.0,
    pause: float = 0.0,
) -> subprocess.Popen[str]:
    options = {"catalog": urls[0], "blobs": urls[1]}
    return start_worker(home, options, url, rounds=rounds, ttl=ttl, pause=pause)


def _counter(tmp_path: Path, urls: tuple[str, str], url: str) -> int:
    with ProfileStore(tmp_path / "reader", catalog=urls[0], blobs=urls[1]) as store:
        return read_counter(store, url)


def test_two_machines_count_every_session(
    urls: tuple[str, str], tmp_path: Path, http_server: str
) -> None:
    url = f"{http_server}/index.html"
    with ProfileStore(tmp_path / "setup", catalog=urls[0], blobs=urls[1]) as store:
        store.create("counter")
    n = 3
    workers = [_worker(tmp_path / f"machine-{i}", urls, url, rounds=n) for i in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
        assert out.count("set ") == n
    assert _counter(tmp_path, urls, url) == 2 * n
    with ProfileStore(tmp_path / "check", catalog=urls[0], blobs=urls[1]) as store:
        assert store.get("counter").usage_count >= 2 * n


def test_a_paused_worker_past_its_lease_cannot_roll_the_state_back(
    urls: tuple[str, str], tmp_path: Path, http_server: str
) -> None:
    url = f"{http_server}/index.html"
    with ProfileStore(tmp_path / "setup", catalog=urls[0], blobs=urls[1]) as store:
        store.create("counter")
    # Worker A sets the counter to 1, then sits in its session; we freeze it there.
    a = _worker(tmp_path / "machine-a", urls, url, rounds=1, ttl=2.0, pause=4.0)
    assert wait_for_line(a, "set ").strip() == "set 1"
    os.kill(a.pid, signal.SIGSTOP)
    try:
        # Past A's lease, worker B takes the profile (it never saw A's 1) and commits.
        b = _worker(tmp_path / "machine-b", urls, url, rounds=2, ttl=2.0)
        out_b, err_b = b.communicate(timeout=300)
        assert b.returncode == 0, err_b[-3000:]
        assert "set 2" in out_b  # B's second session saw its own first one
    finally:
        os.kill(a.pid, signal.SIGCONT)
    out_a, err_a = a.communicate(timeout=300)
    assert a.returncode == 3, (out_a, err_a[-3000:])
    assert "LeaseLost" in out_a
    assert _counter(tmp_path, urls, url) == 2  # B's state stands; A's 1 is not written back
    with ProfileStore(tmp_path / "audit", catalog=urls[0], blobs=urls[1]) as store:
        ended = [e for e in store.audit(limit=100).data if e.type == "session.ended"]
        assert any("lease was lost" in str(e.payload.get("reason")) for e in ended)


def test_a_killed_worker_frees_the_profile_within_the_lease_expiry(
    urls: tuple[str, str], tmp_path: Path, http_server: str
) -> None:
    url = f"{http_server}/index.html"
    with ProfileStore(tmp_path / "setup", catalog=urls[0], blobs=urls[1]) as store:
        store.create("counter")
    a = _worker(tmp_path / "machine-a", urls, url, rounds=1, ttl=2.0, pause=60.0)
    wait_for_line(a, "set ")
    os.kill(a.pid, signal.SIGKILL)
    a.communicate(timeout=30)
    started = time.monotonic()
    b = _worker(tmp_path / "machine-b", urls, url, rounds=1, ttl=2.0)
    out_b, err_b = b.communicate(timeout=300)
    assert b.returncode == 0, err_b[-3000:]
    assert time.monotonic() - started < 60  # the lease expiry (2 s) plus one session
    assert "set 1" in out_b  # A's session was never committed
