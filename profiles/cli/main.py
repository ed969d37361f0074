"""The ``profiles`` command: the ProfileStore (and browser sessions) from a shell.

Thin on purpose: it parses, calls :class:`~profiles.store.ProfileStore` (or
:class:`driver.Session` for ``open``) and prints. Tables by default; ``--json`` (accepted
before or after the command) prints one JSON document on stdout instead: a record as
``model_dump(mode="json")``, a listing as ``{"data": [...], "has_more": ..., "next_cursor": ...}``.

Errors go to stderr as ``error: <message>``; with ``--json`` as one line
``{"error": {"code": ..., "status": ..., "message": ..., ...}}`` (the last line of stderr,
after any log lines), and nothing is printed on stdout.

Exit codes:

===  ===================================================================================
0    success
1    any other ProfileError (StateCommitFailed, ...), a file error, deletion declined
2    ValidationFailed (and ArchiveInvalid, NoStateData), command-line usage errors
3    NotFound
4    Conflict (and ProfileBusy, BrowserDowngrade, PendingConflict)
5    TierLimit
6    BrowserNotFound
7    StorageUnavailable (a full disk, a read-only or missing home, an I/O error)
130  interrupted (Ctrl-C) outside ``profiles open``
141  stdout closed early (``profiles list | head``)
===  ===================================================================================

``profiles open`` ends with Ctrl-C (or SIGTERM), or, headed, when the browser window is
closed, and exits 0 once the state is committed. A headless browser that exits on its own
(a crash) is not committed, and ``open`` says so and exits 1 (StateCommitFailed).

Commands that only read (and those that change an existing profile) never create a store:
when the home has none they fail with NotFound naming the home and where it came from.
Nothing read from the store or an archive reaches the terminal raw: control characters
and bidi overrides are shown escaped (``\\x1b``) in tables, and as JSON escapes in JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn, TextIO

from pydantic import BaseModel

from profiles.archetypes import all_archetypes
from profiles.cli.output import (
    UsageError,
    _dumps,
    _err,
    _fail,
    _json,
    _out,
    _short,
    _size,
    _table,
    _when,
    visible,
)
from profiles.connect import blobs_url_from_env, catalog_url_from_env, redact_url_password
from profiles.errors import (
    BrowserNotFound,
    Conflict,
    NotFound,
    PendingConflict,
    ProfileBusy,
    ProfileError,
    StateCorrupt,
    StorageUnavailable,
    TierLimit,
    ValidationFailed,
)
from profiles.maintenance.transfer import transfer
from profiles.models import AuditEvent, Page, Profile, Snapshot
from profiles.state.rules import ENGINES
from profiles.store import UNSET, ProfileStore, Unset, default_home
from profiles.workspace.pending import PendingInfo

__all__ = [
    "CLI_WORDING",
    "EXIT_CODES",
    "UsageError",
    "build_parser",
    "cli_message",
    "exit_code",
    "main",
]

log = logging.getLogger("profiles.cli")

#: The exit code of each error class; the first match (most specific first) wins.
EXIT_CODES: tuple[tuple[type[ProfileError], int], ...] = (
    (ValidationFailed, 2),
    (NotFound, 3),
    (Conflict, 4),
    (TierLimit, 5),
    (BrowserNotFound, 6),
    (StorageUnavailable, 7),
    (ProfileError, 1),
)
EXIT_USAGE = 2
EXIT_DECLINED = 1
EXIT_OS_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
PROGRESS_MIN_BYTES = 1024 * 1024
PACKAGE = "playwright-profiles"
CATALOG_FILE = "catalog.sqlite3"  # what makes a directory a store (ProfileStore's default)

#: The library's messages name Python parameters; the CLI's name its flags. Each pair is
#: (what the library says, what the CLI says instead), applied in order to the message of
#: every ProfileError the CLI prints (see :func:`cli_message`). Phrases, not bare words, so
#: that a profile name quoted in a message is never rewritten.
CLI_WORDING: tuple[tuple[str, str], ...] = (
    (
        "raise lock_timeout, or open it with readonly=True",
        "raise --lock-timeout, or use --readonly",
    ),
    ("open it with readonly=True", "use --readonly"),
    ("raise lock_timeout", "raise --lock-timeout"),
    ("raise max_profiles", "raise --max-profiles"),
    ("max_profiles must", "--max-profiles must"),
    ("clone without with_state", "clone without --with-state"),
    ("Pass a name explicitly", "Pass --name"),
    (
        "or pass allow_downgrade=True",
        "or, knowing the risk, open it from Python with allow_downgrade=True",
    ),
    ("; archetype=", "; --archetype "),
    ("a profile the session creates", "a profile that 'profiles open' creates"),
)


class Declined(Exception):
    """The user answered no at a confirmation prompt: exit code 1."""


def exit_code(error: ProfileError) -> int:
    """The exit code for a :class:`ProfileError` (see the module docstring)."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def cli_message(message: str) -> str:
    """A library message in the CLI's words: Python parameters become flags (CLI_WORDING)."""
    for python, flag in CLI_WORDING:
        message = message.replace(python, flag)
    return message


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    """``1 domain``, ``2 domains``, ``0 working copies`` (with ``plural`` given)."""
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _duration(seconds: float) -> str:
    """How long, for people: ``42s``, ``3m 05s``, ``2h 03m``, ``3d 04h``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def _show(record: BaseModel, extra: dict[str, str] | None = None) -> None:
    """One record as ``key  value`` lines (labels, lists and sizes made readable), then
    the ``extra`` lines; control characters in values are shown escaped."""
    data = {**record.model_dump(mode="json"), **(extra or {})}
    width = max(len(k) for k in data)
    for key, value in data.items():
        if key == "blob_size" and value is not None:
            text = f"{value} ({_size(value)})"
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value) or "-"
        else:
            text = "-" if value is None else str(value)
        _out(f"{key.ljust(width)}  {visible(text)}")


def _emit(args: argparse.Namespace, record: BaseModel) -> None:
    _json(record) if args.json else _show(record)


PROFILE_HEADERS = ("name", "id", "archetype", "status", "size", "usage", "last used")


def _profile_rows(profiles: Iterable[Profile]) -> Iterator[list[object]]:
    for p in profiles:
        yield [
            p.name,
            p.id,
            p.archetype,
            p.status,
            _size(p.blob_size),
            p.usage_count,
            _when(p.last_used_at),
        ]


SNAPSHOT_HEADERS = ("id", "parent", "label", "archetype", "size", "captured")


def _snapshot_rows(snaps: Iterable[Snapshot]) -> Iterator[list[object]]:
    for s in snaps:
        yield [
            s.id,
            s.parent_name,
            s.label or "-",
            s.parent_archetype,
            _size(s.blob_size),
            _when(s.captured_at),
        ]


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


PS_HEADERS = ("name", "id", "kind", "host", "pid", "since", "for")
PENDING_HEADERS = ("name", "id", "status", "kept", "why")


def _held_for(since: datetime) -> str:
    return _duration((datetime.now(UTC) - since).total_seconds())


def _describe_holder(holder: Any) -> str:
    """``session, pid 4242 on build-7, since 2026-05-09 22:00:00Z (for 3m 05s)``."""
    return (
        f"{holder.kind}, pid {holder.pid} on {holder.host}, since {_when(holder.since)} "
        f"(for {_held_for(holder.since)})"
    )


def _listing(
    args: argparse.Namespace,
    fetch: Callable[[str | None], Page[Any]],
    headers: Sequence[str],
    rows: Callable[[list[Any]], Iterable[Sequence[object]]],
    empty: str,
) -> None:
    """One page of a listing (every page with ``--all``), then the next-page hint."""
    page = fetch(args.cursor)
    data = list(page.data)
    while args.all and page.has_more:
        page = fetch(page.next_cursor)
        data.extend(page.data)
    if args.json:
        _json(
            {
                "data": [r.model_dump(mode="json") for r in data],
                "has_more": page.has_more,
                "next_cursor": page.next_cursor,
            }
        )
        return
    _table(headers, rows(data), empty)
    if page.has_more:
        _err(f"more: add --cursor {page.next_cursor} for the next page, or --all for every page")


class _Progress:
    """A byte progress bar on ``stream``: only on a terminal, and only past 1 MiB."""

    def __init__(self, total: int | None, verb: str, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total or 0
        self.verb = verb
        self.enabled = self.total > PROGRESS_MIN_BYTES and self.stream.isatty()
        self._shown = -1

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        percent = min(100, done * 100 // self.total)
        if percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            self.stream.write(f"\r{self.verb} [{bar:<25}] {percent:3d}% {_size(done)}")
            self.stream.flush()

    def finish(self) -> None:
        if self._shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------- parsing


def _label(text: str) -> tuple[str, str]:
    """argparse type of ``--label``: ``KEY=VALUE`` (the value may be empty)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def byte_size(text: str) -> int:
    """argparse type of ``--max-size``: bytes, or a number with K, M, G or T (powers of
    1024, an optional ``B`` / ``iB`` after it): ``500M``, ``2G``, ``1.5GiB``, ``0``."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 500M, 2G or a number of bytes, got {text!r}"
        )
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting, so that
    :func:`main` reports it (as JSON with ``--json``) and returns 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage(), prog=self.prog)


# ------------------------------------------------------------------------------- commands


def cmd_create(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.create(
        args.name,
        archetype=args.archetype,
        description=args.description,
        labels=dict(args.label) if args.label else None,
    )
    _emit(args, profile)


def cmd_list(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.list(limit=args.limit, cursor=cursor),
        PROFILE_HEADERS,
        _profile_rows,
        "(no profiles)",
    )


def cmd_show(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.get(args.ref)
    if args.json:  # the record as it is; 'profiles ps --json' says who holds what
        _json(profile)
        return
    extra: dict[str, str] = {}
    holder = store.holder(profile)
    extra["held by"] = "-" if holder is None else _describe_holder(holder)
    _show(profile, extra)


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


def cmd_sync(store: ProfileStore, args: argparse.Namespace) -> None:
    if (args.force or args.discard) and len(args.refs) != 1:
        raise ValidationFailed(
            "Name exactly one profile with --force or --discard (profiles sync REF --force).",
            field="ref",
        )
    refs: list[str | None] = list(args.refs) or [None]
    results: list[tuple[PendingInfo, str]] = []
    for ref in refs:
        results += store.sync_pending(
            ref, force=args.force, discard=args.discard, lock_timeout=args.lock_timeout
        )
    if args.json:
        _json(
            {
                "data": [
                    {**info.model_dump(mode="json"), "outcome": outcome}
                    for info, outcome in results
                ]
            }
        )
    else:
        for info, outcome in results:
            _out(f"{outcome} {info.profile_name} ({info.profile_id})")
        if not results:
            _out("no pending commit on this machine")
    left = [(info, outcome) for info, outcome in results if outcome not in ("landed", "discarded")]
    if not left:
        return
    if not args.json:
        _pending_hints(
            [
                i.model_copy(update={"status": "unknown"}) if o == "unreachable" else i
                for i, o in left
            ]
        )
    outcomes = {outcome for _, outcome in left}
    names = ", ".join(info.profile_name for info, _ in left)
    if "unreachable" in outcomes:
        raise StorageUnavailable(
            f"The store's service at {store.location} is still unreachable; the pending "
            f"commits of {names} stay on this machine. Run 'profiles sync' again later.",
            home=store.location,
            cause="unreachable",
        )
    if outcomes & {"conflict", "busy"}:
        raise PendingConflict(
            f"Not committed: {names} (a conflict, or a session holds the profile). Nothing "
            "was overwritten; see above for what to run.",
            profiles=[info.profile_id for info, _ in left],
        )
    raise NotFound(
        f"The profiles of the pending commits of {names} were deleted; discard them with "
        "'profiles sync ID --discard'.",
        resource="profile",
    )


def cmd_update(store: ProfileStore, args: argparse.Namespace) -> None:
    adding: dict[str, str] = dict(args.label or ())
    removing: list[str] = list(args.remove_label or ())
    if not any(
        (
            args.name is not None,
            args.description is not None,
            args.clear_description,
            adding,
            removing,
            args.clear_labels,
            args.archetype is not None,
        )
    ):
        raise UsageError(
            "Nothing to change: pass --name, --description, --clear-description, --label, "
            "--remove-label or --clear-labels."
        )
    both = sorted(set(adding) & set(removing))
    if both:
        raise UsageError(f"--label and --remove-label both name {', '.join(both)}: which one?")
    description: str | Unset | None = UNSET
    if args.clear_description:
        description = None
    elif args.description is not None:
        description = args.description
    changes: dict[str, Any] = {}
    if args.clear_labels:
        changes["labels"] = adding  # --clear-labels --label k=v: exactly these
    elif adding or removing:
        # merged with the labels there are inside the store's transaction
        changes.update(add_labels=adding, remove_labels=removing)
    profile = store.update(
        args.ref,
        name=args.name if args.name is not None else UNSET,
        description=description,
        archetype=args.archetype if args.archetype is not None else UNSET,
        **changes,
    )
    _emit(args, profile)


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_delete(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.get(args.ref)
    holder = store.holder(profile)
    in_use = (
        ""
        if holder is None
        else f"{profile.name!r} is in use right now: {_describe_holder(holder)}. Deleting it "
        "loses what that session has not saved yet, and its save will fail."
    )
    if args.yes:
        if in_use:
            _err(f"warning: {in_use} Deleting it anyway (--yes).")
    else:
        if not sys.stdin.isatty():
            raise UsageError(
                f"Not deleting {profile.name!r}: stdin is not a terminal, so there is no one "
                f"to confirm. {in_use + ' ' if in_use else ''}Pass --yes to delete without "
                "asking."
            )
        if in_use:
            _err(f"warning: {in_use}")
        question = f"Delete profile {profile.name!r} ({profile.id}) and its state?"
        if not _confirm(question):
            raise Declined(f"Not deleted: {profile.name!r} is unchanged.")
    store.delete(profile.id)
    if args.json:
        _json({"deleted": profile.id, "name": profile.name})
    else:
        _out(f"deleted {profile.name} ({profile.id})")


def cmd_clone(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.clone(
        args.ref, name=args.name, with_state=args.with_state, archetype=args.archetype
    )
    _emit(args, profile)


def cmd_snapshot_create(store: ProfileStore, args: argparse.Namespace) -> None:
    _emit(args, store.snapshot(args.ref, label=args.label, description=args.description))


def cmd_snapshot_list(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.snapshots(args.ref, limit=args.limit, cursor=cursor),
        SNAPSHOT_HEADERS,
        _snapshot_rows,
        "(no snapshots)",
    )


def cmd_snapshot_show(store: ProfileStore, args: argparse.Namespace) -> None:
    _emit(args, store.get_snapshot(args.id))


def cmd_snapshot_delete(store: ProfileStore, args: argparse.Namespace) -> None:
    store.delete_snapshot(args.id)
    _json({"deleted": args.id}) if args.json else _out(f"deleted {args.id}")


def cmd_snapshot_restore(store: ProfileStore, args: argparse.Namespace) -> None:
    _emit(args, store.restore(args.id, name=args.name))


def cmd_audit(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.audit(profile=args.profile, limit=args.limit, cursor=cursor),
        EVENT_HEADERS,
        lambda events: _event_rows(events, _profile_names(store, events)),
        "(no events)",
    )


def cmd_cache_prune(store: ProfileStore, args: argparse.Namespace) -> None:
    result = store.prune_cache(args.max_size)
    if args.json:
        _json(
            {
                "removed": list(result.removed),
                "freed_bytes": result.freed_bytes,
                "kept_bytes": result.kept_bytes,
            }
        )
        return
    copies = _plural(len(result.removed), "working copy", "working copies")
    _out(f"removed {copies}, freed {_size(result.freed_bytes)}; {_size(result.kept_bytes)} kept")


def cmd_transfer(store: ProfileStore, args: argparse.Namespace) -> None:
    if not (args.to_catalog or args.to_blobs or args.to_home):
        raise UsageError("say where to: --to-catalog URL --to-blobs URL, or --to-home PATH")
    if bool(args.to_catalog) != bool(args.to_blobs):
        raise UsageError("--to-catalog and --to-blobs go together (a catalog and its bytes)")
    target_home = Path(args.to_home).expanduser() if args.to_home else _home(args)[0]
    with ProfileStore(
        target_home, catalog=args.to_catalog or None, blobs=args.to_blobs or None
    ) as target:
        say = (lambda m: _err(f"transfer: {m}")) if args.verbose else None
        report = transfer(store, target, progress=say)
        where = target.location
    if args.json:
        _json({"target": where, **dataclasses.asdict(report)})
    else:
        _out(
            f"transferred to {where}: "
            f"{_plural(report.blobs_copied, 'state')} ({_size(report.bytes_copied)}), "
            f"{_plural(report.profiles_copied, 'profile')}, "
            f"{_plural(report.snapshots_copied, 'snapshot')}, "
            f"{_plural(report.events_copied, 'event')}; already there: "
            f"{report.blobs_present + report.profiles_present + report.snapshots_present}"
            f" records and states, {report.events_present} events"
        )
    for conflict in report.conflicts:
        _err(f"not transferred: {conflict}")
    if report.conflicts:
        raise Conflict(
            f"{_plural(len(report.conflicts), 'profile')} could not be transferred (names "
            "taken in the target); rename them and run the transfer again.",
            conflicts=report.conflicts,
        )


def cmd_verify(store: ProfileStore, args: argparse.Namespace) -> None:
    problems = store.verify(full=args.full)
    if args.json:
        _json(
            {"ok": not problems, "problems": [{"checksum": c, "problem": p} for c, p in problems]}
        )
    else:
        for checksum, problem in problems:
            _out(f"{checksum}  {problem}")
        _out(
            "every state is intact"
            if not problems
            else f"{_plural(len(problems), 'state')} damaged"
        )
    if problems:
        raise StateCorrupt(
            f"{_plural(len(problems), 'committed state')} cannot be read back; restore the "
            "profiles that use them from snapshots or exports.",
            problems=[c for c, _ in problems],
        )


def cmd_gc(store: ProfileStore, args: argparse.Namespace) -> None:
    freed = store.collect_garbage(min_age=args.min_age)
    if args.json:
        _json({"freed": freed})
    else:
        _out(f"freed {_plural(len(freed), 'unreferenced state')}")


def cmd_migrate(store: ProfileStore, args: argparse.Namespace) -> None:
    profiles = [store.get(ref) for ref in args.refs] if args.refs else list(store.iter_profiles())
    migrated: list[Profile] = []
    busy: list[str] = []
    failed: list[ProfileError] = []
    current = 0
    for profile in profiles:
        try:
            updated = store.migrate(profile.id, lock_timeout=args.lock_timeout)
        except ProfileBusy:
            busy.append(profile.name)
            _err(f"{profile.name}: in use, not migrated")
            continue
        except ProfileError as error:  # a damaged state, say: the others still convert
            failed.append(error)
            _err(f"{profile.name}: not migrated: {cli_message(error.message)}")
            continue
        if updated is None:
            current += 1
            continue
        migrated.append(updated)
        if not args.json:
            _out(f"migrated {updated.name}: {_size(updated.blob_size)}")
    if args.json:
        _json(
            {
                "migrated": [p.model_dump(mode="json") for p in migrated],
                "busy": busy,
                "failed": [error.to_dict() for error in failed],
                "current": current,
            }
        )
    else:
        _out(f"migrated {_plural(len(migrated), 'profile')}; {current} had nothing to convert")
    if failed:
        raise failed[0]
    if busy:
        raise ProfileBusy(
            f"{_plural(len(busy), 'profile')} in use were not migrated "
            f"({', '.join(busy)}): run 'profiles migrate' again once their sessions end, or "
            "raise --lock-timeout.",
            profiles=busy,
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


_ENGINE_MISMATCH = re.compile(r"holds an? (chromium|firefox|webkit) profile")


def _archetype_for(engine: str) -> str:
    """The archetype to suggest for an archive of ``engine``: its desktop one."""
    names = [a.name for a in all_archetypes().values() if a.engine == engine]
    return f"desktop-{engine}" if f"desktop-{engine}" in names else (names or ["?"])[0]


def _import_target(store: ProfileStore, args: argparse.Namespace) -> Profile | None:
    """With ``--create``: the profile to import into, created when missing (returned then,
    so that a failed import can take it back). ``None`` when it already existed."""
    if not args.create:
        if args.archetype is not None:
            raise UsageError("--archetype applies only with --create (to the profile it creates).")
        return None
    try:
        existing = store.get(args.ref)
    except NotFound:
        try:
            return store.create(args.ref, archetype=args.archetype)
        except Conflict:  # created by someone else meanwhile
            existing = store.get(args.ref)
    if args.archetype is not None and args.archetype != existing.archetype:
        raise ValidationFailed(
            f"Profile {existing.name!r} exists and is pinned to {existing.archetype!r}; "
            f"--archetype {args.archetype} applies only to a profile that --create creates.",
            field="archetype",
        )
    return None


def cmd_import(store: ProfileStore, args: argparse.Namespace) -> None:
    source: Path | IO[bytes]
    if args.file == "-":
        if sys.stdin.isatty():
            raise UsageError("FILE is '-' but stdin is a terminal: pipe an archive in.")
        source, total = sys.stdin.buffer, None
    else:
        source = Path(args.file)
        # A file that cannot be read is a file error (exit 1, as docs/cli.md's table says),
        # found before --create makes anything.
        problem = (
            (errno.EISDIR, "it is a directory")
            if source.is_dir()
            else (errno.ENOENT, "no such file")
            if not source.is_file()
            else (errno.EACCES, "permission denied")
            if not os.access(source, os.R_OK)
            else None
        )
        if problem is not None:
            raise OSError(
                problem[0],
                f"Cannot import {source}: {problem[1]}. Check the path, or pass - to read "
                "the archive from stdin.",
            )
        total = source.stat().st_size
    created = _import_target(store, args)
    bar = _Progress(total, "importing")
    try:
        profile = store.import_state(
            created.id if created else args.ref,
            source,
            browser_version=args.browser_version,
            lock_timeout=args.lock_timeout,
            progress=bar,
        )
    except ValidationFailed as error:
        if created is not None:  # take back what --create made: a retry starts clean
            with contextlib.suppress(ProfileError):
                store.delete(created.id)
        mismatch = _ENGINE_MISMATCH.search(error.message)
        if mismatch is None:
            raise
        engine = mismatch.group(1)
        archetype = _archetype_for(engine)
        if created is not None:
            advice = (
                f"{created.name!r} was not kept. Run the import again with --create "
                f"--archetype {archetype} (or another {engine} archetype: profiles archetypes "
                f"--engine {engine})."
            )
        else:
            advice = (
                f"Import it into a new profile: profiles import NEW-NAME FILE --create "
                f"--archetype {archetype}."
            )
        raise ValidationFailed(
            f"{error.message} {advice}",
            **{**error.details, "suggested_archetype": archetype},
        ) from error
    except BaseException:
        if created is not None:
            with contextlib.suppress(ProfileError):
                store.delete(created.id)
        raise
    finally:
        bar.finish()
    if args.json:
        _json(profile)
    else:
        made = "created and " if created else ""
        _out(f"{made}imported {_size(profile.blob_size)} into {profile.name} ({profile.status})")


def cmd_export(store: ProfileStore, args: argparse.Namespace) -> None:
    to_stdout = args.file == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("FILE is '-' but stdout is a terminal: redirect it to a file.")
    profile = store.get(args.ref)
    dest: Path | IO[bytes]
    if to_stdout:
        sys.stdout.flush()
        dest = sys.stdout.buffer
    else:
        dest = Path(args.file)
        if dest.is_dir():
            raise UsageError(
                f"{dest} is a directory: name the file to write, e.g. "
                f"{dest / (profile.name + '.tar.gz')}."
            )
        if not dest.parent.is_dir():
            raise OSError(
                errno.ENOENT,
                f"Cannot write {dest}: the directory {dest.parent} does not exist. "
                "Create it first, or write somewhere else.",
            )
        if dest.exists() and not args.force:
            raise UsageError(f"{dest} exists: pass --force to overwrite it.")
    bar = _Progress(profile.blob_size, "exporting")  # the stored size: close enough
    try:
        written = store.export_state(profile.id, dest, codec=args.codec, progress=bar)
    finally:
        bar.finish()
    if to_stdout:
        sys.stdout.buffer.flush()
        return  # the archive is the output
    if args.json:
        _json({"profile": profile.id, "file": str(dest), "bytes": written, "codec": args.codec})
    else:
        _out(f"exported {profile.name} to {dest} ({_size(written)}, {args.codec})")


def cmd_open(store: ProfileStore, args: argparse.Namespace) -> None:
    from profiles.cli.session import run_open  # imports the driver, so only when asked

    run_open(store, args)


# ------------------------------------------------------------------------------- parser

Handler = Callable[[Any, argparse.Namespace], None]

# What a command needs of the store: none at all, one that exists (it only reads, or changes
# an existing profile: it never creates a store), or one it may create.
NO_STORE, EXISTING, MAY_CREATE = "none", "existing", "may-create"

OPEN_DESCRIPTION = """\
Open a browser on a profile, to log in by hand or to refresh it; saving it when it ends.

The profile is created (with --archetype, default desktop-chromium) if it does not exist,
unless --no-create. Press Ctrl-C in this terminal (or send SIGTERM to this process) to close
the browser and commit its state.
With --headed a window is shown (Linux needs DISPLAY or WAYLAND_DISPLAY: use
'xvfb-run profiles open ...' on a server); closing that window also ends the session and
SAVES the profile. Cookies without an expiry cannot be read from a browser that is already
gone, so to keep session cookies, end with Ctrl-C instead. A headless browser that exits on
its own is a crash: nothing is saved, and open says so (exit 1).
Without --headed the browser runs headless: useful to refresh a profile (visit --url so
cookies renew) and, with --exit, to do that in a script: 'profiles open REF --url URL --exit'
visits and commits right away.
--readonly opens a private copy and saves nothing."""

EPILOG = """\
exit codes: 0 ok; 1 other error (StateCommitFailed, file error, deletion declined);
2 ValidationFailed / usage; 3 NotFound (a profile, a snapshot, the store); 4 Conflict
(ProfileBusy, BrowserDowngrade, PendingConflict); 5 TierLimit; 6 BrowserNotFound;
7 StorageUnavailable; 130 interrupted; 141 stdout closed early."""


def _common_options(parser: argparse.ArgumentParser) -> None:
    """The global options. Their default is SUPPRESS so that, given again after the
    command, they do not reset what was given before it (main's defaults fill the rest)."""
    s = argparse.SUPPRESS
    parser.add_argument(
        "--json", action="store_true", default=s, help="print JSON on stdout instead of a table"
    )
    parser.add_argument(
        "--home",
        metavar="PATH",
        default=s,
        help="the store's home (default: $PROFILES_HOME, else the user data dir)",
    )
    parser.add_argument(
        "--catalog",
        metavar="URL",
        default=s,
        help="a shared catalog, postgresql://user@host/db (default: $PROFILES_CATALOG_URL, "
        "else the home's own)",
    )
    parser.add_argument(
        "--blobs",
        metavar="URL",
        default=s,
        help="shared state storage, s3://bucket/prefix (default: $PROFILES_BLOBS_URL, else "
        "the home's own)",
    )
    parser.add_argument(
        "--max-profiles",
        metavar="N",
        type=int,
        default=s,
        help="refuse to create, clone or restore past N profiles (TierLimit)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=s,
        help="log to stderr (-v info, -vv debug)",
    )


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", metavar="N", type=int, default=50, help="records per page, 1 to 100 (50)"
    )
    parser.add_argument("--cursor", metavar="C", help="the next_cursor of the previous page")
    parser.add_argument("--all", action="store_true", help="walk every page")


def _lock_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=float,
        default=600.0,
        help="how long to wait for another writer of the profile, then ProfileBusy (600)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``profiles`` argument parser (every command; see ``profiles --help``)."""
    parser = _Parser(
        prog="profiles",
        description="Named, persistent browser profiles for Playwright.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common_options(parser)
    parser.add_argument(
        "--version",
        action="store_true",
        help="print the version and the store in use (its home, and whether it exists)",
    )
    parser.set_defaults(
        json=False,
        home=None,
        catalog=None,
        blobs=None,
        max_profiles=None,
        verbose=0,
        store=EXISTING,
    )
    # not required here, so that 'profiles --version' needs no command; main checks it
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        group: Any,
        name: str,
        handler: Handler | None,
        help: str,
        description: str = "",
        store: str = EXISTING,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name,
            help=help,
            description=description or help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_options(p)
        if handler is not None:
            p.set_defaults(handler=handler, store=store)
        return p

    ref_help = "profile id or name"

    p = command(sub, "create", cmd_create, "Create an empty profile.", store=MAY_CREATE)
    p.add_argument(
        "name", metavar="NAME", help="1 to 64 characters, no whitespace; unique in the store"
    )
    p.add_argument(
        "--archetype", metavar="A", help="engine + device for life (default desktop-chromium)"
    )
    p.add_argument("--description", metavar="D", help="free text, up to 2048 characters")
    p.add_argument("--label", metavar="KEY=VALUE", type=_label, action="append", help="repeatable")

    p = command(sub, "list", cmd_list, "List profiles, newest first.")
    _page_options(p)

    p = command(sub, "show", cmd_show, "Show one profile.")
    p.add_argument("ref", metavar="REF", help=ref_help)

    p = command(
        sub,
        "update",
        cmd_update,
        "Rename a profile or change its description or labels.",
        "Rename a profile or change its description or labels; only what is given changes.\n"
        "--label adds or replaces one label, --remove-label removes one; both merge with the\n"
        "labels as they are when the change is written. --clear-labels removes all first.\n"
        "The archetype cannot change: --archetype with another value is refused (clone).",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("--name", metavar="N", help="the new name")
    desc = p.add_mutually_exclusive_group()
    desc.add_argument("--description", metavar="D", help="the new description")
    desc.add_argument("--clear-description", action="store_true", help="remove the description")
    p.add_argument(
        "--label",
        metavar="KEY=VALUE",
        type=_label,
        action="append",
        help="add or replace a label (repeatable)",
    )
    p.add_argument(
        "--remove-label",
        metavar="KEY",
        action="append",
        help="remove a label if it is there (repeatable)",
    )
    p.add_argument("--clear-labels", action="store_true", help="remove every label first")
    p.add_argument(
        "--archetype", metavar="A", help="accepted only if unchanged (archetypes are sticky)"
    )

    p = command(
        sub,
        "delete",
        cmd_delete,
        "Delete a profile and its state (its snapshots stay).",
        "Delete a profile and its state; its snapshots stay restorable.\n"
        "Asks first on a terminal; when stdin is not a terminal, --yes is required.\n"
        "When a session or an import holds the profile, it says who, and since when.",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("-y", "--yes", action="store_true", help="delete without asking")

    p = command(
        sub,
        "clone",
        cmd_clone,
        "Copy a profile's archetype, description and labels (and state with --with-state).",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("--name", metavar="N", help="default: <source>-copy, <source>-copy-2, ...")
    p.add_argument("--with-state", action="store_true", help="share the committed state too")
    p.add_argument("--archetype", metavar="A", help="pin the copy to another archetype")

    snap = command(sub, "snapshot", None, "Immutable point-in-time copies of a profile.")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True, metavar="COMMAND")

    p = command(snap_sub, "create", cmd_snapshot_create, "Capture a profile's committed state.")
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("--label", metavar="L", help="a short tag, up to 128 characters")
    p.add_argument("--description", metavar="D", help="free text, up to 2048 characters")

    p = command(snap_sub, "list", cmd_snapshot_list, "List snapshots, newest first.")
    p.add_argument("ref", metavar="REF", nargs="?", help="only this profile's (default: all)")
    _page_options(p)

    p = command(snap_sub, "show", cmd_snapshot_show, "Show one snapshot.")
    p.add_argument("id", metavar="ID", help="snapshot id (psnap_...)")

    p = command(snap_sub, "delete", cmd_snapshot_delete, "Delete a snapshot.")
    p.add_argument("id", metavar="ID", help="snapshot id (psnap_...)")

    p = command(
        snap_sub,
        "restore",
        cmd_snapshot_restore,
        "Create a new profile from a snapshot (the parent is not touched).",
    )
    p.add_argument("id", metavar="ID", help="snapshot id (psnap_...)")
    p.add_argument("--name", metavar="N", help="default: <parent>-restored, -restored-2, ...")

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

    p = command(
        sub,
        "sync",
        cmd_sync,
        "Commit the sessions' work kept on this machine while the service was unreachable.",
        "A session whose commit cannot reach the store's service (down, unreachable, 5xx,\n"
        "429) keeps its state on this machine as a pending commit ('profiles ps' lists\n"
        "them). This commits them, each under its profile's writer lease, when the profile\n"
        "is still at the state the session started from. When another writer committed the\n"
        "profile meanwhile it is a conflict and stays (exit 4): --force commits it over the\n"
        "newer state (a new commit), --discard deletes it. Nothing is ever dropped or\n"
        "overwritten otherwise. The next session on a profile lands its pending commit too.",
    )
    p.add_argument(
        "refs", nargs="*", metavar="REF", help="profiles to sync (default: every pending one)"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--force",
        action="store_true",
        help="commit a conflicting pending state over the newer one (one REF)",
    )
    how.add_argument(
        "--discard", action="store_true", help="delete the pending state instead (one REF)"
    )
    p.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="how long to wait for a session holding the profile (60)",
    )

    p = command(
        sub,
        "transfer",
        cmd_transfer,
        "Copy the whole store (profiles, snapshots, audit, state) to another backend.",
        "Copy everything this store holds to another backend, keeping ids, names and\n"
        "checksums: state bytes first (each verified against its SHA-256), then the\n"
        "records, then the audit log. What is already there is skipped, so an interrupted\n"
        "transfer resumes when run again. Embedded to shared:\n"
        "  profiles transfer --to-catalog postgresql://... --to-blobs s3://bucket/prefix\n"
        "and back (from a shared store to an embedded home):\n"
        "  profiles --catalog postgresql://... --blobs s3://... transfer --to-home PATH",
    )
    p.add_argument("--to-catalog", metavar="URL", help="the target catalog (postgresql://...)")
    p.add_argument("--to-blobs", metavar="URL", help="the target state storage (s3://...)")
    p.add_argument("--to-home", metavar="PATH", help="the target home (an embedded store)")

    p = command(
        sub,
        "gc",
        cmd_gc,
        "Delete state bytes nothing references (left by crashes) and stale scratch.",
    )
    p.add_argument(
        "--min-age",
        metavar="SECONDS",
        type=float,
        default=3600.0,
        help="keep unreferenced bytes younger than this: a commit may be in flight (3600)",
    )

    p = command(
        sub,
        "migrate",
        cmd_migrate,
        "Convert states stored in an older format to packed chunks now.",
        "States committed before chunking (a whole archive each) or by the first chunked\n"
        "format (a blob per chunk) are read as they are and convert bit by bit at their\n"
        "profiles' next commits; this converts them now, each under its profile's writer\n"
        "lease. The files of a state do not change; its checksum does. Profiles in use\n"
        "are skipped (exit 4) unless --lock-timeout lets the command wait for them.\n"
        "Snapshots keep the format they were taken in.",
    )
    p.add_argument("refs", nargs="*", metavar="REF", help="profiles to convert (default: all)")
    p.add_argument(
        "--lock-timeout",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="how long to wait for a profile in use before skipping it (0)",
    )

    p = command(
        sub,
        "verify",
        cmd_verify,
        "Check that every committed state (and each of its chunks) is there and intact.",
    )
    p.add_argument(
        "--full", action="store_true", help="read and hash every byte, not only check presence"
    )

    from profiles.http.server.cli import add_server_commands  # serve, keys, accounts

    add_server_commands(sub, command)

    cache = command(sub, "cache", None, "The working copies kept to start sessions fast.")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    p = command(
        cache_sub,
        "prune",
        cmd_cache_prune,
        "Remove least recently used working copies (they are unpacked again when needed).",
        "Remove the least recently used working copies until they take at most --max-size\n"
        "(default: the store's cap). Copies in use stay. A removed copy is unpacked again\n"
        "from the committed state by the next session on its profile; nothing is lost.",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        type=byte_size,
        help="bytes, or with K, M, G (powers of 1024): 500M, 2G; 0 removes every unused copy",
    )

    p = command(
        sub,
        "import",
        cmd_import,
        "Replace a profile's state with a .tar.gz or .tar.zst archive.",
        "Replace a profile's state with a .tar.gz or .tar.zst archive of a browser\n"
        "user-data-dir of the profile's engine. FILE '-' reads stdin. With --create a\n"
        "missing profile is created first (with --archetype, default desktop-chromium), so\n"
        "'profiles export REF - | ssh host profiles import REF - --create' works on a new host.",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("file", metavar="FILE", help="the archive, or - for stdin")
    p.add_argument(
        "--create", action="store_true", help="create the profile (and store) if missing"
    )
    p.add_argument(
        "--archetype",
        metavar="A",
        help="with --create: for the profile created (default desktop-chromium)",
    )
    p.add_argument(
        "--browser-version", metavar="V", help="the browser version that wrote the state"
    )
    _lock_timeout_option(p)

    p = command(
        sub,
        "export",
        cmd_export,
        "Write a profile's state as a .tar.gz (or .tar.zst) archive.",
        "Write a profile's committed state as a .tar.gz (or .tar.zst) archive.\n"
        "FILE '-' writes the archive to stdout (and nothing else). An existing FILE is\n"
        "not overwritten without --force.",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("file", metavar="FILE", help="where to write, or - for stdout")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.add_argument("--codec", choices=("gzip", "zstd"), default="gzip", help="compression (gzip)")

    p = command(
        sub,
        "open",
        cmd_open,
        "Open a browser on a profile (log in by hand, refresh it); Ctrl-C or closing "
        "the window saves.",
        OPEN_DESCRIPTION,
        store=MAY_CREATE,
    )
    p.add_argument("ref", metavar="REF", help="profile id or name (created if missing)")
    p.add_argument("--url", metavar="URL", help="the page to open")
    p.add_argument("--headed", action="store_true", help="show the window (needs a display)")
    p.add_argument("--readonly", action="store_true", help="a private copy; nothing is saved")
    p.add_argument("--archetype", metavar="A", help="for a profile created here")
    p.add_argument("--no-create", action="store_true", help="NotFound if the profile is missing")
    p.add_argument("--exit", action="store_true", help="close and save right after --url loads")
    _lock_timeout_option(p)
    return parser


# ------------------------------------------------------------------------------- main


@contextlib.contextmanager
def _logging_to_stderr(verbosity: int) -> Iterator[None]:
    """Log records to the current stderr for the duration of one command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def _home(args: argparse.Namespace) -> tuple[Path, str]:
    """The store's home and where that came from (for messages)."""
    if args.home is not None:
        return Path(args.home).expanduser(), "--home"
    source = "$PROFILES_HOME" if os.environ.get("PROFILES_HOME") else "the default home"
    return default_home(), source


def _store_exists(home: Path) -> bool:
    return (home / CATALOG_FILE).is_file()


def _store_mode(args: argparse.Namespace) -> str:
    if getattr(args, "no_create", False):  # open --no-create
        return EXISTING
    if getattr(args, "create", False):  # import --create
        return MAY_CREATE
    return str(args.store)


def _open_store(args: argparse.Namespace, mode: str) -> ProfileStore:
    """The store; for a command that must not create one, NotFound naming the home when
    there is none (so a typo in --home or $PROFILES_HOME does not make an empty store)."""
    home, source = _home(args)
    kwargs: dict[str, Any] = {"max_profiles": args.max_profiles}
    catalog, blobs = _backend(args)
    if catalog is not None or blobs is not None:
        # A shared backend: the home is only this machine's workspace.
        return ProfileStore(home, catalog=catalog, blobs=blobs, **kwargs)
    if os.environ.get("PROFILES_URL"):  # a profile service over HTTP ($PROFILES_API_KEY)
        return ProfileStore(home, **kwargs)
    if mode == EXISTING:
        if not _store_exists(home):
            what = "does not exist" if not home.exists() else f"has no {CATALOG_FILE}"
            raise NotFound(
                f"No profile store at {home} (from {source}): the directory {what}. Check "
                "the path; to make a store there, run a command that creates a profile, "
                "e.g. 'profiles create NAME' with the same home.",
                resource="store",
                home=str(home),
            )
        kwargs["create"] = False
    # Without --home the store resolves $PROFILES_HOME or the default itself, so that a new
    # home named by $PROFILES_HOME is said at WARNING and the default one made quietly.
    return ProfileStore(home if args.home is not None else None, **kwargs)


def _backend(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The catalog and blobs URLs from --catalog / --blobs, else the environment."""
    return (args.catalog or catalog_url_from_env(), args.blobs or blobs_url_from_env())


def _version(args: argparse.Namespace) -> None:
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        from profiles import __version__ as version
    home, source = _home(args)
    exists = _store_exists(home)
    catalog, blobs = _backend(args)
    shown = {
        "catalog": redact_url_password(catalog) if catalog else None,
        "blobs": redact_url_password(blobs) if blobs else None,
    }
    if args.json:
        _json(
            {
                "version": version,
                "home": str(home),
                "home_source": source,
                "exists": exists,
                **shown,
            }
        )
        return
    _out(f"profiles {version} ({PACKAGE})")
    if catalog or blobs:
        in_home = "in the home"
        _out(f"store: catalog {shown['catalog'] or in_home}, blobs {shown['blobs'] or in_home}")
        _out(f"workspace: {home} (from {source})")
        return
    state = "a profile store" if exists else "no profile store there yet"
    _out(f"store: {home} (from {source}; {state})")


def _run(args: argparse.Namespace) -> None:
    if args.version:
        _version(args)
    else:
        mode = _store_mode(args)
        if mode == NO_STORE:
            args.handler(None, args)
        else:
            with _open_store(args, mode) as store:
                args.handler(store, args)
    sys.stdout.flush()  # here, so that a closed pipe is reported like any other error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``profiles`` command with ``argv`` (default ``sys.argv[1:]``); return the
    exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None and not args.version:
            parser.error("the following arguments are required: COMMAND")
    except UsageError as error:
        if "--json" in argv:
            _fail(True, "UsageError", 400, error.message)
        else:
            _err(f"{error.usage}{error.prog}: error: {error.message}")
        return EXIT_USAGE
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    with _logging_to_stderr(args.verbose):
        try:
            _run(args)
        except ProfileError as error:
            message = cli_message(error.message)
            if args.json:
                _err(_dumps({"error": {**error.to_dict(), "message": message}}))
            else:
                _err(f"error: {message}")
            return exit_code(error)
        except UsageError as error:
            _fail(args.json, "UsageError", 400, error.message)
            return EXIT_USAGE
        except Declined as declined:
            _fail(args.json, "Declined", 400, str(declined))
            return EXIT_DECLINED
        except BrokenPipeError:
            # The reader went away (| head). Point stdout at /dev/null so the interpreter's
            # final flush does not complain again.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            message = f"{error.strerror or error}{where}"
            _fail(args.json, "OSError", 500, message, errno=error.errno)
            return EXIT_OS_ERROR
        except KeyboardInterrupt:
            _err("interrupted")
            return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
