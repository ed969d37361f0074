"""The audit details a client sends along (a session's start and end, a commit, an
event): checked and redacted by one model, :class:`~profiles.http.schemas.AuditPayload`
(:class:`~profiles.http.schemas.CommitPayload` on a commit), before anything stores them.

The JSON bodies (``EventBody``, ``SessionStartBody``, ``SessionEndBody``) are read with it
by FastAPI; the commit's JSON query parameters ``payload`` and ``ended`` by
:func:`audit_payload`. Either way a refusal is ``400 ValidationFailed`` naming the key.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from profiles.errors import ValidationFailed
from profiles.http.schemas import AuditPayload, CommitPayload


def audit_payload(
    raw: str | None, *, field: str = "payload", model: type[AuditPayload] = AuditPayload
) -> dict[str, Any]:
    """The audit details a remote session sends along with its state, as a JSON query
    parameter: checked and redacted by ``model``."""
    if not raw:
        return {}
    try:
        return model.model_validate_json(raw).root
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        why = "not valid JSON" if first["type"] == "json_invalid" else str(first["msg"])
        raise ValidationFailed(f"Invalid request: {field}: {why}.", field=field) from None


def commit_payload(raw: str | None) -> dict[str, Any]:
    """A commit's ``payload``: an :class:`~profiles.http.schemas.AuditPayload` that also
    leaves the commit's own parameters alone."""
    return audit_payload(raw, field="payload", model=CommitPayload)
