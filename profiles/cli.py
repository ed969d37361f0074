"""The ``profiles`` command: the ProfileStore (and sessions) from a shell.

Thin on purpose: it parses, calls :class:`~profiles.store.ProfileStore` or
:class:`driver.Session`, and prints a table (or JSON with ``--json``).

Exit codes:

==  =========================================================
0   success
1   any other ProfileError
2   ValidationFailed (ArchiveInvalid, NoStateData), bad usage
3   NotFound
4   Conflict (ProfileBusy, BrowserDowngrade)
5   TierLimit
6   BrowserNotFound
130 interrupted (Ctrl-C)
==  =========================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

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
from profiles.store import UNSET, ProfileStore

__all__ = ["EXIT_CODES", "build_parser", "main"]

log = logging.getLogger("profiles.cli")

EXIT_CODES: tuple[tuple[type[ProfileError], int], ...] = (
    (ValidationFailed, 2),
    (NotFound, 3),
    (Conflict, 4),
    (TierLimit, 5),
    (BrowserNotFound, 6),
    (ProfileError, 1),
)


class UsageError(Exception):
    """A command-line mistake that argparse cannot see (exit code 2)."""


# ---------------------------------------------------------------------------- output


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    _out(json.dumps(value, indent=2, ensure_ascii=False))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        _out("(none)")
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    _out("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        _out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _show_fields(record: BaseModel) -> None:
    data = record.model_dump(mode="json")
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False) if value else "-"
        _out(f"{key.ljust(width)}  {'-' if value is None else value}")


def _profile_rows(profiles: Iterable[Profile]) -> Iterable[list[object]]:
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


PROFILE_HEADERS = ("name", "id", "archetype", "status", "size", "used", "last used")


def _snapshot_rows(snaps: Iterable[Snapshot]) -> Iterable[list[object]]:
    for s in snaps:
        yield [
            s.id,
            s.parent_name,
            s.label or "-",
            s.parent_archetype,
            _size(s.blob_size),
            _when(s.captured_at),
        ]


SNAPSHOT_HEADERS = ("id", "parent", "label", "archetype", "size", "captured")


def _event_rows(events: Iterable[AuditEvent]) -> Iterable[list[object]]:
    for e in events:
        payload = ", ".join(f"{k}={v}" for k, v in e.payload.items() if v is not None)
        yield [_when(e.at), e.type, e.profile_id or "-", payload]


EVENT_HEADERS = ("at", "type", "profile", "details")


def _listing(
    args: argparse.Namespace,
    fetch: Callable[[str | None], Page[Any]],
    headers: Sequence[str],
    rows: Callable[[Iterable[Any]], Iterable[Sequence[object]]],
) -> None:
    """Print one page (or with --all, every page) of a listing."""
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
    _table(headers, rows(data))
    if page.has_more:
        _err(f"more: pass --cursor {page.next_cursor} for the next page, or --all")


# ---------------------------------------------------------------------------- helpers


def _labels(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if pairs is None:
        return None
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--label takes KEY=VALUE, got {pair!r}.")
        labels[key] = value
    return labels


class _Progress:
    """A byte progress bar on stderr, shown only on a terminal and for large files."""

    def __init__(self, total: int | None, verb: str) -> None:
        self.total = total
        self.verb = verb
        self.enabled = sys.stderr.isatty() and (total or 0) > 1024 * 1024
        self._last = -1

    def __call__(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        percent = min(100, done * 100 // self.total)
        if percent != self._last:
            self._last = percent
            bar = "#" * (percent // 4)
            sys.stderr.write(f"\r{self.verb} [{bar:<25}] {percent:3d}% {_size(done)}")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self._last >= 0:
            sys.stderr.write("\n")


# ---------------------------------------------------------------------------- commands


def cmd_create(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.create(
        args.name,
        archetype=args.archetype,
        description=args.description,
        labels=_labels(args.label),
    )
    _json(profile) if args.json else _show_fields(profile)


def cmd_list(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.list(limit=args.limit, cursor=cursor),
        PROFILE_HEADERS,
        _profile_rows,
    )


def cmd_show(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.get(args.ref)
    _json(profile) if args.json else _show_fields(profile)


def cmd_update(store: ProfileStore, args: argparse.Namespace) -> None:
    if args.description is not None and args.clear_description:
        raise UsageError("Pass --description or --clear-description, not both.")
    if args.label is not None and args.clear_labels:
        raise UsageError("Pass --label or --clear-labels, not both.")
    description: Any = UNSET
    if args.clear_description:
        description = None
    elif args.description is not None:
        description = args.description
    labels: Any = UNSET
    if args.clear_labels:
        labels = {}
    elif args.label is not None:
        labels = {**store.get(args.ref).labels, **(_labels(args.label) or {})}
    profile = store.update(
        args.ref,
        name=args.name if args.name is not None else UNSET,
        description=description,
        labels=labels,
        archetype=args.archetype if args.archetype is not None else UNSET,
    )
    _json(profile) if args.json else _show_fields(profile)


def cmd_delete(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.get(args.ref)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"Refusing to delete {profile.name!r} without confirmation: stdin is not a "
                "terminal. Pass --yes."
            )
        sys.stderr.write(f"Delete profile {profile.name!r} ({profile.id}) and its state? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise UsageError("Not deleted.")
    store.delete(profile.id)
    if args.json:
        _json({"deleted": profile.id, "name": profile.name})
    else:
        _out(f"deleted {profile.name} ({profile.id})")


def cmd_clone(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.clone(
        args.ref, name=args.name, with_state=args.with_state, archetype=args.archetype
    )
    _json(profile) if args.json else _show_fields(profile)


def cmd_snapshot_create(store: ProfileStore, args: argparse.Namespace) -> None:
    snap = store.snapshot(args.ref, label=args.label, description=args.description)
    _json(snap) if args.json else _show_fields(snap)


def cmd_snapshot_list(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.snapshots(args.ref, limit=args.limit, cursor=cursor),
        SNAPSHOT_HEADERS,
        _snapshot_rows,
    )


def cmd_snapshot_show(store: ProfileStore, args: argparse.Namespace) -> None:
    snap = store.get_snapshot(args.id)
    _json(snap) if args.json else _show_fields(snap)


def cmd_snapshot_delete(store: ProfileStore, args: argparse.Namespace) -> None:
    store.delete_snapshot(args.id)
    _json({"deleted": args.id}) if args.json else _out(f"deleted {args.id}")


def cmd_snapshot_restore(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.restore(args.id, name=args.name)
    _json(profile) if args.json else _show_fields(profile)


def cmd_audit(store: ProfileStore, args: argparse.Namespace) -> None:
    _listing(
        args,
        lambda cursor: store.audit(profile=args.profile, limit=args.limit, cursor=cursor),
        EVENT_HEADERS,
        _event_rows,
    )


def cmd_archetypes(store: ProfileStore, args: argparse.Namespace) -> None:
    found = [a for a in all_archetypes().values() if args.engine in (None, a.engine)]
    if args.json:
        _json([a.model_dump(mode="json") for a in found])
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
    )


def cmd_import(store: ProfileStore, args: argparse.Namespace) -> None:
    source: Path | BinaryIO
    if args.file == "-":
        source = sys.stdin.buffer
        total = None
    else:
        source = Path(args.file)
        total = source.stat().st_size if source.is_file() else None
    bar = _Progress(total, "importing")
    try:
        profile = store.import_state(
            args.ref, source, browser_version=args.browser_version, progress=bar
        )
    finally:
        bar.finish()
    if args.json:
        _json(profile)
    else:
        _out(f"imported {_size(profile.blob_size)} into {profile.name} ({profile.status})")


def cmd_export(store: ProfileStore, args: argparse.Namespace) -> None:
    profile = store.get(args.ref)
    bar = _Progress(profile.blob_size, "exporting")
    dest: Path | IO[bytes] = sys.stdout.buffer if args.file == "-" else Path(args.file)
    try:
        written = store.export_state(profile.id, dest, codec=args.codec, progress=bar)
    finally:
        bar.finish()
    if args.file == "-":
        return
    if args.json:
        _json({"profile": profile.id, "file": str(dest), "bytes": written, "codec": args.codec})
    else:
        _out(f"exported {profile.name} to {dest} ({_size(written)}, {args.codec})")


def cmd_open(store: ProfileStore, args: argparse.Namespace) -> None:
    if (
        args.headed
        and sys.platform.startswith("linux")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        raise UsageError(
            "--headed needs a display and neither DISPLAY nor WAYLAND_DISPLAY is set. Run it "
            "under a virtual one ('xvfb-run profiles open ...') or drop --headed."
        )
    from driver import Session  # the CLI is the one place profiles reaches up to the driver

    session = Session(
        profile=args.ref,
        store=store,
        headless=not args.headed,
        readonly=args.readonly,
        start_url=args.url,
        create=not args.no_create,
        archetype=args.archetype,
    )
    with session:
        if not args.exit:
            how = "close the browser window or press Ctrl-C" if args.headed else "press Ctrl-C"
            verb = "discards" if args.readonly else "commits"
            _err(f"profile {session.profile.name} is open; {how} to end (that {verb} it).")
            _wait_until_closed_or_interrupted(session)
    profile = session.profile
    if args.json:
        _json(profile)
    else:
        _out(f"session ended: {profile.name} {profile.status}, {_size(profile.blob_size)}")


# ---------------------------------------------------------------------------- parser


def _wait_until_closed_or_interrupted(session: Any) -> None:
    """Block until the browser is closed or Ctrl-C / SIGTERM arrives.

    A KeyboardInterrupt raised inside Playwright's sync event loop is swallowed there, so the
    signals only set a flag and the wait runs in short slices that look at it.
    """
    from playwright.sync_api import Error as PlaywrightError

    stop: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop.append(signum)) for sig in wanted
    }
    try:
        while not stop:
            try:
                session.context.wait_for_event("close", timeout=250)
                return
            except PlaywrightError as exc:  # TimeoutError is one; a closed context ends it
                if "Timeout" not in type(exc).__name__ and "Timeout" not in str(exc):
                    return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _add_page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=50, help="records per page, 1 to 100")
    parser.add_argument("--cursor", help="the next_cursor of the previous page")
    parser.add_argument("--all", action="store_true", help="walk every page")


def _common_options(default: Any) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=default, help="print JSON instead of a table"
    )
    common.add_argument(
        "--home", default=default, help="store home (default: $PROFILES_HOME or user data dir)"
    )
    common.add_argument(
        "--max-profiles", type=int, default=default, help="refuse to grow past N profiles"
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log to stderr"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profiles",
        description="Named, persistent browser profiles for Playwright.",
        parents=[_common_options(argparse.SUPPRESS)],
    )
    parser.set_defaults(json=False, home=None, max_profiles=None, verbose=False)
    # The global options are accepted after the command too; there they must not reset what
    # was given before it, hence SUPPRESS as their default in both places.
    common = _common_options(argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[ProfileStore, argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    p = command("create", cmd_create, "Create an empty profile.")
    p.add_argument("name")
    p.add_argument("--archetype", help="engine + device (see 'profiles archetypes')")
    p.add_argument("--description")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")

    p = command("list", cmd_list, "List profiles, newest first.")
    _add_page_options(p)

    p = command("show", cmd_show, "Show one profile.")
    p.add_argument("ref", help="profile id or name")

    p = command("update", cmd_update, "Rename a profile or change its description or labels.")
    p.add_argument("ref", help="profile id or name")
    p.add_argument("--name")
    p.add_argument("--description")
    p.add_argument("--clear-description", action="store_true")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="add or replace a label")
    p.add_argument("--clear-labels", action="store_true")
    p.add_argument("--archetype", help="refused: archetypes are sticky (clone to repin)")

    p = command("delete", cmd_delete, "Delete a profile and its state (snapshots stay).")
    p.add_argument("ref", help="profile id or name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    p = command("clone", cmd_clone, "Copy a profile's archetype, description and labels.")
    p.add_argument("ref", help="profile id or name")
    p.add_argument("--name", help="default: <source>-copy, -copy-2, ...")
    p.add_argument("--with-state", action="store_true", help="copy the committed state too")
    p.add_argument("--archetype", help="repin the copy to another archetype")

    snap = sub.add_parser(
        "snapshot",
        help="Immutable point-in-time copies of a profile.",
        description="Immutable point-in-time copies of a profile.",
        parents=[common],
    )
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True, metavar="COMMAND")

    def snap_command(
        name: str, handler: Callable[[ProfileStore, argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = snap_sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    p = snap_command("create", cmd_snapshot_create, "Capture a profile's committed state.")
    p.add_argument("ref", help="profile id or name")
    p.add_argument("--label")
    p.add_argument("--description")
    p = snap_command("list", cmd_snapshot_list, "List snapshots (of one profile, or all).")
    p.add_argument("ref", nargs="?", help="profile id or name (default: every profile)")
    _add_page_options(p)
    p = snap_command("show", cmd_snapshot_show, "Show one snapshot.")
    p.add_argument("id")
    p = snap_command("delete", cmd_snapshot_delete, "Delete a snapshot.")
    p.add_argument("id")
    p = snap_command("restore", cmd_snapshot_restore, "Create a new profile from a snapshot.")
    p.add_argument("id")
    p.add_argument("--name", help="default: <parent>-restored, -restored-2, ...")

    p = command("audit", cmd_audit, "Show the audit log, newest first.")
    p.add_argument("--profile", help="only this profile (id or name; deleted ones by id)")
    _add_page_options(p)

    p = command("archetypes", cmd_archetypes, "List the archetypes a profile can be pinned to.")
    p.add_argument("--engine", choices=ENGINES)

    p = command("import", cmd_import, "Replace a profile's state with a .tar.gz/.tar.zst file.")
    p.add_argument("ref", help="profile id or name")
    p.add_argument("file", help="archive path, or - for stdin")
    p.add_argument("--browser-version", help="browser version the state was made with")

    p = command("export", cmd_export, "Write a profile's state as .tar.gz (or .tar.zst).")
    p.add_argument("ref", help="profile id or name")
    p.add_argument("file", help="archive path, or - for stdout")
    p.add_argument("--codec", choices=["gzip", "zstd"], default="gzip")

    p = command(
        "open", cmd_open, "Open a browser on a profile (to log in by hand); commits when it ends."
    )
    p.add_argument("ref", help="profile id or name (created if missing)")
    p.add_argument("--url", help="page to open first")
    p.add_argument("--headed", action="store_true", help="show the window (needs a display)")
    p.add_argument("--readonly", action="store_true", help="a private copy; nothing is saved")
    p.add_argument("--archetype", help="for a profile created here")
    p.add_argument("--no-create", action="store_true", help="fail if the profile is missing")
    p.add_argument("--exit", action="store_true", help="end (and commit) right after --url")
    return parser


def exit_code(error: ProfileError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with ProfileStore(args.home, max_profiles=args.max_profiles) as store:
            args.handler(store, args)
    except ProfileError as error:
        if args.json:
            _err(json.dumps({"error": error.to_dict()}, default=str))
        else:
            _err(f"error: {error.message}")
        return exit_code(error)
    except UsageError as error:
        _err(f"error: {error}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
