"""Reading compressed tar streams from strangers, block by block, with every byte accounted for.

Python's ``tarfile`` trusts its input in ways an upload service cannot: it reads the whole
payload of a PAX (``x``/``g``) or GNU long-name (``L``/``K``) header into memory before any
cap applies, recurses once per extended header, takes a header with a bad checksum in the
middle of a stream for the end of the archive (so the members after it vanish silently),
and ignores whatever follows the end marker. This module reads the same formats (ustar,
GNU, PAX, v7) with the standard library's one-block parser (``TarInfo.frombuf``) but frames
the stream itself:

* an extended header is refused before it is read when its size is over a cap, chains of
  extended headers are capped, global PAX values are capped in total;
* every byte of the decompressed stream belongs to a header, a member's data, the zero
  padding that completes its last block, or the end-of-archive marker (two zero blocks)
  and the zero padding after it (capped); a bad checksum, an early end, a lone zero block
  or data after the end marker is an error, never an end;
* the compressed stream must end where its codec says it ends: complete gzip members
  (then at most a little zero padding) or complete zstd frames, nothing cut, nothing after;
* every decompressed byte counts against a total cap and an expansion-ratio cap.

Structural problems raise :class:`TarFormatError` (the caller words the final message);
caps and policy raise :class:`~profiles.errors.ArchiveInvalid` directly.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import Protocol

import zstandard

from profiles.errors import ArchiveInvalid

__all__ = [
    "GzipDecoder",
    "Meter",
    "TarFormatError",
    "TarReader",
    "ZstdDecoder",
    "shown",
]

MiB = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)
CHUNK = 1024 * 1024  # decompressed bytes asked for at a time
INPUT_CHUNK = 256 * 1024  # compressed bytes fed to a decompressor at a time
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Consecutive extended headers before a member: real writers use one to three.
MAX_HEADER_CHAIN = 16
# Zero bytes allowed after the end-of-archive marker (tar pads to its record size, 10 KiB
# by default, more with a large blocking factor) and after the last gzip member.
MAX_ZERO_PADDING = 1 * MiB
# Modification times os.utime takes (the file system clamps what it cannot store itself);
# beyond this they are nonsense, and an overflow, not a date.
MTIME_LIMIT = 2**62
EXTENDED = {
    tarfile.XHDTYPE: "PAX extended",
    tarfile.SOLARIS_XHDTYPE: "PAX extended",
    tarfile.XGLTYPE: "PAX global",
    tarfile.GNUTYPE_LONGNAME: "GNU long-name",
    tarfile.GNUTYPE_LONGLINK: "GNU long-link",
}
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_PAX_MTIME = re.compile(rb"-?[0-9]{1,20}(?:\.[0-9]{0,20})?")


class TarFormatError(Exception):
    """The stream is not a complete, well-formed compressed tar; the text says why."""


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def shown(name: str, limit: int = 80) -> str:
    """A member name for a message: escaped by ``repr`` and cut to ``limit`` characters."""
    if len(name) > limit:
        return f"{name[:limit]!r}… ({len(name)} characters)"
    return repr(name)


# ----------------------------------------------------------------------- compressed layer


class GzipDecoder:
    """Decompresses gzip members one after another (RFC 1952 allows several), then allows
    only a little zero padding: a cut stream, a bad CRC or bytes after it are errors."""

    def __init__(self, source: Readable, *, max_members: int) -> None:
        self._source = source
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = b""
        self._members = 1
        self._max_members = max_members
        self._done = False

    def read(self, n: int) -> bytes:
        while not self._done:
            if self._inflate.eof:
                self._after_member()
                continue
            if not self._input:
                self._input = self._source.read(INPUT_CHUNK)
                if not self._input:
                    raise TarFormatError("the gzip stream ends early (the file is cut short)")
            out = self._inflate.decompress(self._input, n)
            self._input = self._inflate.unconsumed_tail
            if out:
                return out
        return b""

    def _after_member(self) -> None:
        rest = self._inflate.unused_data
        while len(rest) < len(GZIP_MAGIC):
            more = self._source.read(INPUT_CHUNK)
            if not more:
                break
            rest += more
        if rest.startswith(GZIP_MAGIC):
            self._members += 1
            if self._members > self._max_members:
                raise ArchiveInvalid(
                    f"The archive has more than {self._max_members} gzip members.", field="file"
                )
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._input = rest
            return
        padding = 0
        while rest:
            if rest.count(0) != len(rest):
                raise TarFormatError("it has data after the end of the gzip stream")
            padding += len(rest)
            if padding > MAX_ZERO_PADDING:
                raise TarFormatError(
                    f"it has more than {MAX_ZERO_PADDING // 1024} KiB of zero padding after "
                    "the gzip data"
                )
            rest = self._source.read(INPUT_CHUNK)
        self._done = True


class _ZstdFrames:
    """Walks the frame and block headers of a zstd stream as its bytes go by.

    libzstd's stream reader returns what it decoded and stops quietly when its input ends in
    the middle of a frame; knowing where each frame ends tells a complete stream from a cut
    one, and bytes after the last frame from another frame.
    """

    def __init__(self, max_frames: int) -> None:
        self.frames = 0
        self._max_frames = max_frames
        self._state = "magic"
        self._need = 4
        self._field = bytearray()
        self._skip = 0
        self._checksum = False
        self._seen = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                i += k
                self._skip -= k
                continue
            k = min(self._need - len(self._field), n - i)
            self._field += view[i : i + k]
            i += k
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._on_field(field, self._seen + i)
        self._seen += n

    def _expect(self, state: str, need: int, skip: int = 0) -> None:
        self._state, self._need, self._skip = state, need, skip

    def _on_field(self, field: bytes, at: int) -> None:
        if self._state == "magic":
            if field == ZSTD_MAGIC:
                self.frames += 1
                if self.frames > self._max_frames:
                    raise ArchiveInvalid(
                        f"The archive has more than {self._max_frames} zstd frames.",
                        field="file",
                    )
                self._expect("descriptor", 1)
            elif field[0] & 0xF0 == 0x50 and field[1:] == b"\x2a\x4d\x18":
                self._expect("skippable", 4)
            else:
                raise TarFormatError("it has data after the end of the zstd stream")
        elif self._state == "descriptor":
            fhd = field[0]
            if fhd & 0x08:
                raise TarFormatError(f"the zstd frame header at byte {at - 5} is corrupt")
            single = bool(fhd & 0x20)
            self._checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs
            self._expect("block", 3, rest)
        elif self._state == "block":
            value = int.from_bytes(field, "little")
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                raise TarFormatError(f"the zstd block header at byte {at - 3} is corrupt")
            payload = 1 if kind == 1 else size
            if not value & 1:
                self._expect("block", 3, payload)
            else:
                self._expect("magic", 4, payload + (4 if self._checksum else 0))
        else:  # skippable frame: its size, then its bytes
            self._expect("magic", 4, int.from_bytes(field, "little"))

    def finish(self) -> None:
        if self._state != "magic" or self._skip or self._field or not self.frames:
            raise TarFormatError("the zstd stream ends early (the file is cut short)")


class _Watched:
    def __init__(self, source: Readable, frames: _ZstdFrames) -> None:
        self._source = source
        self._frames = frames
        self.eof = False

    def read(self, n: int) -> bytes:
        data = self._source.read(n)
        if data:
            self._frames.feed(data)
        else:
            self.eof = True
        return data


class ZstdDecoder:
    """Decompresses zstd frames one after another; the stream must end with a frame."""

    def __init__(self, source: Readable, *, max_frames: int) -> None:
        self._frames = _ZstdFrames(max_frames)
        self._source = _Watched(source, self._frames)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._source,  # type: ignore[arg-type]  # any object with read() will do
            read_size=INPUT_CHUNK,
            read_across_frames=True,
            closefd=False,
        )

    def read(self, n: int) -> bytes:
        out: bytes = self._reader.read(n)
        if not out:
            while not self._source.eof:  # the reader stopped early: nothing may follow
                if self._source.read(INPUT_CHUNK):
                    raise TarFormatError("it has data after the end of the zstd stream")
            self._frames.finish()
        return out


class Meter:
    """Counts decompressed bytes against a total cap and the expansion ratio."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        compressed: Callable[[], int],
        *,
        cap: int,
        max_ratio: int,
        ratio_floor: int,
    ) -> None:
        self._read = read
        self._compressed = compressed
        self._cap = cap
        self._max_ratio = max_ratio
        self._ratio_floor = ratio_floor
        self.total = 0

    def read(self, n: int) -> bytes:
        data = self._read(n)
        self.total += len(data)
        if self.total > self._cap:
            raise ArchiveInvalid(
                f"The archive expands to more than {self._cap // MiB} MB; it looks like a "
                "decompression bomb.",
                field="file",
            )
        if self.total > self._ratio_floor and self.total > self._max_ratio * self._compressed():
            raise ArchiveInvalid(
                f"The archive expands more than {self._max_ratio} times its compressed size; "
                "it looks like a decompression bomb.",
                field="file",
            )
        return data


# ------------------------------------------------------------------------------ tar layer


def _parse_pax(payload: bytes, at: int) -> dict[bytes, bytes]:
    """``length keyword=value\\n`` records, strictly; NUL padding after the last is allowed."""
    records: dict[bytes, bytes] = {}
    pos, end = 0, len(payload)
    while pos < end:
        if payload[pos] == 0 and payload.count(0, pos) == end - pos:
            break
        space = payload.find(b" ", pos, min(end, pos + 21))
        digits = payload[pos:space] if space > pos else b""
        length = int(digits) if digits.isdigit() else 0
        stop = pos + length
        record = payload[space + 1 : stop - 1]
        equals = record.find(b"=")
        if length <= len(digits) + 1 or stop > end or payload[stop - 1] != 0x0A or equals < 1:
            raise TarFormatError(f"the extended header at byte {at} is malformed")
        records[record[:equals]] = record[equals + 1 :]
        pos = stop
    return records


class TarReader:
    """Members of a tar stream, in order; read each member's data with :meth:`data` (or
    leave it: the next :meth:`next` skips it) and :meth:`next` returns ``None`` only after a
    proper end-of-archive marker and the end of the stream."""

    def __init__(self, read: Callable[[int], bytes], *, max_header_bytes: int) -> None:
        self._read = read
        self._max_header = max_header_bytes
        self._buf = b""
        self._pos = 0
        self.offset = 0  # position in the tar stream of the next unread byte
        self._left = 0  # data of the current member not read yet
        self._pad = 0  # then its zero padding
        self._globals: dict[bytes, bytes] = {}
        self._global_sparse = False

    # -- bytes

    def _refill(self) -> bool:
        self._buf = self._read(CHUNK)
        self._pos = 0
        return bool(self._buf)

    def _take(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes (``n`` is small: a header or padding)."""
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            self.offset += n
            return out
        parts = [self._buf[self._pos :]]
        got = len(parts[0])
        while got < n:
            if not self._refill():
                if got == 0 and what == "a header":
                    raise TarFormatError(
                        f"it ends at byte {self.offset} without the end-of-archive marker "
                        "(the file is cut short)"
                    )
                raise TarFormatError(f"it ends in the middle of {what} at byte {self.offset}")
            k = min(n - got, len(self._buf))
            parts.append(self._buf[:k])
            self._pos = k
            got += k
        self.offset += n
        return b"".join(parts)

    def _padding(self, n: int, what: str) -> None:
        if n and self._take(n, what) != ZERO_BLOCK[:n]:
            raise TarFormatError(
                f"the padding after {what} ending at byte {self.offset - n} is not zeros: a "
                "size field is wrong or the archive is damaged"
            )

    def data(self) -> Iterator[memoryview]:
        """The current member's data in pieces, then its padding is checked."""
        while self._left:
            if self._pos >= len(self._buf) and not self._refill():
                raise TarFormatError(
                    f"it ends in the middle of a member's data at byte {self.offset}"
                )
            k = min(self._left, len(self._buf) - self._pos)
            piece = memoryview(self._buf)[self._pos : self._pos + k]
            self._pos += k
            self._left -= k
            self.offset += k
            yield piece
        pad, self._pad = self._pad, 0
        self._padding(pad, "a member's data")

    # -- headers

    def next(self) -> tarfile.TarInfo | None:
        for _ in self.data():  # skip what the caller did not read
            pass
        local: dict[bytes, bytes] | None = None
        long_name = long_link = None
        chain = 0
        while True:
            start = self.offset
            block = self._take(BLOCK, "a header")
            if block == ZERO_BLOCK:
                if chain:
                    raise TarFormatError(
                        f"the extended header before byte {start} is not followed by a member"
                    )
                self._end(start)
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise TarFormatError(f"the header at byte {start} is corrupt ({exc})") from None
            if info.type not in EXTENDED:
                return self._member(info, start, long_name, long_link, local)
            chain += 1
            if chain > MAX_HEADER_CHAIN:
                raise ArchiveInvalid(
                    f"The archive has more than {MAX_HEADER_CHAIN} extended headers in a row "
                    f"(at byte {start}).",
                    field="file",
                )
            if not 0 <= info.size <= self._max_header:
                raise ArchiveInvalid(
                    f"The archive has a {EXTENDED[info.type]} header of {info.size} bytes at "
                    f"byte {start}; at most {self._max_header} are allowed.",
                    field="file",
                )
            payload = self._take(info.size, "an extended header")
            self._padding(-info.size % BLOCK, "an extended header")
            twice = TarFormatError(
                f"there are two {EXTENDED[info.type]} headers for the member at byte {start}"
            )
            if info.type == tarfile.GNUTYPE_LONGNAME:
                if long_name is not None:
                    raise twice
                long_name = payload.split(b"\0", 1)[0]
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                if long_link is not None:
                    raise twice
                long_link = payload.split(b"\0", 1)[0]
            elif info.type == tarfile.XGLTYPE:
                self._merge_globals(_parse_pax(payload, start))
            else:
                if local is not None:
                    raise twice
                local = _parse_pax(payload, start)

    def _merge_globals(self, records: dict[bytes, bytes]) -> None:
        for key, value in records.items():
            if value:
                self._globals[key] = value
            else:
                self._globals.pop(key, None)
        if sum(len(k) + len(v) for k, v in self._globals.items()) > self._max_header:
            raise ArchiveInvalid(
                f"The archive's global PAX headers hold more than {self._max_header} bytes.",
                field="file",
            )
        self._global_sparse = any(k.startswith(b"GNU.sparse.") for k in self._globals)

    def _member(
        self,
        info: tarfile.TarInfo,
        start: int,
        long_name: bytes | None,
        long_link: bytes | None,
        local: dict[bytes, bytes] | None,
    ) -> tarfile.TarInfo:
        local = local or {}

        def pax(key: bytes) -> bytes | None:
            if key in local:
                return local[key] or None  # an empty value deletes the global one
            return self._globals.get(key)

        path = pax(b"path") or long_name
        if path is not None:
            info.name = path.decode("utf-8", "surrogateescape")
            if info.isdir():
                info.name = info.name.rstrip("/")
        link = pax(b"linkpath") or long_link
        if link is not None:
            info.linkname = link.decode("utf-8", "surrogateescape")
        size = pax(b"size")
        if size is not None:
            if not (size.isdigit() and len(size) <= 20):
                raise TarFormatError(f"member {shown(info.name)} has an invalid PAX size")
            info.size = int(size)
        if info.size < 0:
            raise TarFormatError(f"member {shown(info.name)} has a negative size")
        mtime = pax(b"mtime")
        if mtime is not None:
            if not _PAX_MTIME.fullmatch(mtime):
                raise ArchiveInvalid(
                    f"Archive member {shown(info.name)} has an invalid modification time.",
                    field="file",
                )
            info.mtime = float(mtime)
        if not -MTIME_LIMIT < info.mtime < MTIME_LIMIT:
            raise ArchiveInvalid(
                f"Archive member {shown(info.name)} has an impossible modification time.",
                field="file",
            )
        sparse = self._global_sparse or any(k.startswith(b"GNU.sparse.") for k in local)
        if info.type == tarfile.GNUTYPE_SPARSE or sparse:
            raise ArchiveInvalid(
                f"Archive member {shown(info.name)} is a sparse file, which is not supported; "
                "pack without --sparse (-S).",
                field="file",
            )
        if info.type in REGULAR:
            data = info.size
        elif info.type == tarfile.DIRTYPE:
            if info.size:
                raise TarFormatError(
                    f"the directory {shown(info.name)} at byte {start} has a size: the "
                    "archive is damaged"
                )
            data = 0
        elif info.type in tarfile.SUPPORTED_TYPES:
            data = 0  # links and devices carry no data (the caller refuses them anyway)
        else:
            data = info.size  # unknown types carry data, as tarfile reads them
        info.offset = start
        self._left, self._pad = data, -data % BLOCK
        return info

    def _end(self, start: int) -> None:
        if self._take(BLOCK, "the end-of-archive marker") != ZERO_BLOCK:
            raise TarFormatError(
                f"a zero block at byte {start} is followed by more data: it is not the "
                "end-of-archive marker, and what follows would be lost"
            )
        rest, self._buf, self._pos = self._buf[self._pos :], b"", 0
        padding = 0
        while rest:
            if rest.count(0) != len(rest):
                raise TarFormatError(f"it has data after the end-of-archive marker at byte {start}")
            padding += len(rest)
            if padding > MAX_ZERO_PADDING:
                raise TarFormatError(
                    f"it has more than {MAX_ZERO_PADDING // 1024} KiB of zeros after the "
                    f"end-of-archive marker at byte {start}"
                )
            rest = self._read(CHUNK)
        self.offset += padding
