"""Metadata persistence behind one small interface: SQLite by default."""

from profiles.catalog.base import Catalog, CatalogTransaction
from profiles.catalog.sqlite import SQLiteCatalog

__all__ = ["Catalog", "CatalogTransaction", "SQLiteCatalog"]
