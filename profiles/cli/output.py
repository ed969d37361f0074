"""What the ``profiles`` command prints, and how: one line at a time on stdout (output) or
stderr (the person at the terminal), JSON with ``--json``, tables, sizes and times for
people, and never a control character from stored text (a profile's name or label could
otherwise retitle a terminal or reorder what a line shows). Also what every command shows
alike: a record, a page of a listing, a progress bar, and library messages in the CLI's
words (flags, not Python parameters)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import BaseModel

from profiles.models import Page

log = logging.getLogger("profiles.cli")


class UsageError(Exception):
    """A command-line mistake (argparse's, or one argparse cannot see): exit code 2."""

    def __init__(self, message: str, usage: str = "", prog: str = "profiles") -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.prog = prog


# ------------------------------------------------------------------------------- terminal safety

# C0 controls, DEL, C1 controls, and the bidi embeddings, overrides and isolates: what can
# move the cursor, clear the screen, retitle the window or reorder what a line shows.
_DEL_C1_BIDI = r"\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_UNSAFE_CHAR = re.compile(rf"[\x00-\x1f{_DEL_C1_BIDI}]")
_UNSAFE_IN_LINES = re.compile(rf"[\x00-\x09\x0b-\x1f{_DEL_C1_BIDI}]")  # all but \n
# json.dumps escapes C0 itself; with ensure_ascii=False it lets these through.
_UNSAFE_FOR_JSON = re.compile(rf"[{_DEL_C1_BIDI}]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character and bidi override escaped (``\\x1b``)."""
    return _UNSAFE_CHAR.sub(_escape_char, text)


def _visible_lines(text: str) -> str:
    """:func:`visible`, but newlines stay: the last guard of everything printed."""
    return _UNSAFE_IN_LINES.sub(_escape_char, text)


def _dumps(value: Any, indent: int | None = None) -> str:
    """JSON with non-ASCII text kept, but DEL, C1 controls and bidi overrides escaped as
    ``\\uXXXX`` too (json.dumps escapes only C0): the same value, safe on a terminal."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=str)
    return _UNSAFE_FOR_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# ------------------------------------------------------------------------------- output


def _out(text: str = "") -> None:
    """One line of the command's output, on stdout (control characters escaped)."""
    sys.stdout.write(_visible_lines(text) + "\n")


def _err(text: str) -> None:
    """One line for the person at the terminal (prompts, hints, errors), on stderr."""
    sys.stderr.write(_visible_lines(text) + "\n")
    sys.stderr.flush()


def _json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    _out(_dumps(value, indent=2))


def _fail(as_json: bool, code: str, status: int, message: str, **details: Any) -> None:
    if as_json:
        body = {"code": code, "status": status, "message": message, **details}
        _err(_dumps({"error": body}))
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
    cells = [[visible(str(c)) for c in row] for row in rows]
    if not cells:
        _out(empty)
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for row in [[h.upper() for h in headers], *cells]:
        _out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# ------------------------------------------------------------------------------- shared views


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


PROGRESS_MIN_BYTES = 1024 * 1024


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
