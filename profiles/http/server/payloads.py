"""The audit details a client sends along (a session's start and end, a commit, an
event): checked and redacted before anything stores them."""

from __future__ import annotations

import json
from typing import Any

from profiles.errors import ValidationFailed
from profiles.redact import redact_text

# What the server records itself, and the names of the parameters the payload is passed
# beside (``record_event(type_, profile_id, **payload)``, ``record_use(ref, **payload)``).
_RESERVED_PAYLOAD = frozenset(
    {"checksum", "blob_size", "epoch", "event", "type_", "profile_id", "ref", "self"}
)


def audit_payload(raw: str | None, *, field: str = "payload") -> dict[str, Any]:
    """The audit details a remote session sends along with its state (a small JSON
    object of scalars); anything else is refused, and nothing may override what the server
    records itself."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationFailed(f"{field} must be a JSON object.", field=field) from None
    return clean_payload(value, field=field)


def clean_payload(value: Any, *, field: str = "payload") -> dict[str, Any]:
    """An audit payload from a client: at most 32 identifier keys, none the server's own,
    scalar values (text redacted)."""
    if not isinstance(value, dict) or len(value) > 32:
        raise ValidationFailed(f"{field} must be a JSON object of at most 32 keys.", field=field)
    clean: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier() or key in _RESERVED_PAYLOAD:
            raise ValidationFailed(f"{field} key {key!r} is not allowed.", field=field)
        if not isinstance(item, str | int | float | bool) and item is not None:
            raise ValidationFailed(f"{field} values must be scalars.", field=field)
        clean[key] = redact_text(item) if isinstance(item, str) else item
    return clean
