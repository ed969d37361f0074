"""What every route of ``profiles serve`` stands on: the server's parts (:class:`Services`),
the authenticated caller (:func:`caller`, :func:`reader`), and small shared helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import anyio.to_thread
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection

from profiles.errors import (
    Forbidden,
    LeaseLost,
    NotFound,
    ProfileBusy,
    ProfileError,
    Unauthorized,
)
from profiles.http.server.accounts import Account, AccountsDB, ApiKey
from profiles.http.server.config import SCRATCH_PREFIX, AccountStores, ServerConfig
from profiles.http.server.signing import SignedClaim, Signer
from profiles.models import Holder, Page, Profile
from profiles.store import ProfileStore

if TYPE_CHECKING:
    from profiles.http.server.fairness import StateSlots

T = TypeVar("T")
P = TypeVar("P", bound=Page[Any])


@dataclass
class Services:
    """The parts of one running server, shared by its routes."""

    config: ServerConfig
    accounts: AccountsDB
    signer: Signer
    stores: AccountStores
    state_slots: StateSlots


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Svc = Annotated[Services, Depends(services)]


def error_response(err: ProfileError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error's body, without its private details (a ``LeaseLost``'s current epoch)."""
    return JSONResponse({"error": err.public_dict()}, status_code=err.status, headers=headers)


def base_url(request: Request) -> str:
    """The server's address as links it makes should name it."""
    public = services(request).config.public_url
    return (public or str(request.base_url)).rstrip("/")


@contextlib.contextmanager
def scratch_dir(store: ProfileStore) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=store.tmp_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run_sync(fn: Callable[[], T]) -> T:
    """``fn()`` on a worker thread (the store's calls block)."""
    return await anyio.to_thread.run_sync(fn)


def page_of(cls: type[P], page: Page[Any]) -> P:
    return cls(data=page.data, has_more=page.has_more, next_cursor=page.next_cursor)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def server_holder(kind: Literal["session", "import"]) -> Holder:
    return Holder(kind=kind, host=socket.gethostname(), pid=os.getpid(), since=datetime.now(UTC))


def busy(store: ProfileStore, profile: Profile) -> ProfileBusy:
    holder = store.service.lease_holder(profile.id)
    who = holder.describe() if holder else "another writer"
    return ProfileBusy(
        f"Profile {profile.name!r} is in use: {who}. Wait for it to end and try again.",
        profile_id=profile.id,
        holder=holder.model_dump(mode="json") if holder else None,
    )


# ------------------------------------------------------------------ the caller


@dataclass
class Caller:
    key: ApiKey
    account: Account
    store: ProfileStore
    can_write: bool

    def require_admin(self, doing: str) -> None:
        """``Forbidden`` (before anything is done) unless the key may write."""
        if not self.can_write:
            raise Forbidden(
                f"API key missing required permission: admin ({doing} writes; a read key "
                "runs read-only sessions).",
                permission="admin",
            )


def _bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("API key required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Invalid or revoked API key")
    return token.strip()


def authenticate(
    accounts: AccountsDB, authorization: str | None, identified: Any = None
) -> tuple[ApiKey, Account]:
    """The live key of an ``Authorization`` header and the account that owns it, or the
    error the request is answered with (``401`` without a live key, ``403`` for a
    deactivated account). ``identified``: what the rate limiter already found, if it did.
    Scopes and ``X-Account`` are the route's to check (:func:`caller`)."""
    token = _bearer(authorization)
    if identified is not None:
        key, own = identified
    else:
        key = accounts.authenticate(token)
        if key is None:
            raise Unauthorized("Invalid or revoked API key")
        own = accounts.get_account(key.account_id)
    if not own.active:
        raise Forbidden("Account is deactivated")
    return key, own


_bearer_doc = HTTPBearer(auto_error=False, description="An API key: pk_<key id>_<secret>")


async def caller(request: Request, _doc: Annotated[Any, Depends(_bearer_doc)] = None) -> Caller:
    """The authenticated caller: its key, the account it acts on, that account's store.
    Writes (any method but GET, HEAD and OPTIONS) need the ``admin`` scope."""
    return await _authorize(request, write=request.method not in ("GET", "HEAD", "OPTIONS"))


async def reader(request: Request, _doc: Annotated[Any, Depends(_bearer_doc)] = None) -> Caller:
    """The caller of a route that reads, whatever its method (a read-only session's start
    and end): the ``read`` scope suffices; the route asks :meth:`Caller.require_admin` for
    what needs more."""
    return await _authorize(request, write=False)


async def connection_caller(connection: HTTPConnection) -> Caller:
    """The caller of a WebSocket (a remote session's CDP connection), as :func:`reader`
    finds it; the route asks :meth:`Caller.require_admin` for what needs more."""
    return await _authorize(connection, write=False)


async def _authorize(request: HTTPConnection, *, write: bool) -> Caller:
    found: Services = request.app.state.services
    accounts = found.accounts
    stores = found.stores
    key, own = authenticate(
        accounts,
        request.headers.get("authorization"),
        # the rate limiter's look-up (or the body guard's)
        getattr(request.state, "identified_key", None),
    )
    role: str | None = None
    target = own
    acting = request.headers.get("x-account")
    if acting and acting != own.id:
        role = accounts.role(acting, own.id)
        if role is None:
            raise NotFound("Account not found", resource="account")
        target = accounts.get_account(acting)
        if not target.active:
            raise Forbidden("Account is deactivated")
    if write and "admin" not in key.scopes:
        raise Forbidden("API key missing required permission: admin", permission="admin")
    if not write and not {"read", "admin"} & set(key.scopes):
        raise Forbidden("API key missing required permission: read", permission="read")
    if write and role == "member":
        raise Forbidden(
            "Account role member is read-only: API key missing required permission: admin",
            permission="admin",
            role="member",
        )
    request.state.account = target
    store = await run_sync(lambda: stores.get(target))
    can_write = "admin" in key.scopes and role != "member"
    return Caller(key=key, account=target, store=store, can_write=can_write)


Auth = Annotated[Caller, Depends(caller)]
ReadAuth = Annotated[Caller, Depends(reader)]


# ------------------------------------------------------------------ signed links


def link_account(s: Services, claim: SignedClaim, *, write: bool) -> Account:
    """The account a signed link (a download link, an upload target) acts on, once the
    API key that made it may still do what the link does: the key is not revoked, its
    account is active, and (made through ``X-Account``) its account is still a member,
    an admin one for a ``write``. A link dies with its key's right, as an S3 presigned
    URL dies with its credentials: ``Forbidden`` otherwise. ``NotFound`` (as for the
    profile: nothing is said of other accounts) when the account is gone."""
    try:
        account = s.accounts.get_account(claim.account_id)
    except NotFound:
        raise NotFound("Profile not found", resource="profile") from None
    if not account.active:
        raise Forbidden("Account is deactivated")
    try:
        key = s.accounts.get_key(claim.key_id)
    except NotFound:
        key = None
    if key is None or key.revoked_at is not None:
        raise Forbidden(
            "The API key that made this link was revoked, and its links with it; ask for "
            "a new link with a live key.",
            field="token",
        )
    if write and "admin" not in key.scopes:
        raise Forbidden("API key missing required permission: admin", permission="admin")
    if key.account_id != account.id:
        own = s.accounts.get_account(key.account_id)
        role = s.accounts.role(account.id, own.id)
        if not own.active or role is None or (write and role != "admin"):
            raise Forbidden(
                "The API key that made this link can no longer act on this account (its "
                "account was deactivated or its membership revoked), and its links died "
                "with that; ask for a new link with a live key.",
                field="token",
            )
    return account


# ------------------------------------------------------------------ writer leases

LEASE_TOKEN_HEADER = "X-Lease-Token"

LeaseToken = Annotated[
    str | None,
    Header(
        alias=LEASE_TOKEN_HEADER,
        description="The token of the writer lease (the grant's `token`): with `epoch`, the "
        "proof of holding the lease; only the API key it was granted to has it.",
        max_length=256,
    ),
]


def lease_token(s: Services, c: Caller, profile_id: str, epoch: int) -> str:
    """The token of the lease ``epoch`` on the profile, granted to the caller's key."""
    return s.signer.lease_token(
        account_id=c.account.id, profile_id=profile_id, epoch=epoch, key_id=c.key.id
    )


def require_lease(s: Services, c: Caller, profile: Profile, epoch: int, token: str | None) -> None:
    """``LeaseLost`` unless ``token`` proves the caller's key was granted the lease ``epoch``
    on the profile. Checked before the lease is looked at: the answer says nothing of the
    lease's state (who holds it, its current epoch), and it never names a token."""
    if s.signer.lease_token_matches(
        token, account_id=c.account.id, profile_id=profile.id, epoch=epoch, key_id=c.key.id
    ):
        return
    why = "without its token" if not token else "with a token that is not its own"
    raise LeaseLost(
        f"The writer lease on profile {profile.name!r} (epoch {epoch}) is not held by this "
        f"caller: the request came {why}. A lease is held by the API key it was granted "
        f"to, which sends the grant's token as {LEASE_TOKEN_HEADER} with the epoch; acquire "
        "the lease to write.",
        profile_id=profile.id,
        epoch=epoch,
    )
