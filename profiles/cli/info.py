"""``profiles audit``, ``archetypes``, ``ps``: what there is to know without changing
anything (the audit log, what a profile can be pinned to, who holds which profile now and
which commits wait on this machine)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from profiles.archetypes import all_archetypes
from profiles.cli.common import NO_STORE, _page_options, command
from profiles.cli.output import _err, _held_for, _json, _listing, _out, _short, _table, _when
from profiles.errors import NotFound
from profiles.models import AuditEvent
from profiles.state.rules import ENGINES
from profiles.store import ProfileStore
from profiles.workspace.pending import PendingInfo

__all__ = ["add_commands"]


EVENT_HEADERS = ("at", "type", "name", "profile", "details")
DELETED = "(deleted)"


def _event_rows(
    events: Iterable[AuditEvent], names: dict[str, str] | None = None
) -> Iterator[list[object]]:
    for e in events:
        details = ", ".join(
            f"{k}={_short(v, 24)}" for k, v in sorted(e.payload.items()) if v is not None
        )
        name = (names or {}).get(e.profile_id, "-") if e.profile_id else "-"
        yield [_when(e.at), e.type, name, e.profile_id or "-", details or "-"]


def _profile_names(store: ProfileStore, events: Sequence[AuditEvent]) -> dict[str, str]:
    """The name of each profile the events are about: its current one, or for a deleted
    profile the name its profile.deleted (or profile.created) event recorded."""
    names: dict[str, str] = {}
    for e in events:
        if e.profile_id is None or e.profile_id in names:
            continue
        try:
            names[e.profile_id] = store.get(e.profile_id).name
            continue
        except NotFound:
            pass
        recorded = next(
            (
                str(x.payload["name"])
                for x in events
                if x.profile_id == e.profile_id
                and x.type in ("profile.deleted", "profile.created")
                and x.payload.get("name")
            ),
            None,
        )
        if recorded is None:  # its profile.deleted event is its newest: look it up
            newest = store.audit(profile=e.profile_id, limit=1).data
            if newest and newest[0].type == "profile.deleted" and newest[0].payload.get("name"):
                recorded = str(newest[0].payload["name"])
        names[e.profile_id] = f"{recorded} {DELETED}" if recorded else DELETED
    return names


def cmd_audit(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.audit(profile=args.profile, limit=args.limit, cursor=cursor),
        EVENT_HEADERS,
        lambda events: _event_rows(events, _profile_names(store, events)),
        "(no events)",
    )


def cmd_archetypes(store: ProfileStore | None, args: argparse.Namespace) -> None:
    found = [a for a in all_archetypes().values() if args.engine in (None, a.engine)]
    if args.json:
        _json(
            {
                "data": [a.model_dump(mode="json") for a in found],
                "has_more": False,
                "next_cursor": None,
            }
        )
        return
    _table(
        ("name", "engine", "device", "viewport", "mobile"),
        (
            [
                a.name,
                a.engine,
                a.device,
                f"{a.viewport.width}x{a.viewport.height}",
                "yes" if a.is_mobile else "no",
            ]
            for a in found
        ),
        "(no archetypes)",
    )


PS_HEADERS = ("name", "id", "kind", "host", "pid", "since", "for")
PENDING_HEADERS = ("name", "id", "status", "kept", "why")


def cmd_ps(store: ProfileStore, args: argparse.Namespace) -> None:
    found = store.activity()
    pending = store.pending_commits()
    if args.json:
        _json(
            {
                "data": [a.model_dump(mode="json") for a in found],
                "has_more": False,
                "next_cursor": None,
                "pending": [p.model_dump(mode="json") for p in pending],
            }
        )
        return
    _table(
        PS_HEADERS,
        (
            [
                a.profile_name,
                a.profile_id,
                a.kind,
                a.host,
                a.pid,
                _when(a.since),
                _held_for(a.since),
            ]
            for a in found
        ),
        "(no profile is in use)",
    )
    if pending:
        _out()
        _out("pending commits (kept on this machine while the service was unreachable):")
        _table(
            PENDING_HEADERS,
            (
                [p.profile_name, p.profile_id, p.status, _when(p.kept_at), p.reason or "-"]
                for p in pending
            ),
            "",
        )
        _pending_hints(pending)


def _pending_hints(pending: Sequence[PendingInfo]) -> None:
    """What to run for each pending commit that needs a person (on stderr)."""
    for p in pending:
        if p.status == "conflict":
            _err(
                f"{p.profile_name}: the profile was committed since; run 'profiles sync "
                f"{p.profile_id} --force' to commit this state over it, or '--discard'"
            )
        elif p.status == "deleted":
            _err(
                f"{p.profile_id}: the profile was deleted; 'profiles sync {p.profile_id} "
                f"--discard' deletes the state kept in {p.state_dir}"
            )
        elif p.status in ("waiting", "unknown"):
            _err(f"{p.profile_name}: 'profiles sync' commits it once the service is back")


def add_commands(sub: Any) -> None:
    """Add this group's commands to ``sub``, the ``profiles`` subparsers."""
    p = command(sub, "audit", cmd_audit, "Show the audit log, newest first.")
    p.add_argument(
        "--profile", metavar="REF", help="only this profile's events (a deleted one by id)"
    )
    _page_options(p)

    p = command(
        sub,
        "archetypes",
        cmd_archetypes,
        "List the archetypes a profile can be pinned to.",
        store=NO_STORE,
    )
    p.add_argument("--engine", choices=ENGINES, help="only this engine's")

    command(
        sub,
        "ps",
        cmd_ps,
        "List the profiles in use right now: sessions, imports, read-only sessions.",
        "List the profiles in use right now on this machine: writer sessions, imports and\n"
        "read-only sessions, with who holds each (host, pid) and since when, oldest first.",
    )
