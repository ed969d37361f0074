"""State as chunks: the packs and manifests of an account's states, read and written blob by
blob, and a commit of a manifest a client made. A client that chunks its working copy sends
only the packs a commit adds and reads only the spans a checkout needs.

Every account has its own blob store, so what one account uploads or reads is never
another's: deduplication and ``HEAD`` answers stay within the account.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError as PydanticValidationError

from profiles.errors import ChecksumMismatch, NotFound, ProfileError, ValidationFailed
from profiles.http.schemas import MAX_PUSH_BYTES, BlobStored, CommitBody, PushHeader
from profiles.http.server.bodies import streams_body
from profiles.http.server.config import SERVER_LEASE_TTL
from profiles.http.server.deps import (
    Auth,
    Caller,
    LeaseToken,
    ReadAuth,
    Services,
    Svc,
    busy,
    require_lease,
    run_sync,
    scratch_dir,
    server_holder,
)
from profiles.http.server.fairness import StateSlot
from profiles.http.server.openapi import (
    READ,
    WRITE,
    binary_body,
    error_responses,
    octet_stream_request,
)
from profiles.http.server.state_io import blob_stream
from profiles.http.server.streams import FramedBody, drain, spool_body
from profiles.models import Profile
from profiles.service.catalog import CatalogService
from profiles.state.manifest import MAX_MANIFEST_BLOB

router = APIRouter()

#: The largest blob a client may upload (a manifest's cap; packs are about 4 MiB).
MAX_BLOB_UPLOAD = MAX_MANIFEST_BLOB
#: The largest span one ranged read returns (a checkout asks for at most 4 MiB).
MAX_RANGE = 16 * 1024 * 1024
#: The largest header line of a push (the commit and the list of its blobs).
MAX_PUSH_HEADER = 256 * 1024
_CHECKSUM = r"^[0-9a-f]{64}$"
_RANGE = re.compile(r"bytes=(\d{1,15})-(\d{1,15})", re.ASCII)


def _service(c: Auth | ReadAuth) -> CatalogService:
    service = c.store.service
    assert isinstance(service, CatalogService)  # the server's stores are catalog services
    return service


def _checksum(value: str) -> str:
    if not re.fullmatch(_CHECKSUM, value):
        raise ValidationFailed("A blob is named by its SHA-256: 64 lowercase hex digits.")
    return value


@router.head(
    "/v1/state/blobs/{checksum}",
    tags=["chunks"],
    response_class=Response,
    responses={200: {"description": "The blob is there"}, **error_responses(*READ, 404)},
)
def blob_exists(c: ReadAuth, checksum: str) -> Response:
    """Whether the account's storage holds the blob: ``200`` or ``404``."""
    if not _service(c).blobs.exists(_checksum(checksum)):
        raise NotFound("No such blob in this account's storage.", resource="blob")
    return Response(status_code=200)


@router.get(
    "/v1/state/blobs/{checksum}",
    tags=["chunks"],
    response_class=StreamingResponse,
    responses={
        200: binary_body("The blob", "application/octet-stream"),
        206: binary_body("The span asked for with Range", "application/octet-stream"),
        **error_responses(*READ, 404),
    },
)
def read_blob(
    c: ReadAuth,
    checksum: str,
    range_: Annotated[
        str | None,
        Header(alias="Range", description="One span, bytes=FIRST-LAST (at most 16 MiB)."),
    ] = None,
) -> Response:
    """A pack, a manifest or a chunk of the account's states, whole or one span of it. The
    bytes are checked by the reader (a blob is named by its SHA-256, a chunk by the
    SHA-256 its manifest names)."""
    blobs = _service(c).blobs
    name = _checksum(checksum)
    if range_ is None:
        source = blobs.open(name)
        return StreamingResponse(blob_stream(source, b""), media_type="application/octet-stream")
    found = _RANGE.fullmatch(range_.strip())
    if found is None:
        raise ValidationFailed("Range must be one span: bytes=FIRST-LAST.", field="Range")
    first, last = int(found.group(1)), int(found.group(2))
    if last < first or last - first + 1 > MAX_RANGE:
        raise ValidationFailed(
            f"Range must name 1 to {MAX_RANGE} bytes, first to last.", field="Range"
        )
    data = blobs.read_range(name, first, last - first + 1)
    end = first + len(data) - 1
    return Response(
        data,
        status_code=206,
        media_type="application/octet-stream",
        headers={"Content-Range": f"bytes {first}-{end}/*"},
    )


@router.put(
    "/v1/state/blobs/{checksum}",
    tags=["chunks"],
    responses=error_responses(*WRITE),
    openapi_extra=octet_stream_request(
        "The blob's bytes (at most 64 MiB), which must hash to its name."
    ),
)
@streams_body
async def put_blob(c: Auth, _slot: StateSlot, checksum: str, request: Request) -> BlobStored:
    """Store a pack or a manifest in the account's storage before a commit names it. The
    bytes are hashed as they arrive; ones that do not hash to ``checksum`` are refused
    (``ChecksumMismatch``) and nothing is kept. A blob no commit names is collected later."""
    try:
        name = _checksum(checksum)
    except ProfileError:
        await drain(request.stream())
        raise
    with scratch_dir(c.store) as scratch:
        body = await spool_body(request, scratch / "blob", limit=MAX_BLOB_UPLOAD)
        if body.sha256 != name:
            raise ChecksumMismatch(
                "The body does not hash to the blob's name; nothing was kept. Send it again.",
                field="checksum",
                expected=name,
                actual=body.sha256,
            )
        stored = await run_sync(lambda: _service(c).store_blob(name, body.path))
    return BlobStored(stored=stored)


@router.post(
    "/v1/profiles/{ref}/state/commit",
    tags=["chunks"],
    responses=error_responses(*WRITE, 404, 409),
)
def commit_manifest(
    s: Svc,
    c: Auth,
    _slot: StateSlot,
    ref: str,
    body: CommitBody,
    x_lease_token: LeaseToken = None,
) -> Profile:
    """Make an uploaded manifest the profile's state. The manifest and the packs it names
    are checked as hostile input (limits, paths, sizes; every blob must be in the
    account's storage; chunks of packs the current state does not use are read and
    checked); the cookie domains and browser version are read from the state itself."""
    return _commit(s, c, ref, body, x_lease_token)


@router.post(
    "/v1/profiles/{ref}/state/push",
    tags=["chunks"],
    responses=error_responses(*WRITE, 404, 409),
    openapi_extra=octet_stream_request(
        "A PushHeader as one line of JSON and a newline, then the bytes "
        "of the blobs it lists, back to back in its order (at most 64 MiB in all)."
    ),
)
@streams_body
async def push_state(
    s: Svc,
    c: Auth,
    _slot: StateSlot,
    ref: str,
    request: Request,
    x_lease_token: LeaseToken = None,
) -> Profile:
    """Upload the blobs a commit adds and commit its manifest in one request (what
    ``HttpService`` does when a commit's new packs are small): each blob is hashed as it
    arrives and refused when it does not hash to its name; then the commit is checked as
    ``POST .../state/commit`` checks it."""
    framed = FramedBody(request)
    try:
        line = await framed.header(MAX_PUSH_HEADER)
        try:
            push = PushHeader.model_validate_json(line)
        except PydanticValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "header"
            raise ValidationFailed(
                f"Invalid request: {where}: {first['msg']}.", field=where
            ) from None
        if sum(blob.size for blob in push.blobs) > MAX_PUSH_BYTES:
            err = ValidationFailed(
                f"A push carries at most {MAX_PUSH_BYTES} bytes of blobs; upload larger "
                "ones with PUT /v1/state/blobs/{checksum} first.",
                limit=MAX_PUSH_BYTES,
            )
            err.status = 413
            raise err
    except ProfileError:
        await framed.drain()
        raise
    with scratch_dir(c.store) as scratch:
        received: list[tuple[str, Path]] = []
        try:
            for i, blob in enumerate(push.blobs):
                path = scratch / f"blob-{i}"
                digest = await framed.part(path, blob.size)
                if digest != blob.checksum:
                    raise ChecksumMismatch(
                        f"Blob {i} of the push does not hash to its name; nothing was kept. "
                        "Send it again.",
                        field="blobs",
                        expected=blob.checksum,
                        actual=digest,
                    )
                received.append((blob.checksum, path))
            await framed.end()
        except ProfileError:
            await framed.drain()
            raise

        def run() -> Profile:
            service = _service(c)
            for checksum, path in received:
                service.store_blob(checksum, path)
            return _commit(s, c, ref, push.commit, x_lease_token)

        return await run_sync(run)


def _commit(s: Services, c: Caller, ref: str, body: CommitBody, token: str | None) -> Profile:
    """The commit of an uploaded manifest, fenced by the caller's lease (or under one the
    server takes for it), ending the session when ``body.ended`` says so."""
    payload = body.payload.root
    ended = None if body.ended is None else body.ended.root
    if ended is not None and body.epoch is None:
        raise ValidationFailed(
            "ended ends a writer session: pass its lease's epoch too.", field="ended"
        )
    service = _service(c)
    profile = c.store.get(ref)
    epoch, own = body.epoch, None
    if epoch is not None:
        require_lease(s, c, profile, epoch, token)
    else:
        own = service.acquire_lease(profile.id, server_holder("import"), ttl=SERVER_LEASE_TTL)
        if own is None:
            raise busy(c.store, profile)
        epoch = own.epoch
    try:
        with scratch_dir(c.store) as scratch:
            updated = service.commit_manifest(
                profile, body.checksum, epoch=epoch, event=body.event, scratch=scratch, **payload
            )
        if ended is not None:
            service.end_session(profile.id, epoch, **ended)
        return updated
    finally:
        if own is not None:
            with contextlib.suppress(ProfileError):
                service.release_lease(profile.id, own.epoch)
