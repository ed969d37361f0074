"""The profile service over HTTP: the server (``profiles serve``, :mod:`.server`) and its
client (:mod:`.client`). Nothing is imported here, so that using the client never imports
FastAPI, Starlette or uvicorn."""
