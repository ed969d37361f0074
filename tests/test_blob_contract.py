"""The blob-store contract (profiles.testing.blob_contract) against every backend: the local
directory, and S3 on a real S3-compatible server over HTTP (moto's standalone server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.s3_service import S3Endpoint

from profiles.blobs.base import BlobStore
from profiles.blobs.local import PART_PREFIX, LocalBlobStore
from profiles.blobs.s3 import S3BlobStore
from profiles.testing.blob_contract import BlobContract, MiB


class TestLocalBlobStore(BlobContract):
    @pytest.fixture
    def blobs(self, tmp_path: Path) -> Iterator[BlobStore]:
        store = LocalBlobStore(tmp_path / "blobs")
        try:
            yield store
        finally:
            store.close()

    def make_leftover(self, blobs: BlobStore, checksum: str, data: bytes) -> None:
        # A writer that died: its part file is there, and nobody holds its lock.
        assert isinstance(blobs, LocalBlobStore)
        part = blobs.root / "tmp" / f"{PART_PREFIX}{uuid.uuid4().hex}.part"
        with part.open("wb") as out:
            out.write(data[: len(data) // 2])
            os.fsync(out.fileno())


class TestS3BlobStore(BlobContract):
    """Multipart from 8 MiB on, so that multipart_size (12 MiB) and large_size (40 MiB)
    take the multipart path; each test gets its own prefix in the module's bucket."""

    @pytest.fixture
    def blobs(self, s3_endpoint: S3Endpoint, s3_bucket: str) -> Iterator[BlobStore]:
        client = s3_endpoint.client(max_pool_connections=32)
        try:
            store = S3BlobStore(
                f"s3://{s3_bucket}/contract/{uuid.uuid4().hex}",
                client=client,
                multipart_threshold=8 * MiB,
                multipart_chunksize=5 * MiB,
                max_concurrency=4,
            )
            try:
                yield store
            finally:
                store.close()
        finally:
            client.close()

    def make_leftover(self, blobs: BlobStore, checksum: str, data: bytes) -> None:
        # A put that died after sending its first part: an unfinished multipart upload.
        assert isinstance(blobs, S3BlobStore)
        client = blobs.client
        key = blobs.key(checksum)
        upload = client.create_multipart_upload(
            Bucket=blobs.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )
        client.upload_part(
            Bucket=blobs.bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=data[: 5 * MiB],
        )

    def sweep_stale(self, blobs: BlobStore) -> list[str]:
        assert isinstance(blobs, S3BlobStore)
        return blobs.sweep_scratch(max_age=0)
