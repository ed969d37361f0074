"""Stores on every backend for the behaviour suites: ``embedded`` (SQLite + local files) and
``shared`` (PostgreSQL + S3 on real servers: see pg_service.py and s3_service.py) and ``http``
(a real profile server on loopback, shared by the session, through an account of the test's
own and :class:`profiles.http.client.HttpService`: see http_service.py).

conftest.py's ``store`` fixture runs on each of them in a module (or test) marked
``@pytest.mark.backends``; ``local_store`` on :data:`LOCAL_BACKENDS`. A test that needs
another store of its own calls :func:`store_on` with the kind it wants.
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
        # The session's profile server (conftest.py), through an account of the test's own;
        # the account's cap stands for max_profiles, which the server keeps.
        from support.http_service import HttpServer

        shared: HttpServer = request.getfixturevalue("session_profile_server")
        server = shared.with_new_account(profile_cap=options.pop("max_profiles", None))  # type: ignore[arg-type]
        with ProfileStore(
            home, service=f"{server.url}/v1", api_key=server.api_key, **options
        ) as store:  # type: ignore[arg-type]
            yield store
        return
    for catalog_url, blobs_url in fresh_shared_urls(request):
        with ProfileStore(home, catalog=catalog_url, blobs=blobs_url, **options) as store:  # type: ignore[arg-type]
            yield store
