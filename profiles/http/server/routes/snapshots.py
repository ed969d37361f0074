"""Snapshots (take, list, read, delete, restore) and the audit log."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from profiles.http.schemas import AuditPage, RestoreBody, SnapshotBody, SnapshotPage
from profiles.http.server.deps import Auth, page_of
from profiles.http.server.openapi import AUTH, READ, WRITE, error_responses
from profiles.models import Profile, Snapshot

router = APIRouter()


@router.post(
    "/v1/profiles/{ref}/snapshots", tags=["snapshots"], responses=error_responses(*WRITE, 404, 409)
)
def snapshot(c: Auth, ref: str, body: SnapshotBody | None = None) -> Snapshot:
    body = body or SnapshotBody()
    return c.store.snapshot(ref, label=body.label, description=body.description)


@router.get(
    "/v1/profiles/{ref}/snapshots", tags=["snapshots"], responses=error_responses(*READ, 404)
)
def profile_snapshots(
    c: Auth, ref: str, limit: int = 50, cursor: str | None = None
) -> SnapshotPage:
    return page_of(SnapshotPage, c.store.snapshots(ref, limit=limit, cursor=cursor))


@router.get("/v1/profile-snapshots", tags=["snapshots"], responses=error_responses(*READ))
def all_snapshots(c: Auth, limit: int = 50, cursor: str | None = None) -> SnapshotPage:
    return page_of(SnapshotPage, c.store.snapshots(None, limit=limit, cursor=cursor))


@router.get(
    "/v1/profile-snapshots/{snapshot_id}", tags=["snapshots"], responses=error_responses(*READ, 404)
)
def get_snapshot(c: Auth, snapshot_id: str) -> Snapshot:
    return c.store.get_snapshot(snapshot_id)


@router.delete(
    "/v1/profile-snapshots/{snapshot_id}",
    status_code=204,
    tags=["snapshots"],
    responses=error_responses(*AUTH, 404),
)
def delete_snapshot(c: Auth, snapshot_id: str) -> Response:
    c.store.delete_snapshot(snapshot_id)
    return Response(status_code=204)


@router.post(
    "/v1/profile-snapshots/{snapshot_id}/restore",
    tags=["snapshots"],
    responses=error_responses(*WRITE, 404, 409),
)
def restore(c: Auth, snapshot_id: str, body: RestoreBody | None = None) -> Profile:
    body = body or RestoreBody()
    return c.store.restore(snapshot_id, name=body.name)


@router.get("/v1/audit", tags=["audit"], responses=error_responses(*READ, 404))
def audit(
    c: Auth, profile: str | None = None, limit: int = 50, cursor: str | None = None
) -> AuditPage:
    return page_of(AuditPage, c.store.audit(profile=profile, limit=limit, cursor=cursor))
