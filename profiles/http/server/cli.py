"""``profiles serve``, ``profiles keys`` and ``profiles accounts``.

:func:`add_server_commands` registers them on the ``profiles`` parser (``build_parser``
calls it with its sub-parser group and its ``command`` helper). ``python -m
profiles.http.server.cli`` runs the same commands on their own (the tests start the server
that way).

The server's home holds ``accounts.sqlite3`` (accounts, hashed API keys, memberships;
``--accounts postgresql://...`` puts them in PostgreSQL instead, which replicas share),
``server-secret`` (the signing key of download links and upload targets; ``--secret-file``
names one every replica shares) and ``accounts/<account id>/`` (each account's profile
store). Keys are shown once, when made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from profiles.errors import ProfileError, ValidationFailed
from profiles.http.server.access_log import LogFormat, configure_server_logging
from profiles.http.server.accounts import (
    SCOPES,
    TIER_CAPS,
    TIER_RATE_LIMITS,
    AccountsDB,
    open_accounts,
)
from profiles.http.server.config import MAX_STATE_OPERATIONS, REPLICA_TIMEOUT, SECRET_FILE_ENV
from profiles.http.server.ratelimit import RateLimit, parse_rate_limit, parse_tier_rate_limit
from profiles.http.server.remote.limits import TIER_SESSION_CAPS, parse_tier_session_cap
from profiles.http.server.transport import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_READ_TIMEOUT,
    Transport,
    parse_forwarded_allow_ips,
    serve_app,
)
from profiles.workspace.leases import DEFAULT_LEASE_TTL

__all__ = ["add_server_commands", "main", "serve"]

log = logging.getLogger(__name__)

NO_STORE = "none"  # profiles.cli.common's store mode for commands that open no profile store
Command = Callable[..., argparse.ArgumentParser]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _server_home(args: argparse.Namespace) -> Path:
    from profiles.store import default_home

    home = getattr(args, "home", None)
    return Path(home).expanduser() if home else default_home()


def _db(args: argparse.Namespace) -> AccountsDB:
    url = getattr(args, "accounts", None)
    if url:
        return open_accounts(url)
    home = _server_home(args)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return open_accounts(home / "accounts.sqlite3")


ACCOUNTS_HELP = (
    "the accounts database (accounts, keys, memberships, the replicas' session registry): "
    "a postgresql:// URL that every replica of the service shares, or a SQLite file "
    "(default: accounts.sqlite3 in the server's home)"
)


def _accounts_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accounts", default=None, metavar="URL", help=ACCOUNTS_HELP)


def _as_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _rate_limit(value: str) -> Any:
    try:
        return parse_rate_limit(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tier_rate_limit(value: str) -> tuple[str, RateLimit | None]:
    try:
        return parse_tier_rate_limit(value, TIER_CAPS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tier_session_cap(value: str) -> tuple[str, int | None]:
    try:
        return parse_tier_session_cap(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _forwarded_allow_ips(value: str) -> tuple[str, ...]:
    try:
        return parse_forwarded_allow_ips(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: type[float] | type[int]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not number > 0:
            raise argparse.ArgumentTypeError(f"{value!r}: give a number above 0")
        return number

    return parse


def _transport(args: argparse.Namespace) -> Transport:
    return Transport(
        forwarded_allow_ips=args.forwarded_allow_ips,
        header_timeout=args.header_timeout,
        keep_alive=args.keep_alive,
        read_timeout=args.read_timeout,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_connections_per_address,
    )


def cmd_serve(_store: object, args: argparse.Namespace) -> None:
    serve(
        home=_server_home(args),
        host=args.host,
        port=args.port,
        catalog=getattr(args, "catalog", None),
        blobs=getattr(args, "blobs", None),
        rate_limit=args.rate_limit,
        tier_rate_limits=dict(args.tier_rate_limit or ()),
        download_expires_in=args.download_expires,
        upload_expires_in=args.upload_expires,
        max_upload_mb=args.max_upload_mb,
        public_url=args.public_url,
        log_format=args.log_format,
        max_state_operations=args.max_state_operations,
        transport=_transport(args),
        max_sessions=args.max_sessions,
        tier_session_caps=dict(args.tier_session_cap or ()),
        accounts=args.accounts,
        secret_file=args.secret_file,
        replica_id=args.replica_id,
        replica_url=args.replica_url,
        replica_timeout=args.replica_timeout,
        session_lease_ttl=args.session_lease_ttl,
    )


def serve(
    *,
    home: Path,
    host: str = "127.0.0.1",
    port: int = 8787,
    catalog: str | None = None,
    blobs: str | None = None,
    rate_limit: Any = "100/900",
    tier_rate_limits: dict[str, RateLimit | None] | None = None,
    download_expires_in: float = 3600.0,
    upload_expires_in: float = 3600.0,
    max_upload_mb: int = 500,
    public_url: str | None = None,
    log_format: LogFormat = "text",
    max_state_operations: int = MAX_STATE_OPERATIONS,
    transport: Transport | None = None,
    max_sessions: int | None = None,
    tier_session_caps: dict[str, int | None] | None = None,
    accounts: str | None = None,
    secret_file: Path | None = None,
    replica_id: str | None = None,
    replica_url: str | None = None,
    replica_timeout: float = REPLICA_TIMEOUT,
    session_lease_ttl: float = DEFAULT_LEASE_TTL,
) -> None:
    """Run the server until SIGINT/SIGTERM (which stop and commit every remote session
    before the server exits). ``max_sessions``: remote sessions running at once (default
    from the machine's memory); ``tier_session_caps``: per account by tier, over
    :data:`~profiles.http.server.remote.limits.TIER_SESSION_CAPS`. Uvicorn's own access
    log is off (download and upload tokens are in URL paths); ours
    (:mod:`profiles.http.server.access_log`) logs each request's route template, status,
    duration and account on stderr, as text or JSON.
    ``rate_limit`` is the budget per client address of requests without a live key;
    ``tier_rate_limits`` overrides the budgets per account of some tiers (the others keep
    :data:`~profiles.http.server.accounts.TIER_RATE_LIMITS`). ``max_state_operations``: the
    uploads, commits and downloads of states one account runs at once (more are answered
    429, :mod:`profiles.http.server.fairness`). ``transport`` holds what the
    connections are held to (:mod:`profiles.http.server.transport`). ``accounts``: the
    accounts database's URL (replicas share one in PostgreSQL); ``secret_file``: the
    signing secret every replica shares; ``replica_url``: how the other replicas reach this
    one (default ``http://HOST:PORT``); ``replica_timeout``: the heartbeat age past which a
    replica is gone; ``session_lease_ttl``: remote sessions' writer lease time to live."""
    from profiles.http.server import ServerConfig, create_app

    rate = parse_rate_limit(rate_limit) if isinstance(rate_limit, str) else rate_limit
    for name, value in (
        ("download expiry", download_expires_in),
        ("upload expiry", upload_expires_in),
    ):
        if value <= 0:
            raise ValidationFailed(f"The {name} must be above 0 seconds.")
    if max_upload_mb < 1:
        raise ValidationFailed("--max-upload-mb must be at least 1.", field="max_upload_mb")
    if max_state_operations < 1:
        raise ValidationFailed(
            "--max-state-operations must be at least 1.", field="max_state_operations"
        )
    if max_sessions is not None and max_sessions < 1:
        raise ValidationFailed("--max-sessions must be at least 1.", field="max_sessions")
    try:
        config = ServerConfig(
            home=home,
            catalog=catalog,
            blobs=blobs,
            rate_limit=rate,
            tier_rate_limits={
                **{t: RateLimit(n, w) for t, (n, w) in TIER_RATE_LIMITS.items()},
                **(tier_rate_limits or {}),
            },
            download_expires_in=download_expires_in,
            upload_expires_in=upload_expires_in,
            max_upload_bytes=max_upload_mb * 1024 * 1024,
            public_url=public_url,
            max_state_operations=max_state_operations,
            max_sessions=max_sessions,
            tier_session_caps=dict(tier_session_caps or {}),
            accounts=accounts,
            secret_file=secret_file,
            replica_id=replica_id,
            replica_url=(replica_url or f"http://{_url_host(host)}:{port}").rstrip("/"),
            replica_timeout=replica_timeout,
            session_lease_ttl=session_lease_ttl,
        )
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="catalog") from None
    configure_server_logging(log_format)
    app = create_app(config)
    log.info(
        "serving profiles of %s on http://%s:%d (rate limits: %s per address without a "
        "live key; per account by tier: %s)",
        config.home,
        host,
        port,
        rate or "off",
        ", ".join(f"{t} {r or 'off'}" for t, r in config.tier_rate_limits.items()),
    )
    limits = transport or Transport()
    log.info(
        "connections: at most %d at once (and half the open-file limit), %d per client "
        "address; header timeout %g s, keep-alive %d s, read timeout %g s; forwarded "
        "headers believed from %s",
        limits.max_connections,
        limits.max_connections_per_address,
        limits.header_timeout,
        limits.keep_alive,
        limits.read_timeout,
        ", ".join(limits.forwarded_allow_ips) or "no proxy",
    )
    serve_app(
        app,
        host=host,
        port=port,
        transport=limits,
        access_log=False,
        log_level="info",
        log_config=None,
    )


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        import socket

        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def cmd_keys_create(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        key, token = db.create_key(args.account, scopes=args.scope or SCOPES, name=args.name)
    if _as_json(args):
        _out(json.dumps({**key.to_dict(), "key": token}))
        return
    _out(f"created key {key.id} for {key.account_id} (scopes {' '.join(key.scopes)})")
    _out(f"key (shown once; keep it secret): {token}")


def cmd_keys_list(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        keys = db.keys(args.account)
    if _as_json(args):
        _out(json.dumps({"data": [k.to_dict() for k in keys]}))
        return
    for k in keys:
        state = f"revoked {k.revoked_at}" if k.revoked_at else "active"
        _out(f"{k.prefix}  {k.account_id}  {' '.join(k.scopes):<10}  {k.name or '-'}  {state}")


def cmd_keys_revoke(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        key = db.revoke_key(args.key)
    if _as_json(args):
        _out(json.dumps(key.to_dict()))
    else:
        _out(f"revoked key {key.id}")


def cmd_accounts_create(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        account = db.create_account(args.name, tier=args.tier, profile_cap=args.cap)
    if _as_json(args):
        _out(json.dumps(account.to_dict()))
    else:
        _out(f"created account {account.id} ({account.name}, tier {account.tier})")


def cmd_accounts_list(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        rows = db.accounts()
    if _as_json(args):
        _out(json.dumps({"data": [a.to_dict() for a in rows]}))
        return
    for a in rows:
        cap = "no cap" if a.cap is None else f"cap {a.cap}"
        state = "active" if a.active else "deactivated"
        _out(f"{a.id}  {a.name}  {a.tier} ({cap})  {state}")


def cmd_accounts_deactivate(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        account = db.set_active(args.account, args.activate)
    if _as_json(args):
        _out(json.dumps(account.to_dict()))
    else:
        _out(f"{'activated' if account.active else 'deactivated'} account {account.id}")


def cmd_accounts_member(_store: object, args: argparse.Namespace) -> None:
    with _db(args) as db:
        if args.remove:
            db.remove_member(args.account, args.member)
            _out(f"removed {args.member} from {args.account}")
            return
        m = db.add_member(args.account, args.member, args.role)
    _out(f"{m.member_account_id} is now {m.role} of {m.account_id}")


def add_server_commands(sub: Any, command: Command) -> None:
    """Register ``serve``, ``keys`` and ``accounts`` with ``profiles``' ``command`` helper
    (``command(group, name, handler, help, description="", store=...)``)."""
    p = command(
        sub,
        "serve",
        cmd_serve,
        "Serve the profiles of many accounts over HTTP.",
        "Serve the profile API (/v1, OpenAPI at /openapi.json) over HTTP: each account's "
        "profiles in a store of its own under --home (accounts/<id>/), or, with --catalog "
        "and --blobs URL templates holding {account}, in a catalog and a bucket prefix per "
        "account. Create an account and a key first (profiles accounts create, profiles "
        "keys create).",
        store=NO_STORE,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="port (default 8787)")
    p.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=parse_rate_limit("100/900"),
        metavar="N/SECONDS",
        help="requests per client address per window for requests without a live API key "
        "(default 100/900; 'off' for none); requests with a key count against their "
        "account's tier budget (--tier-rate-limit)",
    )
    p.add_argument(
        "--tier-rate-limit",
        type=_tier_rate_limit,
        action="append",
        metavar="TIER=N/SECONDS",
        help="requests per account per window for one tier, repeatable (defaults: "
        + ", ".join(f"{t}={n}/{w:g}" for t, (n, w) in TIER_RATE_LIMITS.items())
        + "; 'off' for none); lease renewals are not counted",
    )
    p.add_argument(
        "--download-expires",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of download links (default 3600)",
    )
    p.add_argument(
        "--upload-expires",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of upload targets from initiate-upload (default 3600)",
    )
    p.add_argument(
        "--max-upload-mb", type=int, default=500, metavar="MB", help="upload cap (default 500)"
    )
    p.add_argument(
        "--max-state-operations",
        type=int,
        default=MAX_STATE_OPERATIONS,
        metavar="N",
        help="uploads, commits and downloads of states one account runs at once (default "
        f"{MAX_STATE_OPERATIONS}); more are answered 429 with Retry-After, so one account's "
        "load leaves the others' alone",
    )
    p.add_argument(
        "--max-sessions",
        type=_positive(int),
        default=None,
        metavar="N",
        help="remote sessions (browsers run for clients, POST /v1/sessions) running at once "
        "on this service (default: one per 512 MiB of memory beyond the first GiB); past "
        "it 429 TierLimit",
    )
    p.add_argument(
        "--tier-session-cap",
        type=_tier_session_cap,
        action="append",
        metavar="TIER=N",
        help="remote sessions one account runs at once, for one tier, repeatable (defaults: "
        + ", ".join(f"{t}={n or 'off'}" for t, n in TIER_SESSION_CAPS.items())
        + "; 'off' for none but the service's)",
    )
    p.add_argument(
        "--public-url",
        default=None,
        metavar="URL",
        help="base URL for the links the server hands out (default: as requested)",
    )
    p.add_argument(
        "--max-connections",
        type=_positive(int),
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help=f"connections open at once, from all clients (default {DEFAULT_MAX_CONNECTIONS}, "
        "and at most half the open-file limit); past it a new connection is answered 503 "
        "and closed at once",
    )
    p.add_argument(
        "--max-connections-per-address",
        type=_positive(int),
        default=DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        metavar="N",
        help="connections open at once from one client address (default "
        f"{DEFAULT_MAX_CONNECTIONS_PER_ADDRESS}; the proxies of --forwarded-allow-ips are "
        "held only to --max-connections); past it a new one is answered 429 and closed",
    )
    p.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="SECONDS",
        help="time a client has to send a request's line and headers, from the "
        "connection's opening or the request's first byte (default "
        f"{DEFAULT_HEADER_TIMEOUT:g}); then the connection is closed",
    )
    p.add_argument(
        "--keep-alive",
        type=_positive(int),
        default=DEFAULT_KEEP_ALIVE,
        metavar="SECONDS",
        help=f"silence allowed between two requests on a connection (default {DEFAULT_KEEP_ALIVE})",
    )
    p.add_argument(
        "--read-timeout",
        type=_positive(float),
        default=DEFAULT_READ_TIMEOUT,
        metavar="SECONDS",
        help="longest silence of a client in the middle of a request body (default "
        f"{DEFAULT_READ_TIMEOUT:g}); then the connection is closed",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        type=_forwarded_allow_ips,
        default=(),
        metavar="ADDRS",
        help="reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed, "
        "as addresses or networks separated by commas (default: none, and the headers are "
        "ignored: the rate limit counts the connection's own address; '*' believes every "
        "peer, only behind a proxy that always overwrites them)",
    )
    _accounts_option(p)
    p.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="the signing secret of download links, upload targets and lease tokens (at "
        "least 32 bytes; default $" + SECRET_FILE_ENV + ", else server-secret in the "
        "home, made on first start); every replica of a service needs the same one, since "
        "whichever replica gets a request checks it",
    )
    p.add_argument(
        "--replica-url",
        default=None,
        metavar="URL",
        help="how the other replicas of the service reach this one, to forward the requests "
        "of the sessions it runs (default http://HOST:PORT)",
    )
    p.add_argument(
        "--replica-id",
        default=None,
        metavar="ID",
        help="this replica's name in the shared session registry (default: a new one at "
        "every start)",
    )
    p.add_argument(
        "--replica-timeout",
        type=_positive(float),
        default=REPLICA_TIMEOUT,
        metavar="SECONDS",
        help="a replica whose heartbeat (every third of this) is older is gone: its "
        f"sessions are shown failed (default {REPLICA_TIMEOUT:g})",
    )
    p.add_argument(
        "--session-lease-ttl",
        type=_positive(float),
        default=DEFAULT_LEASE_TTL,
        metavar="SECONDS",
        help="the writer lease's time to live of a remote session, renewed every third of "
        "it: how long its profile stays busy after the replica running it died (default "
        f"{DEFAULT_LEASE_TTL:g})",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="the server's log on stderr, access log included: text lines or one JSON "
        "object a line (default text)",
    )

    p = command(sub, "keys", None, "Create, list and revoke API keys of the server.")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    k = command(keys, "create", cmd_keys_create, "Create an API key (shown once).", store=NO_STORE)
    k.add_argument(
        "--account", required=True, metavar="ACCOUNT_ID", help="the account the key acts for"
    )
    k.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="read and/or admin (repeatable; default both)",
    )
    k.add_argument("--name", default=None, help="a label for the key")
    _accounts_option(k)
    k = command(keys, "list", cmd_keys_list, "List API keys (never their secrets).", store=NO_STORE)
    k.add_argument("--account", default=None, metavar="ACCOUNT_ID", help="only this account's")
    _accounts_option(k)
    k = command(keys, "revoke", cmd_keys_revoke, "Revoke an API key.", store=NO_STORE)
    k.add_argument("key", metavar="KEY_ID", help="the key id (or the key's pk_<id>_ prefix)")
    _accounts_option(k)

    p = command(sub, "accounts", None, "Create, list and deactivate accounts of the server.")
    accts = p.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    a = command(accts, "create", cmd_accounts_create, "Create an account.", store=NO_STORE)
    a.add_argument("name", metavar="NAME", help="a name for people")
    a.add_argument(
        "--tier", default="team", choices=list(TIER_CAPS), help="its profile cap (team: 50)"
    )
    a.add_argument("--cap", type=int, default=None, help="a profile cap of its own")
    _accounts_option(a)
    a = command(accts, "list", cmd_accounts_list, "List accounts.", store=NO_STORE)
    _accounts_option(a)
    a = command(
        accts, "deactivate", cmd_accounts_deactivate, "Deactivate an account.", store=NO_STORE
    )
    a.add_argument("account", metavar="ACCOUNT_ID", help="the account")
    a.set_defaults(activate=False)
    _accounts_option(a)
    a = command(accts, "activate", cmd_accounts_deactivate, "Activate it again.", store=NO_STORE)
    a.add_argument("account", metavar="ACCOUNT_ID", help="the account")
    a.set_defaults(activate=True)
    _accounts_option(a)
    a = command(
        accts,
        "member",
        cmd_accounts_member,
        "Let another account's keys act on this one (X-Account).",
        store=NO_STORE,
    )
    a.add_argument("account", metavar="ACCOUNT_ID", help="the account acted on")
    a.add_argument("member", metavar="MEMBER_ACCOUNT_ID", help="the account whose keys act")
    a.add_argument(
        "--role",
        choices=("member", "admin"),
        default="member",
        help="member reads, admin reads and writes (member)",
    )
    a.add_argument("--remove", action="store_true", help="end the membership")
    _accounts_option(a)


def _standalone_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="profiles-server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Any,
        name: str,
        handler: Any,
        help: str,
        description: str = "",
        store: str = NO_STORE,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, help=help, description=description or help
        )
        p.add_argument("--home", default=None, metavar="PATH")
        p.add_argument("--json", action="store_true")
        if name == "serve":
            p.add_argument("--catalog", default=None, metavar="URL")
            p.add_argument("--blobs", default=None, metavar="URL")
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    add_server_commands(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _standalone_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.handler(None, args)
    except ProfileError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
