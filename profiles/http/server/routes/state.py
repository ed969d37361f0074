"""State: upload an archive, download links and downloads, read and commit the state."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Annotated, Literal, cast

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from profiles.errors import (
    ArchiveInvalid,
    ChecksumMismatch,
    LinkExpired,
    NoStateData,
    ProfileError,
    ValidationFailed,
)
from profiles.http.outcome import OUTCOME_HEADER, OUTCOME_VERSION
from profiles.http.schemas import DownloadLink
from profiles.http.server.bodies import streams_body
from profiles.http.server.config import SCRATCH_PREFIX, SERVER_LEASE_TTL, UPLOAD_LOCK_WAIT
from profiles.http.server.deps import (
    Auth,
    LeaseToken,
    Svc,
    base_url,
    busy,
    iso,
    link_account,
    require_lease,
    run_sync,
    scratch_dir,
    server_holder,
)
from profiles.http.server.fairness import DownloadSlot, StateSlot, import_when_free
from profiles.http.server.openapi import (
    READ,
    WRITE,
    binary_body,
    error_responses,
    multipart_body,
    octet_stream_request,
)
from profiles.http.server.payloads import audit_payload, commit_payload
from profiles.http.server.state_io import HashingWriter, blob_stream, export_stream, file_stream
from profiles.http.server.streams import NOT_GZIP, archive_codec, drain, spool_body, spool_multipart
from profiles.models import AuditType, Profile
from profiles.state.archive import not_an_archive
from profiles.validation import check_browser_version

_CHECKSUM = re.compile(r"[0-9a-f]{64}", re.ASCII)

router = APIRouter()


@router.post(
    "/v1/profiles/{ref}/upload",
    tags=["state"],
    responses=error_responses(*WRITE, 404, 409),
    openapi_extra=multipart_body(
        "UploadForm",
        {"browser_version": {"type": "string", "maxLength": 64}},
        "The archive (.tar.gz or .tar.zst) as the part `file`; streamed to disk.",
    ),
)
@streams_body
async def upload(s: Svc, c: Auth, _slot: StateSlot, ref: str, request: Request) -> Profile:
    try:
        profile = await run_sync(lambda: c.store.get(ref))
    except ProfileError:
        await drain(request.stream())
        raise
    with scratch_dir(c.store) as scratch:
        up = await spool_multipart(request, scratch / "file", limit=s.config.max_upload_bytes)
        if archive_codec(up.head) is None:
            raise ArchiveInvalid(f"{NOT_GZIP}: {not_an_archive(up.head)}", field="file")
        assert up.file_path is not None
        path = up.file_path
        version = up.fields.get("browser_version") or None
        if version is not None:
            version = check_browser_version(version)

        def attempt(lock_timeout: float) -> Profile:
            with path.open("rb") as src:
                return c.store.import_state(
                    profile.id, src, browser_version=version, lock_timeout=lock_timeout
                )

        # A session holding the profile: wait for it on the event loop, not on a thread.
        updated = await import_when_free(c.store, profile, attempt, wait=UPLOAD_LOCK_WAIT)
    return updated


@router.get("/v1/profiles/{ref}/download", tags=["state"], responses=error_responses(*READ, 404))
def download_link(s: Svc, c: Auth, ref: str, request: Request) -> DownloadLink:
    profile = c.store.get(ref)
    if profile.checksum is None or profile.status != "ready":
        raise NoStateData(
            f"Profile has no data to download: {profile.name!r} is {profile.status}.",
            field="profile",
        )
    token, claim = s.signer.sign(
        "download",
        account_id=c.account.id,
        profile_id=profile.id,
        checksum=profile.checksum,
        expires_in=s.config.download_expires_in,
        key_id=c.key.id,
    )
    c.store.record_event(
        "state.download_link_created",
        profile.id,
        checksum=profile.checksum,
        expires_at=iso(claim.expires_at),
        key_id=c.key.id,
    )
    return DownloadLink(
        downloadUrl=f"{base_url(request)}/v1/downloads/{token}",
        expiresAt=iso(claim.expires_at),
        expiresIn=int(s.config.download_expires_in),
    )


@router.get(
    "/v1/downloads/{token}",
    tags=["state"],
    response_class=StreamingResponse,
    responses={
        200: binary_body("The state as .tar.gz", "application/gzip"),
        **error_responses(400, 403, 404, 410, 429),
    },
)
def download(s: Svc, _slot: DownloadSlot, token: str, request: Request) -> Response:
    claim = s.signer.verify(token, "download")
    account = link_account(s, claim, write=False)
    request.state.account = account  # for the access log
    store = s.stores.get(account)
    profile = store.get(claim.profile_id)
    if profile.checksum != claim.checksum:
        raise LinkExpired(
            "The profile's state changed since this link was made; ask for a new one.",
            field="token",
        )
    # The archive is written to scratch first, hashed on the way: X-Checksum is then the
    # SHA-256 of exactly the bytes sent (what `sha256sum` of the saved file prints), and
    # Content-Length is known. X-State-Checksum is the state's identity (the profile's
    # `checksum`), which is not a hash of these bytes.
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=store.tmp_dir))
    try:
        spool = scratch / "state.tar.gz"
        with spool.open("wb") as raw:
            sink = HashingWriter(raw)
            size = store.export_state(profile.id, cast(IO[bytes], sink), codec="gzip", audit=False)
        if store.get(profile.id).checksum != claim.checksum:
            raise LinkExpired(
                "The profile's state changed since this link was made; ask for a new one.",
                field="token",
            )
        store.record_event(
            "state.downloaded",
            profile.id,
            checksum=claim.checksum,
            sha256=sink.hexdigest(),
            bytes=size,
            codec="gzip",
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return StreamingResponse(
        file_stream(spool, scratch),
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{profile.id}.tar.gz"',
            "Content-Length": str(size),
            "X-Checksum": sink.hexdigest(),
            "X-State-Checksum": claim.checksum or "",
        },
        # Also when the client goes away before the stream started.
        background=BackgroundTask(shutil.rmtree, scratch, ignore_errors=True),
    )


@router.get(
    "/v1/profiles/{ref}/state",
    tags=["state"],
    response_class=StreamingResponse,
    responses={
        200: binary_body("The committed state", "application/zstd", "application/gzip"),
        **error_responses(*READ, 404),
    },
)
def get_state(c: Auth, _slot: StateSlot, ref: str, request: Request) -> Response:
    profile = c.store.get(ref)
    if profile.checksum is not None and c.store.service.manifest_of(profile) is not None:
        # A chunked state: its tar stream is built from the (verified) chunks. The body
        # is not the stored bytes, so only the state's identity is sent along; a client
        # that asks learns at the end how the stream ended.
        outcome = request.headers.get(OUTCOME_HEADER) == OUTCOME_VERSION
        headers = {"X-State-Checksum": profile.checksum}
        if outcome:
            headers[OUTCOME_HEADER] = OUTCOME_VERSION
        return StreamingResponse(
            export_stream(c.store, profile.id, "zstd", outcome=outcome),
            media_type="application/zstd",
            headers=headers,
        )
    source = c.store.service.open_state(profile)
    try:
        head = source.read(4)
    except BaseException:
        source.close()
        raise
    codec = archive_codec(head)
    headers = {"X-Checksum": profile.checksum or "", "X-State-Checksum": profile.checksum or ""}
    return StreamingResponse(
        blob_stream(source, head),
        media_type="application/zstd" if codec == "zstd" else "application/gzip",
        headers=headers,
    )


@router.put(
    "/v1/profiles/{ref}/state",
    tags=["state"],
    responses=error_responses(*WRITE, 404, 409),
    openapi_extra=octet_stream_request(
        "The state archive (.tar.zst or .tar.gz); streamed to disk."
    ),
)
@streams_body
async def put_state(
    s: Svc,
    c: Auth,
    _slot: StateSlot,
    ref: str,
    request: Request,
    x_checksum: Annotated[
        str | None,
        Header(description="The SHA-256 of the body, 64 hex digits (required)."),
    ] = None,
    epoch: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    browser_version: Annotated[str | None, Query(max_length=64)] = None,
    event: Literal["state.uploaded", "session.ended"] = "state.uploaded",
    payload: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="The commit's audit details: a JSON AuditPayload, none of whose keys "
            "is a parameter of the commit (browser_version, ...).",
        ),
    ] = None,
    ended: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="With epoch, ends the writer session: the JSON AuditPayload of its "
            "session.ended event.",
        ),
    ] = None,
    x_lease_token: LeaseToken = None,
) -> Profile:
    """Commit a state, under the writer lease ``epoch`` (with its token as
    ``X-Lease-Token``) or, without one, under a lease the server takes for the commit
    (``ProfileBusy`` while another writer holds it). With ``epoch`` and ``ended`` (a JSON
    object, the payload of the session's ``session.ended`` event) the commit also ends
    the writer session: once the state is stored, the lease is released and the event
    recorded, so a session's end costs one request. A commit that fails ends nothing."""
    announced = (x_checksum or "").strip().lower()
    try:
        extras = commit_payload(payload)
        end_payload = None if ended is None else audit_payload(ended, field="ended")
        if end_payload is not None and epoch is None:
            raise ValidationFailed(
                "ended ends a writer session: pass its lease's epoch too.", field="ended"
            )
        if not _CHECKSUM.fullmatch(announced):
            raise ValidationFailed(
                "The X-Checksum header must be the SHA-256 of the body, 64 hex digits.",
                field="X-Checksum",
            )
        if browser_version is not None:
            check_browser_version(browser_version)
        profile = await run_sync(lambda: c.store.get(ref))
        if epoch is not None:
            require_lease(s, c, profile, epoch, x_lease_token)
    except ProfileError:
        await drain(request.stream())
        raise
    with scratch_dir(c.store) as scratch:
        body = await spool_body(request, scratch / "state", limit=s.config.max_upload_bytes)
        if body.sha256 != announced:
            raise ChecksumMismatch(
                "The body does not hash to its X-Checksum; nothing was kept. Send it again.",
                field="X-Checksum",
                expected=announced,
                actual=body.sha256,
            )
        if archive_codec(body.head) is None:
            raise ArchiveInvalid(
                f"The state must be a .tar.zst or .tar.gz archive: {not_an_archive(body.head)}",
                field="body",
            )
        kind: AuditType = event

        def run() -> Profile:
            grant_epoch = epoch
            own = None
            if grant_epoch is None:
                own = c.store.service.acquire_lease(
                    profile.id, server_holder("import"), ttl=SERVER_LEASE_TTL
                )
                if own is None:
                    raise busy(c.store, profile)
                grant_epoch = own.epoch
            try:
                with body.path.open("rb") as src:
                    updated = c.store.commit_archive(
                        profile.id,
                        src,
                        epoch=grant_epoch,
                        browser_version=browser_version,
                        event=kind,
                        **extras,
                    )
                if end_payload is not None:
                    try:
                        c.store.service.release_lease(profile.id, grant_epoch)
                    finally:
                        c.store.record_event("session.ended", profile.id, **end_payload)
                return updated
            finally:
                if own is not None:
                    with contextlib.suppress(ProfileError):
                        c.store.service.release_lease(profile.id, own.epoch)

        updated = await run_sync(run)
    return updated
