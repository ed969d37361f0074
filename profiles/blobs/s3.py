"""Blobs as objects in S3-compatible storage: ``s3://bucket/prefix/sha256/<2 hex>/<64 hex>``.

Configuration is boto3's own, read exactly as ``boto3.session.Session()`` reads it: the
endpoint from ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` or ``endpoint_url`` in the config
file, credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``
(``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``), the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, retries from ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``. Nothing of
our own.

How the contract (``profiles.blobs.base``) is kept:

* **Named before the bytes.** A ``put`` reads its source through a
  :class:`~profiles.blobs.base.HashingReader` and checks the digest *before* anything becomes
  visible: below ``multipart_threshold`` the bytes are buffered in memory, verified, then
  sent in one ``PutObject``; above it they go as a multipart upload whose parts are sent
  while reading, and ``CompleteMultipartUpload`` is only called once the whole stream has
  verified. Any failure aborts the upload. The SHA-256 also goes to the server
  (``ChecksumSHA256`` on the object, and on every part), so S3 itself refuses bytes damaged
  on the way.
* **Nothing half-written is visible.** S3 shows an object only once its ``PutObject`` or
  ``CompleteMultipartUpload`` succeeded; unfinished uploads are invisible to ``GetObject``
  and ``ListObjectsV2``.
* **Content is never rewritten.** A ``put`` first asks whether the blob is there (``HEAD``),
  and creates with ``If-None-Match: *``: a ``412`` means another writer stored the same
  bytes first, which is success.
* **Streams only.** :meth:`S3BlobStore.open` returns the (non-seekable) response body in a
  buffered reader; network errors while reading become ``StorageUnavailable``, and a body
  read to its end is checked against its name.
* **Scratch.** What an interrupted ``put`` can leave is an unfinished multipart upload; it
  costs storage until aborted. :meth:`S3BlobStore.sweep_scratch` aborts the uploads under
  the prefix that nobody has touched for ``scratch_max_age`` seconds (24 h), judged by the
  upload's start and its newest part, and never those this process is running.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bex
import urllib3.exceptions
from botocore.config import Config

from profiles.blobs.base import (
    BlobInfo,
    BlobStore,
    HashingReader,
    check_checksum,
    check_range,
    read_up_to,
)
from profiles.errors import ChecksumMismatch, NotFound, StorageUnavailable, ValidationFailed
from profiles.redact import redact_text, redact_url

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

__all__ = ["S3BlobStore"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest part but the last
MAX_PARTS = 10_000
READ_CHUNK = MiB
DAY = 24 * 3600.0
_T = TypeVar("_T")

# Where credentials come from, for messages (boto3's standard chain, not ours).
_CREDENTIAL_SOURCES = (
    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE, and the "
    "files ~/.aws/credentials and ~/.aws/config (or AWS_SHARED_CREDENTIALS_FILE / "
    "AWS_CONFIG_FILE)"
)
_REFUSED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_MISSING_CREDENTIALS = (
    bex.NoCredentialsError,
    bex.PartialCredentialsError,
    bex.CredentialRetrievalError,
    bex.UnknownCredentialError,
    bex.TokenRetrievalError,
    bex.SSOTokenLoadError,
    bex.UnauthorizedSSOTokenError,
    bex.ProfileNotFound,
)
_UNREACHABLE = (bex.ConnectionError, bex.ReadTimeoutError)
_STREAM_ERRORS = (bex.BotoCoreError, urllib3.exceptions.HTTPError, OSError)
# Answers that say "later" rather than "no" (S3's throttling and internal errors).
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
     "ServiceUnavailable", "RequestLimitExceeded"}
)  # fmt: skip


def _transient(exc: BaseException) -> bool:
    """Whether an S3 failure may pass: the endpoint unreachable, a read cut, 5xx, 429."""
    if isinstance(exc, bex.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        is_5xx = isinstance(status, int) and (status >= 500 or status == 429)
        return is_5xx or _error_code(exc) in _TRANSIENT_CODES
    return isinstance(exc, (*_UNREACHABLE, urllib3.exceptions.HTTPError, OSError))


# Multipart uploads running in this process (by upload id): a sweep never aborts them.
_live_uploads: set[str] = set()
_live_lock = threading.Lock()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _error_code(exc: bex.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _parse_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket = parts.netloc
    if parts.scheme != "s3" or not bucket or parts.query or parts.fragment or "@" in bucket:
        raise ValidationFailed(
            f"{redact_url(url)!r} is not an S3 location: write s3://bucket or "
            "s3://bucket/prefix (the endpoint and credentials come from the AWS configuration).",
            field="url",
        )
    prefix = "/".join(p for p in parts.path.split("/") if p)
    return bucket, prefix


class S3BlobStore(BlobStore):
    """Content-addressed objects in an S3 bucket (AWS or any S3-compatible server)."""

    def __init__(
        self,
        url: str,
        *,
        client: S3Client | None = None,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 4,
        scratch_max_age: float = DAY,
    ) -> None:
        self.bucket, self.prefix = _parse_url(url)
        self.location = (
            f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        )
        if multipart_chunksize < MIN_PART:
            raise ValidationFailed(
                f"multipart_chunksize must be at least {MIN_PART} bytes (S3's smallest part).",
                field="multipart_chunksize",
            )
        if multipart_threshold < 1 or max_concurrency < 1 or scratch_max_age < 0:
            raise ValidationFailed(
                "multipart_threshold and max_concurrency must be positive, scratch_max_age "
                "not negative.",
                field="multipart_threshold",
            )
        self._threshold = multipart_threshold
        self._chunksize = multipart_chunksize
        self._concurrency = max_concurrency
        self._scratch_max_age = scratch_max_age
        self._objects = f"{self.prefix}/sha256/" if self.prefix else "sha256/"
        self._owns_client = client is None
        self.endpoint = "the default S3 endpoint"
        if client is None:
            try:
                client = boto3.session.Session().client(
                    "s3",
                    config=Config(
                        max_pool_connections=max(10, 2 * max_concurrency),
                        user_agent_extra="playwright-profiles",
                    ),
                )
            except (bex.BotoCoreError, ValueError) as exc:
                self._fail(exc, "connect")
        self.client: S3Client = client
        self.endpoint = redact_url(str(client.meta.endpoint_url))
        try:
            self._call("check the bucket", lambda: client.head_bucket(Bucket=self.bucket))
        except BaseException:
            self.close()
            raise
        log.debug("S3 blob store at %s (endpoint %s)", self.location, self.endpoint)

    # -- errors ---------------------------------------------------------------------------

    def _fail(self, exc: BaseException, doing: str) -> NoReturn:
        """Raise ``StorageUnavailable`` for a boto3/botocore error, naming the location and
        the endpoint, never a credential or a signed URL."""
        where = f"{self.location} (endpoint {self.endpoint})"
        if isinstance(exc, bex.ClientError):
            code = _error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            cause = f"{code or 'error'} (HTTP {status})"
            if code == "NoSuchBucket" or (code == "404" and doing == "check the bucket"):
                message = (
                    f"The S3 bucket {self.bucket!r} does not exist: {where}. Create it, or "
                    "correct the bucket in the store's URL."
                )
            elif code in _REFUSED_CODES:
                message = (
                    f"S3 refused the credentials (or denied access) for {where}: {code}. "
                    f"Check the access key and secret key; they are read from "
                    f"{_CREDENTIAL_SOURCES}."
                )
            else:
                server_says = str(exc.response.get("Error", {}).get("Message", ""))
                message = f"S3 failed to {doing} at {where}: {code} (HTTP {status})"
                if server_says:
                    message += f": {redact_text(server_says, limit=200)}"
                message += "."
        elif isinstance(exc, _MISSING_CREDENTIALS):
            cause = type(exc).__name__
            message = (
                f"No usable AWS credentials for {where} ({cause}). Set them the standard "
                f"way: {_CREDENTIAL_SOURCES}."
            )
        elif isinstance(exc, _UNREACHABLE):
            cause = type(exc).__name__
            message = (
                f"Could not reach S3 at {self.endpoint} for {self.location} ({cause}): check "
                "the endpoint (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, or endpoint_url in the "
                "AWS config file) and the network."
            )
        else:
            cause = type(exc).__name__
            message = f"S3 failed to {doing} at {where}: {cause}."
        log.debug("S3 %s failed at %s: %s", doing, self.location, cause)
        error = StorageUnavailable(message, home=self.location, cause=cause)
        error.transient = _transient(exc)
        raise error from exc

    def _call(self, doing: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except (bex.BotoCoreError, bex.ClientError) as exc:
            self._fail(exc, doing)

    # -- names ----------------------------------------------------------------------------

    def key(self, checksum: str) -> str:
        """The object key of a blob."""
        check_checksum(checksum)
        return f"{self._objects}{checksum[:2]}/{checksum}"

    # -- put ------------------------------------------------------------------------------

    def put(self, checksum: str, source: BinaryIO, *, size: int) -> bool:
        key = self.key(checksum)
        if size < 0:
            raise ValidationFailed(f"A blob size cannot be negative ({size}).", field="size")
        reader = HashingReader(source, size, checksum)
        if size < self._threshold:
            # One request: the PUT is conditional (IfNoneMatch), so an existing blob is
            # left as it is and answers 412, which counts as stored.
            return self._put_single(key, reader)
        if self.exists(checksum):  # spare the upload of a large blob that is there
            return False
        return self._put_multipart(key, reader)

    def _put_single(self, key: str, reader: HashingReader) -> bool:
        buf = bytearray()
        while chunk := reader.read(READ_CHUNK):
            buf += chunk
        reader.verify()
        body = bytes(buf)
        del buf
        digest = _b64(bytes.fromhex(reader.checksum))
        created = self._conditional(
            "store a blob",
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digest,
                ContentType="application/octet-stream",
                IfNoneMatch="*",
            ),
        )
        log.debug("stored blob %s (%d bytes)", reader.checksum, reader.size)
        return created

    def _conditional(self, doing: str, fn: Callable[[], object]) -> bool:
        """Run a create-if-absent request: ``True`` if it created, ``False`` if the object
        was already there (412). A 409 (a concurrent conditional write in flight) is
        retried a few times."""
        for attempt in range(5):
            try:
                fn()
                return True
            except bex.ClientError as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in ("ConditionalRequestConflict", "409") and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                self._fail(exc, doing)
            except bex.BotoCoreError as exc:
                self._fail(exc, doing)
        raise AssertionError("unreachable")  # pragma: no cover

    def _put_multipart(self, key: str, reader: HashingReader) -> bool:
        part_size = max(self._chunksize, -(-reader.size // MAX_PARTS))
        created = self._call(
            "start a multipart upload",
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ChecksumAlgorithm="SHA256",
                ContentType="application/octet-stream",
            ),
        )
        upload_id = created["UploadId"]
        with _live_lock:
            _live_uploads.add(upload_id)
        try:
            parts = self._send_parts(key, upload_id, reader, part_size)
            created_now = self._conditional(
                "complete a multipart upload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
            )
            if not created_now:  # another writer stored it first; drop our parts
                self._abort(key, upload_id)
        except BaseException:
            self._abort(key, upload_id)
            raise
        finally:
            with _live_lock:
                _live_uploads.discard(upload_id)
        log.debug("stored blob %s (%d bytes, %d parts)", reader.checksum, reader.size, len(parts))
        return created_now

    def _send_parts(
        self, key: str, upload_id: str, reader: HashingReader, part_size: int
    ) -> list[CompletedPartTypeDef]:
        """Read and send every part (at most ``max_concurrency`` in flight), then verify the
        whole stream: nothing is completed unless it hashes to its name."""
        futures: list[Future[CompletedPartTypeDef]] = []
        pending: set[Future[CompletedPartTypeDef]] = set()
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="s3-part") as pool:
            try:
                number = 0
                while True:
                    data = read_up_to(reader, part_size)
                    if not data:
                        break
                    number += 1
                    while len(pending) >= self._concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            f.result()  # raise a part's failure now
                    future = pool.submit(self._send_part, key, upload_id, number, data)
                    futures.append(future)
                    pending.add(future)
                    del data
                reader.verify()
                return [f.result() for f in futures]
            except BaseException:
                for f in pending:
                    f.cancel()
                raise

    def _send_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> CompletedPartTypeDef:
        digest = _b64(hashlib.sha256(data).digest())
        sent = self._call(
            "upload a part",
            lambda: self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=digest,
            ),
        )
        return {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": digest}

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except bex.ClientError as exc:
            if _error_code(exc) not in ("NoSuchUpload", "404"):
                log.warning(
                    "could not abort an unfinished upload in %s (%s); sweep_scratch will",
                    self.location,
                    _error_code(exc),
                )
        except bex.BotoCoreError as exc:
            log.warning(
                "could not abort an unfinished upload in %s (%s); sweep_scratch will",
                self.location,
                type(exc).__name__,
            )

    # -- read -----------------------------------------------------------------------------

    def _get(self, checksum: str, byte_range: str | None = None) -> Any:
        key = self.key(checksum)
        try:
            if byte_range is not None:
                return self.client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            return self.client.get_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise NotFound(
                    f"State blob {checksum} is missing from {self.location}; the bucket was "
                    "changed outside the library.",
                    resource="blob",
                    ref=checksum,
                ) from exc
            if _error_code(exc) == "InvalidRange":
                return None  # the range starts past the end
            self._fail(exc, "read a blob")
        except bex.BotoCoreError as exc:
            self._fail(exc, "read a blob")

    def open(self, checksum: str) -> BinaryIO:
        response = self._get(checksum)
        raw = _Body(response["Body"], checksum, response.get("ContentLength"), self)
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=READ_CHUNK))

    def read_range(self, checksum: str, offset: int, length: int) -> bytes:
        """One ranged GET (``Range: bytes=offset-end``)."""
        check_range(offset, length)
        if length == 0:
            self.key(checksum)
            return b""
        response = self._get(checksum, f"bytes={offset}-{offset + length - 1}")
        if response is None:
            return b""
        body = response["Body"]
        try:
            data = bytes(body.read(length + 1))
        except _STREAM_ERRORS as exc:
            self._fail(exc, "read a blob")
        finally:
            with contextlib.suppress(*_STREAM_ERRORS):
                body.close()
        if len(data) > length:
            raise StorageUnavailable(
                f"S3 at {self.location} answered a ranged read of blob {checksum} with more "
                "bytes than asked for (does the endpoint support Range requests?).",
                home=self.location,
                cause="range ignored",
            )
        return data

    def exists(self, checksum: str) -> bool:
        key = self.key(checksum)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            self._fail(exc, "look up a blob")
        except bex.BotoCoreError as exc:
            self._fail(exc, "look up a blob")
        return True

    def stat(self, checksum: str) -> BlobInfo | None:
        key = self.key(checksum)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except bex.ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            self._fail(exc, "look up a blob")
        except bex.BotoCoreError as exc:
            self._fail(exc, "look up a blob")
        return BlobInfo(checksum, int(head["ContentLength"]), head["LastModified"].timestamp())

    def delete(self, checksum: str) -> None:
        key = self.key(checksum)
        self._call("delete a blob", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        log.debug("deleted blob %s", checksum)

    def list(self) -> Iterator[BlobInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self._objects))
        while True:
            page = self._call("list blobs", lambda: next(pages, None))
            if page is None:
                return
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                with contextlib.suppress(ValidationFailed):
                    if self.key(name) == obj["Key"]:
                        yield BlobInfo(name, obj["Size"], obj["LastModified"].timestamp())

    # -- scratch --------------------------------------------------------------------------

    def sweep_scratch(self, *, max_age: float | None = None) -> builtins.list[str]:
        """Abort the unfinished multipart uploads under the prefix that nobody touched for
        ``max_age`` seconds (default: ``scratch_max_age``, 24 h): their start and their
        newest part are that old. Uploads this process is running are never aborted.
        Returns the keys of the uploads aborted."""
        cutoff = time.time() - (self._scratch_max_age if max_age is None else max_age)
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=self._objects))
        removed: builtins.list[str] = []
        while True:
            page = self._call("list unfinished uploads", lambda: next(pages, None))
            if page is None:
                break
            for upload in page.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                with _live_lock:
                    if upload_id in _live_uploads:
                        continue
                if self._last_touched(key, upload_id, upload["Initiated"].timestamp()) > cutoff:
                    continue
                self._abort_stale(key, upload_id)
                removed.append(key)
        if removed:
            log.info("aborted %d unfinished uploads in %s", len(removed), self.location)
        return removed

    def _abort_stale(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except bex.ClientError as exc:
            if _error_code(exc) not in ("NoSuchUpload", "404"):
                self._fail(exc, "abort an unfinished upload")
        except bex.BotoCoreError as exc:
            self._fail(exc, "abort an unfinished upload")

    def _last_touched(self, key: str, upload_id: str, initiated: float) -> float:
        newest = initiated
        paginator = self.client.get_paginator("list_parts")
        pages = iter(paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id))
        while True:
            try:
                page = next(pages, None)
            except bex.ClientError as exc:
                if _error_code(exc) in ("NoSuchUpload", "404"):
                    return float("inf")  # gone meanwhile: nothing to do
                self._fail(exc, "list the parts of an unfinished upload")
            except bex.BotoCoreError as exc:
                self._fail(exc, "list the parts of an unfinished upload")
            if page is None:
                return newest
            for part in page.get("Parts", []):
                newest = max(newest, part["LastModified"].timestamp())

    def close(self) -> None:
        if self._owns_client and getattr(self, "client", None) is not None:
            self.client.close()


class _Body(io.RawIOBase):
    """An S3 response body as a raw stream: read errors become ``StorageUnavailable``, and
    a body read to its end must have the announced length and hash to its name."""

    def __init__(self, body: StreamingBody, checksum: str, length: Any, store: S3BlobStore) -> None:
        super().__init__()
        self._body = body
        self._checksum = checksum
        self._length = length if isinstance(length, int) else None
        self._store = store
        self._hash = hashlib.sha256()
        self._seen = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except _STREAM_ERRORS as exc:
            self._store._fail(exc, "read a blob")
        if not data:
            self._check()
            return 0
        self._hash.update(data)
        self._seen += len(data)
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(READ_CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        got = self._hash.hexdigest()
        if got != self._checksum or (self._length is not None and self._seen != self._length):
            raise ChecksumMismatch(
                f"Blob {self._checksum} read from {self._store.location} hashes to {got} "
                f"({self._seen} bytes): the stored copy is damaged.",
                checksum=self._checksum,
            )

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(*_STREAM_ERRORS):
                self._body.close()
        super().close()
