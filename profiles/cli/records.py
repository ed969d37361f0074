"""``profiles create``, ``list``, ``show``, ``update``, ``delete``, ``clone``: the
profile records themselves."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from profiles.cli.common import MAY_CREATE, REF_HELP, Declined, _page_options, command
from profiles.cli.output import (
    UsageError,
    _describe_holder,
    _emit,
    _err,
    _json,
    _listing,
    _out,
    _show,
    _size,
    _when,
)
from profiles.models import Profile
from profiles.store import UNSET, ProfileStore, Unset

__all__ = ["add_commands"]


def _label(text: str) -> tuple[str, str]:
    """argparse type of ``--label``: ``KEY=VALUE`` (the value may be empty)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


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


def add_commands(sub: Any) -> None:
    """Add this group's commands to ``sub``, the ``profiles`` subparsers."""
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
    p.add_argument("ref", metavar="REF", help=REF_HELP)

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
    p.add_argument("ref", metavar="REF", help=REF_HELP)
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
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("-y", "--yes", action="store_true", help="delete without asking")

    p = command(
        sub,
        "clone",
        cmd_clone,
        "Copy a profile's archetype, description and labels (and state with --with-state).",
    )
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("--name", metavar="N", help="default: <source>-copy, <source>-copy-2, ...")
    p.add_argument("--with-state", action="store_true", help="share the committed state too")
    p.add_argument("--archetype", metavar="A", help="pin the copy to another archetype")
