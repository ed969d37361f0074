"""``profiles serve``: the profile service over HTTP (FastAPI, run by uvicorn).

:mod:`.app` builds the application from its parts: :mod:`.config` (what it runs with, each
account's store), :mod:`.deps` (the caller, shared helpers), one router per resource under
:mod:`.routes`, :mod:`.openapi` (the typed document), :mod:`.streams` (request bodies
streamed to disk under a cap), :mod:`.bodies` (every other body: capped as it is read, and
read only once the key was accepted), :mod:`.fairness` (one account's state operations
bounded, waits without a thread), :mod:`.state_io` (what the state routes stream back),
:mod:`.payloads` (audit details from clients), :mod:`.accounts` (keys and accounts),
:mod:`.signing` (signed links), :mod:`.ratelimit` and :mod:`.access_log`; :mod:`.cli` adds
``profiles serve``, ``profiles keys`` and ``profiles accounts`` to the command line, and
runs uvicorn under :mod:`.transport` (timeouts and connection limits, forwarded headers).
"""

from profiles.http.server.app import create_app
from profiles.http.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
