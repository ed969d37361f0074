"""The profile service over HTTP: the server (``profiles serve``)."""

from profiles.http.server import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
