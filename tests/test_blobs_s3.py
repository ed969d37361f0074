"""S3BlobStore beyond the shared contract: configuration from the standard AWS variables,
clear errors for the three usual misconfigurations (without leaking the secret), the
multipart path, and the sweep of unfinished uploads. Against a real S3-compatible server
over HTTP (moto's standalone server, see support/s3_service.py)."""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from support import s3_service
from support.s3_service import S3Endpoint

from profiles.blobs.s3 import S3BlobStore
from profiles.errors import ChecksumMismatch, StorageUnavailable, ValidationFailed
from profiles.testing.blob_contract import MiB, Stream, blob_bytes


@pytest.fixture
def client(s3_endpoint: S3Endpoint) -> Iterator[s3_service.S3Client]:
    c = s3_endpoint.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def url(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/t/{uuid.uuid4().hex}"


def put_bytes(store: S3BlobStore, data: bytes, checksum: str) -> None:
    store.put(checksum, Stream(data), size=len(data))  # type: ignore[arg-type]


def assert_no_secret(
    secret: str, err: StorageUnavailable, caplog: pytest.LogCaptureFixture
) -> None:
    assert secret not in str(err)
    assert secret not in repr(err.to_dict())
    # botocore's own DEBUG traffic was captured too, so the check below means something.
    assert any(r.name.startswith("botocore") for r in caplog.records)
    for record in caplog.records:
        assert secret not in record.getMessage(), record.name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- configuration ------------------------------------------------------------------------


def test_configured_by_the_standard_aws_variables(s3_env: S3Endpoint, url: str) -> None:
    store = S3BlobStore(url)
    try:
        assert store.location == url
        assert store.endpoint == s3_env.endpoint_url
        data, checksum = blob_bytes(1000, 1)
        put_bytes(store, data, checksum)
        with store.open(checksum) as stream:
            assert stream.read() == data
        assert [i.checksum for i in store.list()] == [checksum]
        assert store.key(checksum) == f"{url[5:].split('/', 1)[1]}/sha256/{checksum[:2]}/{checksum}"
    finally:
        store.close()


def test_bucket_without_prefix(s3_env: S3Endpoint, s3_bucket: str, client: object) -> None:
    store = S3BlobStore(f"s3://{s3_bucket}")
    try:
        assert store.location == f"s3://{s3_bucket}"
        checksum = blob_bytes(10, 2)[1]
        assert store.key(checksum) == f"sha256/{checksum[:2]}/{checksum}"
    finally:
        store.close()


@pytest.mark.parametrize(
    "bad", ["", "bucket", "http://bucket/p", "s3://", "s3:///prefix", "s3://b/p?x=1"]
)
def test_not_an_s3_url(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        S3BlobStore(bad)


# -- the three configuration errors --------------------------------------------------------


def test_missing_bucket(
    s3_env: S3Endpoint, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:12]}"
    with pytest.raises(StorageUnavailable) as info:
        S3BlobStore(f"s3://{bucket}/some/prefix")
    err = info.value
    assert f"s3://{bucket}/some/prefix" in str(err)
    assert s3_env.endpoint_url in str(err)
    assert "does not exist" in str(err)
    assert not err.transient  # a refusal: a session's commit does not wait for it to pass
    assert err.home == f"s3://{bucket}/some/prefix"
    assert_no_secret(s3_env.secret_access_key, err, caplog)


def test_refused_credentials(
    s3_env: S3Endpoint, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """moto checks access keys once told to; then every key is unknown (403)."""
    caplog.set_level(logging.DEBUG)
    with s3_env.checking_keys(), pytest.raises(StorageUnavailable) as info:
        S3BlobStore(f"s3://{s3_bucket}/p")
    err = info.value
    assert "refused the credentials" in str(err)
    assert not err.transient
    assert f"s3://{s3_bucket}/p" in str(err)
    assert s3_env.endpoint_url in str(err)
    assert "AWS_ACCESS_KEY_ID" in str(err)
    assert_no_secret(s3_env.secret_access_key, err, caplog)


def test_missing_credentials(
    s3_env: S3Endpoint,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageUnavailable) as info:
        S3BlobStore(f"s3://{s3_bucket}/p")
    err = info.value
    assert "No usable AWS credentials" in str(err)
    assert f"s3://{s3_bucket}/p" in str(err)
    assert "AWS_ACCESS_KEY_ID" in str(err)
    assert "~/.aws/credentials" in str(err)
    assert err.cause == "NoCredentialsError"
    assert not err.transient


def test_unreachable_endpoint(
    s3_env: S3Endpoint,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a standard variable: no retry backoff
    with pytest.raises(StorageUnavailable) as info:
        S3BlobStore(f"s3://{s3_bucket}/p")
    err = info.value
    assert endpoint in str(err)
    assert f"s3://{s3_bucket}/p" in str(err)
    assert "Could not reach" in str(err)
    assert err.transient  # unreachable: a session keeps its work as a pending commit
    assert_no_secret(s3_env.secret_access_key, err, caplog)


# -- the put paths -----------------------------------------------------------------------


def test_small_blob_is_one_put_with_its_sha256(url: str, client: s3_service.S3Client) -> None:
    store = S3BlobStore(url, client=client)
    data, checksum = blob_bytes(3000, 3)
    put_bytes(store, data, checksum)
    head = client.head_object(Bucket=store.bucket, Key=store.key(checksum), ChecksumMode="ENABLED")
    assert "-" not in head["ETag"]
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_multipart_path(url: str, client: s3_service.S3Client) -> None:
    store = S3BlobStore(
        url, client=client, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    data, checksum = blob_bytes(12 * MiB + 1, 4)
    put_bytes(store, data, checksum)
    head = client.head_object(Bucket=store.bucket, Key=store.key(checksum))
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert head["ContentLength"] == len(data)
    with store.open(checksum) as stream:
        assert stream.read() == data
    assert (
        client.list_multipart_uploads(Bucket=store.bucket, Prefix=url[5:].split("/", 1)[1]).get(
            "Uploads", []
        )
        == []
    )


def test_multipart_mismatch_is_aborted(url: str, client: s3_service.S3Client) -> None:
    store = S3BlobStore(
        url, client=client, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    data, checksum = blob_bytes(11 * MiB, 5)
    with pytest.raises(ChecksumMismatch):
        put_bytes(store, data[:-1] + b"!", checksum)
    prefix = url[5:].split("/", 1)[1]
    assert (
        client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix).get("Uploads", []) == []
    )
    assert client.list_objects_v2(Bucket=store.bucket, Prefix=prefix).get("KeyCount") == 0


def test_damaged_object_is_detected_on_read(url: str, client: s3_service.S3Client) -> None:
    store = S3BlobStore(url, client=client)
    data, checksum = blob_bytes(5000, 6)
    put_bytes(store, data, checksum)
    client.put_object(Bucket=store.bucket, Key=store.key(checksum), Body=b"not the state")
    with store.open(checksum) as stream, pytest.raises(ChecksumMismatch):
        stream.read()


def test_no_info_logs_per_request(
    url: str, client: s3_service.S3Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="profiles")
    store = S3BlobStore(url, client=client)
    data, checksum = blob_bytes(5000, 7)
    put_bytes(store, data, checksum)
    with store.open(checksum) as stream:
        stream.read()
    assert store.exists(checksum)
    list(store.list())
    store.delete(checksum)
    assert [r for r in caplog.records if r.name.startswith("profiles")] == []


# -- unfinished uploads ------------------------------------------------------------------


def start_upload(client: s3_service.S3Client, bucket: str, key: str) -> str:
    """An upload as a put that died leaves it: started, one part sent, never completed."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1000)
    return upload_id


def uploads(client: s3_service.S3Client, bucket: str) -> set[str]:
    return {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_sweep_aborts_interrupted_uploads(url: str, client: s3_service.S3Client) -> None:
    store = S3BlobStore(url, client=client)
    checksum = blob_bytes(100, 8)[1]
    interrupted = start_upload(client, store.bucket, store.key(checksum))
    other_key = f"other-prefix/{uuid.uuid4().hex}"
    elsewhere = start_upload(client, store.bucket, other_key)
    try:
        # Fresh: its part was sent moments ago, well within the default 24 h.
        assert store.sweep_scratch() == []
        assert interrupted in uploads(client, store.bucket)
        # Old enough once no minimum age is asked for.
        assert store.sweep_scratch(max_age=0) == [store.key(checksum)]
        remaining = uploads(client, store.bucket)
        assert interrupted not in remaining
        assert elsewhere in remaining  # outside the store's prefix: not ours
        assert store.sweep_scratch(max_age=0) == []
    finally:
        client.abort_multipart_upload(Bucket=store.bucket, Key=other_key, UploadId=elsewhere)


def test_sweep_never_aborts_an_upload_this_process_runs(
    url: str, client: s3_service.S3Client
) -> None:
    store = S3BlobStore(
        url, client=client, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    data, checksum = blob_bytes(12 * MiB, 9)
    source = Stream(data, pause_at=11 * MiB)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            store.put(checksum, source, size=len(data))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=put)
    thread.start()
    try:
        assert source.paused.wait(60)
        assert len(uploads(client, store.bucket)) >= 1
        assert store.sweep_scratch(max_age=0) == []
    finally:
        source.resume.set()
        thread.join()
    assert not errors, errors
    with store.open(checksum) as stream:
        assert stream.read() == data
