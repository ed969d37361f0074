"""``profiles sessions start|list|show|stop``: browsers run by a profile service
(``profiles serve``) on its own machine, bound to a profile, reached over CDP.

They need a store on a service: ``$PROFILES_URL`` and ``$PROFILES_API_KEY``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from profiles.cli.common import REF_HELP, command
from profiles.cli.output import _emit, _json, _out, _table, _when

if TYPE_CHECKING:
    from profiles.http.session_client import RemoteSessionsClient
    from profiles.http.session_schemas import SessionRecord
    from profiles.store import ProfileStore

__all__ = ["add_commands"]

SESSION_HEADERS = ("id", "profile", "status", "readonly", "started", "finished", "outcome")
STATUSES = ("starting", "running", "stopping", "stopped", "failed")


def _client(store: ProfileStore) -> RemoteSessionsClient:
    from profiles.http.session_client import RemoteSessionsClient

    return RemoteSessionsClient.of(store)


def _time(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        return _when(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return value


def _session_rows(records: Iterable[SessionRecord]) -> Iterator[list[object]]:
    for r in records:
        outcome = "-"
        if r.outcome is not None:
            outcome = "committed" if r.outcome.committed else r.outcome.outcome
        yield [
            r.id,
            r.profile_name or r.profile_id or "(ephemeral)",
            r.status,
            "yes" if r.readonly else "no",
            _time(r.started_at),
            _time(r.finished_at),
            outcome,
        ]


def _screen(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x800; got {text!r}")
    return int(width), int(height)


def cmd_sessions_start(store: ProfileStore, args: argparse.Namespace) -> None:
    record = _client(store).start(
        args.ref,
        start_url=args.start_url,
        screen=args.screen,
        proxy=args.proxy,
        readonly=args.readonly,
        idle_timeout=args.idle_timeout,
        max_duration=args.max_duration,
        keep_alive=args.keep_alive,
        lock_timeout=args.lock_timeout,
    )
    if args.json:
        _json(record)
        return
    _out(f"started {record.id} on {record.profile_name or '(an ephemeral browser)'}")
    _out(f"connect_url: {record.connect_url}")
    _out(
        "connect with chromium.connect_over_cdp(connect_url, headers={'Authorization': "
        "'Bearer <key>'}); stop with 'profiles sessions stop " + record.id + "'"
    )


def cmd_sessions_list(store: ProfileStore, args: argparse.Namespace) -> None:
    client = _client(store)
    page = client.list(
        status=args.status, profile=args.profile, limit=args.limit, cursor=args.cursor
    )
    records = list(page.data)
    while args.all and page.has_more and page.next_cursor is not None:
        page = client.list(
            status=args.status, profile=args.profile, limit=args.limit, cursor=page.next_cursor
        )
        records.extend(page.data)
    if args.json:
        more = page.has_more and not args.all
        _json(
            {
                "data": [r.model_dump(mode="json") for r in records],
                "has_more": more,
                "next_cursor": page.next_cursor if more else None,
            }
        )
        return
    _table(SESSION_HEADERS, _session_rows(records), "(no sessions)")
    if page.has_more and not args.all:
        _out(f"more: --cursor {page.next_cursor}")


def cmd_sessions_show(store: ProfileStore, args: argparse.Namespace) -> None:
    _emit(args, _client(store).get(args.id))


def cmd_sessions_stop(store: ProfileStore, args: argparse.Namespace) -> None:
    record = _client(store).stop(args.id)
    if args.json:
        _json(record)
        return
    outcome = record.outcome
    if outcome is None:
        _out(f"{record.id}: {record.status}")
    elif record.readonly or record.ephemeral:
        _out(f"{record.id}: {record.status} (nothing to commit)")
    elif outcome.committed:
        _out(f"{record.id}: {record.status}, state committed")
    else:
        why = outcome.error or outcome.reason or outcome.outcome
        _out(f"{record.id}: {record.status}, state NOT committed ({why})")


def add_commands(sub: Any) -> None:
    """Add ``sessions`` and its actions to ``sub``, the ``profiles`` subparsers."""
    group = command(
        sub,
        "sessions",
        None,
        "Browsers run by a profile service, bound to a profile ($PROFILES_URL).",
        "Browsers run by a profile service (profiles serve) on its own machine, bound to a "
        "profile and reached over CDP. Needs $PROFILES_URL and $PROFILES_API_KEY.",
    )
    actions = group.add_subparsers(dest="sessions_command", required=True, metavar="ACTION")

    p = command(actions, "start", cmd_sessions_start, "Start a session on the service.")
    p.add_argument("ref", metavar="REF", nargs="?", help=REF_HELP + " (none: an ephemeral browser)")
    p.add_argument("--start-url", metavar="URL", help="open this page first")
    p.add_argument("--screen", metavar="WxH", type=_screen, help="the viewport, e.g. 1280x800")
    p.add_argument("--proxy", metavar="URL", help="a proxy, scheme://[user:pass@]host:port")
    p.add_argument("--readonly", action="store_true", help="a private copy: nothing is committed")
    p.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=float,
        help="stop and commit after this long with no client connected (300)",
    )
    p.add_argument(
        "--max-duration", metavar="SECONDS", type=float, help="stop and commit after this long"
    )
    p.add_argument(
        "--no-keep-alive",
        dest="keep_alive",
        action="store_false",
        help="stop and commit as soon as the last client disconnects",
    )
    p.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=float,
        help="how long to wait for another writer session of the profile (10)",
    )

    p = command(actions, "list", cmd_sessions_list, "List the account's sessions, newest first.")
    p.add_argument("--status", choices=STATUSES, help="only sessions in this status")
    p.add_argument("--profile", metavar="REF", help="only this profile's")
    p.add_argument(
        "--limit", metavar="N", type=int, default=50, help="records per page, 1 to 100 (50)"
    )
    p.add_argument("--cursor", metavar="C", help="the next_cursor of the previous page")
    p.add_argument("--all", action="store_true", help="walk every page")

    p = command(actions, "show", cmd_sessions_show, "Show one session.")
    p.add_argument("id", metavar="ID", help="session id (sess_...)")

    p = command(actions, "stop", cmd_sessions_stop, "Stop a session: its state is committed.")
    p.add_argument("id", metavar="ID", help="session id (sess_...)")
