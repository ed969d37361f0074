"""Request bodies read as streams and spooled to disk under a cap, never held in memory.

:func:`spool_body` writes a raw body (``PUT .../state``) to a file, hashing it as it goes;
:func:`spool_multipart` parses ``multipart/form-data`` incrementally (python-multipart's
push parser, fed from ``request.stream()``) and writes the ``file`` part to a file: the small
fields before it are kept (capped), the file's bytes go straight to disk. Both stop at the
cap (``ArchiveInvalid`` with status 413), then read and discard what the client still sends, up to
:data:`DRAIN_LIMIT`, so that it receives the answer instead of a reset connection. A body
whose ``Content-Length`` already passes the cap is refused before any of it is read. The
routes that read their body this way are marked with
:func:`~profiles.http.server.bodies.streams_body`: every other body is capped at 1 MiB as it
is read (:mod:`profiles.http.server.bodies`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from profiles.errors import ArchiveInvalid, ValidationFailed

__all__ = [
    "DRAIN_LIMIT",
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "FramedBody",
    "MultipartUpload",
    "SpooledBody",
    "drain",
    "spool_body",
    "spool_multipart",
]

GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
DRAIN_LIMIT: Final = 1024**3  # what is read and discarded after a refusal, at most
MAX_FIELDS: Final = 32
MAX_FIELD_BYTES: Final = 16 * 1024
NO_FILE: Final = "No file provided"
NOT_GZIP: Final = "Only .tar.gz files are allowed"
HEAD_BYTES: Final = 512  # kept of a body: its magic bytes, and a tar header's "ustar" (at 257)


def too_large(limit: int) -> ArchiveInvalid:
    """The body passed the upload cap; nothing was kept: ``ArchiveInvalid`` answered with
    413, a variant of its status that the client keeps."""
    error = ArchiveInvalid(
        f"The upload is larger than the maximum of {limit // (1024 * 1024)} MB; nothing was kept.",
        field="file",
        limit=limit,
    )
    error.status = 413
    return error


def archive_codec(head: bytes) -> str | None:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


async def drain(chunks: AsyncIterator[bytes], limit: int = DRAIN_LIMIT) -> None:
    """Read and discard the rest of a body (up to ``limit`` bytes)."""
    seen = 0
    with contextlib.suppress(ClientDisconnect):
        async for chunk in chunks:
            seen += len(chunk)
            if seen > limit:
                return


def _open_spool(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)


@dataclass
class SpooledBody:
    path: Path
    size: int
    sha256: str
    head: bytes


async def spool_body(request: Request, path: Path, *, limit: int) -> SpooledBody:
    """Write the request's raw body to ``path`` (new, ``0600``) under the cap."""
    declared = request.headers.get("content-length")
    chunks = request.stream()
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)  # at once, unread: the server closes the connection after it
    digest = hashlib.sha256()
    size = 0
    head = b""
    fd = _open_spool(path)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    await drain(chunks)
                    raise too_large(limit)
                if len(head) < HEAD_BYTES:
                    head = (head + chunk)[:HEAD_BYTES]
                digest.update(chunk)
                out.write(chunk)
    except ClientDisconnect:
        raise ValidationFailed("The client closed the connection mid-upload.") from None
    return SpooledBody(path=path, size=size, sha256=digest.hexdigest(), head=head)


@dataclass
class MultipartUpload:
    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""


class _Parts:
    """Callbacks of the push parser: fields into memory (capped), ``file`` to disk."""

    def __init__(self, spool: Path, limit: int) -> None:
        self.spool = spool
        self.limit = limit
        self.result = MultipartUpload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._out: int | None = None
        self._digest = hashlib.sha256()
        self.error: Exception | None = None

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._is_file = False
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name == "file":
            if self.result.file_path is not None:
                raise ValidationFailed("Send one file per upload.", field="file")
            self._is_file = True
            self.result.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.result.file_path = self.spool
            self._out = _open_spool(self.spool)
        elif len(self.result.fields) >= MAX_FIELDS:
            raise ValidationFailed(f"At most {MAX_FIELDS} form fields are allowed.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            assert self._out is not None
            self.result.size += len(chunk)
            if self.result.size > self.limit:
                raise too_large(self.limit)
            if len(self.result.head) < HEAD_BYTES:
                self.result.head = (self.result.head + chunk)[:HEAD_BYTES]
            self._digest.update(chunk)
            view = memoryview(chunk)
            while view:
                written = os.write(self._out, view)
                view = view[written:]
        else:
            self._value += chunk
            if len(self._value) > MAX_FIELD_BYTES:
                raise ValidationFailed(
                    f"Form field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes.",
                    field=self._name,
                )

    def on_part_end(self) -> None:
        if self._is_file:
            self.close_file()
            self.result.sha256 = self._digest.hexdigest()
        elif self._name is not None:
            self.result.fields[self._name] = self._value.decode("utf-8", "replace")

    def close_file(self) -> None:
        if self._out is not None:
            os.close(self._out)
            self._out = None


async def spool_multipart(request: Request, spool: Path, *, limit: int) -> MultipartUpload:
    """Parse a multipart body as it arrives; the ``file`` part goes to ``spool`` (new,
    ``0600``). ``ValidationFailed("No file provided")`` when the body is not multipart or
    has no file; the caller checks what the file holds."""
    chunks = request.stream()
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        await drain(chunks)
        raise ValidationFailed(NO_FILE, field="file")
    declared = request.headers.get("content-length")
    overhead = MAX_FIELDS * (MAX_FIELD_BYTES + 512) + 4096
    if declared is not None and declared.isdigit() and int(declared) > limit + overhead:
        raise too_large(limit)
    parts = _Parts(spool, limit)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": parts.on_part_begin,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
        },
        max_size=limit + overhead,
    )
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except (ValidationFailed, ArchiveInvalid):
        await drain(chunks)
        raise
    except MultipartParseError as exc:
        await drain(chunks)
        if parts.result.size > limit:
            raise too_large(limit) from None
        raise ValidationFailed(f"The multipart body is malformed: {exc}", field="file") from None
    except ClientDisconnect:
        raise ValidationFailed("The client closed the connection mid-upload.") from None
    finally:
        parts.close_file()
    result = parts.result
    if result.file_path is None or (not result.filename and result.size == 0):
        raise ValidationFailed(NO_FILE, field="file")
    return result


class FramedBody:
    """A body made of a header line and then raw parts of sizes the header declares (the
    framing of ``POST .../state/push``), read from the stream as it arrives: the header
    under its own cap, each part to a file, hashed as it lands."""

    def __init__(self, request: Request) -> None:
        self._chunks = request.stream()
        self._buffer = b""
        self._ended = False

    async def _more(self) -> bool:
        """Read on until some bytes come (Starlette's stream ends with an empty chunk);
        ``False`` once the body has ended."""
        while not self._ended:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                return False
            except ClientDisconnect:
                raise ValidationFailed("The client closed the connection mid-upload.") from None
            if chunk:
                self._buffer += chunk
                return True
        return False

    async def header(self, limit: int) -> bytes:
        """The first line (without its newline), at most ``limit`` bytes."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > limit:
                raise _header_too_large(limit)
            if not await self._more():
                raise ValidationFailed(
                    "The body must start with a JSON header line ending in a newline.",
                    field="body",
                )
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > limit:
            raise _header_too_large(limit)
        return line

    async def part(self, path: Path, size: int) -> str:
        """The next ``size`` bytes into a new file at ``path`` (``0600``); their SHA-256.
        ``ValidationFailed`` when the body ends first."""
        digest = hashlib.sha256()
        left = size
        fd = _open_spool(path)
        with os.fdopen(fd, "wb") as out:
            while left:
                if not self._buffer and not await self._more():
                    raise ValidationFailed(
                        f"The body ended {left} bytes short of the parts its header declares.",
                        field="body",
                    )
                piece, self._buffer = self._buffer[:left], self._buffer[left:]
                digest.update(piece)
                out.write(piece)
                left -= len(piece)
        return digest.hexdigest()

    async def drain(self) -> None:
        """Read and discard the rest (after a refusal), up to :data:`DRAIN_LIMIT`."""
        self._buffer = b""
        if not self._ended:
            with contextlib.suppress(ClientDisconnect):
                await drain(self._chunks)
            self._ended = True

    async def end(self) -> None:
        """``ValidationFailed`` if anything follows the declared parts."""
        if self._buffer or await self._more():
            raise ValidationFailed(
                "The body holds more bytes than its header declares.", field="body"
            )


def _header_too_large(limit: int) -> ValidationFailed:
    err = ValidationFailed(f"The header line is larger than {limit} bytes.", limit=limit)
    err.status = 413
    return err
