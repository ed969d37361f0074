"""The blob store of an account on ``profiles serve``, as the chunked-state code reads and
writes one: packs and manifests go up with ``PUT /v1/state/blobs/{checksum}`` (the server
hashes them as they land), spans come down with ranged ``GET`` s, many at a time. Every
chunk read is checked against its manifest by the code that reads it, as from any store.

It serves the state code only: listing and deleting blobs belong to the server."""

from __future__ import annotations

import builtins
import io
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import httpx

from profiles.blobs.base import BlobInfo, BlobStore, check_range
from profiles.errors import NotFound, ProfileError, StorageUnavailable

if TYPE_CHECKING:
    from profiles.http.client import HttpService

__all__ = ["BlobBatch", "RemoteBlobs"]

UPLOAD_PIECE = 1024 * 1024


class RemoteBlobs(BlobStore):
    """The calling account's blobs on the server ``service`` talks to."""

    def __init__(self, service: HttpService) -> None:
        self._service = service
        self.location = service.location

    @staticmethod
    def _path(checksum: str) -> str:
        return f"state/blobs/{checksum}"

    def exists(self, checksum: str) -> bool:
        try:
            self._service._send("HEAD", self._path(checksum), idempotent=True).close()
        except NotFound:
            return False
        return True

    def put(self, checksum: str, source: BinaryIO, *, size: int) -> bool:
        """Upload ``size`` bytes of ``source`` unless the account's storage holds the blob
        already (asked first: a commit sends only what the server lacks)."""
        if self.exists(checksum):
            return False
        data = source.read(size)  # a pack or a manifest: a few MiB, read once, sent again on retry
        if len(data) != size:
            raise ProfileError(f"The blob {checksum} came {len(data)} bytes short of {size}.")

        def body() -> Iterator[bytes]:
            for at in range(0, len(data), UPLOAD_PIECE):
                yield data[at : at + UPLOAD_PIECE]

        answer = self._service._send(
            "PUT",
            self._path(checksum),
            body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            idempotent=True,
        )
        try:
            stored = answer.json().get("stored", True)
        except ValueError:
            stored = True
        finally:
            answer.close()
        return bool(stored)

    def open(self, checksum: str) -> BinaryIO:
        response = self._service._send("GET", self._path(checksum), idempotent=True, stream=True)
        return cast(BinaryIO, io.BufferedReader(_ResponseStream(response), UPLOAD_PIECE))

    def read_range(self, checksum: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        response = self._service._send(
            "GET",
            self._path(checksum),
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            idempotent=True,
        )
        return response.content[:length]

    def delete(self, checksum: str) -> None:
        raise ProfileError(f"Blobs on {self.location} are deleted by the server's collector.")

    def list(self) -> Iterator[BlobInfo]:
        raise ProfileError(f"Blobs on {self.location} are listed by the server only.")

    def stat(self, checksum: str) -> BlobInfo | None:
        raise ProfileError(f"Blobs on {self.location} are listed by the server only.")

    def sweep_scratch(self) -> builtins.list[str]:
        return []


class _ResponseStream(io.RawIOBase):
    """A streamed response body as a readable stream; closing it closes the response."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__()
        self._response = response
        self._pieces = response.iter_bytes(UPLOAD_PIECE)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = next(self._pieces)
            except StopIteration:
                return 0
            except httpx.HTTPError as exc:
                where = f"{self._response.request.url.scheme}://{self._response.request.url.netloc.decode()}"
                error = StorageUnavailable(
                    f"Reading a blob from the profile service at {where} failed: "
                    f"{type(exc).__name__}. Nothing was changed; try again.",
                    home=where,
                    cause=type(exc).__name__,
                )
                error.transient = True
                raise error from exc
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
            finally:
                super().close()


class BlobBatch(BlobStore):
    """The blobs a commit writes, kept here to go with the commit in one request (``POST
    .../state/push``) while they fit in ``limit`` bytes; past it, each goes up on its own
    through ``remote`` (asking first whether the server has it). Reads of a kept blob are
    answered from it, others by ``remote``. Thread-safe (packs are sealed on threads)."""

    def __init__(self, remote: RemoteBlobs, *, limit: int) -> None:
        self._remote = remote
        self._limit = limit
        self._kept: dict[str, bytes] = {}
        self._size = 0
        self._lock = threading.Lock()
        self.location = remote.location

    @property
    def kept(self) -> builtins.list[tuple[str, bytes]]:
        """The blobs kept to go with the commit, in the order they were written."""
        with self._lock:
            return list(self._kept.items())

    def put(self, checksum: str, source: BinaryIO, *, size: int) -> bool:
        data = source.read(size)
        if len(data) != size:
            raise ProfileError(f"The blob {checksum} came {len(data)} bytes short of {size}.")
        with self._lock:
            if checksum in self._kept:
                return False
            if self._size + size <= self._limit:
                self._kept[checksum] = data
                self._size += size
                return True
        return self._remote.put(checksum, io.BytesIO(data), size=size)

    def open(self, checksum: str) -> BinaryIO:
        with self._lock:
            data = self._kept.get(checksum)
        if data is not None:
            return cast(BinaryIO, io.BytesIO(data))
        return self._remote.open(checksum)

    def read_range(self, checksum: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self._lock:
            data = self._kept.get(checksum)
        if data is not None:
            return data[offset : offset + length]
        return self._remote.read_range(checksum, offset, length)

    def exists(self, checksum: str) -> bool:
        with self._lock:
            if checksum in self._kept:
                return True
        return self._remote.exists(checksum)

    def delete(self, checksum: str) -> None:
        self._remote.delete(checksum)

    def list(self) -> Iterator[BlobInfo]:
        return self._remote.list()
