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
import importlib.metadata
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from profiles.cli import info, records, sessions, snapshots, state, upkeep
from profiles.cli.common import (
    EXISTING,
    NO_STORE,
    Declined,
    _backend,
    _common_options,
    _home,
    _open_store,
    _Parser,
    _store_exists,
    _store_mode,
    command,
)
from profiles.cli.output import (
    CLI_WORDING,
    UsageError,
    _dumps,
    _err,
    _fail,
    _json,
    _out,
    cli_message,
)
from profiles.connect import redact_url_password
from profiles.errors import (
    BrowserNotFound,
    Conflict,
    NotFound,
    ProfileError,
    StorageUnavailable,
    TierLimit,
    ValidationFailed,
)

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
PACKAGE = "playwright-profiles"


def exit_code(error: ProfileError) -> int:
    """The exit code for a :class:`ProfileError` (see the module docstring)."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


# ------------------------------------------------------------------------------- parser


EPILOG = """\
exit codes: 0 ok; 1 other error (StateCommitFailed, file error, deletion declined);
2 ValidationFailed / usage; 3 NotFound (a profile, a snapshot, the store); 4 Conflict
(ProfileBusy, BrowserDowngrade, PendingConflict); 5 TierLimit; 6 BrowserNotFound;
7 StorageUnavailable; 130 interrupted; 141 stdout closed early."""


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

    # Each group registers its commands in turn: this order is the order of --help.
    records.add_commands(sub)  # create, list, show, update, delete, clone
    snapshots.add_commands(sub)  # snapshot create|list|show|delete|restore
    info.add_commands(sub)  # audit, archetypes, ps
    upkeep.add_commands(sub)  # sync, transfer, gc, migrate, verify

    from profiles.http.server.cli import add_server_commands  # serve, keys, accounts

    add_server_commands(sub, command)
    state.add_commands(sub)  # cache prune, import, export, open
    sessions.add_commands(sub)  # sessions start|list|show|stop (on a profile service)
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
