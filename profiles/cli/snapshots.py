"""``profiles snapshot create|list|show|delete|restore``: immutable point-in-time copies
of a profile, and new profiles made from them."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

from profiles.cli.common import REF_HELP, _page_options, command
from profiles.cli.output import _emit, _json, _listing, _out, _size, _when
from profiles.models import Snapshot
from profiles.store import ProfileStore

__all__ = ["add_commands"]


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


def add_commands(sub: Any) -> None:
    """Add this group's commands to ``sub``, the ``profiles`` subparsers."""
    snap = command(sub, "snapshot", None, "Immutable point-in-time copies of a profile.")
    snap_sub = snap.add_subparsers(dest="snapshot_command", required=True, metavar="COMMAND")

    p = command(snap_sub, "create", cmd_snapshot_create, "Capture a profile's committed state.")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
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
