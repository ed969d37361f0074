"""Which backend a URL names: a catalog, a blob store, or a whole profile service.

=====================================  ===========================================
``postgresql://user@host:5432/db``     :class:`~profiles.catalog.postgres.PostgresCatalog`
``sqlite:///abs/path/catalog.sqlite3``  :class:`~profiles.catalog.sqlite.SQLiteCatalog`
``s3://bucket/optional/prefix``        :class:`~profiles.blobs.s3.S3BlobStore`
``file:///abs/path/blobs``             :class:`~profiles.blobs.local.LocalBlobStore`
=====================================  ===========================================

``http://host:8787/v1`` and ``https://...`` name a profile service over HTTP
(:class:`~profiles.http.client.HttpService`, ``profiles serve``), found through
:data:`SERVICES`, a registry from scheme to ``"module:attribute"`` that is imported only when
used (as fsspec's registry does): a store on the embedded default never imports the HTTP
client, and nothing below the store imports the HTTP package.

``PROFILES_CATALOG_URL`` and ``PROFILES_BLOBS_URL`` give the defaults, so one script runs on
a laptop (embedded) and in a fleet (shared backend) unchanged. S3 credentials, region and
endpoint come from the standard AWS configuration, as every S3 tool reads them. URLs are
shown without their passwords (:func:`redact_url_password`).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from profiles.blobs.base import BlobStore
from profiles.catalog.base import Catalog
from profiles.errors import ValidationFailed

if TYPE_CHECKING:
    from profiles.service.protocol import ProfileService

__all__ = [
    "BLOBS_URL_ENV",
    "CATALOG_URL_ENV",
    "SERVICES",
    "blobs_url_from_env",
    "catalog_url_from_env",
    "is_service_url",
    "open_blobs",
    "open_catalog",
    "open_service",
    "redact_url_password",
]

CATALOG_URL_ENV = "PROFILES_CATALOG_URL"
BLOBS_URL_ENV = "PROFILES_BLOBS_URL"

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def redact_url_password(url: str) -> str:
    """``url`` with the password (and any ``password=`` query value) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def catalog_url_from_env() -> str | None:
    return os.environ.get(CATALOG_URL_ENV) or None


def blobs_url_from_env() -> str | None:
    return os.environ.get(BLOBS_URL_ENV) or None


def _local_path(url: str, scheme: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValidationFailed(
            f"{scheme}:// URLs name a local path ({scheme}:///abs/path); got a host in "
            f"{redact_url_password(url)!r}.",
            field="url",
        )
    return Path(unquote(parts.path))


def open_catalog(url: str, *, read_only: bool = False) -> Catalog:
    """The catalog a URL (or a plain path to an SQLite file) names."""
    if not isinstance(url, str) or not url:
        raise ValidationFailed("A catalog URL is required.", field="catalog")
    if url.startswith(("postgresql://", "postgres://")):
        from profiles.catalog.postgres import PostgresCatalog

        return PostgresCatalog(url)
    if url.startswith("sqlite://"):
        from profiles.catalog.sqlite import SQLiteCatalog

        return SQLiteCatalog(_local_path(url, "sqlite"), read_only=read_only)
    if not _SCHEME.match(url):
        from profiles.catalog.sqlite import SQLiteCatalog

        return SQLiteCatalog(Path(url).expanduser(), read_only=read_only)
    raise ValidationFailed(
        f"Unsupported catalog URL {redact_url_password(url)!r}: use postgresql://... or "
        "sqlite:///path (or a path).",
        field="catalog",
    )


def open_blobs(url: str, *, create: bool = True) -> BlobStore:
    """The blob store a URL (or a plain directory path) names."""
    if not isinstance(url, str) or not url:
        raise ValidationFailed("A blobs URL is required.", field="blobs")
    if url.startswith("s3://"):
        from profiles.blobs.s3 import S3BlobStore

        return S3BlobStore(url)
    if url.startswith("file://"):
        from profiles.blobs.local import LocalBlobStore

        return LocalBlobStore(_local_path(url, "file"), create=create)
    if not _SCHEME.match(url):
        from profiles.blobs.local import LocalBlobStore

        return LocalBlobStore(Path(url).expanduser(), create=create)
    raise ValidationFailed(
        f"Unsupported blobs URL {redact_url_password(url)!r}: use s3://bucket/prefix or "
        "file:///path (or a path).",
        field="blobs",
    )


#: Scheme -> where the service for it lives, imported on first use.
SERVICES: Final[dict[str, str]] = {
    "http": "profiles.http.client:HttpService",
    "https": "profiles.http.client:HttpService",
}


def is_service_url(value: object) -> bool:
    """Whether ``value`` is a URL of a profile service (a scheme in :data:`SERVICES`)."""
    if not isinstance(value, str):
        return False
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in SERVICES


def open_service(url: str, *, api_key: str | None, account: str | None) -> ProfileService:
    """The profile service a URL names (see :data:`SERVICES`), with its credentials."""
    scheme = url.partition("://")[0].lower()
    where = SERVICES.get(scheme)
    if where is None:
        raise ValidationFailed(
            f"Unsupported service URL {redact_url_password(url)!r}: use "
            + " or ".join(f"{s}://..." for s in SERVICES),
            field="service",
        )
    module, _, attribute = where.partition(":")
    factory = getattr(importlib.import_module(module), attribute)
    service: ProfileService = factory(url, api_key=api_key, account=account)
    return service
