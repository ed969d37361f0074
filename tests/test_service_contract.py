"""The service contract (profiles.testing.service_contract) run against every service:
CatalogService on SQLite + local blobs, CatalogService on PostgreSQL + S3 (real servers, see
support/pg_service.py and support/s3_service.py), and HttpService through a real ``profiles
serve`` (support/http_service.py: the session's server, a fresh account, so a fresh store,
per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support.http_service import HttpServer
from support.pg_service import fresh_database
from support.s3_service import S3Endpoint

from profiles.blobs.local import LocalBlobStore
from profiles.blobs.s3 import S3BlobStore
from profiles.catalog.postgres import PostgresCatalog
from profiles.catalog.sqlite import SQLiteCatalog
from profiles.http.client import HttpService
from profiles.service.catalog import CatalogService
from profiles.service.protocol import ProfileService
from profiles.testing.service_contract import ServiceContract

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class TestEmbeddedService(ServiceContract):
    @pytest.fixture
    def service(self, tmp_path: Path) -> Iterator[ProfileService]:
        svc = CatalogService(
            SQLiteCatalog(tmp_path / "catalog.sqlite3"), LocalBlobStore(tmp_path / "blobs")
        )
        try:
            yield svc
        finally:
            svc.close()

    def test_it_is_not_shared(self, service: ProfileService) -> None:
        assert service.shared is False


@pytest.fixture(scope="module")
def s3_client(s3_endpoint: S3Endpoint) -> Iterator[S3Client]:
    """One S3 client for the module's services (a client is thread-safe, and building one
    costs more than most of these tests)."""
    client = s3_endpoint.client()
    try:
        yield client
    finally:
        client.close()


class TestSharedService(ServiceContract):
    @pytest.fixture
    def service(
        self, postgres_url: str, s3_client: S3Client, s3_bucket: str
    ) -> Iterator[ProfileService]:
        with fresh_database(postgres_url) as url:
            svc = CatalogService(
                PostgresCatalog(url, min_size=1, max_size=4),
                S3BlobStore(f"s3://{s3_bucket}/svc-{uuid.uuid4().hex[:12]}", client=s3_client),
            )
            try:
                yield svc
            finally:
                svc.close()

    def test_it_is_shared(self, service: ProfileService) -> None:
        assert service.shared is True


class TestHttpService(ServiceContract):
    # The server unpacks a committed archive (hostile input) and stores it its own way.
    keeps_archives = False

    @pytest.fixture
    def service(self, profile_server: HttpServer) -> Iterator[ProfileService]:
        svc = HttpService(f"{profile_server.url}/v1", api_key=profile_server.api_key)
        try:
            yield svc
        finally:
            svc.close()

    def test_it_is_shared(self, service: ProfileService) -> None:
        assert service.shared is True
