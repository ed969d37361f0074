"""The blob-store contract (``profiles.blobs.base``, rules 1-6) as a reusable pytest suite.

Subclass :class:`BlobContract` in a test module and give it a ``blobs`` fixture that yields a
fresh, empty store, plus :meth:`BlobContract.make_leftover` (what a crashed ``put`` leaves
behind in that backend)::

    class TestLocalBlobs(BlobContract):
        @pytest.fixture
        def blobs(self, tmp_path):
            store = LocalBlobStore(tmp_path / "blobs")
            yield store
            store.close()

        def make_leftover(self, blobs, checksum, data): ...

Sizes are class attributes: a backend with a multipart (or otherwise chunked) path should be
configured in its fixture so that :attr:`BlobContract.multipart_size` takes that path.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, ClassVar, cast

import pytest

from profiles.blobs.base import BlobInfo, BlobStore
from profiles.errors import ChecksumMismatch, NotFound, ValidationFailed

__all__ = ["BlobContract", "MiB", "SourceFailed", "Stream", "blob_bytes"]

MiB = 1024 * 1024


def blob_bytes(size: int, seed: int) -> tuple[bytes, str]:
    """``size`` pseudo-random bytes and their SHA-256 hex digest."""
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha256(data).hexdigest()


class SourceFailed(Exception):
    """What a :class:`Stream` raises when told to fail part-way."""


class Stream:
    """A non-seekable source with only ``read``: it hands out at most ``piece`` bytes a call
    (short reads, like a pipe or a socket), can raise after ``fail_after`` bytes, and can
    stop after ``pause_at`` bytes until ``resume`` is set."""

    def __init__(
        self,
        data: bytes,
        *,
        piece: int = 64 * 1024,
        fail_after: int | None = None,
        pause_at: int | None = None,
    ) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._piece = piece
        self._fail_after = fail_after
        self._pause_at = pause_at
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.reads = 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise SourceFailed(f"the source failed after {self._pos} bytes")
        limit = len(self._data)
        if self._fail_after is not None:
            limit = min(limit, self._fail_after)
        if self._pause_at is not None:
            if self._pos >= self._pause_at and not self.resume.is_set():
                self.paused.set()
                if not self.resume.wait(120):
                    raise SourceFailed("the paused source was never resumed")
            elif self._pos < self._pause_at:
                limit = min(limit, self._pause_at)
        want = self._piece if n is None or n < 0 else min(n, self._piece)
        chunk = bytes(self._data[self._pos : min(limit, self._pos + want)])
        self._pos += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True


def _source(stream: Stream) -> BinaryIO:
    return cast(BinaryIO, stream)


def _read_all(stream: BinaryIO, size: int | None) -> bytes:
    """Read to the end in reads of ``size`` bytes (``None``: one ``read()``)."""
    if size is None:
        return stream.read()
    parts = []
    while chunk := stream.read(size):
        assert len(chunk) <= size
        parts.append(chunk)
    return b"".join(parts)


def _digest_of_stream(stream: BinaryIO, size: int) -> tuple[str, int]:
    h = hashlib.sha256()
    total = 0
    while chunk := stream.read(size):
        h.update(chunk)
        total += len(chunk)
    return h.hexdigest(), total


class BlobContract:
    """Every rule of the blob-store contract, against the store of the ``blobs`` fixture."""

    #: Small enough for every single-request path.
    small_size: ClassVar[int] = 100 * 1024 + 7
    #: Large enough to take a backend's multipart path (configure the backend to match).
    multipart_size: ClassVar[int] = 12 * MiB + 5
    #: A large blob, put and read back in full.
    large_size: ClassVar[int] = 40 * MiB + 3
    #: How many threads race in the concurrency tests.
    threads: ClassVar[int] = 8

    # -- what subclasses provide --------------------------------------------------------

    @pytest.fixture
    def blobs(self) -> Iterator[BlobStore]:
        """A fresh, empty store (subclasses override this fixture)."""
        raise NotImplementedError("a BlobContract subclass must provide the blobs fixture")
        yield  # pragma: no cover

    def make_leftover(self, blobs: BlobStore, checksum: str, data: bytes) -> None:
        """Leave behind what a ``put`` of ``data`` leaves when its process dies part-way
        (a partial file whose writer is gone, an unfinished multipart upload, ...)."""
        raise NotImplementedError("a BlobContract subclass must provide make_leftover")

    def sweep_stale(self, blobs: BlobStore) -> list[str]:
        """Sweep as if the leftovers of :meth:`make_leftover` were old enough to go (a
        backend that judges by age overrides this to sweep with no minimum age)."""
        return blobs.sweep_scratch()

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def listed(blobs: BlobStore) -> dict[str, BlobInfo]:
        found: dict[str, BlobInfo] = {}
        for info in blobs.list():
            assert info.checksum not in found, f"{info.checksum} listed twice"
            found[info.checksum] = info
        return found

    @staticmethod
    def read(blobs: BlobStore, checksum: str, size: int | None = None) -> bytes:
        with blobs.open(checksum) as stream:
            data = _read_all(stream, size)
            assert stream.read(1) == b"", "a stream read to its end must stay at the end"
        return data

    def assert_absent(self, blobs: BlobStore, checksum: str) -> None:
        """Nothing under ``checksum``: not in ``exists``, ``open`` or ``list``."""
        assert not blobs.exists(checksum)
        with pytest.raises(NotFound):
            blobs.open(checksum)
        assert checksum not in self.listed(blobs)

    def assert_no_scratch(self, blobs: BlobStore) -> None:
        """A put that failed cleaned up after itself: nothing is left to sweep."""
        assert self.sweep_stale(blobs) == [], "a failed put left scratch behind"

    # -- rule 1 and the happy path --------------------------------------------------------

    @pytest.mark.parametrize("read_size", [1, 7, 4096, 1024 * 1024, None])
    def test_put_then_exists_open_list(self, blobs: BlobStore, read_size: int | None) -> None:
        data, checksum = blob_bytes(self.small_size, 1)
        assert not blobs.exists(checksum)
        before = time.time()
        assert blobs.put(checksum, _source(Stream(data)), size=len(data)) is True
        assert blobs.exists(checksum)
        assert self.read(blobs, checksum, read_size) == data
        info = self.listed(blobs)[checksum]
        assert info.size == len(data)
        # The store's clock may be another machine's: allow for some skew.
        assert before - 3600 < info.modified < time.time() + 3600
        stat = blobs.stat(checksum)
        assert stat is not None and stat.size == len(data) and stat.checksum == checksum
        # put says whether it stored the bytes: a second put of the same blob does not
        assert blobs.put(checksum, _source(Stream(data)), size=len(data)) is False
        assert blobs.stat(blob_bytes(3, 99)[1]) is None

    def test_empty_blob(self, blobs: BlobStore) -> None:
        data, checksum = blob_bytes(0, 0)
        blobs.put(checksum, _source(Stream(data)), size=0)
        assert blobs.exists(checksum)
        assert self.read(blobs, checksum) == b""
        assert self.listed(blobs)[checksum].size == 0

    def test_list_of_an_empty_store(self, blobs: BlobStore) -> None:
        assert self.listed(blobs) == {}

    def test_location_is_text(self, blobs: BlobStore) -> None:
        assert isinstance(blobs.location, str)
        assert blobs.location

    def test_stream_is_read_without_seeking(self, blobs: BlobStore) -> None:
        """Rule 4: the stream is read from start to end; reads never return more than asked
        and the content survives a mix of read sizes."""
        data, checksum = blob_bytes(self.multipart_size, 2)
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        sizes = [1, 3, 4096, 65536, 5 * MiB, 10, 1]
        got = bytearray()
        with blobs.open(checksum) as stream:
            i = 0
            while chunk := stream.read(sizes[i % len(sizes)]):
                assert len(chunk) <= sizes[i % len(sizes)]
                got += chunk
                i += 1
            assert stream.read() == b""
        assert bytes(got) == data

    def test_read_range(self, blobs: BlobStore) -> None:
        """Rule 4: a range is read in one call, exactly; short only where the blob ends."""
        data, checksum = blob_bytes(self.multipart_size, 6)
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        size = len(data)
        for offset, length in (
            (0, 1),
            (0, size),
            (1, 4095),
            (size // 2, 1234),
            (size - 1, 1),
            (size - 10, 100),  # runs past the end: the tail
            (size, 10),  # starts at the end: nothing
            (size + 5, 10),  # starts past the end: nothing
            (7, 0),
        ):
            assert blobs.read_range(checksum, offset, length) == data[offset : offset + length]
        with pytest.raises(NotFound):
            blobs.read_range(blob_bytes(3, 98)[1], 0, 10)
        for offset, length in ((-1, 1), (0, -1)):
            with pytest.raises(ValidationFailed):
                blobs.read_range(checksum, offset, length)
        with pytest.raises(ValidationFailed):
            blobs.read_range("../x", 0, 1)

    def test_large_blob(self, blobs: BlobStore) -> None:
        data, checksum = blob_bytes(self.large_size, 3)
        blobs.put(checksum, _source(Stream(data, piece=1024 * 1024)), size=len(data))
        del data
        assert self.listed(blobs)[checksum].size == self.large_size
        with blobs.open(checksum) as stream:
            assert _digest_of_stream(stream, 8 * MiB) == (checksum, self.large_size)
        with blobs.open(checksum) as stream:
            assert _digest_of_stream(stream, 1000) == (checksum, self.large_size)

    def test_put_file(self, blobs: BlobStore, tmp_path: Path) -> None:
        for size, seed in ((self.small_size, 4), (self.multipart_size, 5)):
            data, checksum = blob_bytes(size, seed)
            path = tmp_path / f"state-{seed}.tar.zst"
            path.write_bytes(data)
            blobs.put_file(checksum, path)
            path.unlink(missing_ok=True)  # the caller may remove it afterwards
            assert blobs.exists(checksum)
            assert self.read(blobs, checksum, 1024 * 1024) == data
            assert self.listed(blobs)[checksum].size == size

    # -- rule 1: named before the bytes, nothing stored on a mismatch ---------------------

    @pytest.mark.parametrize("large", [False, True], ids=["single", "multipart"])
    def test_wrong_bytes(self, blobs: BlobStore, large: bool) -> None:
        size = self.multipart_size if large else self.small_size
        data, checksum = blob_bytes(size, 6)
        other = bytearray(data)
        other[len(other) // 2] ^= 0xFF
        with pytest.raises(ChecksumMismatch):
            blobs.put(checksum, _source(Stream(bytes(other))), size=size)
        self.assert_absent(blobs, checksum)
        self.assert_no_scratch(blobs)

    @pytest.mark.parametrize("large", [False, True], ids=["single", "multipart"])
    def test_source_ends_early(self, blobs: BlobStore, large: bool) -> None:
        size = self.multipart_size if large else self.small_size
        data, checksum = blob_bytes(size, 7)
        with pytest.raises(ChecksumMismatch):
            blobs.put(checksum, _source(Stream(data[: size * 2 // 3])), size=size)
        self.assert_absent(blobs, checksum)
        self.assert_no_scratch(blobs)

    @pytest.mark.parametrize("large", [False, True], ids=["single", "multipart"])
    def test_announced_size_too_small(self, blobs: BlobStore, large: bool) -> None:
        """Exactly ``size`` bytes are read: a longer source hashes to something else."""
        size = self.multipart_size if large else self.small_size
        data, checksum = blob_bytes(size, 8)
        with pytest.raises(ChecksumMismatch):
            blobs.put(checksum, _source(Stream(data)), size=size - 1)
        self.assert_absent(blobs, checksum)
        self.assert_no_scratch(blobs)

    @pytest.mark.parametrize("large", [False, True], ids=["single", "multipart"])
    def test_announced_size_too_large(self, blobs: BlobStore, large: bool) -> None:
        size = self.multipart_size if large else self.small_size
        data, checksum = blob_bytes(size, 9)
        with pytest.raises(ChecksumMismatch):
            blobs.put(checksum, _source(Stream(data)), size=size + 1)
        self.assert_absent(blobs, checksum)
        self.assert_no_scratch(blobs)

    def test_right_prefix_is_not_enough(self, blobs: BlobStore) -> None:
        """A source that is the named bytes plus more, announced with the longer size."""
        data, checksum = blob_bytes(self.small_size, 10)
        with pytest.raises(ChecksumMismatch):
            blobs.put(checksum, _source(Stream(data + b"tail")), size=len(data) + 4)
        self.assert_absent(blobs, checksum)

    @pytest.mark.parametrize("large", [False, True], ids=["single", "multipart"])
    def test_source_raises_part_way(self, blobs: BlobStore, large: bool) -> None:
        size = self.multipart_size if large else self.small_size
        data, checksum = blob_bytes(size, 11)
        with pytest.raises((SourceFailed, ChecksumMismatch)):
            blobs.put(checksum, _source(Stream(data, fail_after=size // 2)), size=size)
        self.assert_absent(blobs, checksum)
        self.assert_no_scratch(blobs)
        # The same blob can still be stored afterwards.
        blobs.put(checksum, _source(Stream(data)), size=size)
        assert self.read(blobs, checksum, 1024 * 1024) == data

    # -- rule 3: content is never rewritten -----------------------------------------------

    def test_put_of_an_existing_checksum_is_a_no_op(self, blobs: BlobStore) -> None:
        data, checksum = blob_bytes(self.small_size, 12)
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        first = self.listed(blobs)[checksum]
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        assert self.listed(blobs) == {checksum: first}
        # Other bytes under the same name are refused or ignored, never stored.
        other = bytes(b ^ 0x5A for b in data)
        with contextlib.suppress(ChecksumMismatch):
            blobs.put(checksum, _source(Stream(other)), size=len(other))
        assert self.read(blobs, checksum) == data
        assert self.listed(blobs) == {checksum: first}

    # -- rule 5: deletion and listing -----------------------------------------------------

    def test_delete_is_idempotent(self, blobs: BlobStore) -> None:
        data, checksum = blob_bytes(self.small_size, 13)
        keep, kept = blob_bytes(self.small_size, 14)
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        blobs.put(kept, _source(Stream(keep)), size=len(keep))
        blobs.delete(checksum)
        self.assert_absent(blobs, checksum)
        blobs.delete(checksum)
        blobs.delete(blob_bytes(1, 15)[1])  # never stored
        assert set(self.listed(blobs)) == {kept}
        assert self.read(blobs, kept) == keep
        # A deleted blob can be stored again.
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        assert self.read(blobs, checksum) == data

    def test_list_while_writing(self, blobs: BlobStore) -> None:
        """Listing runs concurrently with writes and shows only complete blobs."""
        expected = {}
        for seed in range(20, 26):
            size = self.multipart_size if seed % 3 == 0 else self.small_size + seed
            data, checksum = blob_bytes(size, seed)
            expected[checksum] = (data, size)
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for checksum, (data, size) in expected.items():
                    blobs.put(checksum, _source(Stream(data)), size=size)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while thread.is_alive():
                for checksum, info in self.listed(blobs).items():
                    assert checksum in expected
                    assert info.size == expected[checksum][1]
        finally:
            thread.join()
        assert not errors, errors
        assert {c: i.size for c, i in self.listed(blobs).items()} == {
            c: s for c, (_, s) in expected.items()
        }

    # -- rule 6: faults and bad names -----------------------------------------------------

    def test_open_of_a_missing_blob(self, blobs: BlobStore) -> None:
        checksum = blob_bytes(10, 16)[1]
        assert not blobs.exists(checksum)
        with pytest.raises(NotFound):
            blobs.open(checksum)

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "abc",
            "A" * 64,
            "0" * 63,
            "0" * 65,
            "g" * 64,
            " " + "0" * 63,
            "0" * 63 + "\n",
            "../" + "0" * 61,
            "00/" + "0" * 61,
        ],
    )
    def test_invalid_checksums(self, blobs: BlobStore, bad: str) -> None:
        def refused(call: object) -> None:
            assert callable(call)
            with pytest.raises(ValidationFailed) as info:
                call()
            assert not isinstance(info.value, ChecksumMismatch)

        refused(lambda: blobs.put(bad, _source(Stream(b"x")), size=1))
        refused(lambda: blobs.open(bad))
        refused(lambda: blobs.exists(bad))
        refused(lambda: blobs.delete(bad))
        assert self.listed(blobs) == {}

    # -- concurrency ----------------------------------------------------------------------

    @pytest.mark.parametrize("large", [False, True], ids=["single", "multipart"])
    def test_concurrent_puts_of_one_blob(self, blobs: BlobStore, large: bool) -> None:
        size = self.multipart_size if large else self.small_size
        data, checksum = blob_bytes(size, 17)
        start = threading.Barrier(self.threads)
        errors: list[BaseException] = []

        def put() -> None:
            try:
                start.wait(30)
                blobs.put(checksum, _source(Stream(data)), size=size)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=put) for _ in range(self.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert {c: i.size for c, i in self.listed(blobs).items()} == {checksum: size}
        assert self.read(blobs, checksum, 1024 * 1024) == data
        self.assert_no_scratch(blobs)

    def test_concurrent_puts_of_different_blobs(self, blobs: BlobStore) -> None:
        blobs_data = [blob_bytes(self.small_size + i, 100 + i) for i in range(self.threads * 2)]
        blobs_data.append(blob_bytes(self.multipart_size, 99))
        start = threading.Barrier(len(blobs_data))
        errors: list[BaseException] = []

        def put(data: bytes, checksum: str) -> None:
            try:
                start.wait(30)
                blobs.put(checksum, _source(Stream(data)), size=len(data))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=put, args=pair) for pair in blobs_data]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert {c: i.size for c, i in self.listed(blobs).items()} == {
            c: len(d) for d, c in blobs_data
        }
        for data, checksum in blobs_data:
            assert self.read(blobs, checksum, 1024 * 1024) == data
        self.assert_no_scratch(blobs)

    # -- scratch --------------------------------------------------------------------------

    def test_sweep_removes_leftovers_of_an_interrupted_put(self, blobs: BlobStore) -> None:
        data, checksum = blob_bytes(self.multipart_size, 18)
        self.make_leftover(blobs, checksum, data)
        self.assert_absent(blobs, checksum)
        assert self.sweep_stale(blobs), "the sweep found nothing to remove"
        assert self.sweep_stale(blobs) == [], "the sweep left something behind"
        self.assert_absent(blobs, checksum)
        blobs.put(checksum, _source(Stream(data)), size=len(data))
        assert self.read(blobs, checksum, 1024 * 1024) == data

    def test_sweep_spares_a_live_put(self, blobs: BlobStore) -> None:
        data, checksum = blob_bytes(self.multipart_size, 19)
        source = Stream(data, pause_at=len(data) * 3 // 4)
        errors: list[BaseException] = []

        def put() -> None:
            try:
                blobs.put(checksum, _source(source), size=len(data))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=put)
        thread.start()
        try:
            assert source.paused.wait(60), "the put never read three quarters of its source"
            assert not blobs.exists(checksum)
            blobs.sweep_scratch()
        finally:
            source.resume.set()
            thread.join()
        assert not errors, errors
        assert self.read(blobs, checksum, 1024 * 1024) == data
        self.sweep_stale(blobs)
        assert self.read(blobs, checksum, 1024 * 1024) == data
