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
import errno
import importlib.metadata
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from profiles.archetypes import all_archetypes
from profiles.cli import info, records, snapshots, upkeep
from profiles.cli.common import (
    EXISTING,
    MAY_CREATE,
    NO_STORE,
    REF_HELP,
    Declined,
    _backend,
    _common_options,
    _home,
    _lock_timeout_option,
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
    _plural,
    _Progress,
    _size,
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
from profiles.models import Profile
from profiles.store import ProfileStore

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


# ------------------------------------------------------------------------------- parsing


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


# ------------------------------------------------------------------------------- commands


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

    records.add_commands(sub)

    snapshots.add_commands(sub)

    info.add_commands(sub)

    upkeep.add_commands(sub)

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
    p.add_argument("ref", metavar="REF", help=REF_HELP)
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
    p.add_argument("ref", metavar="REF", help=REF_HELP)
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
