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
4    Conflict (and ProfileBusy, BrowserDowngrade)
5    TierLimit
6    BrowserNotFound
130  interrupted (Ctrl-C) outside ``profiles open``
141  stdout closed early (``profiles list | head``)
===  ===================================================================================

``profiles open`` ends with Ctrl-C (or SIGTERM), or, headed, when the browser window is
closed, and exits 0 once the state is committed. A headless browser that exits on its own
(a crash) is not committed, and ``open`` says so and exits 1 (StateCommitFailed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

from pydantic import BaseModel

from profiles.archetypes import all_archetypes
from profiles.errors import (
    BrowserNotFound,
    Conflict,
    NotFound,
    ProfileError,
    TierLimit,
    ValidationFailed,
)
from profiles.models import AuditEvent, Page, Profile, Snapshot
from profiles.state_rules import ENGINES
from profiles.store import UNSET, ProfileStore, Unset

if TYPE_CHECKING:
    pass

__all__ = ["EXIT_CODES", "UsageError", "build_parser", "exit_code", "main"]

log = logging.getLogger("profiles.cli")

#: The exit code of each error class; the first match (most specific first) wins.
EXIT_CODES: tuple[tuple[type[ProfileError], int], ...] = (
    (ValidationFailed, 2),
    (NotFound, 3),
    (Conflict, 4),
    (TierLimit, 5),
    (BrowserNotFound, 6),
    (ProfileError, 1),
)
EXIT_USAGE = 2
EXIT_DECLINED = 1
EXIT_OS_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
PROGRESS_MIN_BYTES = 1024 * 1024


class UsageError(Exception):
    """A command-line mistake (argparse's, or one argparse cannot see): exit code 2."""

    def __init__(self, message: str, usage: str = "", prog: str = "profiles") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.prog = prog


class Declined(Exception):
    """The user answered no at a confirmation prompt: exit code 1."""


def exit_code(error: ProfileError) -> int:
    """The exit code for a :class:`ProfileError` (see the module docstring)."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


# ------------------------------------------------------------------------------- output


def _out(text: str = "") -> None:
    """One line of the command's output, on stdout."""
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    """One line for the person at the terminal (prompts, hints, errors), on stderr."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    _out(json.dumps(value, indent=2, ensure_ascii=False))


def _fail(as_json: bool, code: str, status: int, message: str, **details: Any) -> None:
    if as_json:
        body = {"code": code, "status": status, "message": message, **details}
        _err(json.dumps({"error": body}, ensure_ascii=False, default=str))
    else:
        _err(f"error: {message}")


def _size(n: int | None) -> str:
    """Bytes for people: ``512 B``, ``35.5 KiB``, ``1.2 GiB``."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _when(value: Any) -> str:
    """A timestamp in a table: UTC to the second."""
    return "-" if value is None else str(value.strftime("%Y-%m-%d %H:%M:%SZ"))


def _short(value: object, width: int = 40) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> None:
    """Aligned plain-text columns with an upper-case header; ``empty`` when no rows."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        _out(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [[h.upper() for h in headers], *cells]:
        _out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _show(record: BaseModel) -> None:
    """One record as ``key  value`` lines (labels, lists and sizes made readable)."""
    data = record.model_dump(mode="json")
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
        _out(f"{key.ljust(width)}  {text}")


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


EVENT_HEADERS = ("at", "type", "profile", "details")


def _event_rows(events: Iterable[AuditEvent]) -> Iterator[list[object]]:
    for e in events:
        details = ", ".join(
            f"{k}={_short(v, 24)}" for k, v in sorted(e.payload.items()) if v is not None
        )
        yield [_when(e.at), e.type, e.profile_id or "-", details or "-"]


def _listing(
    args: argparse.Namespace,
    fetch: Callable[[str | None], Page[Any]],
    headers: Sequence[str],
    rows: Callable[[Iterable[Any]], Iterable[Sequence[object]]],
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
    _emit(args, store.get(args.ref))


def cmd_update(store: ProfileStore, args: argparse.Namespace) -> None:
    if not any(
        (
            args.name is not None,
            args.description is not None,
            args.clear_description,
            args.label,
            args.clear_labels,
            args.archetype is not None,
        )
    ):
        raise UsageError(
            "Nothing to change: pass --name, --description, --clear-description, --label or "
            "--clear-labels."
        )
    description: str | Unset | None = UNSET
    if args.clear_description:
        description = None
    elif args.description is not None:
        description = args.description
    labels: dict[str, str] | Unset = UNSET
    if args.clear_labels:
        labels = dict(args.label or ())  # --clear-labels --label k=v: exactly these
    elif args.label:
        # ProfileStore.update replaces the whole map; --label adds to what is there.
        labels = {**store.get(args.ref).labels, **dict(args.label)}
    profile = store.update(
        args.ref,
        name=args.name if args.name is not None else UNSET,
        description=description,
        labels=labels,
        archetype=args.archetype if args.archetype is not None else UNSET,
    )
    _emit(args, profile)


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_delete(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.get(args.ref)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"Not deleting {profile.name!r}: stdin is not a terminal, so there is no one "
                "to confirm. Pass --yes to delete without asking."
            )
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
        _event_rows,
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


def cmd_import(store: ProfileStore, args: argparse.Namespace) -> None:
    source: Path | IO[bytes]
    if args.file == "-":
        if sys.stdin.isatty():
            raise UsageError("FILE is '-' but stdin is a terminal: pipe an archive in.")
        source, total = sys.stdin.buffer, None
    else:
        source = Path(args.file)
        total = source.stat().st_size if source.is_file() else None
    bar = _Progress(total, "importing")
    try:
        profile = store.import_state(
            args.ref,
            source,
            browser_version=args.browser_version,
            lock_timeout=args.lock_timeout,
            progress=bar,
        )
    finally:
        bar.finish()
    if args.json:
        _json(profile)
    else:
        _out(f"imported {_size(profile.blob_size)} into {profile.name} ({profile.status})")


def cmd_export(store: ProfileStore, args: argparse.Namespace) -> None:
    to_stdout = args.file == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("FILE is '-' but stdout is a terminal: redirect it to a file.")
    profile = store.get(args.ref)
    bar = _Progress(profile.blob_size, "exporting")  # the stored size: close enough
    dest: Path | IO[bytes]
    if to_stdout:
        sys.stdout.flush()
        dest = sys.stdout.buffer
    else:
        dest = Path(args.file)
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
    from profiles.cli_open import run_open  # imports the driver, so only when asked

    run_open(store, args)


# ------------------------------------------------------------------------------- parser

Handler = Callable[[Any, argparse.Namespace], None]

OPEN_DESCRIPTION = """\
Open a browser on a profile, to log in by hand or to refresh it; saving it when it ends.

The profile is created (with --archetype, default desktop-chromium) if it does not exist,
unless --no-create. Press Ctrl-C in this terminal (or send SIGTERM to this process) to close
the browser and commit its state.
With --headed a window is shown (Linux needs DISPLAY or WAYLAND_DISPLAY: use
'xvfb-run profiles open ...' on a server); closing that window ends the session WITHOUT
saving, because the session cannot tell it from a crash. Without --headed the browser runs
headless: useful to refresh a profile (visit --url so cookies renew) and, with --exit, to do
that in a script: 'profiles open REF --url URL --exit' visits and commits right away.
--readonly opens a private copy and saves nothing."""

EPILOG = """\
exit codes: 0 ok; 1 other error (StateCommitFailed, file error, deletion declined);
2 ValidationFailed / usage; 3 NotFound; 4 Conflict (ProfileBusy, BrowserDowngrade);
5 TierLimit; 6 BrowserNotFound; 130 interrupted; 141 stdout closed early."""


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
    parser.set_defaults(json=False, home=None, max_profiles=None, verbose=0, needs_store=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, handler: Handler | None, help: str, description: str = ""
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name,
            help=help,
            description=description or help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common_options(p)
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    ref_help = "profile id or name"

    p = command(sub, "create", cmd_create, "Create an empty profile.")
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
        "--label adds or replaces one label; --clear-labels removes all of them first.\n"
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
        "Asks first on a terminal; when stdin is not a terminal, --yes is required.",
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
        sub, "archetypes", cmd_archetypes, "List the archetypes a profile can be pinned to."
    )
    p.add_argument("--engine", choices=ENGINES, help="only this engine's")
    p.set_defaults(needs_store=False)

    p = command(
        sub,
        "import",
        cmd_import,
        "Replace a profile's state with a .tar.gz or .tar.zst archive.",
        "Replace a profile's state with a .tar.gz or .tar.zst archive of a browser\n"
        "user-data-dir of the profile's engine. FILE '-' reads stdin.",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("file", metavar="FILE", help="the archive, or - for stdin")
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
        "FILE '-' writes the archive to stdout (and nothing else).",
    )
    p.add_argument("ref", metavar="REF", help=ref_help)
    p.add_argument("file", metavar="FILE", help="where to write, or - for stdout")
    p.add_argument("--codec", choices=("gzip", "zstd"), default="gzip", help="compression (gzip)")

    p = command(
        sub,
        "open",
        cmd_open,
        "Open a browser on a profile (log in by hand, refresh it); Ctrl-C saves.",
        OPEN_DESCRIPTION,
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


def _run(args: argparse.Namespace) -> None:
    if not args.needs_store:
        args.handler(None, args)
    else:
        with ProfileStore(args.home, max_profiles=args.max_profiles) as store:
            args.handler(store, args)
    sys.stdout.flush()  # here, so that a closed pipe is reported like any other error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``profiles`` command with ``argv`` (default ``sys.argv[1:]``); return the
    exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
            if args.json:
                _err(json.dumps({"error": error.to_dict()}, ensure_ascii=False, default=str))
            else:
                _err(f"error: {error.message}")
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
