"""The OpenAPI document of ``profiles serve``: the error answers every route declares (one
``ErrorBody`` shape), the bodies of the streamed routes, and the document without FastAPI's
own ``422 HTTPValidationError`` answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from profiles.http.schemas import ErrorBody

ERROR_DESCRIPTIONS: Final = {
    400: "Invalid request: ValidationFailed, ArchiveInvalid, ChecksumMismatch, NoStateData",
    401: "Unauthorized: API key required, or invalid or revoked",
    403: "Forbidden: a missing permission, a deactivated account, a bad signature",
    404: "NotFound: no such profile, snapshot or account in this account's store",
    409: "Conflict: a name in use, ProfileBusy (another writer), LeaseLost, BrowserDowngrade",
    410: "LinkExpired: the signed link or upload target expired or no longer applies",
    413: "The body is larger than the cap (ArchiveInvalid or ValidationFailed, status 413)",
    422: "Invalid request (doc 003 answers 422 on this route)",
    429: "RateLimited (Retry-After), or TierLimit: the account's profile cap",
}
AUTH: Final = (400, 401, 403, 429)  # every route with an API key
READ: Final = AUTH
WRITE: Final = (*AUTH, 413)  # and a JSON body


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, each the one ``ErrorBody`` shape."""
    return {s: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


def octet_stream_request(description: str) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads a raw ``application/octet-stream`` body
    itself (streamed to disk)."""
    schema = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/octet-stream": {"schema": schema}},
        }
    }


def binary_body(description: str, *media_types: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    return {"description": description, "content": {m: {"schema": schema} for m in media_types}}


def multipart_body(
    title: str,
    fields: dict[str, dict[str, Any]],
    description: str,
    *,
    required: tuple[str, ...] = ("file",),
) -> dict[str, Any]:
    """The ``multipart/form-data`` request body of a streamed upload route (its handler
    reads the request itself, through :func:`profiles.http.server.streams.spool_multipart`).
    Its schema goes to the document's components as ``title`` (see :func:`typed_openapi`)."""
    FORMS[title] = {
        "title": title,
        "type": "object",
        "properties": {**fields, "file": {"type": "string", "format": "binary"}},
        "required": list(required),
    }
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{title}"}}
            },
        }
    }


FORMS: dict[str, dict[str, Any]] = {}  # the multipart forms of the streamed uploads


def typed_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` without FastAPI's own ``422 HTTPValidationError`` answers: this
    service answers invalid requests with ``400`` and an ``ErrorBody`` (``422`` only where
    a route declares it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for item in document.get("paths", {}).values():
            for operation in item.values():
                answer = operation.get("responses", {}).get("422")
                if answer is not None and "HTTPValidationError" in json.dumps(answer):
                    del operation["responses"]["422"]
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas.update(FORMS)
        document["components"]["schemas"] = dict(sorted(schemas.items()))
        app.openapi_schema = document
        return document

    return openapi
