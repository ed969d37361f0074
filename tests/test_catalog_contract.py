"""The catalog contract (profiles.testing.catalog_contract) run against every backend:
SQLite (a file in tmp_path) and PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.pg_service import fresh_database

from profiles.catalog import Catalog, SQLiteCatalog
from profiles.catalog.postgres import MIGRATIONS as PG_MIGRATIONS
from profiles.catalog.postgres import PostgresCatalog
from profiles.catalog.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from profiles.errors import StorageUnavailable
from profiles.testing.catalog_contract import CatalogContract, CatalogFactory


class TestSQLiteCatalog(CatalogContract):
    @pytest.fixture
    def catalog_factory(self, tmp_path: Path) -> CatalogFactory:
        return functools.partial(SQLiteCatalog, tmp_path / "catalog.sqlite3")

    def make_schema_newer(self, catalog: Catalog) -> None:
        assert isinstance(catalog, SQLiteCatalog)
        with sqlite3.connect(catalog.path) as conn:
            conn.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS) + 1}")
        conn.close()

    def inject_fault(self, catalog: Catalog) -> None:
        assert isinstance(catalog, SQLiteCatalog)
        catalog._conn.close()  # the file is gone from under it: every statement fails

    def unreachable_catalog(self, tmp_path: Path) -> tuple[CatalogFactory, str | None]:
        (tmp_path / "a-directory").mkdir()
        return functools.partial(SQLiteCatalog, tmp_path / "a-directory"), None

    def test_missing_directory_is_storage_unavailable(self, tmp_path: Path) -> None:
        with pytest.raises(StorageUnavailable):
            SQLiteCatalog(tmp_path / "missing" / "catalog.sqlite3").close()


class TestPostgresCatalog(CatalogContract):
    @pytest.fixture
    def database_url(self, postgres_url: str) -> Iterator[str]:
        with fresh_database(postgres_url) as url:
            yield url

    @pytest.fixture
    def catalog_factory(self, database_url: str) -> CatalogFactory:
        return functools.partial(PostgresCatalog, database_url, min_size=1, max_size=8)

    def make_schema_newer(self, catalog: Catalog) -> None:
        assert isinstance(catalog, PostgresCatalog)
        with psycopg.connect(catalog._url, autocommit=True) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (len(PG_MIGRATIONS) + 1,))

    def inject_fault(self, catalog: Catalog) -> None:
        """Cut every session of this database, as a server crash or a network cut would."""
        assert isinstance(catalog, PostgresCatalog)
        with psycopg.connect(catalog._url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    def unreachable_catalog(self, tmp_path: Path) -> tuple[CatalogFactory, str | None]:
        from socket import AF_INET, SOCK_STREAM, socket

        with socket(AF_INET, SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        url = f"postgresql://someone:hunter2-secret@127.0.0.1:{port}/profiles"
        return functools.partial(PostgresCatalog, url, connect_timeout=5), "hunter2-secret"
