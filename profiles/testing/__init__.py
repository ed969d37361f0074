"""Behaviour suites for the store's pluggable backends (they need pytest).

Each submodule holds the contract one kind of backend must pass; a backend's tests subclass
it. :mod:`profiles.testing.catalog_contract` checks :class:`~profiles.catalog.base.Catalog`
backends.
"""
