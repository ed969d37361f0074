"""Helpers for the store's fault and hostile-input tests: synthetic profile directories,
archives of them, and child processes that hold locks or die at chosen points."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from profiles.state.archive import pack_dir

ROOT = Path(__file__).resolve().parents[2]


def chromium_dir(path: Path, *, payload_bytes: int = 64 * 1024, seed: int = 0) -> Path:
    """A directory shaped like a Chromium user-data-dir (what detect_engine recognises)."""
    (path / "Default").mkdir(parents=True, exist_ok=True)
    (path / "Local State").write_text(f'{{"seed": {seed}}}')
    (path / "Default" / "Preferences").write_text('{"profile": {"name": "x"}}')
    (path / "Last Version").write_text("156.0.8078.73")
    blob = os.urandom(payload_bytes) if payload_bytes else b""
    (path / "Default" / "Local Storage").mkdir(exist_ok=True)
    (path / "Default" / "Local Storage" / f"data-{seed}.bin").write_bytes(blob)
    return path


def chromium_archive(path: Path, work: Path, **kwargs: int) -> Path:
    """A .tar.gz of :func:`chromium_dir`."""
    src = chromium_dir(work, **kwargs)
    with path.open("wb") as out:
        pack_dir(src, out, engine="chromium", codec="gzip")
    return path


def python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start ``code`` in a child Python with the repo on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


@contextlib.contextmanager
def lock_held_elsewhere(home: Path, ref: str, *, kind: str = "session") -> Iterator[int]:
    """A child process that holds ``ref``'s writer lock until the block ends; yields its pid."""
    child = python(
        f"""
        import sys, time
        from profiles import ProfileStore
        store = ProfileStore({str(home)!r})
        lock = store.lock({ref!r}, kind={kind!r})
        lock.acquire()
        print("held", flush=True)
        sys.stdin.read()
        """,
        stdin=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "held", child.stderr.read() if child.stderr else line
        yield child.pid
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)
