"""How a state streamed by the server says how it ended: a *trailer* after the last byte.

A chunked state is rendered into a ``.tar.zst`` while it is sent (``GET
/v1/profiles/{ref}/state``): its status line and headers are gone before the server reads
the last pack, so a pack found damaged half-way cannot change them. Without more, the client
would see a stream cut short (or, worse, one that ends cleanly at a file boundary) and take
a damaged stored state for a fault of the wire.

A client that sends ``X-Stream-Outcome: zstd-trailer-1`` therefore gets, after the archive,
one zstd *skippable frame* of :data:`TRAILER_BYTES` bytes saying how the stream ended:
``{"ok": true}``, or ``{"error": {...}}`` (the error's body, as in any error answer), and the
server echoes the header. zstd tools skip such a frame, so the body is still a valid
``.tar.zst``. The client holds back the last :data:`TRAILER_BYTES` bytes it receives and
reads them at the end: the error is raised as its own class (``StateCorrupt`` naming the
profile), and a stream that ends without a trailer was cut short on the way
(``StorageUnavailable``, transient).
"""

from __future__ import annotations

import json
from typing import Final

from profiles.errors import ProfileError

__all__ = ["OUTCOME_HEADER", "OUTCOME_VERSION", "TRAILER_BYTES", "parse_trailer", "trailer"]

OUTCOME_HEADER: Final = "X-Stream-Outcome"
OUTCOME_VERSION: Final = "zstd-trailer-1"
_MAGIC: Final = (0x184D2A5F).to_bytes(4, "little")  # a zstd skippable frame
_TAG: Final = b"playwright-profiles stream outcome v1\n"
_PAYLOAD: Final = 4096
TRAILER_BYTES: Final = len(_MAGIC) + 4 + _PAYLOAD


def trailer(error: ProfileError | None = None) -> bytes:
    """The frame that ends a stream: ``ok``, or ``error``'s body."""
    body: dict[str, object] = {"ok": True} if error is None else {"error": error.to_dict()}
    data = _TAG + json.dumps(body, default=str).encode()
    if len(data) > _PAYLOAD and error is not None:  # too many details: the gist of it
        gist = {"code": error.code, "status": error.status, "message": error.message[:2000]}
        data = _TAG + json.dumps({"error": gist}).encode()
    return _MAGIC + _PAYLOAD.to_bytes(4, "little") + data[:_PAYLOAD].ljust(_PAYLOAD, b" ")


def parse_trailer(frame: bytes) -> dict[str, object] | None:
    """The outcome a trailer frame says (``{"ok": True}`` or ``{"error": {...}}``), or
    ``None`` when ``frame`` is not a whole trailer."""
    head = _MAGIC + _PAYLOAD.to_bytes(4, "little") + _TAG
    if len(frame) != TRAILER_BYTES or not frame.startswith(head):
        return None
    try:
        outcome = json.loads(frame[len(head) :].rstrip(b" "))
    except ValueError:
        return None
    if not isinstance(outcome, dict) or not (
        outcome.get("ok") is True or isinstance(outcome.get("error"), dict)
    ):
        return None
    return outcome
