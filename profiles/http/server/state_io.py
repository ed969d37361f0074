"""What the state routes stream back: a committed state exported by a thread as it is
read, a spooled file, a stored blob; and the hashing of what is written."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from profiles.errors import ProfileError
from profiles.http.outcome import trailer
from profiles.state.archive import Codec
from profiles.store import ProfileStore

log = logging.getLogger(__name__)


class QueueWriter:
    """A file-like sink that hands bytes to a consumer thread through a bounded queue."""

    CHUNK = 256 * 1024

    def __init__(self, q: queue.Queue[bytes | BaseException | None], stop: threading.Event):
        self._q = q
        self._stop = stop
        self._buf = bytearray()

    def _put(self, item: bytes) -> None:
        while True:
            if self._stop.is_set():
                raise BrokenPipeError("the download was abandoned")
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buf += data
        if len(self._buf) >= self.CHUNK:
            self._put(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def close_out(self) -> None:
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()


def export_stream(
    store: ProfileStore, profile_id: str, codec: Codec = "gzip", *, outcome: bool = False
) -> Iterator[bytes]:
    """The profile's committed state as ``.tar.gz`` (or ``.tar.zst``), produced by a thread
    as it is read. ``outcome``: end with the trailer that says how it ended
    (:mod:`profiles.http.outcome`), so that an error found after the headers went (a pack
    found damaged half-way) still reaches the client as itself."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    stop = threading.Event()
    sink = QueueWriter(q, stop)

    def produce() -> None:
        try:
            # A remote store's read of the state (a checkout, or the client's own export,
            # which that client records): not an export of the server's.
            store.export_state(profile_id, sink, codec=codec, audit=False)  # type: ignore[arg-type]
            sink.close_out()
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                if not stop.is_set():
                    q.put(exc, timeout=5)
            return
        with contextlib.suppress(queue.Full):
            q.put(None, timeout=5)

    thread = threading.Thread(target=produce, name="download", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                if outcome:
                    yield trailer()
                return
            if isinstance(item, BaseException):
                log.warning("a download of profile %s failed: %s", profile_id, type(item).__name__)
                if outcome and isinstance(item, ProfileError):
                    yield trailer(item)
                    return
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()


class HashingWriter:
    """A file-like sink that writes through to ``raw`` and hashes what it writes."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sha.update(data)
        return int(self._raw.write(data))

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def file_stream(path: Path, scratch: Path) -> Iterator[bytes]:
    """The file's bytes; the scratch directory holding it goes when the stream ends."""
    try:
        with path.open("rb") as src:
            while chunk := src.read(1024 * 1024):
                yield chunk
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def blob_stream(source: Any, head: bytes) -> Iterator[bytes]:
    try:
        if head:
            yield head
        while True:
            chunk = source.read(1024 * 1024)
            if not chunk:
                return
            yield chunk
    finally:
        source.close()


def hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        while chunk := src.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
