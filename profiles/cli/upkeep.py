"""``profiles sync``, ``transfer``, ``gc``, ``migrate``, ``verify``: the store as a whole
(pending commits landed, everything copied to another backend, unreferenced bytes collected, old
formats converted, every state checked)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from profiles.cli.common import _home, command
from profiles.cli.info import _pending_hints
from profiles.cli.output import UsageError, _err, _json, _out, _plural, _size, cli_message
from profiles.errors import (
    Conflict,
    NotFound,
    PendingConflict,
    ProfileBusy,
    ProfileError,
    StateCorrupt,
    StorageUnavailable,
    ValidationFailed,
)
from profiles.maintenance.transfer import transfer
from profiles.models import Profile
from profiles.store import ProfileStore
from profiles.workspace.pending import PendingInfo

__all__ = ["add_commands"]


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


def add_commands(sub: Any) -> None:
    """Add this group's commands to ``sub``, the ``profiles`` subparsers."""
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
