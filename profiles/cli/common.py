"""What every command shares: the global options (--json, --home, --catalog, --blobs,
...), the paging and --lock-timeout options, the ``command`` helper that adds a
subcommand with them, and opening the store a command needs."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from profiles.cli.output import UsageError
from profiles.connect import blobs_url_from_env, catalog_url_from_env
from profiles.errors import NotFound
from profiles.store import ProfileStore, default_home


class Declined(Exception):
    """The user answered no at a confirmation prompt: exit code 1."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of exiting, so that
    :func:`main` reports it (as JSON with ``--json``) and returns 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage(), prog=self.prog)


Handler = Callable[[Any, argparse.Namespace], None]


# What a command needs of the store: none at all, one that exists (it only reads, or changes
# an existing profile: it never creates a store), or one it may create.
NO_STORE, EXISTING, MAY_CREATE = "none", "existing", "may-create"


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


def command(
    group: Any,
    name: str,
    handler: Handler | None,
    help: str,
    description: str = "",
    store: str = EXISTING,
) -> argparse.ArgumentParser:
    """Add command ``name`` to ``group`` (a subparsers action) with the global options;
    ``store`` says what it needs of the store (NO_STORE, EXISTING, MAY_CREATE)."""
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


REF_HELP = "profile id or name"  # the help of every command's REF


# ------------------------------------------------------------------------------- the store


CATALOG_FILE = "catalog.sqlite3"  # what makes a directory a store (ProfileStore's default)


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
