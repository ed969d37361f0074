"""Sessions and events: a session's start and end, an event a client records."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from profiles.http.schemas import EventBody, SessionEndBody, SessionStartBody
from profiles.http.server.deps import Auth, LeaseToken, ReadAuth, Svc, require_lease
from profiles.http.server.openapi import WRITE, error_responses
from profiles.models import Profile

router = APIRouter()


@router.post(
    "/v1/profiles/{ref}/sessions", tags=["sessions"], responses=error_responses(*WRITE, 404)
)
def session_started(c: ReadAuth, ref: str, body: SessionStartBody) -> Profile:
    """A session started on the profile: ``usage_count`` + 1, ``last_used_at``, and a
    ``session.created`` event. A read key may record a read-only session's use."""
    if not body.readonly:
        c.require_admin("a writer session")
    payload = {**body.payload.root, "readonly": body.readonly}
    return c.store.record_use(ref, **payload)


@router.post(
    "/v1/profiles/{ref}/sessions/end",
    status_code=204,
    tags=["sessions"],
    responses=error_responses(*WRITE, 404, 409),
)
def session_ended(
    s: Svc, c: ReadAuth, ref: str, body: SessionEndBody, x_lease_token: LeaseToken = None
) -> Response:
    """A session ended: its writer lease (``epoch``, with its token as ``X-Lease-Token``)
    is released and ``session.ended`` recorded, in one request. Without ``epoch`` (a
    read-only session) a read key may."""
    if body.epoch is not None:
        c.require_admin("releasing a writer lease")
    payload = body.payload.root
    profile = c.store.get(ref)
    if body.epoch is not None:
        require_lease(s, c, profile, body.epoch, x_lease_token)
    try:
        if body.epoch is not None:
            c.store.service.release_lease(profile.id, body.epoch)
    finally:
        c.store.record_event("session.ended", profile.id, **payload)
    return Response(status_code=204)


@router.post(
    "/v1/profiles/{ref}/events",
    tags=["profiles"],
    response_model=Profile,
    responses={
        200: {"description": "session.created: the profile, its use counted"},
        204: {"description": "The event was recorded"},
        **error_responses(*WRITE, 404),
    },
)
def post_event(c: Auth, ref: str, body: EventBody) -> Response:
    payload = body.payload.root  # checked and redacted by its model (AuditPayload)
    if body.type == "session.created":
        profile = c.store.record_use(ref, **payload)
        return JSONResponse(profile.model_dump(mode="json"))
    profile = c.store.get(ref)
    c.store.record_event(body.type, profile.id, **payload)
    return Response(status_code=204)
