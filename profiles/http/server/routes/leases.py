"""Writer leases: acquire (long-polled), renew, release, who holds them."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Query
from fastapi.responses import Response

from profiles.errors import NotFound
from profiles.http.schemas import (
    LeaseBody,
    LeaseGrantBody,
    LeaseHolderBody,
    LeaseList,
    LeaseRow,
    RenewBody,
    RenewResult,
)
from profiles.http.server.deps import (
    Auth,
    LeaseToken,
    Svc,
    busy,
    lease_token,
    require_lease,
    run_sync,
)
from profiles.http.server.openapi import AUTH, READ, WRITE, error_responses
from profiles.models import Holder

router = APIRouter()


@router.post(
    "/v1/profiles/{ref}/lease", tags=["leases"], responses=error_responses(*WRITE, 404, 409)
)
async def acquire_lease(s: Svc, c: Auth, ref: str, body: LeaseBody) -> LeaseGrantBody:
    """A writer lease, with its fencing ``epoch`` and its ``token``: renewing, releasing,
    committing under it and ending its session take both (``X-Lease-Token``); only the
    API key it was granted to has the token."""
    profile = await run_sync(lambda: c.store.get(ref))
    holder = Holder(kind=body.kind, host=body.host, pid=body.pid, since=datetime.now(UTC))
    deadline = time.monotonic() + min(body.wait, s.config.max_lease_wait)
    while True:
        grant = await run_sync(
            lambda: c.store.service.acquire_lease(profile.id, holder, ttl=body.ttl)
        )
        if grant is not None:
            # The record as the holder starts from (no one else commits while it holds
            # the lease): the client needs no second request to read it.
            current = await run_sync(lambda: c.store.get(profile.id))
            return LeaseGrantBody(
                profile_id=grant.profile_id,
                epoch=grant.epoch,
                token=lease_token(s, c, grant.profile_id, grant.epoch),
                expires_at=None
                if grant.expires_at is None
                else grant.expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                profile=current,
            )
        if time.monotonic() >= deadline:
            raise await run_sync(lambda: busy(c.store, profile))
        await anyio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


@router.post(
    "/v1/profiles/{ref}/lease/renew", tags=["leases"], responses=error_responses(*WRITE, 404, 409)
)
def renew_lease(
    s: Svc, c: Auth, ref: str, body: RenewBody, x_lease_token: LeaseToken = None
) -> RenewResult:
    """``renewed: false`` when the lease is no longer held, also when its profile is gone
    (deleted meanwhile): the holder has lost it, as with a local service. ``LeaseLost``
    without the lease's token."""
    try:
        profile = c.store.get(ref)
    except NotFound:
        return RenewResult(renewed=False)
    require_lease(s, c, profile, body.epoch, x_lease_token)
    return RenewResult(renewed=c.store.service.renew_lease(profile.id, body.epoch, ttl=body.ttl))


@router.delete(
    "/v1/profiles/{ref}/lease",
    status_code=204,
    tags=["leases"],
    responses=error_responses(*AUTH, 404, 409),
)
def release_lease(
    s: Svc,
    c: Auth,
    ref: str,
    epoch: Annotated[int, Query(ge=0, le=2**62)],
    x_lease_token: LeaseToken = None,
) -> Response:
    """Releasing a lease that is not held (another epoch, a profile gone) changes nothing
    and is not an error, as with a local service; without the lease's token it is
    ``LeaseLost`` and changes nothing either."""
    try:
        profile = c.store.get(ref)
    except NotFound:
        return Response(status_code=204)
    require_lease(s, c, profile, epoch, x_lease_token)
    c.store.service.release_lease(profile.id, epoch)
    return Response(status_code=204)


@router.get("/v1/profiles/{ref}/lease", tags=["leases"], responses=error_responses(*READ, 404))
def lease_holder(c: Auth, ref: str) -> LeaseHolderBody:
    profile = c.store.get(ref)
    return LeaseHolderBody(holder=c.store.service.lease_holder(profile.id))


@router.get("/v1/leases", tags=["leases"], responses=error_responses(*READ))
def leases(c: Auth) -> LeaseList:
    return LeaseList(
        data=[LeaseRow(profile_id=pid, holder=h) for pid, h in c.store.service.leases()]
    )
