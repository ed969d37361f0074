"""What the ``profiles`` command prints, and how: one line at a time on stdout (output) or
stderr (the person at the terminal), JSON with ``--json``, tables, sizes and times for
people, and never a control character from stored text (a profile's name or label could
otherwise retitle a terminal or reorder what a line shows)."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

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
