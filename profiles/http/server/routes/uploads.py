"""Uploads in the hosted APIs' three steps: a signed target, the upload, completion."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from profiles.errors import (
    ArchiveInvalid,
    ChecksumMismatch,
    Conflict,
    NotFound,
    ProfileError,
    SignatureInvalid,
    TierLimit,
    ValidationFailed,
)
from profiles.http.schemas import CompleteUploadBody, UploadTarget
from profiles.http.server.bodies import streams_body
from profiles.http.server.config import ARCHETYPE_OF, UPLOAD_LOCK_WAIT, sweep_old
from profiles.http.server.deps import Auth, Svc, base_url, link_account, run_sync, scratch_dir
from profiles.http.server.fairness import StateSlot, UploadSlot
from profiles.http.server.openapi import AUTH, error_responses, multipart_body
from profiles.http.server.state_io import hash_file
from profiles.http.server.streams import NOT_GZIP, archive_codec, drain, spool_multipart
from profiles.models import Profile, new_id, utcnow
from profiles.state.archive import not_an_archive
from profiles.state.rules import ENGINES
from profiles.validation import (
    check_browser_version,
    check_description,
    check_labels,
    check_name,
)

_PROFILE_ID = re.compile(r"prof_[0-9a-f-]{36}", re.ASCII)

router = APIRouter()


@router.post("/v1/profiles/initiate-upload", tags=["uploads"], responses=error_responses(*AUTH))
def initiate_upload(s: Svc, c: Auth, request: Request) -> UploadTarget:
    cap = c.account.cap
    if cap is not None:
        current = c.store.list(limit=min(100, cap + 1)).data
        if len(current) >= cap:
            raise TierLimit("at the cap", limit=cap, current=len(current))
    profile_id = new_id("prof")
    sweep_old(c.store.home / "pending", "", 2 * s.config.upload_expires_in + 3600)
    token, _ = s.signer.sign(
        "upload",
        account_id=c.account.id,
        profile_id=profile_id,
        checksum=None,
        expires_in=s.config.upload_expires_in,
        key_id=c.key.id,
    )
    return UploadTarget(
        profile_id=profile_id,
        upload_url=f"{base_url(request)}/v1/uploads/{token}",
        upload_fields={
            "key": f"pending/{c.account.id}/{profile_id}",
            "x-signature": token,
        },
        upload_expires_in=int(s.config.upload_expires_in),
    )


@router.post(
    "/v1/uploads/{token}",
    status_code=204,
    tags=["uploads"],
    responses=error_responses(400, 403, 409, 410, 413, 429),
    openapi_extra=multipart_body(
        "PresignedUploadForm",
        {"key": {"type": "string"}, "x-signature": {"type": "string"}},
        "upload_fields exactly as initiate-upload returned them, then the archive as "
        "`file` (.tar.gz); streamed to disk.",
        required=("key", "x-signature", "file"),
    ),
)
@streams_body
async def presigned_upload(s: Svc, _slot: UploadSlot, token: str, request: Request) -> Response:
    try:
        claim = s.signer.verify(token, "upload")
        account = link_account(s, claim, write=True)
        if not s.accounts.claim_token(claim.nonce, claim.expires_at):
            raise Conflict(
                "This upload target was already used; call initiate-upload again.",
                field="token",
            )
        store = await run_sync(lambda: s.stores.get(account))
    except ProfileError:
        await drain(request.stream())
        raise
    pending = store.home / "pending"
    with scratch_dir(store) as scratch:
        up = await spool_multipart(request, scratch / "file", limit=s.config.max_upload_bytes)
        expected_key = f"pending/{account.id}/{claim.profile_id}"
        if up.fields.get("x-signature") != token or up.fields.get("key") != expected_key:
            raise SignatureInvalid(
                "The upload fields do not match the upload target: send upload_fields "
                "exactly as initiate-upload returned them.",
                field="upload_fields",
            )
        codec = archive_codec(up.head)
        if codec is None:
            raise ArchiveInvalid(f"{NOT_GZIP}: {not_an_archive(up.head)}", field="file")
        assert up.file_path is not None
        target = pending / f"{claim.profile_id}.archive"
        meta = pending / f"{claim.profile_id}.json"
        meta.write_text(
            json.dumps(
                {
                    "size": up.size,
                    "sha256": up.sha256,
                    "codec": codec,
                    "uploaded_at": time.time(),
                }
            )
        )
        os.chmod(meta, 0o600)
        os.replace(up.file_path, target)
    return Response(status_code=204)


@router.post(
    "/v1/profiles/{profile_id}/complete-upload",
    status_code=201,
    tags=["uploads"],
    responses=error_responses(*AUTH, 404, 409, 413, 422),
)
def complete_upload(
    c: Auth, _slot: StateSlot, profile_id: str, body: CompleteUploadBody
) -> Profile:
    try:
        name = check_name(body.name)
        if body.browser_name not in ENGINES:
            raise ValidationFailed(
                f"Unsupported browser_name {body.browser_name!r}; use one of {', '.join(ENGINES)}.",
                field="browser_name",
            )
        version = check_browser_version(body.browser_version)
        description = check_description(body.description)
        labels = check_labels(body.labels)
    except ValidationFailed as exc:
        exc.status = 422
        raise
    pending = c.store.home / "pending"
    archive = pending / f"{profile_id}.archive"
    meta_path = pending / f"{profile_id}.json"
    if not _PROFILE_ID.fullmatch(profile_id) or not archive.is_file():
        raise NotFound(
            "No pending upload found for this profile_id.",
            resource="upload",
            ref=profile_id,
        )
    meta = json.loads(meta_path.read_text())
    size, digest = hash_file(archive)
    if size != meta.get("size") or digest != meta.get("sha256"):
        err = ChecksumMismatch(
            "The uploaded archive changed since it was received; upload it again.",
            field="file",
        )
        err.status = 422
        raise err
    engine = body.browser_name
    now = utcnow()
    profile = Profile(
        id=profile_id,
        name=name,
        description=description,
        archetype=ARCHETYPE_OF[engine],
        browser_name=engine,
        labels=labels,
        created_at=now,
        updated_at=now,
    )
    catalog = c.store.catalog
    with catalog.transaction() as tx:
        if tx.get_profile(profile_id) is not None:
            raise Conflict(f"Profile {profile_id} already exists.", field="profile_id")
        tx.insert_profile(profile, max_profiles=c.account.cap)
    c.store.record_event(
        "profile.created",
        profile_id,
        name=name,
        archetype=profile.archetype,
        uploaded=True,
    )
    try:
        with archive.open("rb") as src:
            created = c.store.import_state(
                profile_id,
                src,
                browser_name=engine,
                browser_version=version,
                lock_timeout=UPLOAD_LOCK_WAIT,
            )
    except ValidationFailed as exc:
        with contextlib.suppress(ProfileError):
            c.store.delete(profile_id)
        exc.status = 422
        raise
    except BaseException:
        with contextlib.suppress(ProfileError):
            c.store.delete(profile_id)
        raise
    for path in (archive, meta_path):
        with contextlib.suppress(OSError):
            path.unlink()
    return created
