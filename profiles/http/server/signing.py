"""Signed, expiring tokens for download links and upload targets.

A token is ``<payload>.<signature>``: the payload is URL-safe base64 of compact JSON
(``{"k": purpose, "a": account id, "p": profile id, "c": checksum, "i": id of the API key
that made it, "x": expiry (unix s), "n": nonce}``), the signature URL-safe base64 of its
HMAC-SHA256 under the server's secret (``<home>/server-secret``, 32 random bytes, ``0600``,
made on first start; or the file ``--secret-file`` / ``$PROFILES_SERVER_SECRET_FILE`` names,
which every replica of a service must share, since any replica checks what another signed).
Anything that does not verify is ``SignatureInvalid`` (403); a token
past its expiry is ``LinkExpired`` (410). The account is inside the signed payload, so a
link only ever reaches the account it was made for; the key is too, so a link lives no
longer than the key's right to do what it does (the routes check that it is still live).

A writer lease's token (:meth:`Signer.lease_token`) is the proof of holding the lease: an
HMAC-SHA256, under a key derived from the same secret, of the account, the profile, the
lease's epoch and the id of the API key it was granted to. It is stateless (every replica
sharing the secret checks it) and unguessable; the epoch alone proves nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from profiles.errors import LinkExpired, SignatureInvalid, ValidationFailed

__all__ = ["LinkExpired", "SignatureInvalid", "SignedClaim", "Signer", "load_secret"]

SECRET_BYTES: Final = 32
MAX_TOKEN_LENGTH: Final = 2048


def load_secret(path: Path, *, create: bool = True) -> bytes:
    """The server's signing secret, made (``0600``) on first use; with ``create=False``
    (a secret given with ``--secret-file``, which every replica of a service shares) it
    must exist: a replica that made its own would refuse the others' links and lease
    tokens."""
    if not create:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValidationFailed(
                f"The signing secret {path} cannot be read ({exc.strerror or exc}). Make it "
                "once (head -c 32 /dev/urandom > FILE; chmod 600 FILE) and give every "
                "replica the same file.",
                field="secret_file",
            ) from None
        if len(data) < SECRET_BYTES:
            raise ValidationFailed(
                f"The signing secret {path} is too short: it needs {SECRET_BYTES} bytes at "
                "least (head -c 32 /dev/urandom > FILE).",
                field="secret_file",
            )
        return data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) < SECRET_BYTES:
            raise ValueError(f"the signing secret {path} is too short") from None
        os.chmod(path, 0o600)
        return data
    with os.fdopen(fd, "wb") as out:
        secret = secrets.token_bytes(SECRET_BYTES)
        out.write(secret)
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SignedClaim:
    purpose: str
    account_id: str
    profile_id: str
    checksum: str | None
    expires_at: float
    nonce: str
    key_id: str


class Signer:
    """Makes and checks tokens under one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        # A key of its own for lease tokens: a lease token is never a valid link's MAC.
        self._lease_key = hmac.new(secret, b"profiles lease token v1", hashlib.sha256).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest())

    def sign(
        self,
        purpose: str,
        *,
        account_id: str,
        profile_id: str,
        checksum: str | None,
        expires_in: float,
        key_id: str,
    ) -> tuple[str, SignedClaim]:
        """A token for ``purpose`` on the account's profile, made by the API key
        ``key_id``."""
        claim = SignedClaim(
            purpose=purpose,
            account_id=account_id,
            profile_id=profile_id,
            checksum=checksum,
            expires_at=time.time() + expires_in,
            nonce=secrets.token_hex(12),
            key_id=key_id,
        )
        body: dict[str, Any] = {
            "k": purpose,
            "a": account_id,
            "p": profile_id,
            "c": checksum,
            "i": key_id,
            "x": round(claim.expires_at, 3),
            "n": claim.nonce,
        }
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}", claim

    def lease_token(self, *, account_id: str, profile_id: str, epoch: int, key_id: str) -> str:
        """The token of the writer lease ``epoch`` on the profile, granted to the API key
        ``key_id`` of (or acting on) the account."""
        message = "\0".join((account_id, profile_id, str(int(epoch)), key_id)).encode()
        return _b64(hmac.new(self._lease_key, message, hashlib.sha256).digest())

    def lease_token_matches(
        self, token: str | None, *, account_id: str, profile_id: str, epoch: int, key_id: str
    ) -> bool:
        """Whether ``token`` is the token of that lease, granted to that key (compared in
        constant time)."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return False
        expected = self.lease_token(
            account_id=account_id, profile_id=profile_id, epoch=epoch, key_id=key_id
        )
        return hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace"))

    def verify(self, token: str, purpose: str) -> SignedClaim:
        """The claim of a valid, unexpired token for ``purpose``."""
        invalid = SignatureInvalid(
            "The link's signature is invalid: it was altered or is not for this server. "
            "Ask for a new one.",
            field="token",
        )
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise invalid
        payload, mac = token.split(".")
        if not hmac.compare_digest(self._mac(payload), mac):
            raise invalid
        try:
            body = json.loads(_unb64(payload))
            claim = SignedClaim(
                purpose=str(body["k"]),
                account_id=str(body["a"]),
                profile_id=str(body["p"]),
                checksum=None if body["c"] is None else str(body["c"]),
                expires_at=float(body["x"]),
                nonce=str(body["n"]),
                key_id=str(body["i"]),  # a token made before links named their key: invalid
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise invalid from None
        if claim.purpose != purpose:
            raise invalid
        if time.time() > claim.expires_at:
            raise LinkExpired(
                "The link has expired; ask for a new one.",
                field="token",
                expired_at=claim.expires_at,
            )
        return claim
