"""``profiles cache prune``, ``import``, ``export``, ``open``: a profile's state bytes (the
working copies cached on this machine, archives in and out, and a browser session that
commits a new state; the session itself runs in :mod:`.session`, loaded only then)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
from pathlib import Path
from typing import IO, Any

from profiles.archetypes import all_archetypes
from profiles.cli.common import MAY_CREATE, REF_HELP, _lock_timeout_option, command
from profiles.cli.output import UsageError, _json, _out, _plural, _Progress, _size
from profiles.errors import Conflict, NotFound, ProfileError, ValidationFailed
from profiles.models import Profile
from profiles.store import ProfileStore

__all__ = ["add_commands"]


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


def cmd_open(store: ProfileStore, args: argparse.Namespace) -> None:
    from profiles.cli.session import run_open  # imports the driver, so only when asked

    run_open(store, args)


def add_commands(sub: Any) -> None:
    """Add this group's commands to ``sub``, the ``profiles`` subparsers."""
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
