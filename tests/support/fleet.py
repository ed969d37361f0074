"""Worker processes standing for the machines of a fleet (each with a home of its own): a
worker runs ``rounds`` writer sessions in real Chromium on profile ``counter``, each adding
one to a localStorage counter on ``url``, printing ``set N`` and then sitting ``pause``
seconds in the session. A lease lost on the way makes it print ``LeaseLost: ...`` and exit
3. The store is any store the keyword arguments of ``ProfileStore`` name (the shared
backend's URLs in test_fleet.py, ``service`` and ``api_key`` in test_http_client.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from driver import Session
from profiles import ProfileStore

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys, time
from driver import Session
from profiles import LeaseLost, ProfileStore

home, options, url, rounds, ttl, pause = sys.argv[1:7]
store = ProfileStore(home, lease_ttl=float(ttl), **json.loads(options))
try:
    for _ in range(int(rounds)):
        with Session(profile="counter", store=store, lock_timeout=120) as page:
            page.goto(url)
            value = page.evaluate(
                "() => { const n = Number(localStorage.getItem('n') || 0) + 1;"
                " localStorage.setItem('n', String(n)); return n; }"
            )
            print(f"set {value}", flush=True)
            time.sleep(float(pause))
except LeaseLost as exc:
    print(f"LeaseLost: {exc.message}", flush=True)
    sys.exit(3)
finally:
    store.close()
print("done", flush=True)
"""


def start_worker(
    home: Path,
    store_options: dict[str, str],
    url: str,
    *,
    rounds: int,
    ttl: float = 30.0,
    pause: float = 0.0,
) -> subprocess.Popen[str]:
    """A worker process (see the module docstring) with its own ``home``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [home, json.dumps(store_options), url, rounds, ttl, pause]
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 120) -> str:
    """The first line of the worker's output that starts with ``prefix``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    stderr = proc.stderr.read()[-2000:] if proc.stderr else ""
    raise AssertionError(f"no {prefix!r} from the worker; stderr: {stderr}")


def read_counter(store: ProfileStore, url: str) -> int:
    """The counter as the committed state has it (a read-only session)."""
    with Session(profile="counter", store=store, readonly=True) as page:
        page.goto(url)
        return int(page.evaluate("() => Number(localStorage.getItem('n') || 0)"))
