"""Stores on every backend for the behaviour suites: ``embedded`` (SQLite + local files) and
``shared`` (PostgreSQL + S3 on real servers: see pg_service.py and s3_service.py) and ``http``
(a real profile server on loopback, through :class:`profiles.http.client.HttpService`: see
http_service.py).

A test module opts in by defining ``store`` through :func:`store_on`::

    @pytest.fixture(params=BACKENDS)
    def store(request, home): yield from store_on(request, home)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from profiles import ProfileStore

BACKENDS = ("embedded", "shared", "http")
#: The backends whose store holds its own catalog and blob store (not a remote service).
LOCAL_BACKENDS = ("embedded", "shared")


def fresh_shared_urls(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database and a fresh S3 prefix: ``(catalog_url, blobs_url)``."""
    from support.pg_service import fresh_database

    postgres_url: str = request.getfixturevalue("postgres_url")
    bucket: str = request.getfixturevalue("s3_bucket")
    request.getfixturevalue("s3_env")  # the standard AWS variables, for boto3's defaults
    with fresh_database(postgres_url) as catalog_url:
        yield catalog_url, f"s3://{bucket}/store-{uuid.uuid4().hex[:12]}"


def store_on(
    request: pytest.FixtureRequest, home: Path, kind: str | None = None, **options: object
) -> Iterator[ProfileStore]:
    """A store on the backend ``kind`` (default: the fixture's param) with its home."""
    kind = kind or request.param
    if kind == "embedded":
        with ProfileStore(home, **options) as store:  # type: ignore[arg-type]
            yield store
        return
    if kind == "http":
        # A real profile server on loopback (support/http_service.py); its cap stands for
        # max_profiles, which the server keeps.
        from support.http_service import start_http_server

        tmp: Path = request.getfixturevalue("tmp_path")
        cap = options.pop("max_profiles", None)
        with (
            start_http_server(tmp / "server-home", profile_cap=cap) as server,  # type: ignore[arg-type]
            ProfileStore(
                home, service=f"{server.url}/v1", api_key=server.api_key, **options
            ) as store,  # type: ignore[arg-type]
        ):
            yield store
        return
    for catalog_url, blobs_url in fresh_shared_urls(request):
        with ProfileStore(home, catalog=catalog_url, blobs=blobs_url, **options) as store:  # type: ignore[arg-type]
            yield store
